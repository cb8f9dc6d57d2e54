"""The synthetic writer's worker processes: safe in a busy host, independent of the worker count.

The writer once forked its workers. A fork copies the host as it is, locks held by its other
threads included, with no thread left to release them: from a Jupyter kernel (ZMQ and
heartbeat threads, an EGL context) the notebook test hung for 240 s once. These tests run the
writer in a host whose threads are busy and hold locks for the whole call, in a subprocess
with a hard timeout, so a deadlock fails the test in seconds instead of hanging the suite.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from meshrec.errors import MeshrecError
from meshrec.render import gl_available

pytestmark = pytest.mark.skipif(not gl_available(), reason="OpenGL/EGL renderer unavailable")

REPO = Path(__file__).resolve().parents[1]
# a normal run takes a few seconds (two workers start, import torch, render 8 small images);
# a deadlocked one never ends
TIMEOUT_S = 120

# The host: busy threads (pure Python, torch matmuls with torch's own thread pool, GL renders
# on this process's EGL context) and threads that hold, for the whole call, a plain lock, a
# logging handler's lock, and the import lock of PIL.Image (as a thread that is importing
# PIL at that moment would; the writer's workers import PIL to encode their images, the
# parent of a pool never does). A worker forked from this host inherited that import lock
# held and waited on it forever (the writer of before hung here); a spawned one does not.
BUSY_HOST = textwrap.dedent(
    """
    import importlib._bootstrap
    import json
    import logging
    import sys
    import threading
    import time

    import torch

    from meshrec.data.synthetic import write_synthetic_dataset
    from meshrec.render import get_renderer


    def main(root):
        stop, holding = threading.Event(), threading.Barrier(2)
        lock = threading.Lock()
        handler = logging.StreamHandler(sys.stderr)
        logging.getLogger("host").addHandler(handler)
        import_lock = getattr(importlib._bootstrap, "_ModuleLockManager", None)

        def hold_locks():
            with lock:
                handler.acquire()
                try:
                    if import_lock is None:  # not CPython's import machinery: the other locks only
                        holding.wait()
                        stop.wait()
                    else:
                        with import_lock("PIL.Image"):
                            holding.wait()
                            stop.wait()
                finally:
                    handler.release()

        def spin():
            count = 0
            while not stop.is_set():
                count += 1

        def multiply():
            a = torch.randn(192, 192)
            while not stop.is_set():
                a = torch.tanh(a @ a)

        def render():
            renderer = get_renderer("gl")
            vertices = torch.tensor([[[-0.1, -0.1, 0.5], [0.1, -0.1, 0.5], [0.0, 0.1, 0.5]]])
            faces = torch.tensor([[0, 1, 2]])
            K = torch.tensor([[60.0, 0.0, 15.5], [0.0, 60.0, 15.5], [0.0, 0.0, 1.0]])
            while not stop.is_set():
                renderer.render(vertices, faces, K, 32)

        threads = [threading.Thread(target=f, daemon=True) for f in (hold_locks, spin, multiply, render)]
        for thread in threads:
            thread.start()
        holding.wait()
        start = time.perf_counter()
        summary = write_synthetic_dataset(root, 8, size=32, seed=7, batch_size=2, progress=False, workers=2)
        seconds = time.perf_counter() - start
        still_held = lock.locked() and threads[0].is_alive()
        stop.set()
        for thread in threads:
            thread.join()
        print(json.dumps({"counts": summary.counts, "seconds": seconds, "locks_held": still_held}))


    if __name__ == "__main__":  # the workers import this file as their main module
        main(sys.argv[1])
    """
)


def _files(root: Path) -> dict[Path, bytes]:
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _run_script(script: Path, *args: str, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run ``script`` in a new session; on timeout kill its whole process group (workers too) and fail."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    process = subprocess.Popen(
        [sys.executable, str(script), *args],
        cwd=script.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(
            f"{script.name} did not finish within {timeout:.0f} s: the synthetic writer deadlocked "
            f"(a worker waiting on a lock copied from the host?). stderr:\n{stderr[-3000:]}"
        )
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def test_writer_finishes_in_a_host_with_busy_threads_holding_locks(tmp_path):
    import json

    from meshrec.data.synthetic import write_synthetic_dataset

    script = tmp_path / "busy_host.py"
    script.write_text(BUSY_HOST)
    done = _run_script(script, str(tmp_path / "busy"))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["counts"] == {"training": 7, "evaluation": 1}
    assert report["locks_held"], "the host's locks were released before the writer returned"
    # the same seed gives the same bytes when written here in one process
    write_synthetic_dataset(tmp_path / "here", 8, size=32, seed=7, batch_size=2, progress=False, workers=1)
    assert _files(tmp_path / "busy") == _files(tmp_path / "here")


@pytest.mark.parametrize("workers", [2, 3])
def test_files_do_not_depend_on_the_worker_count(tmp_path, workers):
    from meshrec.data.synthetic import write_synthetic_dataset

    options = dict(size=32, seed=5, batch_size=3, progress=False)
    write_synthetic_dataset(tmp_path / "one", 12, workers=1, **options)
    summary = write_synthetic_dataset(tmp_path / "many", 12, workers=workers, **options)
    assert summary.counts == {"training": 11, "evaluation": 1} and summary.rendered == 12
    assert _files(tmp_path / "many") == _files(tmp_path / "one")


def test_worker_that_cannot_start_raises_a_meshrec_error_naming_the_fix(tmp_path):
    """A script without a main guard: its spawned workers re-run it on import and cannot start."""
    script = tmp_path / "no_guard.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys

            from meshrec.data.synthetic import write_synthetic_dataset
            from meshrec.errors import MeshrecError

            try:
                write_synthetic_dataset(sys.argv[1], 6, size=32, batch_size=2, progress=False, workers=2)
            except MeshrecError as error:
                print("MeshrecError:", error)
            """
        )
    )
    done = _run_script(script, str(tmp_path / "set"))
    assert "MeshrecError: a worker process of write_synthetic_dataset stopped unexpectedly" in done.stdout, (
        done.stdout + done.stderr[-3000:]
    )
    assert "if __name__ == '__main__':" in done.stdout and "workers=1" in done.stdout


def test_broken_pool_becomes_a_meshrec_error():
    from concurrent.futures.process import BrokenProcessPool

    from meshrec.data.synthetic.pool import _reraise_broken_pool

    def results():
        yield 1
        raise BrokenProcessPool("a worker died")

    chunks = _reraise_broken_pool(results())
    assert next(chunks) == 1
    with pytest.raises(MeshrecError, match="stopped unexpectedly .*a worker died.*workers=1"):
        next(chunks)


def test_a_worker_with_another_model_refuses_to_render(tmp_path):
    from meshrec.data.synthetic.pool import WorkerSettings, _worker_synthesizer

    settings = WorkerSettings(
        size=32, seed=0, model=None, backgrounds=None, model_hash="not-this-model",
        num_background_images=0, root=tmp_path, parent=os.getpid(),
    )
    with pytest.raises(MeshrecError, match="found model content hash .* but the run started with 'not-this-model'"):
        _worker_synthesizer(settings)
