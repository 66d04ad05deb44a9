"""Output formats, one package each, every one an `Output` (convert/output_contract.py) listed in
convert/outputs/registry.py. Only the faces (API, CLI, batch) import this package; the pipeline and
`verify` are handed the outputs they use."""
