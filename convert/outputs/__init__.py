"""Output formats other than SafeTensors; each subpackage writes one format."""
