"""`from convert import fann` as before: ruv-FANN's network document, evaluator and loader, which now
live with their output in convert/outputs/fann/network.py. A face-level name (nothing in the core
imports it)."""

from .outputs.fann.network import ACTIVATIONS, load, network_document, run

__all__ = ["ACTIVATIONS", "load", "network_document", "run"]
