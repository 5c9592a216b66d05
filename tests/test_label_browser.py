"""The labeling page in a real browser: Debian's Chromium, driven headless by Playwright (the Python package
only, no browser download), against a real ``fastseg label`` server in a subprocess, on the tiny models.

The page exposes ``window.fastsegView.imageToClient(x, y)`` (the client coordinates of the centre of image
pixel ``(x, y)``), so a test clicks exact pixels, and ``window.fastsegTimings`` (one entry per drawn
prediction and per image opened), so a test waits for the overlay instead of sleeping.

Skipped without Chromium or Playwright, unless ``FASTSEG_REQUIRE_BROWSER=1`` (then they fail).

Also a screenshot helper for the README: ``python tests/test_label_browser.py --folder photos/ --model
models/mobile_sam --labels cat,dog,person --out docs/label.png`` (see :func:`main`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

CHROMIUM = Path(os.environ.get("FASTSEG_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless=new",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1280, "height": 800}
LABELS = ["cat", "dog", "person"]
#: Seconds to wait for anything the page or the server does on the tiny models.
WAIT = 20.0

#: Set to 1 (CI does) to fail, rather than skip, when the browser or a package is missing.
REQUIRE = os.environ.get("FASTSEG_REQUIRE_BROWSER") == "1"


def _need(module: str, why: str) -> Any:
    if REQUIRE:
        import importlib

        return importlib.import_module(module)
    return pytest.importorskip(module, reason=why)


_need("fastapi", "the label server needs pip install 'fastseg[label]'")
_need("uvicorn", "the label server needs pip install 'fastseg[label]'")
sync_api = _need("playwright.sync_api", "the browser tests need pip install playwright (the package only)")
if not CHROMIUM.exists():
    _missing = f"no Chromium at {CHROMIUM} (apt-get install chromium, or set FASTSEG_CHROMIUM)"
    if REQUIRE:
        raise RuntimeError(_missing)
    pytest.skip(_missing, allow_module_level=True)


# ------------------------------------------------------------------------------------------------
# Server and browser


class LabelServer:
    """``fastseg label`` (``run_label_server``) in a subprocess on 127.0.0.1: start, kill -9, start again.

    The first start takes a free port (port 0) and reads it from the URL the server prints; later
    starts reuse it, so an open page reloads from the same address.
    """

    _CODE = (
        "import json, sys\n"
        "from fastseg.label.server import run_label_server\n"
        "run_label_server(**json.loads(sys.argv[1]))\n"
    )
    _SERVING = re.compile(rb"serving http://127\.0\.0\.1:(\d+)/")

    def __init__(
        self,
        folder: Path,
        model: Path,
        labels: Sequence[str] = LABELS,
        port: int = 0,
        log: Path | None = None,
        **options: Any,
    ) -> None:
        self.folder = Path(folder)
        self.model = Path(model)
        self.labels = list(labels)
        self.port = port
        if log is None:
            handle, name = tempfile.mkstemp(prefix="label-server-", suffix=".log", dir=self.folder.parent)
            os.close(handle)
            log = Path(name)
        self.log = log
        self.options = {"precision": "f32", "backend": "openvino", **options}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> LabelServer:
        args = {
            "folder": str(self.folder),
            "model": str(self.model),
            "labels": self.labels,
            "host": "127.0.0.1",
            "port": self.port,
            "open_browser": False,
            **self.options,
        }
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", self._CODE, json.dumps(args)], stdout=log, stderr=subprocess.STDOUT, env=env
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the label server exited with {self.proc.returncode}:\n{self.log_text()}")
            with open(self.log, "rb") as log:
                log.seek(offset)
                found = self._SERVING.search(log.read())
            if found:  # printed once the server listens
                self.port = int(found.group(1))
                return self
            time.sleep(0.05)
        self.kill()
        raise TimeoutError(f"the label server did not start within {timeout} s:\n{self.log_text()}")

    def kill(self) -> None:
        """SIGKILL, as a crash would: nothing is flushed or closed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as response:
            return json.loads(response.read())


