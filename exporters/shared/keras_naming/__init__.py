"""Keras's naming, shared by the Keras reader and the TF checkpoint reader: layer configs (config),
variable names and shapes to layer kinds (names), each layer to canonical tensors (layers), and the
result as one SourceModel (assemble)."""
