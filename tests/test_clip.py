"""CLIP without torch (``fastseg.clip``): the tokenizer and the image preprocessing against the ``clip``
package (PyPI ``clip-anytorch``, the module ultralytics' FastSAM text prompts call)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from fastseg.clip import CONTEXT_LENGTH, VOCAB_FILENAME, ClipTokenizer, check_texts, preprocess


def _clip_vocab() -> Path:
    """The vocabulary file inside the installed ``clip`` package, found without importing it (its
    ``__init__`` imports torch)."""
    spec = importlib.util.find_spec("clip")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("the 'clip' package (pip install clip-anytorch) is part of the test environment")
    return Path(next(iter(spec.submodule_search_locations))) / VOCAB_FILENAME


@pytest.fixture(scope="module")
def tokenizer() -> ClipTokenizer:
    return ClipTokenizer(_clip_vocab())


@pytest.fixture(scope="module")
def reference_clip() -> Any:
    from conftest import import_torch

    import_torch()
    import clip

    return clip


LONG = " ".join(f"word{i}" for i in range(120))
#: Strings where a tokenizer could go wrong: cleaning (ftfy, HTML entities, whitespace), case, the
#: word pattern (contractions, digits, punctuation runs, scripts other than Latin), bytes outside the
#: printable Latin-1 range, special tokens typed by a person, and the 77-token cut.
TRICKY = [
    "",
    " ",
    "a dog",
    "the red car",
    "The RED Car!!",
    "  many   spaces\tand\nnew lines  ",
    "don't it's we're I'll you've I'm he'd",
    "DON'T IT'S",
    "café naïve façade Ærøskøbing",
    "e\u0301 combining accent",
    "日本語のテキスト",
    "русский текст",
    "Ελληνικά",
    "العربية",
    "emoji 🐶🚗🏳️‍🌈",
    "zero\u200bwidth",
    "&amp; html &lt;b&gt; &amp;amp;",
    "mojibake: Ã©tÃ©",
    "numbers 12345 3.14 1st 2nd",
    "hyphen-ated_words/slash\\back",
    "...!!!???---",
    "<|startoftext|> typed <|endoftext|>",
    "a photo of a <|ENDOFTEXT|>",
    "supercalifragilisticexpialidocious" * 5,
    LONG,
    "🐶" * 80,
    "x" * 300,
]


def test_token_ids_match_clip_tokenize(tokenizer: ClipTokenizer, reference_clip: Any) -> None:  # noqa: ANN401
    ours = tokenizer(TRICKY)
    theirs = reference_clip.tokenize(TRICKY, context_length=CONTEXT_LENGTH, truncate=True).numpy()
    assert ours.dtype == np.int64 and ours.shape == (len(TRICKY), CONTEXT_LENGTH)
    for text, a, b in zip(TRICKY, ours, theirs):
        assert a.tolist() == b.tolist(), text
    # The cut texts end with the end token at the last position, as ultralytics' truncate=True does.
    assert ours[TRICKY.index(LONG), -1] == tokenizer.end_id


def test_repeated_words_come_from_the_cache_unchanged(tokenizer: ClipTokenizer) -> None:
    first = tokenizer(["a dog and a dog"])
    assert tokenizer(["a dog and a dog"]).tolist() == first.tolist()
    assert first[0, 2] == first[0, 5]  # "dog" both times


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        ([], "non-empty list"),
        ("a dog", "use \\['a dog'\\]"),
        (["a dog", 3], "got int 3"),
        ([None], "got NoneType"),
        (7, "got int"),
    ],
)
def test_bad_texts_say_what_came(texts: Any, message: str) -> None:  # noqa: ANN401
    with pytest.raises(ValueError, match=message):
        check_texts(texts)


def test_a_file_that_is_not_the_vocabulary_is_refused(tmp_path: Path) -> None:
    path = tmp_path / VOCAB_FILENAME
    path.write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="not CLIP's gzipped BPE vocabulary"):
        ClipTokenizer(path)


def _photos() -> list[Image.Image]:
    from skimage import data

    chelsea = Image.fromarray(data.chelsea())
    return [
        chelsea,  # landscape
        Image.fromarray(data.astronaut()),  # square
        chelsea.transpose(Image.Transpose.ROTATE_90),  # portrait
        chelsea.crop((10, 20, 47, 31)),  # smaller than 224: enlarged
        chelsea.crop((0, 0, 225, 224)),  # odd centre-crop offset
        chelsea.crop((5, 5, 6, 300)),  # one pixel wide
        chelsea.convert("L"),  # grey, converted after the crop
    ]


def test_preprocess_matches_clip_preprocess(reference_clip: Any) -> None:  # noqa: ANN401
    reference = reference_clip.clip._transform(224)
    for image in _photos():
        ours = preprocess(image)
        theirs = reference(image).numpy()
        assert ours.shape == theirs.shape == (3, 224, 224) and ours.dtype == np.float32
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5, err_msg=str(image.size))


def test_preprocess_refuses_an_empty_image() -> None:
    with pytest.raises(ValueError, match="at least 1 x 1 pixels, got 0 x 5"):
        preprocess(Image.new("RGB", (0, 5)))


# --------------------------------------------------------------------------------------------------
# text prompts refused with a clear error (tiny folders: no CLIP model needed to refuse)


@pytest.mark.parametrize(
    ("folder", "texts", "message"),
    [
        ("tiny_fastsam_folder", [], "non-empty list of strings, got an empty list"),
        ("tiny_fastsam_folder", ["a dog", 1.5], "got float 1.5 among them"),
        ("tiny_fastsam_folder", "a dog", r"use \['a dog'\]"),
        ("tiny_fastsam_folder", ["a dog"], "texts need a CLIP model: Predictor\\(model_dir, clip="),
        ("tiny_sam_folder", ["a dog"], "text prompts are for FastSAM models; .* is a 'sam' model"),
    ],
)
def test_bad_text_prompts_get_a_clear_error(
    folder: str, texts: Any, message: str, request: pytest.FixtureRequest, photos: dict  # noqa: ANN401
) -> None:
    import fastseg

    predictor = fastseg.Predictor(request.getfixturevalue(folder), cache_dir=False)
    predictor.set_image(photos["chelsea"])
    with pytest.raises(ValueError, match=message):
        predictor.predict(texts=texts)


def test_one_check_serves_the_predictor_and_the_engine() -> None:
    """The Predictor and FastSamEngine (driven directly) raise the same errors from one helper."""
    from fastseg.fastsam import check_text_inputs

    pixels = np.zeros((4, 4, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"texts need a CLIP model: .*fastseg export clip_vit_b32"):
        check_text_inputs(None, pixels)
    with pytest.raises(ValueError, match="restored from an embedding without them"):
        check_text_inputs(object(), None)
    check_text_inputs(object(), pixels)  # both there: nothing to refuse


def test_clip_is_refused_for_sam_and_a_clip_folder_is_not_a_segmenter(tiny_sam_folder: Path, tmp_path: Path) -> None:
    import json

    import fastseg
    from fastseg.manifest import ModelFolderError

    with pytest.raises(ValueError, match="clip= is for FastSAM models"):
        fastseg.Predictor(tiny_sam_folder, cache_dir=False, clip=tmp_path)
    # A folder whose manifest says "clip" is refused by Predictor before any graph is opened.
    import shutil

    fake = tmp_path / "clip"
    shutil.copytree(tiny_sam_folder, fake)
    manifest = json.loads((fake / "manifest.json").read_text())
    manifest.update(family="clip", model="clip_vit_b32", graphs={"image_encoder": {}, "text_encoder": {}})
    (fake / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFolderError, match="FastSAM's text model, not a segmentation model"):
        fastseg.Predictor(fake, cache_dir=False)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--text", "a dog"], "--text needs --clip FOLDER"),
        (["--clip", "somewhere"], "--clip is the CLIP model of --text prompts"),
        (["--everything", "--text", "a dog"], "drop --point/--label/--box/--text"),
    ],
)
def test_cli_text_mistakes_are_one_line(
    extra: list[str], message: str, tiny_fastsam_folder: Path, photos: dict, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from fastseg.cli import main

    image = tmp_path / "photo.png"
    Image.fromarray(photos["chelsea"]).save(image)
    assert main(["segment", str(image), "--model", str(tiny_fastsam_folder), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------------------------------
# the checkpoint: OpenAI's TorchScript archive, read as data


@pytest.fixture(scope="module")
def clip_checkpoint(random_checkpoint: Any) -> Path:  # noqa: ANN401
    return random_checkpoint("clip_vit_b32")


def test_random_checkpoint_is_what_clip_load_reads(clip_checkpoint: Path, reference_clip: Any) -> None:  # noqa: ANN401
    import torch

    from fastseg.registry import get_spec
    from fastseg_export.clip import is_torchscript_archive, load_model

    assert is_torchscript_archive(clip_checkpoint)
    official, _ = reference_clip.load(str(clip_checkpoint), device="cpu", jit=False)
    scripted, _ = reference_clip.load(str(clip_checkpoint), device="cpu", jit=True)
    ours = load_model(get_spec("clip_vit_b32"), clip_checkpoint)
    theirs = official.state_dict()
    assert sorted(ours.state_dict()) == sorted(theirs)
    for key, value in ours.state_dict().items():
        assert torch.equal(value, theirs[key]), key
    tokens = reference_clip.tokenize(["a dog"])
    with torch.no_grad():
        assert torch.allclose(ours.encode_text(tokens), scripted.encode_text(tokens), atol=1e-5)
    # the archive keeps OpenAI's float16 weights
    from fastseg_export.clip import read_torchscript_tensors

    assert read_torchscript_tensors(clip_checkpoint)["visual.conv1.weight"].dtype == torch.float16


def test_a_plain_state_dict_is_read_too(clip_checkpoint: Path, tmp_path: Path, reference_torch: Any) -> None:  # noqa: ANN401
    from fastseg.registry import get_spec
    from fastseg_export.clip import load_model, read_torchscript_tensors

    state = {k: v for k, v in read_torchscript_tensors(clip_checkpoint).items() if k != "input_resolution"}
    plain = tmp_path / "ViT-B-32-state-dict.pt"
    reference_torch.save(state, plain)
    model = load_model(get_spec("clip_vit_b32"), plain)
    assert reference_torch.equal(model.state_dict()["text_projection"], state["text_projection"].float())


def test_an_archive_referencing_other_globals_is_refused_unrun(
    clip_checkpoint: Path, tmp_path: Path, reference_torch: Any  # noqa: ANN401
) -> None:
    import pickle
    import zipfile

    from fastseg.registry import get_spec
    from fastseg_export.clip import load_model
    from fastseg_export.errors import CheckpointError

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):  # noqa: ANN204
            import os

            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "ViT-B-32.pt"
    with zipfile.ZipFile(clip_checkpoint) as src, zipfile.ZipFile(evil, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("/data.pkl"):
                data = pickle.dumps(Payload(), protocol=2)
            dst.writestr(item, data)
    with pytest.raises(CheckpointError, match="refused to read .*references posix.system"):
        load_model(get_spec("clip_vit_b32"), evil)
    assert not marker.exists()