def launch_chromium(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors  # JavaScript exceptions the page did not catch
    yield page
    context.close()


@pytest.fixture
def photo_folder(tmp_path: Path, photos: dict[str, np.ndarray]) -> Path:
    """Three real photos, as PNG and JPEG, in the order the server lists them."""
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(photos["chelsea"]).save(folder / "a_chelsea.png")
    Image.fromarray(photos["astronaut"]).save(folder / "b_astronaut.jpg", quality=90)
    Image.fromarray(photos["coffee"]).save(folder / "c_coffee.png")
    return folder


# ------------------------------------------------------------------------------------------------
# Page helpers


def state(page: Any) -> dict[str, Any]:
    return page.evaluate("window.fastsegApp.state")


def timings(page: Any, kind: str) -> int:
    return page.evaluate("k => window.fastsegTimings.filter(t => t.kind === k).length", kind)


def wait_timings(page: Any, kind: str, count: int) -> None:
    page.wait_for_function(
        "([k, n]) => window.fastsegTimings.filter(t => t.kind === k).length >= n",
        arg=[kind, count],
        timeout=WAIT * 1000,
    )


def wait_idle(page: Any) -> None:
    """Until no request of the page is on its way."""
    page.wait_for_function("() => window.fastsegApp && window.fastsegApp.state.pending === 0", timeout=WAIT * 1000)


def open_page(page: Any, server: LabelServer) -> None:
    """Load (or reload) the page and wait until its first image is drawn."""
    page.goto(server.url + "/")
    page.wait_for_function("() => document.body.dataset.ready === '1'", timeout=WAIT * 1000)
    if state(page)["images"]:
        wait_timings(page, "open", 1)
    wait_idle(page)


def client_xy(page: Any, x: int, y: int) -> tuple[float, float]:
    p = page.evaluate("([x, y]) => window.fastsegView.imageToClient(x, y)", [x, y])
    return p["x"], p["y"]


def click_pixel(page: Any, x: int, y: int, *, negative: bool = False, right: bool = False) -> None:
    """Click image pixel (x, y) (shift+click if negative, or the right button) and wait for its mask."""
    before = timings(page, "click")
    cx, cy = client_xy(page, x, y)
    if negative:
        page.keyboard.down("Shift")
        page.mouse.click(cx, cy)
        page.keyboard.up("Shift")
    else:
        page.mouse.click(cx, cy, button="right" if right else "left")
    wait_timings(page, "click", before + 1)


def drag_box(page: Any, box: Sequence[int]) -> None:
    before = timings(page, "click")
    x1, y1 = client_xy(page, box[0], box[1])
    x2, y2 = client_xy(page, box[2], box[3])
    page.mouse.move(x1, y1)
    page.mouse.down()
    page.mouse.move((x1 + x2) / 2, (y1 + y2) / 2, steps=3)
    page.mouse.move(x2, y2, steps=3)
    page.mouse.up()
    wait_timings(page, "click", before + 1)


def accept(page: Any) -> None:
    n = len(state(page)["instances"])
    page.keyboard.press("Enter")
    page.wait_for_function("n => window.fastsegApp.state.instances.length === n + 1", arg=n, timeout=WAIT * 1000)


def canvas_rgb(page: Any, x: int, y: int) -> list[int]:
    """The canvas colour drawn at the centre of image pixel (x, y)."""
    return page.evaluate(
        """([x, y]) => {
            const c = document.getElementById('canvas');
            const p = window.fastsegView.imageToClient(x, y);
            const r = c.getBoundingClientRect();
            const k = window.devicePixelRatio || 1;
            return Array.from(c.getContext('2d').getImageData(
                Math.floor((p.x - r.left) * k), Math.floor((p.y - r.top) * k), 1, 1).data.slice(0, 3));
        }""",
        [x, y],
    )


def row_text(page: Any, index: int) -> str:
    return page.locator("#image-list li").nth(index).inner_text()


# ------------------------------------------------------------------------------------------------
# Tests


def test_label_a_folder_from_click_to_export(page: Any, photo_folder: Path, tiny_sam_folder: Path) -> None:
    from fastseg import Predictor
    from fastseg.rle import decode

    server = LabelServer(photo_folder, tiny_sam_folder).start()
    try:
        open_page(page, server)
        s = state(page)
        assert [im["file"] for im in s["images"]] == ["a_chelsea.png", "b_astronaut.jpg", "c_coffee.png"]
        assert s["index"] == 0 and (s["width"], s["height"]) == (451, 300)
        assert page.locator("#image-list li").count() == 3
        assert "not started" in row_text(page, 0)
        assert page.locator("#counter").inner_text().replace(" ", "") == "0/3done"
        assert page.locator("#model-weights").is_visible()  # the tiny models' weights are not real
        assert page.locator("#help").is_visible()

        # one positive click: three candidates, the best shown, drawn over the image
        before = canvas_rgb(page, 225, 150)
        click_pixel(page, 225, 150)
        s = state(page)
        assert s["prompt"] == {"points": [[225, 150]], "labels": [1], "box": None}
        assert len(s["candidates"]) == 3 and s["candidate"] == int(np.argmax(s["candidates"]))
        assert canvas_rgb(page, 225, 150) != before
        assert page.locator("#candidates .cand").count() == 3
        page.keyboard.press("Tab")
        assert state(page)["candidate"] == (s["candidate"] + 1) % 3
        assert "active" in (
            page.locator("#candidates .cand").nth((s["candidate"] + 1) % 3).get_attribute("class") or ""
        )
        page.keyboard.press("Shift+Tab")
        assert state(page)["candidate"] == s["candidate"]
        best_1 = s["candidate"]
        accept(page)
        assert state(page)["instances"][0]["label"] == "cat"
        assert state(page)["steps"] == 0
        assert "in progress" in row_text(page, 0)

        # zoomed in: clicks still land on the pixel asked for
        cx, cy = client_xy(page, 110, 85)
        page.mouse.move(cx, cy)
        page.mouse.wheel(0, -400)
        page.wait_for_function("() => window.fastsegView.scale > 2", timeout=WAIT * 1000)
        after = client_xy(page, 110, 85)
        assert abs(after[0] - cx) < 1 and abs(after[1] - cy) < 1  # zoom keeps the pixel under the cursor
        # pan: middle-drag, space+drag, drag with the hand tool; none of them adds a prompt
        for how in ("middle", "space", "hand"):
            x0, y0 = client_xy(page, 110, 85)
            if how == "space":
                page.keyboard.down(" ")
            elif how == "hand":
                page.locator("#tool-hand").click()
            page.mouse.move(x0, y0)
            page.mouse.down(button="middle" if how == "middle" else "left")
            page.mouse.move(x0 + 20, y0 + 10, steps=2)
            page.mouse.move(x0 + 40, y0 + 30, steps=2)
            page.mouse.up(button="middle" if how == "middle" else "left")
            if how == "space":
                page.keyboard.up(" ")
            elif how == "hand":
                page.keyboard.press("v")  # back to the prompt tool
            x1, y1 = client_xy(page, 110, 85)
            assert (round(x1 - x0), round(y1 - y0)) == (40, 30), how
            assert state(page)["steps"] == 0 and timings(page, "click") == 1, how

        # label 2, a positive and a negative point (shift+click), another negative one (right click), undo it
        page.keyboard.press("2")
        assert state(page)["label"] == "dog"
        click_pixel(page, 100, 80)
        click_pixel(page, 120, 90, negative=True)
        click_pixel(page, 130, 70, right=True)
        assert state(page)["prompt"]["labels"] == [1, 0, 0]
        requests = timings(page, "click")
        page.keyboard.press("Control+z")
        s = state(page)
        assert s["prompt"] == {"points": [[100, 80], [120, 90]], "labels": [1, 0], "box": None}
        assert len(s["candidates"]) == 1 and timings(page, "click") == requests  # the earlier mask, not re-asked
        accept(page)
        page.keyboard.press("f")

        # an accepted instance undone (DELETE), then a delete undone (restore)
        click_pixel(page, 300, 200)
        accept(page)
        page.keyboard.press("Control+z")
        page.wait_for_function("() => window.fastsegApp.state.instances.length === 2", timeout=WAIT * 1000)
        wait_idle(page)
        second = state(page)["instances"][1]["id"]
        page.locator("#instance-list li").nth(1).click(position={"x": 6, "y": 6})
        assert state(page)["selected"] == second
        page.keyboard.press("Delete")
        page.wait_for_function("() => window.fastsegApp.state.instances.length === 1", timeout=WAIT * 1000)
        page.keyboard.press("Control+z")
        page.wait_for_function("() => window.fastsegApp.state.instances.length === 2", timeout=WAIT * 1000)
        wait_idle(page)

        # relabel: with a number key while selected, and with the dropdown
        first = state(page)["instances"][0]["id"]
        page.locator("#instance-list li").nth(0).click(position={"x": 6, "y": 6})
        assert state(page)["selected"] == first
        page.keyboard.press("3")
        page.wait_for_function("() => window.fastsegApp.state.instances[0].label === 'person'", timeout=WAIT * 1000)
        page.keyboard.press("Escape")
        assert state(page)["selected"] is None
        page.locator("#instance-list li").nth(1).locator("select").select_option("cat")
        page.wait_for_function("() => window.fastsegApp.state.instances[1].label === 'cat'", timeout=WAIT * 1000)
        wait_idle(page)
        stored = server.get("/api/images/0/instances")
        stored = stored if isinstance(stored, list) else stored["instances"]
        assert [(i["id"], i["label"]) for i in stored] == [(first, "person"), (second, "cat")]

        # next image (n), a box there; back (p) and mark the first one done (d)
        page.keyboard.press("n")
        wait_timings(page, "open", 2)
        assert state(page)["index"] == 1 and state(page)["instances"] == []
        drag_box(page, [50, 60, 200, 220])
        assert state(page)["prompt"] == {"points": [], "labels": [], "box": [50, 60, 200, 220]}
        accept(page)
        # refine it: select, click; the box and the point go with the box's low-res logits as mask input
        box_id = state(page)["instances"][0]["id"]
        page.locator("#instance-list li").nth(0).click(position={"x": 6, "y": 6})
        with page.expect_request("**/api/predict") as request:
            click_pixel(page, 60, 70)
        sent = request.value.post_data_json
        assert (sent["mask_input"], sent["multimask"], sent["candidate"]) == ("previous", False, 0)
        s = state(page)
        assert s["refining"] == box_id and s["prompt"] == {
            "points": [[60, 70]],
            "labels": [1],
            "box": [50, 60, 200, 220],
        }
        page.keyboard.press("Enter")
        page.wait_for_function(
            "id => window.fastsegApp.state.instances.length === 1 && window.fastsegApp.state.instances[0].id !== id",
            arg=box_id,
            timeout=WAIT * 1000,
        )
        wait_idle(page)
        assert state(page)["instances"][0]["label"] == "dog"
        page.keyboard.press("p")
        wait_timings(page, "open", 3)
        assert state(page)["index"] == 0 and len(state(page)["instances"]) == 2
        page.keyboard.press("d")
        page.wait_for_function("() => window.fastsegApp.state.index === 1", timeout=WAIT * 1000)
        wait_idle(page)
        assert "done" in row_text(page, 0)
        assert page.locator("#counter").inner_text().replace(" ", "") == "1/3done"
        assert page.errors == []

        # kill -9 and start again: everything accepted is still there
        server.kill()
        server.start()
        open_page(page, server)
        s = state(page)
        assert [im["state"] for im in s["images"]] == ["done", "in_progress", "new"]
        assert [im["instances"] for im in s["images"]] == [2, 1, 0]
        assert s["index"] == 1 and len(s["instances"]) == 1  # resumes at the first image not done
        page.locator("#image-list li").nth(0).click()
        page.wait_for_function(
            "() => window.fastsegApp.state.index === 0 && window.fastsegApp.state.instances.length === 2",
            timeout=WAIT * 1000,
        )
        assert [i["label"] for i in state(page)["instances"]] == ["person", "cat"]

        # export COCO from the menu; its masks are Predictor.predict's for the same prompts, pixel for pixel
        page.locator("#btn-export").click()
        page.locator("#export-menu button[data-format=coco][data-segmentation=rle]").click()
        page.wait_for_function("() => window.fastsegLastExport !== undefined", timeout=WAIT * 1000)
        assert page.locator(".toast.ok").first.is_visible()
        coco = server.get("/api/export/coco.json")
        files = {im["id"]: im["file_name"] for im in coco["images"]}
        names = {c["id"]: c["name"] for c in coco["categories"]}
        got = {}
        for ann in coco["annotations"]:
            got.setdefault(files[ann["image_id"]], []).append(
                (names[ann["category_id"]], decode([ann["segmentation"]])[0])
            )
        assert sorted(got) == ["a_chelsea.png", "b_astronaut.jpg"]

        predictor = Predictor(tiny_sam_folder, precision="f32")
        chelsea = predictor.set_image(photo_folder / "a_chelsea.png")
        one = predictor.predict(points=[[225, 150]], labels=[1], image=chelsea)
        two = predictor.predict(points=[[100, 80], [120, 90]], labels=[1, 0], multimask=False, image=chelsea)
        astronaut = predictor.set_image(photo_folder / "b_astronaut.jpg")
        box = predictor.predict(boxes=[50, 60, 200, 220], multimask=False, image=astronaut)
        refined = predictor.predict(
            points=[[60, 70]],
            labels=[1],
            boxes=[50, 60, 200, 220],
            mask_input=box.low_res_logits,
            multimask=False,
            image=astronaut,
        )
        assert not np.array_equal(refined.masks[0], box.masks[0])
        (label_1, mask_1), (label_2, mask_2) = got["a_chelsea.png"]
        assert (label_1, label_2) == ("person", "cat")
        np.testing.assert_array_equal(mask_1, one.masks[best_1])
        np.testing.assert_array_equal(mask_2, two.masks[0])
        [(label_3, mask_3)] = got["b_astronaut.jpg"]
        assert label_3 == "dog"
        np.testing.assert_array_equal(mask_3, refined.masks[0])
        assert page.errors == []
    finally:
        server.kill()


def test_everything_proposals_and_fastsam_box(page: Any, photo_folder: Path, tiny_fastsam_folder: Path) -> None:
    server = LabelServer(photo_folder, tiny_fastsam_folder, labels=["object", "thing"]).start()
    try:
        open_page(page, server)
        assert page.locator("#model-name").inner_text().startswith("fastsam")
        page.locator("#btn-everything").click()
        page.wait_for_function(
            "() => window.fastsegApp.state.proposals > 0 || document.querySelector('.toast')", timeout=WAIT * 1000
        )
        n = state(page)["proposals"]
        assert n > 0 and page.locator("#proposals-bar").is_visible()
        # click inside the proposal drawn on top: it becomes an instance
        x, y = page.evaluate("window.fastsegApp.proposalPixels()")[0]
        page.mouse.click(*client_xy(page, x, y))
        page.wait_for_function("() => window.fastsegApp.state.instances.length === 1", timeout=WAIT * 1000)
        assert state(page)["proposals"] == n - 1
        if n > 1:
            page.locator("#btn-accept-all").click()
            page.wait_for_function("n => window.fastsegApp.state.instances.length === n", arg=n, timeout=WAIT * 1000)
            assert state(page)["proposals"] == 0 and page.locator("#proposals-bar").is_hidden()
            page.keyboard.press("Control+z")  # undoes the whole "accept all"
            page.wait_for_function("() => window.fastsegApp.state.instances.length === 1", timeout=WAIT * 1000)
            assert state(page)["proposals"] == n - 1
            page.keyboard.press("Escape")
            assert state(page)["proposals"] == 0
        wait_idle(page)
        # a box prompt on FastSAM: one candidate, accepted as the second label
        page.keyboard.press("2")
        drag_box(page, [88, 83, 176, 171])
        assert len(state(page)["candidates"]) == 1 and page.locator("#candidates").is_hidden()
        accept(page)
        assert [i["label"] for i in state(page)["instances"]][-1] == "thing"
        # YOLO export from the page
        page.locator("#btn-export").click()
        page.locator("#export-menu button[data-format=yolo]").click()
        page.wait_for_function("() => window.fastsegLastExport !== undefined", timeout=WAIT * 1000)
        exported = page.evaluate("window.fastsegLastExport")
        assert exported["instances"] == len(state(page)["instances"])
        assert page.errors == []
    finally:
        server.kill()


def test_server_errors_are_shown(page: Any, photo_folder: Path, tiny_sam_folder: Path) -> None:
    server = LabelServer(photo_folder, tiny_sam_folder).start()
    try:
        open_page(page, server)
        # a prompt the server refuses: the page shows its message and takes the point back
        page.route(
            "**/api/predict",
            lambda route: route.fulfill(
                status=400,
                content_type="application/json",
                body=json.dumps({"error": "points must be inside the image"}),
            ),
        )
        page.mouse.click(*client_xy(page, 200, 150))
        toast = page.locator(".toast.error")
        toast.wait_for(timeout=WAIT * 1000)
        assert "points must be inside the image" in toast.inner_text()
        page.wait_for_function("() => window.fastsegApp.state.steps === 0", timeout=WAIT * 1000)
        page.unroute("**/api/predict")
        # the server gone: a visible error, not a silent failure
        server.kill()
        page.keyboard.press("n")
        page.wait_for_function("() => document.querySelectorAll('.toast.error').length >= 2", timeout=WAIT * 1000)
        assert "server" in page.locator(".toast.error").last.inner_text()
        assert page.errors == []
    finally:
        server.kill()


def test_screenshot_helper(browser: Any, photo_folder: Path, tiny_sam_folder: Path, tmp_path: Path) -> None:
    from PIL import Image

    server = LabelServer(photo_folder, tiny_sam_folder).start()
    try:
        out = tmp_path / "label.png"
        shoot(browser, server.url, out, instances=[("cat", (225, 150)), ("dog", (80, 220))], live=(360, 120), done=1)
        with Image.open(out) as image:
            assert image.size == (VIEWPORT["width"], VIEWPORT["height"])
            assert np.asarray(image.convert("L")).std() > 20  # the page, not a blank frame
    finally:
        server.kill()


# ------------------------------------------------------------------------------------------------
# Screenshot for the README


def shoot(
    browser: Any,
    url: str,
    out: Path,
    instances: Sequence[tuple[str, tuple[int, int]]] = (),
    live: tuple[int, int] | None = None,
    image: int | None = None,
    everything: int = 0,
    done: int = 0,
) -> None:
    """Screenshot the page at 1280 x 800 in a working state: ``instances`` (label, pixel) clicked and accepted
    (or, with ``everything=k``, the ``k`` largest proposals accepted with the labels in turn), then a live
    mask for a click at ``live`` with its candidates shown. ``done``: the first images are marked done first."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    try:
        page.goto(url + "/")
        page.wait_for_function("() => document.body.dataset.ready === '1'", timeout=120_000)
        wait_timings(page, "open", 1)
        if done:
            page.evaluate(
                """n => Promise.all([...Array(n).keys()].map(i => fetch(`/api/images/${i}/state`, {
                    method: 'POST', headers: {'Content-Type': 'application/json'}, body: '{"state": "done"}'})))""",
                done,
            )
            page.reload()
            page.wait_for_function("() => document.body.dataset.ready === '1'", timeout=120_000)
            wait_timings(page, "open", 1)
        if image is not None and state(page)["index"] != image:
            page.evaluate("i => window.fastsegApp.open(i)", image)
            wait_timings(page, "open", 2)
        s = state(page)
        labels = s["labels"]
        for x, y in [xy for _, xy in instances] + ([live] if live else []):
            if not (0 <= x < s["width"] and 0 <= y < s["height"]):
                raise ValueError(f"pixel {x},{y} is outside {s['file']} ({s['width']} x {s['height']})")
        for label, (x, y) in instances:
            page.keyboard.press(str(labels.index(label) + 1))
            click_pixel(page, x, y)
            accept(page)
        if everything:
            page.locator("#btn-everything").click()
            page.wait_for_function("() => window.fastsegApp.state.proposals > 0", timeout=600_000)
            for k, (x, y) in enumerate(page.evaluate("window.fastsegApp.proposalPixels()")[::-1][:everything]):
                page.keyboard.press(str(k % len(labels) + 1))
                n = len(state(page)["instances"])
                page.mouse.click(*client_xy(page, x, y))
                page.wait_for_function("n => window.fastsegApp.state.instances.length > n", arg=n, timeout=60_000)
            page.keyboard.press("Escape")
        if live is not None:
            page.keyboard.press("1")
            click_pixel(page, *live)
        wait_idle(page)
        page.mouse.move(5, VIEWPORT["height"] - 5)  # no hover effects
        page.wait_for_timeout(300)
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out))
    finally:
        context.close()


def _pixel(text: str) -> tuple[int, int]:
    x, y = text.split(",")
    return int(x), int(y)


def main(argv: Sequence[str] | None = None) -> int:
    """Screenshot the labeling page on a folder and model (a real export for the README)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--folder", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--labels", default=",".join(LABELS))
    parser.add_argument("--out", type=Path, default=Path("docs/label.png"))
    parser.add_argument(
        "--instance",
        action="append",
        default=[],
        metavar="LABEL:X,Y",
        help="click pixel X,Y and accept it as LABEL (repeatable)",
    )
    parser.add_argument(
        "--everything",
        type=int,
        default=0,
        metavar="K",
        help="accept the K largest everything proposals, labels in turn",
    )
    parser.add_argument("--live", type=_pixel, default=None, metavar="X,Y", help="a last click left as a live mask")
    parser.add_argument("--image", type=int, default=None, help="the image index to show (default: the first not done)")
    parser.add_argument("--done", type=int, default=0, metavar="N", help="mark the first N images done first")
    parser.add_argument("--precision", default="f32")
    parser.add_argument("--db", type=Path, default=None, help="default: a fresh database in a temporary folder")
    parser.add_argument("--store", type=Path, default=None, help="embedding store (default: a temporary folder)")
    args = parser.parse_args(argv)
    instances = []
    for item in args.instance:
        label, _, xy = item.partition(":")
        instances.append((label, _pixel(xy)))
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or Path(tmp) / "label.db"
        server = LabelServer(
            args.folder,
            args.model,
            labels=args.labels.split(","),
            log=Path(tmp) / "server.log",
            precision=args.precision,
            db=str(db),
            store=str(args.store or Path(tmp) / "store"),
        )
        server.start(timeout=600)
        try:
            with sync_api.sync_playwright() as playwright:
                chromium = launch_chromium(playwright)
                try:
                    shoot(chromium, server.url, args.out, instances, args.live, args.image, args.everything, args.done)
                finally:
                    chromium.close()
        finally:
            server.kill()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
