"""``fastseg bench``: the PyTorch originals against fastseg on ONNX Runtime and OpenVINO, in one run."""
