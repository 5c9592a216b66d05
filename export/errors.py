"""The export toolchain's errors: importing them needs no torch (the download path raises them too)."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or not the model it was given as."""


class ExportError(RuntimeError):
    """An export could not be completed (conversion or self-check failed)."""
