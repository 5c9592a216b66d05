"""CLIP's text tokenizer and image preprocessing without torch, for FastSAM's text prompts.

Both reproduce the ``clip`` package (OpenAI's CLIP, on PyPI as ``clip-anytorch``), which ultralytics'
``FastSAMPredictor`` uses for ``texts=``:

- :class:`ClipTokenizer` gives ``clip.tokenize``'s token ids: ftfy's text repair, HTML unescaping,
  whitespace folding, lower case, the same word pattern, byte-level BPE on the 49,152-entry vocabulary
  (``bpe_simple_vocab_16e6.txt.gz``, copied into the exported folder), start and end tokens, 77
  tokens, a text that is too long cut as ultralytics cuts it (``truncate=True``: the 77th token
  becomes the end token).
- :func:`preprocess` is ``clip.load``'s ``preprocess`` on a ``PIL.Image``: the shorter side resized
  to 224 with Pillow's bicubic filter (what torchvision's ``Resize`` calls for a PIL image), the centre
  224 x 224 crop, RGB scaled to [0, 1] and normalised with CLIP's mean and std.

The tokenizer needs ``regex`` (Unicode classes) and ``ftfy``: ``pip install 'fastseg[text]'``.
"""

from __future__ import annotations

import gzip
import html
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

#: Tokens per text, start and end tokens included (every CLIP model's ``context_length``).
CONTEXT_LENGTH = 77
#: The vocabulary file of the ``clip`` package, copied next to the exported CLIP graphs.
VOCAB_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
#: Merges the tokenizer reads from the vocabulary file (49,152 tokens - 256 bytes - 256 end-of-word
#: bytes - the two special tokens).
N_MERGES = 49152 - 256 - 2
START, END = "<|startoftext|>", "<|endoftext|>"
#: CLIP's words: the two special tokens, English contractions, runs of letters, single digits, runs of
#: other non-space characters (case-insensitive).
WORD_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""

IMAGE_SIZE = 224
MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


def _text_modules() -> tuple[Any, Any]:
    try:
        import ftfy
        import regex
    except ImportError as exc:
        raise ImportError(
            f"text prompts need the 'regex' and 'ftfy' packages ({exc.name} is missing): pip install 'fastseg[text]'"
        ) from exc
    return regex, ftfy


@lru_cache(maxsize=1)
def byte_symbols() -> dict[int, str]:
    """Byte -> the printable character standing for it in the vocabulary (GPT-2's byte-level alphabet:
    printable Latin-1 bytes stand for themselves, the other 68 bytes for code points from 256 on)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + extra)
            extra += 1
    return symbols


class ClipTokenizer:
    """``clip.tokenize`` without torch, on the vocabulary file at ``vocab_path``."""

    def __init__(self, vocab_path: str | Path) -> None:
        regex, self._ftfy = _text_modules()
        path = Path(vocab_path)
        try:
            lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path} is not CLIP's gzipped BPE vocabulary ({VOCAB_FILENAME}): {exc}") from exc
        merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
        if len(merges) != N_MERGES or any(len(m) != 2 for m in merges):
            raise ValueError(
                f"{path} is not CLIP's BPE vocabulary: expected {N_MERGES} merges of two symbols after the "
                f"header line, got {len(merges)}"
            )
        alphabet = list(byte_symbols().values())
        vocabulary = alphabet + [s + "</w>" for s in alphabet] + ["".join(m) for m in merges] + [START, END]
        self.ids = {token: i for i, token in enumerate(vocabulary)}
        self.ranks = {merge: rank for rank, merge in enumerate(merges)}
        self.start_id, self.end_id = self.ids[START], self.ids[END]
        self._words = regex.compile(WORD_PATTERN, regex.IGNORECASE)
        self._spaces = regex.compile(r"\s+")
        self._bpe_cache: dict[str, tuple[str, ...]] = {}

    def _clean(self, text: str) -> str:
        text = html.unescape(html.unescape(str(self._ftfy.fix_text(text)))).strip()
        return str(self._spaces.sub(" ", text)).strip().lower()

    def _bpe(self, word: str) -> tuple[str, ...]:
        """The vocabulary symbols of one word (in byte symbols), by merging the lowest-ranked adjacent
        pair until no pair is a merge; the last symbol carries the end-of-word mark."""
        cached = self._bpe_cache.get(word)
        if cached is not None:
            return cached
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            ranked = [(self.ranks.get(pair, N_MERGES), pair) for pair in zip(parts, parts[1:])]
            rank, (first, second) = min(ranked, key=lambda item: item[0])
            if rank == N_MERGES:
                break
            merged: list[str] = []
            i = 0
            while i < len(parts):
                if i + 1 < len(parts) and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        result = tuple(parts)
        self._bpe_cache[word] = result
        return result

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without the start and end tokens."""
        symbols = byte_symbols()
        ids: list[int] = []
        for word in self._words.findall(self._clean(text)):
            if word in (START, END):
                ids.append(self.ids[word])
                continue
            ids.extend(self.ids[s] for s in self._bpe("".join(symbols[b] for b in word.encode("utf-8"))))
        return ids

    def __call__(self, texts: Sequence[str]) -> npt.NDArray[np.int64]:
        """``(len(texts), 77)`` int64 token ids, zero-padded; a text longer than 77 tokens is cut and
        ends with the end token (``clip.tokenize(texts, truncate=True)``)."""
        texts = check_texts(texts)
        out = np.zeros((len(texts), CONTEXT_LENGTH), dtype=np.int64)
        for row, text in zip(out, texts):
            ids = [self.start_id, *self.encode(text), self.end_id][:CONTEXT_LENGTH]
            ids[-1] = self.end_id
            row[: len(ids)] = ids
        return out


