"""CLIP ViT-B/32 (OpenAI's ``clip`` package, PyPI ``clip-anytorch``): the image and text towers, for
FastSAM's text prompts.

The official checkpoint (``ViT-B-32.pt``, what ``clip.load("ViT-B/32")`` downloads) is a TorchScript
archive with float16 weights. ``torch.load`` refuses such an archive with ``weights_only=True`` and
``torch.jit.load`` would compile the code inside it, so :func:`read_torchscript_tensors` reads it as
data: its ``data.pkl`` is unpickled with an allow-list (tensor rebuilding, ``OrderedDict``, and inert
stand-ins for the archive's own module classes; any other global is refused), its tensors come from the
archive's storage records, and the module tree gives their state-dict names. A plain state dict, which
``clip.load`` also accepts, is read with ``torch.load(weights_only=True)``. The model is then built by
the package's ``build_model``, as ``clip.load(..., jit=False)`` does, and used at float32.

Two graphs: ``image_encoder`` (``encode_image``, images ``(B, 3, 224, 224)`` -> ``(B, 512)``) and
``text_encoder`` (``encode_text``, token ids ``(B, 77)`` int64 -> ``(B, 512)``), both with a dynamic
batch; features come out unnormalised, as ``encode_*`` returns them. The tokenizer's vocabulary file
is copied into the folder.
"""

from __future__ import annotations

import importlib.util
import pickle
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from fastseg.clip import VOCAB_FILENAME, ClipTokenizer, preprocess
from fastseg.registry import ModelSpec
from fastseg_export.common import Graph, atomic_torch_save, check_state_dict_matches, load_state_dict
from fastseg_export.errors import CheckpointError

#: ViT-B/32's hyperparameters, as ``clip.model.build_model`` reads them from the official state dict.
VIT_B32 = {
    "embed_dim": 512,
    "image_resolution": 224,
    "vision_layers": 12,
    "vision_width": 768,
    "vision_patch_size": 32,
    "context_length": 77,
    "vocab_size": 49408,
    "transformer_width": 512,
    "transformer_heads": 8,
    "transformer_layers": 12,
}
#: Texts the export's self-check encodes.
CHECK_TEXTS = ["a cat", "the red car", "", "a photo of a tabby cat lying on a wooden floor, seen from above"]

_STORAGE_DTYPES = {
    "HalfStorage": torch.float16,
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


def _clip_module() -> Any:
    try:
        import clip.model
    except ImportError as exc:
        raise CheckpointError(
            f"exporting CLIP needs OpenAI's 'clip' package ({exc}): pip install 'fastseg[export]' "
            "(clip-anytorch; it imports pkg_resources, so setuptools < 81)"
        ) from exc
    return clip.model


def vocab_path() -> Path:
    """The tokenizer's vocabulary file inside the installed ``clip`` package."""
    spec = importlib.util.find_spec("clip")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError("exporting CLIP needs the 'clip' package: pip install clip-anytorch")
    return Path(next(iter(spec.submodule_search_locations))) / VOCAB_FILENAME


class _ArchiveModule:
    """Stand-in for a class of the archive's TorchScript code: keeps the attributes the pickle sets."""

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: Any, stride: Any, *_: Any) -> torch.Tensor:
    return torch.as_strided(storage, tuple(size), tuple(stride), offset).clone()


class _ArchiveUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, archive: zipfile.ZipFile, prefix: str, path: Path) -> None:
        super().__init__(file)
        self.archive, self.prefix, self.path = archive, prefix, path

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module == "collections" and name == "OrderedDict":
            return dict
        if module.startswith("__torch__."):
            return type(name, (_ArchiveModule,), {})
        raise CheckpointError(
            f"refused to read {self.path}: its data.pkl references {module}.{name}, which is not part of a "
            "CLIP TorchScript archive's weights (no code from the file is run)"
        )

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CheckpointError(f"{self.path}: unexpected storage record {pid!r} in data.pkl")
        _, dtype, key, _location, numel = pid
        data = bytearray(self.archive.read(f"{self.prefix}data/{key}"))
        tensor = torch.frombuffer(data, dtype=dtype) if data else torch.empty(0, dtype=dtype)
        if tensor.numel() != numel:
            raise CheckpointError(f"{self.path}: storage {key} holds {tensor.numel()} values, data.pkl says {numel}")
        return tensor


def _named_tensors(obj: Any, prefix: str, out: dict[str, torch.Tensor]) -> None:
    state = obj.state if isinstance(obj, _ArchiveModule) else obj
    if not isinstance(state, dict):
        return
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            out[prefix + key] = value
        elif isinstance(value, (_ArchiveModule, dict)):
            _named_tensors(value, f"{prefix}{key}.", out)


def is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/code/__torch__.py") or "/code/__torch__/" in name for name in archive.namelist())


