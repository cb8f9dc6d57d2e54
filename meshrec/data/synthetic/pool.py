"""Chunks of samples rendered, written and formatted in this process or in worker processes.

Worker processes are started with the ``spawn`` method: each is a fresh interpreter that
imports this module and builds its own :class:`HandSynthesizer` (hand model, GL context) from
a few small settings (:class:`WorkerSettings`). Forking would copy the host process as it is,
with the locks its other threads hold at that moment and no threads to release them: in a
Jupyter kernel (ZMQ and heartbeat threads, a live EGL context) or any host whose threads are
importing, logging or rendering, a forked worker could wait on such a lock forever. A spawned
worker shares no memory with the host, so nothing the host's threads do can block it. The
price is a second or two per run for starting the workers (they import torch); one worker,
or a single chunk, is made in this process without starting any.

Samples depend only on ``(seed, split, index)`` and the chunks are returned in task order,
so the files do not depend on the number of workers.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from meshrec.data.synthetic.images import write_images
from meshrec.data.synthetic.labels import label_texts
from meshrec.data.synthetic.scene import HandSynthesizer
from meshrec.data.synthetic.timing import PhaseClock
from meshrec.errors import MeshrecError

# a fresh interpreter per worker: no lock of the host's threads is copied into it (see above)
START_METHOD = "spawn"


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker process needs to make chunks; pickled once to every worker, so kept small.

    Attributes:
        size, seed, model, backgrounds, style: :class:`HandSynthesizer`'s arguments (``model``: a
            path, None, or a ``ManoModel``, which is then pickled, a few MB).
        model_hash: the parent's ``HandSynthesizer.model_hash``; a worker that loads another
            model (the file changed meanwhile) refuses to render.
        num_background_images: the parent's number of background images, checked likewise.
        root: the data set folder.
        parent: process id of the parent; a worker exits when the parent is gone.
    """

    size: int
    seed: int
    model: object
    backgrounds: str | os.PathLike | None
    model_hash: str
    num_background_images: int
    root: Path
    parent: int
    style: str = "flat"


def _worker_synthesizer(settings: WorkerSettings) -> HandSynthesizer:
    """A worker's own synthesizer, checked against the parent's (the same samples need the same model)."""
    synthesizer = HandSynthesizer(
        size=settings.size,
        seed=settings.seed,
        model=settings.model,
        backgrounds=settings.backgrounds,
        style=settings.style,
    )
    checks = (
        ("model content hash", settings.model_hash, synthesizer.model_hash),
        ("number of background images", settings.num_background_images, len(synthesizer.background_images)),
    )
    for what, expected, actual in checks:
        if expected != actual:
            raise MeshrecError(
                f"a worker process found {what} {actual!r}, but the run started with {expected!r} "
                "(the model file or the backgrounds folder changed during the run); keep them unchanged "
                "while writing, then run again to resume"
            )
    return synthesizer


_worker_state: dict = {}


def _start_worker(settings: WorkerSettings) -> None:
    """Worker initializer: single-threaded torch (the processes already fill the cores; torch's
    own threads then only contend), Ctrl-C left to the parent, which stops the workers, and
    an exit when the parent is gone (killed; a worker would otherwise wait for work forever).
    The synthesizer is built by the first chunk, so that an error reaches the parent with its
    message (an initializer's error only breaks the pool)."""
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker_state.update(settings=settings)

    def exit_with_parent() -> None:
        while os.getppid() == settings.parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=exit_with_parent, daemon=True).start()


@dataclass(frozen=True)
class _ChunkResult:
    split: str
    count: int
    texts: dict[str, bytes]
    seconds: dict[str, float]
    cpu_seconds: dict[str, float]


def _make_chunk(task: tuple[str, list[int]]) -> _ChunkResult:
    """Render one chunk, write its images, format its labels (runs in a worker process)."""
    if "synthesizer" not in _worker_state:
        _worker_state["synthesizer"] = _worker_synthesizer(_worker_state["settings"])
    return _render_chunk(_worker_state["synthesizer"], _worker_state["settings"].root, task)


def _render_chunk(synthesizer: HandSynthesizer, root: Path, task: tuple[str, list[int]]) -> _ChunkResult:
    """Render chunk ``task = (split, indices)``, write its images under ``root``, format its labels."""
    split, indices = task
    clock = PhaseClock()
    batch = synthesizer._render(split, indices, clock)
    write_images(root, split, indices, batch)
    clock.lap("images")
    texts = label_texts(batch)
    clock.lap("labels")
    return _ChunkResult(split, len(indices), texts, clock.seconds, clock.cpu_seconds)


@contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore Ctrl-C while worker processes are launched (milliseconds): they inherit the
    disposition and keep it while they import, so a Ctrl-C then stops only the parent, which
    stops them, instead of printing a traceback from each. Only the main thread can do this,
    and only with a handler set from Python (one set outside Python could not be restored)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is None:
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _reraise_broken_pool(results: Iterator[_ChunkResult]) -> Iterator[_ChunkResult]:
    from concurrent.futures.process import BrokenProcessPool

    try:
        yield from results
    except BrokenProcessPool as error:
        raise MeshrecError(
            f"a worker process of write_synthetic_dataset stopped unexpectedly ({error}): it was killed, "
            "ran out of memory, or could not start. Worker processes import the main module, so a script "
            "that writes with workers > 1 must do so under `if __name__ == '__main__':`; or pass workers=1 "
            "to write in this process"
        ) from error


@contextmanager
def chunk_results(
    synthesizer: HandSynthesizer,
    tasks: list[tuple[str, list[int]]],
    workers: int,
    settings: WorkerSettings,
) -> Iterator[Iterator[_ChunkResult]]:
    """The chunks' results in task order, made by up to ``workers`` spawned processes (or here).

    Args:
        synthesizer: this process's synthesizer (used when the chunks are made here).
        tasks: ``(split, indices)`` per chunk.
        workers: most worker processes; 1 makes the chunks in this process.
        settings: what a worker builds its own synthesizer from; ``settings.root`` is where
            the images go.
    """
    if workers == 1 or len(tasks) <= 1 or multiprocessing.current_process().daemon:
        # one chunk is not worth starting processes; daemonic processes may not have children
        with _torch_threads(1):
            yield (_render_chunk(synthesizer, settings.root, task) for task in tasks)
        return
    from concurrent.futures import ProcessPoolExecutor

    executor = ProcessPoolExecutor(
        max_workers=min(workers, len(tasks)),
        mp_context=multiprocessing.get_context(START_METHOD),
        initializer=_start_worker,
        initargs=(settings,),
    )
    try:
        with _sigint_ignored():
            results = executor.map(_make_chunk, tasks)  # starts the workers
        # a worker that dies (killed, crashed) fails the run with an error, not a hang
        yield _reraise_broken_pool(results)
    finally:
        # after an error or Ctrl-C: chunks in progress finish (their images are then removed as
        # uncommitted), queued ones are dropped
        executor.shutdown(wait=True, cancel_futures=True)
