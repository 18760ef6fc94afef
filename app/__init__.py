"""The application layer: configuration, the chat engine, the command line and integrations.

`app` is where the parts meet. It wires the backbone (the language model), retrieval (collections and
search) and memory (sessions persisted in SQL) into one chat turn, and exposes them through the
`rillet` command and LangChain adapters. Nothing below `app` imports it.
"""
