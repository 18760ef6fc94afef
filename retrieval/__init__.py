"""Retrieval: crawl, parse, chunk, embed, index and search collections of files.

A collection is a named set of folders. Its files are crawled (gitignore-aware), parsed, split into
chunks that keep their path and line span, embedded with all-MiniLM-L6-v2 and stored in a FAISS index
beside a SQL catalog, so re-indexing touches only what changed and every hit can be cited as path:line.
"""
