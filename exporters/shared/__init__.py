"""Helpers that more than one reader (or graph export) uses, in the one place the import contracts
name: a reader package imports the core and this package, never another reader's modules.

- keras_naming: Keras's variable names and layer configs to canonical tensors (Keras files, and TF
  checkpoints that Keras wrote);
- param_tree: nested parameter trees (Flax, and NumPy archives saved from one) to canonical names;
- torch_state: a strict state_dict load into a rebuilt torch module;
- quiet: frameworks' own console output captured while they run."""
