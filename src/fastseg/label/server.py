"""The labeling server: a FastAPI app on uvicorn serving one folder, one model and one page.

:func:`create_app` builds the app (the model, the annotations database, the routes);
:func:`run_label_server` serves it. The HTTP API (JSON unless said; errors are ``{"error": message}``
with a 4xx status, never a stack trace):

- ``GET /`` the page; ``GET /static/{name}`` its files (package data).
- ``GET /api/state``: labels, model, images (index, file, width, height, state, instances), counts.
- ``GET /api/image/{index}``, ``GET /api/file?path=REL``: an image as the browser shows it, turned
  upright as :func:`fastseg.image.load_image` turns it (JPEG/PNG without an EXIF rotation as stored,
  anything else as PNG), so page pixels are model pixels.
- ``POST /api/images/{index}/open``: encode the image (store, memory or encoder) and start encoding
  the next ones in the background.
- ``POST /api/predict``: masks for prompts (see below); ``GET
  /api/predictions/{prompt_id}/candidates/{i}?scale=s``: one candidate of a kept prediction as the
  page draws it; ``POST /api/images/{index}/everything``: proposals.
- ``POST|GET /api/images/{index}/instances``, ``PATCH|DELETE /api/instances/{id}``,
  ``POST /api/instances/{id}/restore``, ``POST /api/images/{index}/state``.
- ``POST /api/export``; ``GET /api/export/coco.json``.

Masks go both ways as ``{"size": [H, W], "counts": [...]}`` with row-major run lengths
(:func:`fastseg.label.session.mask_to_runs`), at the image's resolution: instances, proposals, and
the candidates of ``/api/predict`` by default.

What the page draws for a click is sent compactly instead: a predict request with ``"view":
{"scale": s, "candidates": "best" | "all"}`` (``s``: screen pixels per image pixel, as the page shows
the image) gets every candidate's score, box and area, and the mask of the best one only (or of
all) as ``"view": {"size": [h, w], "image": [H, W], "runs": base64}``: the mask on a grid of about
one cell per screen pixel (``h = ceil(H * min(s, 1))``, a cell set if any pixel under it is;
:func:`fastseg.label.session.mask_view`), its run lengths as LEB128 varints in base64. The page
fetches the other candidates after the mask is drawn (for Tab), and asks again at the finer grid
when the view is zoomed in past it. Only the drawing is approximate: the server keeps the
Predictor's full-resolution masks of the latest predictions, and an accepted instance (and so every
export) is exactly ``Predictor.predict``'s mask.

Safety: requests must name this server in ``Host`` (127.0.0.1, localhost or [::1] when bound to a
loopback address; the bound name otherwise), which defeats DNS rebinding; state-changing requests
from another site (``Origin``, ``Sec-Fetch-Site``) and bodies that are not JSON are refused, which
defeats cross-site request forgery; bodies are at most :data:`MAX_BODY` bytes; only image files
inside the folder are served (no ``..``, absolute or hidden paths, no symbolic link leading out).
"""

from __future__ import annotations

import io
import ipaddress
import json
import logging
import re
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np

from fastseg.label.db import (
    STATES,
    ExportSummary,
    Instance,
    LabelDB,
    default_export_path,
    export_annotations,
    resolve_labels,
)
from fastseg.label.session import (
    LabelSession,
    NotFound,
    mask_box,
    mask_to_runs,
    mask_view,
    runs_to_mask,
    view_size,
)

try:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, Response
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect
except ImportError as exc:  # optional dependency
    raise ImportError(
        f"`fastseg label` needs FastAPI and uvicorn ({exc.name} is missing): pip install 'fastseg[label]'"
    ) from exc

if TYPE_CHECKING:
    from fastseg.backends import Backend, Precision

__all__ = ["MAX_BODY", "STATIC_DIR", "create_app", "run_label_server"]

#: The largest request body taken, in bytes (a larger one gets 413).
MAX_BODY = 1 << 20
#: The page's files (package data).
STATIC_DIR = Path(__file__).resolve().parent / "static"
#: Host names that mean this machine (a server bound to a loopback address answers to them).
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")

_STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
    ".woff2": "font/woff2",
    ".txt": "text/plain; charset=utf-8",
}
_STATIC_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
#: Headers added to every response: nothing is loaded from elsewhere, the page is not framed.
SECURITY_HEADERS = (
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
        b"connect-src 'self'; worker-src 'self' blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
        b"form-action 'self'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
)

