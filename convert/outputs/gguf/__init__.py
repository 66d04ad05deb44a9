"""GGUF output: the container (file_format, stream), the ggml type table and quantizers, the type
choice (choose), the tensors' encoding (encode), planning and writing (build), verify (check) and inspect (describe)."""
