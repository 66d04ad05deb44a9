"""Output formats: each subpackage writes one format."""
