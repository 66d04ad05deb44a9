"""Convert trained models into SafeTensors and manifests that Rust ML frameworks load."""

__version__ = "0.1.0"
