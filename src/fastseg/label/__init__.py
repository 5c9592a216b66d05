"""``fastseg label``: a labeling web page served from this machine (extra ``fastseg[label]``).

The server (:mod:`fastseg.label.server`, FastAPI on uvicorn) keeps one model in memory
(:mod:`fastseg.label.session`) and the annotations in SQLite (:mod:`fastseg.label.db`); the page is
plain HTML/CSS/JS in ``static/``, loaded from the server only. Importing this package imports
neither FastAPI nor the model runtime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastseg.label.server import create_app, run_label_server

__all__ = ["create_app", "run_label_server"]


def __getattr__(name: str) -> Any:
    if name in ("create_app", "run_label_server"):
        from fastseg.label import server

        return getattr(server, name)
    raise AttributeError(f"module 'fastseg.label' has no attribute {name!r}")
