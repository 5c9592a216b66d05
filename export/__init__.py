"""fastseg's export toolchain: official PyTorch checkpoints to ONNX and OpenVINO IR, verified against PyTorch.

Needs the ``export`` extra (torch and the reference implementations): ``pip install "fastseg[export]"``.
"""
