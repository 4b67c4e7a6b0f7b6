"""Serving: an OpenAI-compatible HTTP API with images, continuous batching and a web chat page.

    ocellus serve [--model DIR] [--port 8000] [--api-key KEY]     (docs/SERVING.md)
"""
