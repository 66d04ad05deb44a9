"""ruv-FANN output: dense chains as `Network<T>` in ruv-FANN's own serde JSON, beside the tensors."""
