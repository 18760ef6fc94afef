"""The web interface: a Gradio app over the chat engine.

`ui` renders sessions, collections, streamed answers and their citations. It talks only to `app`, never
to the model, the index or the database directly.
"""
