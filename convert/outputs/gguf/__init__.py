"""GGUF outputs: the container (file_format), its streaming writer (stream)."""
