"""Hugging Face checkpoint I/O: resolve a path or hub id, read (sharded) safetensors, map names
through each family's declarative key table, strict checks, and export."""
