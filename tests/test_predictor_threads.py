"""One Predictor serving several images at once (issue #11, defect 6), and which image a call answers on.

``set_image`` / ``encode`` / ``set_image_embedding`` return an :class:`~fastseg.predictor.ImageHandle`;
``predict(..., image=handle)`` and ``everything(image=handle)`` answer on that image whatever other
threads set meanwhile. Without ``image=`` a call answers on the image set last (one image at a time).
The images here have different sizes, so a mask's shape tells which image it was computed on; the
answers are compared with the ones computed one call at a time.

Also: a ``set_image`` that fails leaves no image set (defect 14); ``multimask`` must be a bool.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import fastseg
from fastseg.predictor import ImageHandle

#: Four images of different sizes (crops of two photos): the mask shape identifies the image.
SIZES = ((300, 451), (240, 320), (200, 400), (280, 260))


@pytest.fixture(scope="module")
def images(photos) -> list[np.ndarray]:  # noqa: ANN001
    sources = (photos["chelsea"], photos["coffee"], photos["chelsea"][50:], photos["coffee"][100:])
    return [np.ascontiguousarray(src[:h, :w]) for src, (h, w) in zip(sources, SIZES)]


@pytest.fixture(scope="module")
def folders(tiny_sam_folder: Path, tiny_fastsam_folder: Path) -> dict[str, Path]:
    return {"sam": tiny_sam_folder, "fastsam": tiny_fastsam_folder}


@pytest.fixture(scope="module")
def answers(folders, images):  # noqa: ANN001, ANN201
    """``answers(family)``: per image, the masks of its :func:`prompts`, computed one call at a time."""
    made: dict[str, list[list[np.ndarray]]] = {}

    def get(family: str) -> list[list[np.ndarray]]:
        if family not in made:
            reference = fastseg.Predictor(folders[family], backend="onnxruntime", cache_dir=False)
            made[family] = []
            for image in images:
                reference.set_image(image)
                made[family].append([reference.predict(**p).masks for p in prompts(family, image.shape[:2])])
            assert all(len(m) for per_image in made[family] for m in per_image)  # the prompts select masks
        return made[family]

    return get


def prompts(family: str, size: tuple[int, int]) -> list[dict[str, list]]:
    """Sixteen prompts for an image of ``size``: SAM one click each (a disc around it), FastSAM one
    box each (the detection that overlaps it most)."""
    h, w = size
    xy = [(w * (0.2 + 0.6 * (i % 4) / 3), h * (0.2 + 0.6 * (i // 4) / 3)) for i in range(16)]
    if family == "sam":
        return [{"points": [[x, y]], "multimask": False} for x, y in xy]
    return [{"boxes": [x - 0.15 * w, y - 0.15 * h, x + 0.15 * w, y + 0.15 * h]} for x, y in xy]


class Yielding:
    """A session that sleeps a little after each run, so that the threads interleave between calls."""

    def __init__(self, session) -> None:  # noqa: ANN001
        self.session = session

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self.session, name)

    def run(self, feeds):  # noqa: ANN001, ANN201
        out = self.session.run(feeds)
        time.sleep(0.0005)
        return out


def run_threads(work, n: int) -> None:  # noqa: ANN001
    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            work(i)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]


# --------------------------------------------------------------------------------------------------
# Handles: threads each with their own image


@pytest.mark.parametrize("cached_images", [1, 4])
@pytest.mark.parametrize("family", ["sam", "fastsam"])
def test_threads_with_handles_never_mix_images(folders, images, answers, family, cached_images) -> None:
    """4 threads each set their own image and predict 16 times with its handle: every answer is the
    one computed on that image alone. With ``cached_images=1`` every switch restores the image's
    state from the handle's embedding; with 4 each image's state stays ready."""
    expected = answers(family)
    predictor = fastseg.Predictor(
        folders[family],
        backend="onnxruntime",
        cache_dir=False,
        session_wrapper=lambda name, session: Yielding(session),
        cached_images=cached_images,
    )
    start = threading.Barrier(len(images))
    got: dict[int, list[np.ndarray]] = {}

    def work(i: int) -> None:
        start.wait()
        handle = predictor.set_image(images[i])
        assert handle.original_size == images[i].shape[:2]
        got[i] = [predictor.predict(**p, image=handle).masks for p in prompts(family, images[i].shape[:2])]

    run_threads(work, len(images))
    for i, image in enumerate(images):
        for k, (mask, want) in enumerate(zip(got[i], expected[i])):
            assert mask.shape[1:] == image.shape[:2], f"thread {i}, call {k}: a mask of another image"
            np.testing.assert_array_equal(mask, want, err_msg=f"thread {i}, call {k}")


@pytest.mark.parametrize("family", ["sam", "fastsam"])
def test_threads_with_handles_everything_mode(folders, images, family) -> None:
    options = {"points_per_side": 2} if family == "sam" else {}
    reference = fastseg.Predictor(folders[family], backend="onnxruntime", cache_dir=False)
    expected = [reference.everything(image, **options).masks for image in images]
    assert all(len(masks) for masks in expected)
    predictor = fastseg.Predictor(
        folders[family],
        backend="onnxruntime",
        cache_dir=False,
        session_wrapper=lambda name, session: Yielding(session),
        cached_images=2,
    )
    handles = [predictor.encode(image) for image in images]
    got: dict[int, list[np.ndarray]] = {}

    def work(i: int) -> None:
        got[i] = [predictor.everything(image=handles[i], **options).masks for _ in range(2)]

    run_threads(work, len(images))
    for i in range(len(images)):
        for masks in got[i]:
            np.testing.assert_array_equal(masks, expected[i])


def test_without_a_handle_calls_answer_on_the_image_set_last(folders, images) -> None:
    """The one-image-at-a-time mode, interleaved deterministically: thread A sets its image, thread B
    sets another, then A predicts. Without ``image=`` A gets B's image (as documented); with A's
    handle it gets its own."""
    predictor = fastseg.Predictor(folders["sam"], backend="onnxruntime", cache_dir=False)
    a_set, b_set = threading.Event(), threading.Event()
    got: dict[str, tuple[int, ...]] = {}

    def thread_a() -> None:
        handle = predictor.set_image(images[0])
        a_set.set()
        assert b_set.wait(30)
        got["last set"] = predictor.predict(points=[[50, 50]]).masks.shape
        got["handle"] = predictor.predict(points=[[50, 50]], image=handle).masks.shape

    def thread_b() -> None:
        assert a_set.wait(30)
        predictor.set_image(images[1])
        b_set.set()

    run_threads(lambda i: (thread_a, thread_b)[i](), 2)
    assert got["last set"] == (3, *SIZES[1])  # B's image: one image at a time
    assert got["handle"] == (3, *SIZES[0])  # the handle's image, whatever was set meanwhile
    assert predictor.image_size == SIZES[1]


def test_a_handle_in_use_is_not_disturbed_by_an_encode_in_flight(folders, images) -> None:
    """While thread B's encoder runs (blocked inside the session, under the Predictor's lock), thread A
    waits for the lock; when B is done A's handle still answers on A's image, and B's new image is set."""
    gate, inside = threading.Event(), threading.Event()

    class Blocking(Yielding):
        def run(self, feeds):  # noqa: ANN001, ANN201
            if threading.current_thread().name == "B":
                inside.set()
                assert gate.wait(30)
            return self.session.run(feeds)

    predictor = fastseg.Predictor(
        folders["sam"],
        backend="onnxruntime",
        cache_dir=False,
        session_wrapper=lambda name, s: Blocking(s) if name == "encoder" else s,
    )
    handle_a = predictor.set_image(images[0])
    shapes: list[tuple[int, ...]] = []

    def b() -> None:
        predictor.set_image(images[2])

    def a() -> None:
        assert inside.wait(30)
        threading.Timer(0.05, gate.set).start()  # A is waiting for the lock when B's encoder finishes
        shapes.append(predictor.predict(points=[[10, 10]], image=handle_a, multimask=False).masks.shape)

    threads = [threading.Thread(target=b, name="B"), threading.Thread(target=a, name="A")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert shapes == [(1, *SIZES[0])]
    assert predictor.image_size == SIZES[2]


# --------------------------------------------------------------------------------------------------
# Handle semantics


@pytest.mark.parametrize("family", ["sam", "fastsam"])
def test_handles(folders, images, family) -> None:
    predictor = fastseg.Predictor(folders[family], backend="onnxruntime", cache_dir=False)
    model = {"sam": "mobile_sam", "fastsam": "fastsam_s"}[family]
    handle = predictor.set_image(images[0])
    assert isinstance(handle, ImageHandle)
    assert handle.model == model and handle.original_size == SIZES[0]
    assert handle.embedding is predictor.get_image_embedding()
    assert repr(handle) == f"ImageHandle(original_size={SIZES[0]}, model={model!r}, id={handle.id})"
    with pytest.raises(dataclasses.FrozenInstanceError):
        handle.pixels = None  # type: ignore[misc]
    with pytest.raises(AttributeError):
        handle.original_size = (1, 1)  # type: ignore[misc]
    assert handle.pixels is not None and not handle.pixels.flags.writeable

    # encode: a handle, the image set stays
    other = predictor.encode(images[1])
    assert other.id != handle.id and other.original_size == SIZES[1]
    assert predictor.image_size == SIZES[0]
    assert predictor.predict(points=[[5, 5]]).masks.shape[1:] == SIZES[0]
    assert predictor.predict(points=[[5, 5]], image=other).masks.shape[1:] == SIZES[1]
    # encode from an embedding (e.g. fastseg.load_embedding): no pixels, the image set stays
    restored = predictor.encode(other.embedding)
    assert restored.pixels is None and restored.original_size == SIZES[1]
    assert predictor.image_size == SIZES[0]
    np.testing.assert_array_equal(
        predictor.predict(points=[[5, 5]], image=restored).masks, predictor.predict(points=[[5, 5]], image=other).masks
    )

    # set_image_embedding returns a handle and sets the image
    again = predictor.set_image_embedding(other.embedding)
    assert isinstance(again, ImageHandle) and predictor.image_size == SIZES[1]
    np.testing.assert_array_equal(
        predictor.predict(points=[[5, 5]]).masks, predictor.predict(points=[[5, 5]], image=other).masks
    )

    # a handle works on another Predictor of the same model (e.g. a pool of Predictors)
    second = fastseg.Predictor(folders[family], backend="onnxruntime", cache_dir=False)
    np.testing.assert_array_equal(
        second.predict(points=[[5, 5]], image=handle).masks, predictor.predict(points=[[5, 5]], image=handle).masks
    )
    assert second.image_size is None

    # the user's array is copied: changing it later does not change the handle's pixels
    array = images[3].copy()
    mine = predictor.encode(array)
    array[:] = 0
    assert mine.pixels is not None and mine.pixels.any()


def test_handle_refusals(folders, images) -> None:
    sam = fastseg.Predictor(folders["sam"], backend="onnxruntime", cache_dir=False)
    fastsam = fastseg.Predictor(folders["fastsam"], backend="onnxruntime", cache_dir=False)
    with pytest.raises(TypeError, match=r"image must be an ImageHandle .*got ndarray; to segment an array"):
        sam.predict(points=[[5, 5]], image=images[0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="this image handle was made by 'fastsam_s'; this predictor runs 'mobile_sam'"):
        sam.predict(points=[[5, 5]], image=fastsam.encode(images[0]))
    with pytest.raises(ValueError, match="this image handle was made by 'mobile_sam'; this predictor runs 'fastsam_s'"):
        fastsam.everything(image=sam.encode(images[0]))
    handle = sam.encode(images[0])
    with pytest.raises(ValueError, match=r"points must lie inside the 451x300 image"):
        sam.predict(points=[[460, 5]], image=handle)  # validated against the handle's image
    with pytest.raises(ValueError, match="expected a fastseg.sam.ImageEmbedding, got FastSamImageEmbedding"):
        sam.encode(fastsam.encode(images[0]).embedding)
    with pytest.raises(ValueError, match="cached_images must be a positive int, got 0"):
        fastseg.Predictor(folders["sam"], backend="onnxruntime", cache_dir=False, cached_images=0)


def test_sam_everything_with_crops_needs_a_handle_with_pixels(folders, images) -> None:
    predictor = fastseg.Predictor(folders["sam"], backend="onnxruntime", cache_dir=False)
    handle = predictor.encode(images[0])
    with_crops = predictor.everything(image=handle, points_per_side=2, crop_n_layers=1)
    assert with_crops.masks.shape[1:] == SIZES[0]
    assert predictor.image_size is None  # everything(image=handle) sets no image
    # The handle's state survives the crops' encodings.
    np.testing.assert_array_equal(
        predictor.predict(points=[[5, 5]], image=handle).masks,
        fastseg.Predictor(folders["sam"], backend="onnxruntime", cache_dir=False)
        .predict(points=[[5, 5]], image=handle)
        .masks,
    )
    from_embedding = predictor.encode(handle.embedding)
    with pytest.raises(ValueError, match="crop_n_layers=1 encodes crops of the image, so it needs the image's pixels"):
        predictor.everything(image=from_embedding, points_per_side=2, crop_n_layers=1)


def test_states_of_images_nobody_can_name_are_reused(folders, images) -> None:
    """A caller that never keeps a handle (the one-image-at-a-time mode) keeps one image's state, as
    before: the states of images nobody can name any more are reused, not accumulated."""
    predictor = fastseg.Predictor(folders["fastsam"], backend="onnxruntime", cache_dir=False, cached_images=4)
    for image in images:
        predictor.set_image(image)
        predictor.predict(points=[[5, 5]])
    assert len(predictor._ready) == 1
    kept = [predictor.encode(image) for image in images]
    assert len(predictor._ready) == 4
    del kept
    predictor.set_image(images[0])
    assert len(predictor._ready) == 1


# --------------------------------------------------------------------------------------------------
# Defect 14 and multimask


@pytest.mark.parametrize("family", ["sam", "fastsam"])
def test_a_failed_set_image_leaves_no_image_set(folders, images, tmp_path, family) -> None:
    predictor = fastseg.Predictor(folders[family], backend="onnxruntime", cache_dir=False)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    failures = [
        (lambda: predictor.set_image(broken), ValueError),
        (lambda: predictor.set_image(tmp_path / "missing.png"), FileNotFoundError),
        (lambda: predictor.set_image(images[0].astype(np.float32)), ValueError),
        (lambda: predictor.everything(broken), ValueError),
    ]
    for fail, error in failures:
        handle = predictor.set_image(images[1])
        with pytest.raises(error):
            fail()
        assert predictor.image_size is None
        with pytest.raises(RuntimeError, match=r"no image is set: call set_image\(image\)"):
            predictor.predict(points=[[5, 5]])
        with pytest.raises(RuntimeError, match="no image is set"):
            predictor.get_image_embedding()
        # the handle still names its image
        assert predictor.predict(points=[[5, 5]], image=handle).masks.shape[1:] == SIZES[1]
    # encode never changes the image set, failing or not
    predictor.set_image(images[1])
    with pytest.raises(ValueError):
        predictor.encode(broken)
    assert predictor.image_size == SIZES[1]


@pytest.mark.parametrize("family", ["sam", "fastsam"])
def test_multimask_must_be_a_bool(folders, images, family) -> None:
    predictor = fastseg.Predictor(folders[family], backend="onnxruntime", cache_dir=False)
    predictor.set_image(images[0])
    for bad in ("no", 0, 1, None, np.array([True])):
        with pytest.raises(TypeError, match=r"multimask must be True or False, got "):
            predictor.predict(points=[[5, 5]], multimask=bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="multimask must be True or False, got 'no'"):
        predictor.predict(points=[[5, 5]], multimask="no")  # type: ignore[arg-type]
    single = predictor.predict(points=[[5, 5]], multimask=np.bool_(False))
    assert len(single) == len(predictor.predict(points=[[5, 5]], multimask=False))
    with pytest.raises(TypeError, match="multimask must be True or False, got 'no'"):
        fastseg.segment(images[0], model=folders[family], points=[[5, 5]], multimask="no", backend="onnxruntime")
