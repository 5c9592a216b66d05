"""``fastseg embed/batch --ray``: the same work on Ray actors, on a local Ray instance or a cluster.

Ray Data reads the list of images to do, ``map_batches`` hands them to a pool of actors (each holds
one :class:`~fastseg.batch.Worker`, i.e. one Predictor, loaded once) and the records stream back to
the driver, which writes the outputs exactly as a local run does (:func:`fastseg.batch.run_batch`).
So results are the same mask for mask; only their order of arrival differs, and the outputs are
ordered by file.

Threads: each actor reserves ``threads`` CPUs and runs its Predictor with that many inference
threads, so actors x threads = the cores of a machine. By default there is one actor per machine
with all of its cores.

On a cluster, every machine needs fastseg installed, the model folder and the image folder at the
same paths (a shared filesystem), and for ``embed`` the store folder shared too: the store's entries
are written atomically one by one, so any number of actors may write into it at once.

Ray is an optional extra (``pip install 'fastseg[ray]'``); nothing else in fastseg imports it.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fastseg.batch import Item, JobConfig, Record, Worker

__all__ = ["IMAGES_PER_BLOCK", "check_job", "plan_actors", "ray_records"]

#: Images per Ray Data block: the unit an actor takes and hands back.
IMAGES_PER_BLOCK = 2


def _ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data is the part fastseg uses
    except ImportError as exc:
        raise ImportError(f"--ray needs Ray with Ray Data: pip install 'fastseg[ray]' ({exc})") from None
    return ray


def check_job(config: JobConfig) -> None:
    """What the driver can check before any actor starts: Ray is there, the model and store folders."""
    from fastseg.manifest import load_model_folder

    _ray()
    load_model_folder(config.model)
    if config.store is not None:
        from fastseg.store import EmbeddingStore

        EmbeddingStore(config.store)


def plan_actors(node_cpus: Sequence[int], actors: int | None, threads: int | None) -> tuple[int, int]:
    """``(actors, threads per actor)`` for machines of ``node_cpus`` cores.

    Default: one actor per machine. Threads by default fill the smallest machine:
    ``cores // actors per machine`` (at least 1), so actors x threads = cores.
    """
    if not node_cpus:
        raise RuntimeError("the Ray cluster has no machine with CPUs")
    if actors is not None and (isinstance(actors, bool) or actors < 1):
        raise ValueError(f"actors must be a positive number, got {actors!r}")
    n = len(node_cpus) if actors is None else actors
    if threads is None:
        per_node = math.ceil(n / len(node_cpus))
        threads = max(1, min(node_cpus) // per_node)
    return n, threads


class _Actor:
    """One Ray actor: a Worker, and the records of its batches as JSON strings."""

    def __init__(self, config: JobConfig) -> None:
        self.worker = Worker(config)

    def __call__(self, batch: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        records = [
            json.dumps(self.worker.process(Item(str(file), tuple(json.loads(str(prompts))))))
            for file, prompts in zip(batch["file"], batch["prompts"])
        ]
        return {"record": np.array(records, dtype=object)}


def ray_records(
    config: JobConfig, items: Sequence[Item], address: str | None, actors: int | None
) -> tuple[Iterator[Record], Callable[[], None] | None]:
    """The records of ``items`` done by Ray actors (in the order they finish), and what to call at the
    end (it shuts down the Ray instance this started).

    ``address``: None starts a local Ray instance with this machine's cores; else the address of a
    running cluster (``"auto"``, ``"ray://head:10001"``).
    """
    ray = _ray()
    if not items:
        return iter(()), None
    started = not ray.is_initialized()
    if started:
        quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
        if address is None:
            ray.init(num_cpus=os.cpu_count() or 1, **quiet)
        else:
            ray.init(address=address, **quiet)
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # fastseg's own bar counts images
    context.print_on_execution_start = False
    node_cpus = [int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
    n_actors, threads = plan_actors([c for c in node_cpus if c > 0], actors, config.threads)
    job = replace(config, threads=threads, folder=str(Path(config.folder).resolve()))
    if job.store is not None:
        job = replace(job, store=str(Path(job.store).resolve()))
    job = replace(job, model=str(Path(job.model).resolve()))
    rows = [{"file": item.file, "prompts": json.dumps([dict(p) for p in item.prompts])} for item in items]
    # Records come back a block at a time: small blocks keep the journal, the bar and the driver's
    # memory moving image by image (a killed run loses at most the blocks in flight).
    blocks = math.ceil(len(rows) / IMAGES_PER_BLOCK)
    dataset = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
        _Actor,
        fn_constructor_kwargs={"config": job},
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=n_actors),
        num_cpus=threads,
        # An actor that dies is not restarted: the run stops with an error, and `--resume` goes on
        # from the journal (restarting an actor needs its constructor's arguments kept alive by Ray).
        max_restarts=0,
    )

    def records() -> Iterator[Record]:
        try:
            for row in dataset.iter_rows():
                yield json.loads(row["record"])
        except ray.exceptions.RayError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RuntimeError(
                f"the Ray run failed ({type(exc).__name__}: {first}); --resume goes on from here"
            ) from exc

    def close() -> None:
        if started:
            ray.shutdown()

    return records(), close
