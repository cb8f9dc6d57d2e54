"""``meshrec synth``: the ``--workers`` option reaches the writer and is validated."""

from __future__ import annotations

import json

import pytest

from meshrec.render import gl_available
from pipelines.cli import main as cli


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_workers_below_one_or_not_an_int_is_a_usage_error(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exit_info:
        cli(["synth", "--out", str(tmp_path / "set"), "--num", "4", "--workers", value])
    assert exit_info.value.code == 2
    assert f"argument --workers: expected an int >= 1, got {value}" in capsys.readouterr().err.replace("'", "")
    assert not (tmp_path / "set").exists()


def test_workers_is_passed_to_the_writer(tmp_path, monkeypatch):
    import meshrec.data.synthetic as synthetic

    if not gl_available():
        pytest.skip("OpenGL/EGL renderer unavailable")
    calls = []
    real_writer = synthetic.write_synthetic_dataset

    def recording_writer(*args, **kwargs):
        calls.append(kwargs["workers"])
        return real_writer(*args, **kwargs)

    monkeypatch.setattr(synthetic, "write_synthetic_dataset", recording_writer)
    out = tmp_path / "set"
    assert cli(["synth", "--out", str(out), "--num", "3", "--size", "32", "--workers", "1", "--no-progress"]) == 0
    assert calls == [1]
    assert json.loads((out / "manifest.json").read_text())["counts"] == {"training": 3, "evaluation": 0}
