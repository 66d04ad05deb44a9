"""SafeTensors output: one `model.safetensors`, or shards and Hugging Face's index, with `{"format": "pt"}`
metadata naming the tied aliases."""