log = logging.getLogger("fastseg.label")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _require_uvicorn() -> None:
    try:
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise ImportError("`fastseg label` needs uvicorn to serve: pip install 'fastseg[label]'") from exc


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --------------------------------------------------------------------------------------------------
# ASGI guards


async def _answer(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": [*headers, *SECURITY_HEADERS]})
    await send({"type": "http.response.body", "body": body})


def _split_host(value: str) -> tuple[str, int | None] | None:
    """``host[:port]`` -> (lower-case host, port or None); None if malformed. IPv6 stays bracketed."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[: end + 1], value[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else None
    else:
        name, colon, after = value.partition(":")
        port_text = after if colon else None
    if port_text == "":
        port_text = None  # "host:" is "host" (RFC 3986: the port may be empty)
    if not name:
        return None
    if port_text is None:
        return name, None
    if not port_text.isdigit() or len(port_text) > 5:
        return None
    return name, int(port_text)


class Guard:
    """ASGI middleware in front of the app: the Host check, the cross-site check, the body limit and
    the security headers.

    Args:
        app: the app.
        hosts: host names this server answers to (lower case; IPv6 in brackets).
        port: the port it listens on; ``Host`` may name it or no port. None takes any port.
        max_body: the largest request body, in bytes.
    """

    def __init__(self, app: ASGIApp, hosts: Sequence[str], port: int | None, max_body: int = MAX_BODY) -> None:
        self.app = app
        self.hosts = frozenset(h.lower() for h in hosts)
        self.port = port
        self.max_body = max_body

    def _ours(self, value: str) -> bool:
        parsed = _split_host(value)
        if parsed is None:
            return False
        name, port = parsed
        return name in self.hosts and (port is None or self.port is None or port == self.port)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":  # the page uses none
            await send({"type": "websocket.close", "code": 1008})
            return
        raw = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope.get("headers", [])]
        headers = dict(raw)
        host = headers.get("host", "")
        if sum(1 for k, _ in raw if k == "host") > 1:
            await _answer(send, 400, "a request may carry one Host header, this one has several")
            return
        if not self._ours(host):
            shown = ", ".join(sorted(self.hosts))
            await _answer(
                send,
                400,
                f"Host header {host[:100]!r} does not name this server (it answers to {shown}); requests "
                "through another name are refused (DNS rebinding)",
            )
            return
        method = scope.get("method", "GET")
        unsafe = method not in ("GET", "HEAD", "OPTIONS")
        site = headers.get("sec-fetch-site")
        origin = headers.get("origin")
        if (unsafe or scope.get("path", "").startswith("/api/")) and site in ("cross-site", "same-site"):
            await _answer(send, 403, f"requests from another site are refused (Sec-Fetch-Site: {site})")
            return
        if unsafe and origin is not None:
            where = urlsplit(origin)
            if origin == "null" or where.scheme not in ("http", "https") or not self._ours(where.netloc):
                await _answer(send, 403, f"requests from another origin are refused (Origin: {origin[:100]!r})")
                return
        length_text = headers.get("content-length")
        length: int | None = None
        if length_text is not None:
            if not length_text.strip().isdigit():
                await _answer(send, 400, f"Content-Length must be a number of bytes, got {length_text[:40]!r}")
                return
            length = int(length_text)
            if length > self.max_body:
                await _answer(send, 413, f"request body of {length} bytes; the server takes at most {self.max_body}")
                return
        has_body = (length is not None and length > 0) or "chunked" in headers.get("transfer-encoding", "").lower()
        if unsafe and has_body:
            kind = headers.get("content-type", "").split(";")[0].strip().lower()
            if kind != "application/json":
                await _answer(
                    send, 415, f"request bodies must be JSON (Content-Type: application/json), got {kind or 'none'!r}"
                )
                return

        received = 0
        limit = self.max_body

        async def bounded_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise ApiError(413, f"request body of more than {limit} bytes; the server takes at most {limit}")
            return message

        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in names]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        try:
            await self.app(scope, bounded_receive, send_with_headers)
        except ApiError as exc:  # the body ran over the limit where no handler caught it
            if not started:
                await _answer(send, exc.status, exc.message)


def allowed_hosts(host: str) -> list[str]:
    """The ``Host`` names a server bound to ``host`` answers to: 127.0.0.1, localhost and [::1] for a
    loopback address; the address itself otherwise, and, for a wildcard address (``0.0.0.0``,
    ``::``), the machine's name and addresses too."""
    bare = host.strip("[]").lower()
    names = {f"[{bare}]" if ":" in bare else bare}
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        address = None
    if bare == "localhost" or (address is not None and address.is_loopback):
        names.update(LOOPBACK_NAMES)
    if address is not None and address.is_unspecified:
        names.update(LOOPBACK_NAMES)
        for name in {socket.gethostname(), socket.getfqdn()}:
            names.add(name.lower())
            try:
                for info in socket.getaddrinfo(name, None):
                    ip = str(info[4][0])
                    names.add(f"[{ip}]" if ":" in ip else ip)
            except OSError:
                pass
    return sorted(names)


# --------------------------------------------------------------------------------------------------
# The service: what the routes do, without HTTP


class LabelService:
    """The labeling server's work on one folder: images, predictions, instances, exports.

    Args:
        session: the model side (:class:`~fastseg.label.session.LabelSession`).
        db: the annotations.
        labels: the label list (None: the database's saved list).
    """

    def __init__(self, session: LabelSession, db: LabelDB, labels: Sequence[str] | None) -> None:
        self.session = session
        self.db = db
        self.labels = resolve_labels(db, labels)
        self._export_lock = threading.Lock()

    def all_labels(self) -> list[str]:
        """The labels, then labels of stored instances that are no longer among them."""
        return self.labels + [label for label in self.db.used_labels() if label not in self.labels]

    def check_label(self, label: object) -> str:
        if not isinstance(label, str):
            raise ValueError(f"label must be a string, one of {self.labels}, got {label!r:.100}")
        if label not in self.all_labels():
            raise ValueError(f"unknown label {label!r:.100}; the labels are {self.labels}")
        return label

    # state and images ---------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        s = self.session
        rows = self.db.images()
        counts = self.db.instance_counts()
        images = []
        tally = dict.fromkeys(STATES, 0)
        for index, file in enumerate(s.files):
            state, w, h = rows.get(file, ("new", None, None))
            if w is None or h is None:
                size = s.size(index)
                h, w = (None, None) if size is None else size
            tally[state] += 1
            item: dict[str, Any] = {
                "index": index,
                "file": file,
                "width": w,
                "height": h,
                "state": state,
                "instances": counts.get(file, 0),
            }
            if index in s.errors:
                item["error"] = s.errors[index]
            images.append(item)
        return {
            "folder": s.folder.name,
            "labels": self.all_labels(),
            "model": s.model_info(),
            "images": images,
            "counts": {"images": len(s.files), **tally, "instances": sum(counts.get(f, 0) for f in s.files)},
            "encoded": s.encoded(),
            "last": s.index_of(self.db.last_file()),
        }

    def open(self, index: int) -> dict[str, Any]:
        entry, seconds = self.session.open(index)
        h, w = entry.size
        file = self.session.files[index]
        if self.db.size(file) != (h, w):
            self.db.note_size(file, (h, w))
        return {
            "index": index,
            "file": self.session.files[index],
            "width": w,
            "height": h,
            "encoded_ms": round(seconds * 1000, 2),
        }

    def set_state(self, index: int, state: object) -> dict[str, Any]:
        index = self.session.check_index(index)
        if state not in ("done", "in_progress", "new"):
            raise ValueError(f"state must be 'done', 'in_progress' or 'new', got {state!r:.100}")
        size = self.session.size(index)
        self.db.set_state(self.session.files[index], str(state), size)
        return {"index": index, "file": self.session.files[index], "state": state}

    # prompts ------------------------------------------------------------------------------------

    def predict(self, body: Mapping[str, Any]) -> dict[str, Any]:
        start = time.perf_counter()
        _known_keys(
            body, {"index", "points", "labels", "box", "mask_input", "multimask", "candidate", "previous", "view"}
        )
        index = self.session.check_index(body.get("index"))
        points = _points(body.get("points"))
        labels = body.get("labels")
        if points is None:
            if labels not in (None, []):
                raise ValueError("labels were given without points")
            labels = None
        else:
            if labels is None:
                labels = [1] * len(points)
            if not isinstance(labels, list) or not all(type(v) is int and v in (0, 1) for v in labels):
                raise ValueError(f"labels must be a list of 1 (positive) or 0 (negative), got {labels!r:.200}")
            if len(labels) != len(points):
                raise ValueError(f"got {len(points)} points but {len(labels)} labels; they must match")
            labels = [int(v) for v in labels]
        box = _box(body.get("box"))
        if points is None and box is None:
            raise ValueError("give at least one point or a box: points is empty and box is null")
        mask_input = body.get("mask_input")
        if mask_input not in (None, "previous"):
            raise ValueError(f'mask_input must be "previous" or null, got {mask_input!r:.100}')
        multimask = body.get("multimask", True)
        if not isinstance(multimask, bool):
            raise ValueError(f"multimask must be true or false, got {multimask!r:.100}")
        candidate = body.get("candidate")
        if candidate is not None and (isinstance(candidate, bool) or not isinstance(candidate, int)):
            raise ValueError(f"candidate must be an integer (the chosen candidate's index), got {candidate!r:.100}")
        previous = body.get("previous")
        if previous is not None and not isinstance(previous, str):
            raise ValueError(f"previous must be a prompt_id (string), got {previous!r:.100}")
        view = _view_request(body.get("view"))
        prediction = self.session.predict(
            index,
            points,
            labels,
            box,
            multimask,
            previous=mask_input == "previous",
            previous_id=previous,
            candidate=candidate,
        )
        candidates = []
        for i in range(len(prediction.masks)):
            mask = prediction.masks[i]
            candidate_json: dict[str, Any] = {
                "score": round(float(prediction.scores[i]), 6),
                "box": prediction.boxes[i],
                "area": int(prediction.areas[i]),
            }
            if view is None:
                candidate_json["rle"] = {"size": list(mask.shape), "counts": mask_to_runs(mask)}
            elif view[1] == "all" or i == prediction.best:
                candidate_json["view"] = mask_view(mask, view[0], prediction.boxes[i])
            else:
                candidate_json["view"] = None
            candidates.append(candidate_json)
        return {
            "prompt_id": prediction.id,
            "candidates": candidates,
            "best": prediction.best if prediction.best >= 0 else None,
            "mask_input": prediction.mask_input,
            "predict_ms": round(prediction.seconds * 1000, 3),
            "ms": round((time.perf_counter() - start) * 1000, 3),
        }

    def candidate_view(self, prompt_id: str, candidate: int, scale: float) -> dict[str, Any]:
        """One candidate of a kept prediction as the page draws it (:func:`~fastseg.label.session.mask_view`)."""
        prediction = self.session.prediction(prompt_id, None)
        n = len(prediction.masks)
        if not 0 <= candidate < n:
            shown = f" (0..{n - 1})" if n else ""
            raise ValueError(f"candidate must be one of the prediction's {n} candidates{shown}, got {candidate}")
        return {
            "prompt_id": prompt_id,
            "candidate": candidate,
            "view": mask_view(prediction.masks[candidate], scale, prediction.boxes[candidate]),
        }

    def everything(self, index: int) -> dict[str, Any]:
        from fastseg.rle import decode

        start = time.perf_counter()
        records = self.session.everything(index)
        proposals = []
        for record in records:
            mask = decode([record["segmentation"]])[0]
            score = record.get("predicted_iou", record.get("score"))
            proposals.append(
                {
                    "rle": {"size": list(mask.shape), "counts": mask_to_runs(mask)},
                    "box": mask_box(mask),
                    "score": None if score is None else round(float(score), 6),
                    "area": int(record["area"]),
                }
            )
        return {"index": index, "proposals": proposals, "ms": round((time.perf_counter() - start) * 1000, 3)}

    # instances ----------------------------------------------------------------------------------

    def accept(self, index: int, body: Mapping[str, Any]) -> dict[str, Any]:
        from fastseg.rle import coco_encode_mask

        _known_keys(body, {"label", "prompt_id", "candidate", "rle", "score"})
        index = self.session.check_index(index)
        label = self.check_label(body.get("label"))
        prompt_id, rle = body.get("prompt_id"), body.get("rle")
        if (prompt_id is None) == (rle is None):
            raise ValueError("give either prompt_id and candidate (a prediction) or rle (a proposal's mask), not both")
        if prompt_id is not None:
            if not isinstance(prompt_id, str):
                raise ValueError(f"prompt_id must be a string from /api/predict, got {prompt_id!r:.100}")
            prediction = self.session.prediction(prompt_id, index)
            candidate = body.get("candidate", prediction.best)
            if isinstance(candidate, bool) or not isinstance(candidate, int):
                raise ValueError(f"candidate must be an integer, got {candidate!r:.100}")
            if not 0 <= candidate < len(prediction.masks):
                n = len(prediction.masks)
                raise ValueError(
                    f"candidate must be one of the prediction's {n} candidates"
                    f"{f' (0..{n - 1})' if n else ''}, got {candidate}"
                )
            mask = prediction.masks[candidate]
            score: float | None = float(prediction.scores[candidate])
            prompts = {**prediction.prompts, "source": "predict", "prompt_id": prompt_id, "candidate": candidate}
        else:
            size = self.session.size(index)
            if size is None:
                size = self.session.entry(index).size
            mask = _rle_mask(rle, size)
            given = body.get("score")
            if given is not None and (isinstance(given, bool) or not isinstance(given, (int, float))):
                raise ValueError(f"score must be a number or null, got {given!r:.100}")
            score = None if given is None else float(given)
            prompts = {"source": "rle"}
        box = mask_box(mask)
        if box is None:
            raise ValueError("the mask is empty: there is nothing to accept")
        stored = self.db.add_instance(
            self.session.files[index],
            label,
            coco_encode_mask(mask),
            box,
            score,
            int(np.count_nonzero(mask)),
            prompts,
        )
        return self.instance_json(stored, mask)

    def instances(self, index: int, deleted: bool = False) -> list[dict[str, Any]]:
        index = self.session.check_index(index)
        return [self.instance_json(i) for i in self.db.instances(self.session.files[index], deleted=deleted)]

    def instance_json(self, inst: Instance, mask: np.ndarray[Any, Any] | None = None) -> dict[str, Any]:
        from fastseg.rle import decode

        if mask is None:
            mask = decode([inst.coco_rle])[0]
        index = self.session.index_of(inst.file)
        return {
            "id": inst.id,
            "index": index,
            "file": inst.file,
            "label": inst.label,
            "rle": {"size": list(inst.size), "counts": mask_to_runs(mask)},
            "box": list(inst.box),
            "score": inst.score,
            "area": inst.area,
            "deleted": inst.deleted is not None,
            "created": inst.created,
            "updated": inst.updated,
        }

    def _instance(self, ident: int) -> Instance:
        found = self.db.instance(ident)
        if found is None:
            raise NotFound(f"no instance {ident}")
        return found

    def relabel(self, ident: int, body: Mapping[str, Any]) -> dict[str, Any]:
        _known_keys(body, {"label"})
        label = self.check_label(body.get("label"))
        self._instance(ident)
        changed = self.db.relabel(ident, label)
        assert changed is not None
        return self.instance_json(changed)

    def delete(self, ident: int) -> dict[str, Any]:
        self._instance(ident)
        changed = self.db.delete(ident)
        assert changed is not None
        return self.instance_json(changed)

    def restore(self, ident: int) -> dict[str, Any]:
        self._instance(ident)
        changed = self.db.restore(ident)
        assert changed is not None
        return self.instance_json(changed)

    # exports ------------------------------------------------------------------------------------

    def export(self, body: Mapping[str, Any]) -> ExportSummary:
        _known_keys(body, {"format", "segmentation"})
        fmt = body.get("format", "coco")
        segmentation = body.get("segmentation", "rle")
        if fmt not in ("coco", "yolo", "labelme"):
            raise ValueError(f"format must be 'coco', 'yolo' or 'labelme', got {fmt!r:.100}")
        if segmentation not in ("rle", "polygons"):
            raise ValueError(f"segmentation must be 'rle' or 'polygons', got {segmentation!r:.100}")
        s = self.session
        with self._export_lock:
            return export_annotations(
                self.db,
                s.folder,
                s.files,
                self.labels,
                str(fmt),
                default_export_path(s.folder, str(fmt), str(segmentation)),
                segmentation=str(segmentation),
                info={"model": s.model_info()["name"]},
            )


def _known_keys(body: Mapping[str, Any], keys: set[str]) -> None:
    unknown = sorted(set(body) - keys)
    if unknown:
        raise ValueError(f"unknown field(s) {unknown[:5]}; this request takes {sorted(keys)}")


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _points(value: object) -> list[list[float]] | None:
    if value is None or value == []:
        return None
    if not isinstance(value, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(_number(c) for c in p) for p in value
    ):
        raise ValueError(f"points must be a list of [x, y] number pairs, got {value!r:.200}")
    if len(value) > 1000:
        raise ValueError(f"at most 1000 points, got {len(value)}")
    return [[float(x), float(y)] for x, y in value]


def _box(value: object) -> list[float] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 4 or not all(_number(c) for c in value):
        raise ValueError(f"box must be [x1, y1, x2, y2] (four numbers) or null, got {value!r:.200}")
    return [float(c) for c in value]


def _view_request(value: object) -> tuple[float, str] | None:
    """``view`` of a predict request: ``{"scale": s, "candidates": "best" | "all"}`` -> (s, which)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f'view must be {{"scale": number, "candidates": "best" | "all"}} or null, got {value!r:.100}')
    _known_keys(value, {"scale", "candidates"})
    scale = value.get("scale", 1.0)
    view_size((1, 1), scale)  # checks it
    which = value.get("candidates", "best")
    if which not in ("best", "all"):
        raise ValueError(f'view.candidates must be "best" or "all", got {which!r:.100}')
    return float(scale), str(which)


def _rle_mask(rle: object, size: tuple[int, int]) -> np.ndarray[Any, Any]:
    if not isinstance(rle, dict) or set(rle) != {"size", "counts"}:
        raise ValueError(f'rle must be {{"size": [H, W], "counts": [run lengths]}}, got {rle!r:.200}')
    given = rle["size"]
    if not isinstance(given, list) or [int(v) if _number(v) else None for v in given] != list(size):
        raise ValueError(f"rle size must be the image's [H, W] = {list(size)}, got {given!r:.100}")
    counts = rle["counts"]
    if not isinstance(counts, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in counts):
        raise ValueError("rle counts must be a list of integers (row-major run lengths, zeros first)")
    return runs_to_mask(counts, size)


# --------------------------------------------------------------------------------------------------
# The app


def create_app(
    folder: str | Path,
    model: str | Path,
    labels: Sequence[str] | None = None,
    *,
    db: str | Path | None = None,
    store: str | Path | None = None,
    backend: Backend = "openvino",
    precision: Precision = "f32",
    num_threads: int | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    hosts: Sequence[str] | None = None,
    static_dir: str | Path | None = None,
    background: bool = True,
    everything_params: Mapping[str, Any] | None = None,
    max_body: int = MAX_BODY,
    cache_dir: str | Path | None = None,
) -> FastAPI:
    """The labeling server's FastAPI app for ``folder`` (the model is loaded, the database opened).

    Args:
        folder: the folder of images.
        model: an exported model folder.
        labels: the label list (None: the labels saved in the database by an earlier run).
        db: the annotations database (default ``FOLDER/.fastseg/labels.sqlite``).
        store: the embedding store (default ``FOLDER/.fastseg/store``).
        backend, precision, num_threads: the Predictors' (see :class:`~fastseg.label.session.LabelSession`).
        host, port: where the server listens: requests must name it in ``Host`` (see
            :func:`allowed_hosts`); ``port`` None takes a ``Host`` with any port.
        hosts: the ``Host`` names to take instead of :func:`allowed_hosts` ``(host)``.
        static_dir: the page's files (default :data:`STATIC_DIR`).
        background: encode the next images ahead on a second Predictor.
        everything_params: everything-mode parameters (``Predictor.everything``'s).
        max_body: the largest request body in bytes.
        cache_dir: OpenVINO's compiled-model cache.

    Returns:
        The app; ``app.state.service`` is its :class:`LabelService`. Its lifespan's end stops the
        background encoder and closes the database.
    """
    from contextlib import asynccontextmanager

    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"expected a folder of images, got {folder}")
    database = LabelDB(folder / ".fastseg" / "labels.sqlite" if db is None else Path(db))
    try:
        labels = resolve_labels(database, labels)  # before the model is loaded: a mistake fails fast
        session = LabelSession(
            folder,
            model,
            store=store,
            backend=backend,
            precision=precision,
            num_threads=num_threads,
            background=background,
            cache_dir=cache_dir,
            everything_params=everything_params,
        )
    except BaseException:
        database.close()
        raise
    try:
        service = LabelService(session, database, labels)
    except BaseException:
        session.close()
        database.close()
        raise
    static = STATIC_DIR if static_dir is None else Path(static_dir)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await run_in_threadpool(session.close)
            database.close()

    app = FastAPI(
        title="fastseg label",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        swagger_ui_oauth2_redirect_url=None,
        lifespan=lifespan,
    )
    app.state.service = service

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error(exc.status, exc.message)

    async def not_found(request: Request, exc: Exception) -> Response:
        return error(404, str(exc.args[0]) if exc.args else "not found")

    async def forbidden(request: Request, exc: Exception) -> Response:
        return error(403, str(exc))

    async def bad_request(request: Request, exc: Exception) -> Response:
        return error(400, str(exc) or type(exc).__name__)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            message = f"no such endpoint: {request.method} {request.url.path[:200]}"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path[:200]}"
        else:
            message = str(exc.detail)
        return error(exc.status_code, message)

    async def invalid(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        parts = []
        for e in exc.errors()[:5]:
            where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("path", "query", "body"))
            parts.append(f"{where}: {e.get('msg', 'invalid')}" if where else str(e.get("msg", "invalid")))
        return error(400, "; ".join(parts) or "invalid request")

    async def disconnected(request: Request, exc: Exception) -> Response:
        return Response(status_code=499)  # nobody is listening any more

    async def internal(request: Request, exc: Exception) -> Response:
        log.error("error in %s %s", request.method, request.url.path, exc_info=exc)
        return error(500, f"internal error ({type(exc).__name__}); the server's log has the details")

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(NotFound, not_found)
    app.add_exception_handler(FileNotFoundError, not_found)
    app.add_exception_handler(PermissionError, forbidden)
    app.add_exception_handler(ValueError, bad_request)
    app.add_exception_handler(TypeError, bad_request)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(ClientDisconnect, disconnected)
    app.add_exception_handler(Exception, internal)

    async def body_of(request: Request) -> dict[str, Any]:
        raw = await request.body()
        if not raw.strip():
            return {}
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ApiError(400, f"the request body must be a JSON object, got a JSON {type(data).__name__}")
        return data

    def static_file(name: str) -> Response:
        if not _STATIC_NAME.fullmatch(name):
            raise NotFound(f"no such page file: {name[:100]!r}")
        path = static / name
        if not path.is_file() or not _inside_dir(static, path):
            raise NotFound(f"no such page file: {name[:100]!r}")
        kind = _STATIC_TYPES.get(path.suffix.lower(), "application/octet-stream")
        return FileResponse(path, media_type=kind, headers={"cache-control": "no-cache"})

    @app.get("/")
    async def index_page() -> Response:
        return static_file("index.html")

    @app.get("/static/{name}")
    async def static_route(name: str) -> Response:
        return static_file(name)

    @app.get("/favicon.ico")
    async def favicon() -> Response:
        if (static / "favicon.ico").is_file():
            return static_file("favicon.ico")
        return Response(status_code=204)

    @app.get("/api/state")
    async def state() -> Response:
        return JSONResponse(await run_in_threadpool(service.state))

    def image_response(path: Path) -> Response:
        kind = _served_as_is(path)
        if kind is not None:
            return FileResponse(path, media_type=kind, headers={"cache-control": "private, max-age=3600"})
        return Response(_png_bytes(path), media_type="image/png", headers={"cache-control": "private, max-age=3600"})

    @app.get("/api/image/{index}")
    async def image(index: int) -> Response:
        path = session.path(session.check_index(index))
        return await run_in_threadpool(image_response, path)

    @app.get("/api/file")
    async def file(path: str) -> Response:
        return await run_in_threadpool(image_response, session.resolve(path))

    @app.post("/api/images/{index}/open")
    async def open_image(index: int) -> Response:
        session.check_index(index)
        return JSONResponse(await run_in_threadpool(service.open, index))

    @app.post("/api/predict")
    async def predict(request: Request) -> Response:
        body = await body_of(request)
        return JSONResponse(await run_in_threadpool(service.predict, body))

    @app.get("/api/predictions/{prompt_id}/candidates/{candidate}")
    async def candidate_view(prompt_id: str, candidate: int, scale: float = 1.0) -> Response:
        return JSONResponse(await run_in_threadpool(service.candidate_view, prompt_id, candidate, scale))

    @app.post("/api/images/{index}/everything")
    async def everything(index: int) -> Response:
        session.check_index(index)
        return JSONResponse(await run_in_threadpool(service.everything, index))

    @app.post("/api/images/{index}/instances")
    async def accept(index: int, request: Request) -> Response:
        body = await body_of(request)
        return JSONResponse(await run_in_threadpool(service.accept, index, body))

    @app.get("/api/images/{index}/instances")
    async def instances(index: int, deleted: bool = False) -> Response:
        return JSONResponse(await run_in_threadpool(service.instances, index, deleted))

    @app.patch("/api/instances/{ident}")
    async def relabel(ident: int, request: Request) -> Response:
        body = await body_of(request)
        return JSONResponse(await run_in_threadpool(service.relabel, ident, body))

    @app.delete("/api/instances/{ident}")
    async def delete(ident: int) -> Response:
        return JSONResponse(await run_in_threadpool(service.delete, ident))

    @app.post("/api/instances/{ident}/restore")
    async def restore(ident: int) -> Response:
        return JSONResponse(await run_in_threadpool(service.restore, ident))

    @app.post("/api/images/{index}/state")
    async def set_state(index: int, request: Request) -> Response:
        body = await body_of(request)
        _known_keys(body, {"state"})
        return JSONResponse(await run_in_threadpool(service.set_state, index, body.get("state")))

    @app.post("/api/export")
    async def export(request: Request) -> Response:
        body = await body_of(request)
        summary = await run_in_threadpool(service.export, body)
        return JSONResponse(summary.as_dict())

    @app.get("/api/export/coco.json")
    async def export_coco(segmentation: str = "rle") -> Response:
        summary = await run_in_threadpool(service.export, {"format": "coco", "segmentation": segmentation})
        return FileResponse(
            summary.path,
            media_type="application/json",
            filename="coco.json",
            headers={"cache-control": "no-store"},
        )

    hosts = allowed_hosts(host) if hosts is None else list(hosts)
    app.add_middleware(Guard, hosts=hosts, port=port, max_body=max_body)
    return app


def _inside_dir(folder: Path, path: Path) -> bool:
    root = folder.resolve()
    resolved = path.resolve()
    return root in resolved.parents


def _served_as_is(path: Path) -> str | None:
    """The media type to send ``path``'s bytes with, if the browser shows them as ``load_image``
    loads them (a JPEG or PNG without an EXIF rotation); else None (send a PNG)."""
    from PIL import Image

    try:
        with Image.open(path) as pil:
            kind = pil.format
            orientation = pil.getexif().get(0x0112, 1)
    except (OSError, ValueError, SyntaxError) as exc:
        raise ValueError(f"cannot read {path.name} as an image: {exc}") from None
    if orientation not in (None, 1):
        return None
    return {"JPEG": "image/jpeg", "PNG": "image/png"}.get(str(kind))


def _png_bytes(path: Path) -> bytes:
    """The image as :func:`fastseg.image.load_image` loads it (upright, RGB), as PNG bytes."""
    from PIL import Image

    from fastseg.image import load_image

    out = io.BytesIO()
    Image.fromarray(load_image(path)).save(out, format="PNG", compress_level=1)
    return out.getvalue()


# --------------------------------------------------------------------------------------------------
# Serving


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one)."""
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((bare, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def is_loopback(host: str) -> bool:
    bare = host.strip("[]").lower()
    if bare == "localhost":
        return True
    try:
        return ipaddress.ip_address(bare).is_loopback
    except ValueError:
        return False


def run_label_server(
    folder: str | Path,
    model: str | Path,
    labels: Sequence[str] | None = None,
    host: str = "127.0.0.1",
    port: int = 8765,
    db: str | Path | None = None,
    store: str | Path | None = None,
    precision: Precision = "f32",
    backend: Backend = "openvino",
    open_browser: bool = False,
    num_threads: int | None = None,
    ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the labeling page for ``folder`` until interrupted (Ctrl+C).

    Prints the URL (``http://HOST:PORT/``) once the server listens; a host that is not a loopback
    address gets a warning on stderr (anyone who can reach it can read the folder's images and
    change the annotations).

    Args:
        folder, model, labels, db, store, precision, backend, num_threads: see :func:`create_app`.
        host, port: where to listen (port 0: a free port).
        open_browser: open the page in the default browser.
        ready: called with the URL once the server listens (instead of nothing).
    """
    _require_uvicorn()
    import uvicorn

    if not is_loopback(host):
        print(
            f"fastseg label: warning: listening on {host}, not on a loopback address: whoever can reach this "
            "machine can see the folder's images and change the annotations (there is no login)",
            file=sys.stderr,
            flush=True,
        )
    sock = bind_socket(host, port)
    bound_port = int(sock.getsockname()[1])
    try:
        app = create_app(
            folder,
            model,
            labels,
            db=db,
            store=store,
            backend=backend,
            precision=precision,
            num_threads=num_threads,
            host=host,
            port=bound_port,
        )
    except BaseException:
        sock.close()
        raise
    shown = f"[{host.strip('[]')}]" if ":" in host.strip("[]") else host
    url = f"http://{shown}:{bound_port}/"
    config = uvicorn.Config(
        app,
        log_level="warning",
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=5,
        lifespan="on",
    )
    server = uvicorn.Server(config)

    def announce() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.02)
        if not server.started:
            return
        service: LabelService = app.state.service
        print(
            f"fastseg label: {len(service.session.files)} images in {service.session.folder}, "
            f"model {service.session.model_info()['name']}",
            flush=True,
        )
        print(f"fastseg label: serving {url}  (Ctrl+C to stop)", flush=True)
        if ready is not None:
            ready(url)
        if open_browser:
            import webbrowser

            webbrowser.open(url)

    threading.Thread(target=announce, name="fastseg-label-announce", daemon=True).start()
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn stopped on Ctrl+C and raises it again: the normal way out
        pass
    finally:
        sock.close()
    print("fastseg label: stopped", flush=True)
