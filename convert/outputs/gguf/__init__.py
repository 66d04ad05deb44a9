"""GGUF output: the ggml type table and the quantizers that fill its tensor data."""
