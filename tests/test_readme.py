"""The README's code runs: every Python block executes, every ``meshrec`` command in a bash
block parses with the real command-line parser (its configs load with their overrides), and
every ``make`` target it names exists."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"^```(\w*)\n(.*?)^```", README, flags=re.MULTILINE | re.DOTALL)


def _blocks(language: str) -> list[str]:
    return [body for tag, body in BLOCKS if tag == language]


def _commands(program: str) -> list[list[str]]:
    """Each ``program …`` line of the bash blocks as argv (comments dropped, continuations joined)."""
    commands = []
    for body in _blocks("bash"):
        for line in body.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == [program]:
                commands.append(words[1:])
    return commands


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_python_block_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks may write files (hand.obj)
    exec(compile(_blocks("python")[index], f"README.md python block {index + 1}", "exec"), {"__name__": "readme"})


@pytest.mark.parametrize("argv", _commands("meshrec"), ids=" ".join)
def test_meshrec_command_parses(argv):
    from pipelines.cli import build_parser

    args = build_parser(argv[0]).parse_args(argv)  # argparse exits on an unknown option
    if argv[0] == "train":
        from meshrec.config import load_config
        from meshrec.training.config import TrainConfig

        load_config(TrainConfig, ROOT / args.config if args.config else None, args.overrides)


def test_make_targets_exist():
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.MULTILINE))
    named = {argv[0] for argv in _commands("make")} | set(re.findall(r"`make ([\w-]+)`", README))
    assert named and named <= targets, f"README names make targets {sorted(named - targets)} that the Makefile lacks"


def test_the_readme_starts_with_the_two_commands():
    tag, first = BLOCKS[0]
    assert tag == "bash" and [shlex.split(line, comments=True) for line in first.splitlines()] == [["make", "demo"], ["make", "test"]]
