"""Output formats: each one a package behind the output contract."""
