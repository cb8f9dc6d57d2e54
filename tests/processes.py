"""Child processes in tests: they fail fast with their output, and never outlive the test.

Each child runs in its own session (process group), so a timeout kills it *and* whatever
it started (DataLoader workers, DDP ranks); the test then fails with a message that says
what it waited for and the tail of the child's output, well inside pytest's own timeout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence

import pytest

OUTPUT_TAIL_CHARS = 3000


def kill_group(process: subprocess.Popen) -> str:
    """Kill ``process`` and its process group; return what it printed (stdout + stderr)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    output, errors = process.communicate()
    return (output or "") + (errors or "")


def start(argv: Sequence[str], **kwargs) -> subprocess.Popen:
    """Start ``argv`` in its own process group, text output captured (stderr into stdout)."""
    return subprocess.Popen(
        list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, **kwargs
    )


def finish(process: subprocess.Popen, timeout: float, what: str) -> str:
    """Wait up to ``timeout`` s for ``process``; on time-out kill its group and fail the test."""
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        output = kill_group(process)
        pytest.fail(f"{what}: no exit after {timeout:.0f} s (killed); output tail:\n{output[-OUTPUT_TAIL_CHARS:]}")
    return output


def run(argv: Sequence[str], timeout: float, what: str, **kwargs) -> subprocess.CompletedProcess:
    """:func:`subprocess.run` that kills the whole group and fails the test on time-out."""
    process = start(argv, **kwargs)
    output = finish(process, timeout, what)
    return subprocess.CompletedProcess(process.args, process.returncode, output, "")


def wait_for(process: subprocess.Popen, condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until true; fail fast (killing the group) on time-out or if the
    child exits first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            output, _ = process.communicate()
            pytest.fail(f"{what}: the child exited ({process.returncode}) first; output tail:\n{output[-OUTPUT_TAIL_CHARS:]}")
        if time.monotonic() > deadline:
            output = kill_group(process)
            pytest.fail(f"{what}: not after {timeout:.0f} s (child killed); output tail:\n{output[-OUTPUT_TAIL_CHARS:]}")
        time.sleep(0.2)
