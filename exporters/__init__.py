"""One reader per source format; each reaches canonical form (PyTorch names and layouts)."""
