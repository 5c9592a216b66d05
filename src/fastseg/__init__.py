"""fastseg: the Segment Anything family (SAM, MobileSAM, FastSAM) fast on a CPU with OpenVINO.

The runtime needs numpy, openvino and pillow only; it never imports torch.
"""

from fastseg.registry import REGISTRY, ModelSpec, get_spec
from fastseg.results import SegmentationResult

__version__ = "0.1.0"

__all__ = [
    "REGISTRY",
    "ModelSpec",
    "Predictor",
    "SegmentationResult",
    "__version__",
    "get_spec",
    "load_embedding",
    "save_embedding",
    "segment",
]


def __getattr__(name: str):
    # Predictor and segment pull in the backends; import them on first use so `import fastseg` stays light.
    if name == "Predictor":
        from fastseg.predictor import Predictor

        return Predictor
    if name in ("save_embedding", "load_embedding"):
        from fastseg import embeddings

        return getattr(embeddings, name)
    if name == "segment":
        from fastseg.api import segment

        return segment
    raise AttributeError(f"module 'fastseg' has no attribute {name!r}")