def check_texts(texts: Any) -> list[str]:
    """``texts`` as a non-empty list of strings, or a ValueError saying what came."""
    if isinstance(texts, str):
        raise ValueError(f"texts must be a list of strings, got the string {texts!r}: use [{texts!r}]")
    try:
        items = list(texts)
    except TypeError:
        raise ValueError(f"texts must be a list of strings, got {type(texts).__name__}") from None
    if not items:
        raise ValueError("texts must be a non-empty list of strings, got an empty list")
    bad = [t for t in items if not isinstance(t, str)]
    if bad:
        raise ValueError(f"texts must be a list of strings, got {type(bad[0]).__name__} {bad[0]!r} among them")
    return items


def preprocess(image: Image.Image) -> npt.NDArray[np.float32]:
    """``(3, 224, 224)`` float32: CLIP's ``preprocess`` of a PIL image (any mode; converted to RGB after
    the resize and crop, as CLIP does)."""
    width, height = image.size
    if width < 1 or height < 1:
        raise ValueError(f"image must be at least 1 x 1 pixels, got {width} x {height}")
    # torchvision's Resize(224): the shorter side to 224, the longer side int(224 * long / short).
    if width <= height:
        size = (IMAGE_SIZE, int(IMAGE_SIZE * height / width))
    else:
        size = (int(IMAGE_SIZE * width / height), IMAGE_SIZE)
    if size != (width, height):
        image = image.resize(size, Image.Resampling.BICUBIC)
    # torchvision's CenterCrop: offsets rounded half to even, padding with zeros when smaller.
    w, h = image.size
    left = int(round((w - IMAGE_SIZE) / 2.0))
    top = int(round((h - IMAGE_SIZE) / 2.0))
    image = image.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE)).convert("RGB")
    pixels = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    return np.ascontiguousarray(((pixels - MEAN) / STD).transpose(2, 0, 1))


def normalized(features: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Rows scaled to unit L2 norm, in float32 (as ultralytics' ``CLIP.encode_*`` return them)."""
    rows = np.asarray(features, dtype=np.float32)
    return np.asarray(rows / np.linalg.norm(rows, axis=-1, keepdims=True), dtype=np.float32)


class ClipModel:
    """A CLIP model folder (``fastseg export clip_vit_b32``) on a backend: text and image features.

    Thread-safe (one lock around its graph runs); one instance may serve several Predictors.

    Args:
        model_dir: the folder, or an already opened ``ClipModel`` is passed where one is accepted.
        backend: ``"openvino"`` or ``"onnxruntime"``.
        precision: ``"f32"`` or ``"bf16"``; ``"int8"`` (a FastSAM Predictor's) runs CLIP at bf16 where
            the CPU has it, else f32: CLIP has no INT8 graphs.
        num_threads, cache_dir: as for :class:`fastseg.Predictor`.
        text_cache: how many texts' features are kept (repeated prompts skip the text encoder).
    """

    #: Crops encoded per image-graph run.
    batch_size = 32

    def __init__(
        self,
        model_dir: str | Path,
        backend: str = "openvino",
        precision: str = "f32",
        num_threads: int | None = None,
        cache_dir: Path | None | Any = None,
        text_cache: int = 1024,
    ) -> None:
        import threading
        from collections import OrderedDict

        from fastseg.backends import open_session, openvino_supports_bf16
        from fastseg.manifest import GRAPHS_BY_FAMILY, load_model_folder

        self.folder = load_model_folder(model_dir, family="clip")
        if precision == "int8":
            precision = "bf16" if backend == "openvino" and openvino_supports_bf16() else "f32"
        self.sessions = {
            graph: open_session(self.folder, graph, backend, precision, num_threads=num_threads, cache_dir=cache_dir)
            for graph in GRAPHS_BY_FAMILY["clip"]
        }
        self.precision = str(getattr(self.sessions["image_encoder"], "precision", precision))
        vocab = self.folder.manifest.get("extra", {}).get("vocab", VOCAB_FILENAME)
        self.tokenizer = ClipTokenizer(self.folder.path / str(vocab))
        self._lock = threading.Lock()
        self._texts: OrderedDict[str, npt.NDArray[np.float32]] = OrderedDict()
        self._text_cache = int(text_cache)

    @property
    def name(self) -> str:
        return self.folder.name

    def text_features(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """``(len(texts), D)`` unit-norm features; texts seen before come from the cache."""
        texts = check_texts(texts)
        with self._lock:
            new = list(dict.fromkeys(t for t in texts if t not in self._texts))
            if new:
                tokens = self.tokenizer(new)
                out = self.sessions["text_encoder"].run({"tokens": tokens})["text_features"]
                for text, row in zip(new, normalized(out)):
                    self._texts[text] = row
            for text in texts:
                self._texts.move_to_end(text)
            rows = [self._texts[t] for t in texts]
            while len(self._texts) > self._text_cache:
                self._texts.popitem(last=False)
        return np.stack(rows)

    def image_features(self, images: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """``(N, D)`` unit-norm features of preprocessed images ``(N, 3, 224, 224)`` (:func:`preprocess`),
        encoded :attr:`batch_size` at a time."""
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 4 or images.shape[1:] != (3, IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"images must be (N, 3, {IMAGE_SIZE}, {IMAGE_SIZE}), got {images.shape}")
        parts = []
        with self._lock:
            for start in range(0, len(images), self.batch_size):
                batch = np.ascontiguousarray(images[start : start + self.batch_size])
                parts.append(self.sessions["image_encoder"].run({"images": batch})["image_features"])
        if not parts:
            return np.zeros((0, 0), dtype=np.float32)
        return normalized(np.concatenate(parts))
