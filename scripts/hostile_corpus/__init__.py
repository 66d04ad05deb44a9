"""The hostile corpus (fixtures/hostile), one module per container: pickles and their gadgets, torch
checkpoints, SafeTensors, Flax msgpack, HDF5 and .keras, NeuralForecast folders, TorchScript
archives, NumPy files, TFLite flatbuffers. scripts/make_hostile.py writes it and checks it."""