def read_torchscript_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor attribute of a TorchScript archive's module tree, by dotted name, read without
    running or compiling anything from the file (parameters, buffers and tensor attributes alike)."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(pickles) != 1:
                raise CheckpointError(f"{path} is not a TorchScript archive: expected one <name>/data.pkl")
            prefix = pickles[0][: -len("data.pkl")]
            with archive.open(pickles[0]) as file:
                root = _ArchiveUnpickler(file, archive, prefix, path).load()
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, pickle.UnpicklingError, KeyError, ValueError) as exc:
        raise CheckpointError(f"{path} could not be read as a CLIP TorchScript archive: {exc}") from exc
    tensors: dict[str, torch.Tensor] = {}
    _named_tensors(root, "", tensors)
    return tensors


def build_model(state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """``clip.model.CLIP`` with ViT-B/32's hyperparameters (random init if ``state`` is None)."""
    model = _clip_module().CLIP(**VIT_B32)
    if state is not None:
        model.load_state_dict(state, strict=True)
    return model.float().eval()


def load_model(spec: ModelSpec, checkpoint: Path) -> nn.Module:
    """The official model from ``checkpoint`` (TorchScript archive or state dict), at float32."""
    checkpoint = Path(checkpoint)
    if is_torchscript_archive(checkpoint):
        found = read_torchscript_tensors(checkpoint)
    else:
        found = load_state_dict(checkpoint)
    model = build_model()
    # The archive also holds non-parameter tensors (input_resolution, context_length, vocab_size, each
    # block's attention mask), which build_model drops or rebuilds; every parameter must be there.
    state = {k: v.float() for k, v in found.items() if k in model.state_dict()}
    check_state_dict_matches(model, state, f"{spec.name} ({spec.checkpoint_format})", checkpoint)
    model.load_state_dict(state, strict=True)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def write_random_checkpoint(spec: ModelSpec, path: Path, seed: int) -> None:
    """A seeded random ViT-B/32 saved as OpenAI saved theirs: a TorchScript archive (``encode_image``,
    ``encode_text`` and ``forward`` traced) with float16 weights. Written atomically."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model()
    # The official archives carry the input size as a tensor, which clip.load(jit=True) reads (and
    # build_model drops from a state dict).
    model.register_buffer("input_resolution", torch.tensor(VIT_B32["image_resolution"]))
    images = torch.zeros(1, 3, 224, 224)
    tokens = torch.zeros(1, 77, dtype=torch.int64)
    tokens[0, :2] = torch.tensor([49406, 49407])
    with torch.no_grad():
        traced = torch.jit.trace_module(
            model, {"forward": (images, tokens), "encode_image": (images,), "encode_text": (tokens,)}
        )
    traced.half()  # OpenAI's files hold float16 weights (clip.model.convert_weights)
    atomic_torch_save(traced, path, save=torch.jit.save)


class ImageEncoder(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images)


class TextEncoder(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens)


def graphs(model: nn.Module, spec: ModelSpec) -> list[Graph]:
    images = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    tokens = torch.zeros(2, 77, dtype=torch.int64)
    tokens[:, 0] = 49406
    tokens[0, 1:4] = torch.tensor([320, 1929, 49407])
    tokens[1, 1:3] = torch.tensor([320, 49407])
    return [
        Graph(
            name="image_encoder",
            module=ImageEncoder(model).eval(),
            example_inputs=(images,),
            input_names=["images"],
            output_names=["image_features"],
            dynamic_axes={"images": {0: "batch"}, "image_features": {0: "batch"}},
        ),
        Graph(
            name="text_encoder",
            module=TextEncoder(model).eval(),
            example_inputs=(tokens,),
            input_names=["tokens"],
            output_names=["text_features"],
            dynamic_axes={"tokens": {0: "batch"}, "text_features": {0: "batch"}},
        ),
    ]


def check_inputs(
    model: nn.Module,
    spec: ModelSpec,
    image: np.ndarray,
    known_outputs: dict[str, dict[str, np.ndarray]] | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Crops of the real photo through the runtime's preprocessing, and :data:`CHECK_TEXTS` through its
    tokenizer."""
    photo = Image.fromarray(image)
    w, h = photo.size
    crops = [photo, photo.crop((w // 4, h // 4, w // 2, h)), photo.crop((0, 0, w, h // 3))]
    images = np.stack([preprocess(c) for c in crops])
    tokens = ClipTokenizer(vocab_path())(CHECK_TEXTS)
    return {"image_encoder": {"images": images}, "text_encoder": {"tokens": tokens}}


def manifest_extra(model: nn.Module, spec: ModelSpec) -> dict[str, Any]:
    """The tokenizer's vocabulary file and the feature size."""
    return {"vocab": VOCAB_FILENAME, "embed_dim": int(model.text_projection.shape[1])}


def write_extra_files(folder: Path) -> None:
    """The tokenizer's vocabulary, which the runtime reads from the folder."""
    shutil.copyfile(vocab_path(), folder / VOCAB_FILENAME)
