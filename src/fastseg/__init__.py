"""fastseg: the Segment Anything family (SAM, MobileSAM, FastSAM) fast on a CPU with OpenVINO.

The runtime needs numpy, openvino and pillow only; it never imports torch.
"""

from typing import TYPE_CHECKING

from fastseg.records import MaskRecords
from fastseg.registry import REGISTRY, ModelSpec, get_spec
from fastseg.results import SegmentationResult

if TYPE_CHECKING:  # imported lazily by __getattr__ below; type checkers see the real names
    from fastseg.api import segment
    from fastseg.embeddings import load_embedding, save_embedding
    from fastseg.predictor import ImageHandle, Predictor
    from fastseg.store import EmbeddingStore

__version__ = "0.1.0"

__all__ = [
    "REGISTRY",
    "EmbeddingStore",
    "ImageHandle",
    "MaskRecords",
    "ModelSpec",
    "Predictor",
    "SegmentationResult",
    "__version__",
    "get_spec",
    "load_embedding",
    "save_embedding",
    "segment",
]


def __getattr__(name: str) -> object:
    # Predictor and segment pull in the backends; import them on first use so `import fastseg` stays light.
    if name in ("Predictor", "ImageHandle"):
        from fastseg import predictor

        return getattr(predictor, name)
    if name in ("save_embedding", "load_embedding"):
        from fastseg import embeddings

        return getattr(embeddings, name)
    if name == "EmbeddingStore":
        from fastseg.store import EmbeddingStore

        return EmbeddingStore
    if name == "segment":
        from fastseg.api import segment

        return segment
    raise AttributeError(f"module 'fastseg' has no attribute {name!r}")
