"""The test helpers for child processes fail fast and leave no process behind."""

from __future__ import annotations

import os
import sys
import time

import pytest

from tests import processes

# a child that starts a grandchild, prints its pid, then never exits
HANGING_PARENT = (
    "import subprocess, sys, time; "
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
    "print(child.pid, flush=True); time.sleep(600)"
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a killed child of a killed parent may linger as a zombie until init reaps it
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_hung_child_fails_the_test_and_its_whole_group_is_killed():
    process = processes.start([sys.executable, "-c", HANGING_PARENT])
    grandchild = int(process.stdout.readline())
    started = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match="no exit after 1 s"):
        processes.finish(process, timeout=1, what="a hung child")
    assert time.monotonic() - started < 30
    deadline = time.monotonic() + 10
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(grandchild)


def test_waiting_for_a_condition_fails_fast_when_the_child_exits_first():
    process = processes.start([sys.executable, "-c", "print('bad config'); raise SystemExit(3)"])
    with pytest.raises(pytest.fail.Exception, match=r"exited \(3\) first(.|\n)*bad config"):
        processes.wait_for(process, lambda: False, timeout=60, what="the checkpoint")
