"""Chunks of samples rendered, written and formatted in this process or in worker processes."""

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

from meshrec.data.synthetic.images import _write_images
from meshrec.data.synthetic.labels import _label_texts
from meshrec.data.synthetic.scene import HandSynthesizer, _noise_bank
from meshrec.data.synthetic.timing import _PhaseClock

_worker_state: dict = {}


def _start_worker(synthesizer: HandSynthesizer, root: Path, parent: int) -> None:
    """Worker initializer: single-threaded torch (the processes already fill the cores; torch's
    own threads then only contend), Ctrl-C left to the parent, which stops the workers, and
    an exit when the parent is gone (killed; a worker would otherwise wait for work forever)."""
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker_state.update(synthesizer=synthesizer, root=root)

    def exit_with_parent() -> None:
        while os.getppid() == parent:
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
    """Render one chunk, write its images, format its labels (runs in a worker)."""
    split, indices = task
    synthesizer, root = _worker_state["synthesizer"], _worker_state["root"]
    clock = _PhaseClock()
    batch = synthesizer._render(split, indices, clock)
    _write_images(root, split, indices, batch)
    clock.lap("images")
    texts = _label_texts(batch)
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
def _chunk_results(
    synthesizer: HandSynthesizer, root: Path, tasks: list[tuple[str, list[int]]], workers: int
) -> Iterator[Iterator[_ChunkResult]]:
    """The chunks' results in task order, made by ``workers`` forked processes (or here)."""
    fork = "fork" in multiprocessing.get_all_start_methods()
    if workers == 1 or len(tasks) <= 1 or not fork or multiprocessing.current_process().daemon:
        # one chunk is not worth starting processes; daemonic processes may not have children
        _worker_state.update(synthesizer=synthesizer, root=root)
        try:
            with _torch_threads(1):
                yield (_make_chunk(task) for task in tasks)
        finally:
            _worker_state.clear()
        return
    from concurrent.futures import ProcessPoolExecutor

    _noise_bank()  # made once here, shared with the forked workers
    executor = ProcessPoolExecutor(
        max_workers=min(workers, len(tasks)),
        mp_context=multiprocessing.get_context("fork"),
        initializer=_start_worker,
        initargs=(synthesizer, root, os.getpid()),
    )
    try:
        # a worker that dies (killed, crashed) fails the run with BrokenProcessPool, not a hang
        yield executor.map(_make_chunk, tasks)
    finally:
        # after an error or Ctrl-C: chunks in progress finish (their images are then removed as
        # uncommitted), queued ones are dropped
        executor.shutdown(wait=True, cancel_futures=True)
