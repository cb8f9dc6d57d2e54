"""Loading MANO-format files: the restricted unpickler, .npz round trips, and bad files."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from manolayer import ForbiddenPickleError, ManoFormatError, SideMismatchError, load_mano, save_mano_npz
from pipelines.cli import main as cli
from tests.mano_fixtures import write_hostile_pickle, write_official_style_pickle


def test_npz_round_trip_is_exact_and_deterministic(right_pickle, tmp_path):
    model = load_mano(right_pickle)
    first = save_mano_npz(tmp_path / "a.npz", model)
    second = save_mano_npz(tmp_path / "b.npz", load_mano(first))
    assert first.read_bytes() == second.read_bytes()
    reloaded = load_mano(second)
    assert reloaded == model  # same side, identical arrays
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_npz_loads_without_pickle(right_pickle, tmp_path):
    path = save_mano_npz(tmp_path / "m.npz", load_mano(right_pickle))
    with np.load(path, allow_pickle=False) as npz:
        assert {"v_template", "f", "shapedirs", "J_regressor", "side"} <= set(npz.files)


def test_hostile_pickle_is_refused_and_nothing_runs(tmp_path):
    path = write_hostile_pickle(tmp_path / "MANO_RIGHT.pkl")
    with pytest.raises(ForbiddenPickleError, match=r"forbidden global (posix|os|nt)\.system"):
        load_mano(path)
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize(
    "payload, message",
    [
        (lambda a: {k: v for k, v in a.items() if k != "weights"}, r"lacks the entries \['weights'\]"),
        (lambda a: {**a, "weights": a["weights"][:-1]}, r"'weights' has shape \(777, 16\); expected \(778, 16\)"),
        (lambda a: {**a, "shapedirs": a["shapedirs"][:, :2]}, r"'shapedirs' has shape \(778, 2, 10\)"),
        (lambda a: {**a, "J_regressor": a["J_regressor"][:15]}, r"'J_regressor' has shape \(15, 778\)"),
        (lambda a: {**a, "f": a["f"] + 5000}, r"'f' indexes vertices"),
        (lambda a: {**a, "v_template": np.full_like(a["v_template"], np.nan)}, r"'v_template' contains NaN"),
        (lambda a: {**a, "hands_mean": np.zeros(44)}, r"'hands_mean' has shape \(44,\); expected \(45,\)"),
    ],
)
def test_wrong_keys_and_shapes_are_named(payload, message, mano_arrays, tmp_path):
    path = write_official_style_pickle(tmp_path / "MANO_RIGHT.pkl", payload(dict(mano_arrays)))
    with pytest.raises(ManoFormatError, match=message):
        load_mano(path)


def test_truncated_and_foreign_files(right_pickle, tmp_path):
    truncated = tmp_path / "MANO_RIGHT.pkl"
    truncated.write_bytes(right_pickle.read_bytes()[:5000])
    with pytest.raises(ManoFormatError, match="truncated or corrupt"):
        load_mano(truncated)
    npz = save_mano_npz(tmp_path / "good_right.npz", load_mano(right_pickle))
    broken = tmp_path / "broken_right.npz"
    broken.write_bytes(npz.read_bytes()[:2000])
    with pytest.raises(ManoFormatError, match="truncated or corrupt"):
        load_mano(broken)
    a_list = tmp_path / "MANO_RIGHT_list.pkl"
    a_list.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(ManoFormatError, match="holds a list"):
        load_mano(a_list)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_mano(tmp_path / "missing.pkl")


def test_object_arrays_in_npz_are_refused(tmp_path):
    path = tmp_path / "model_right.npz"
    np.savez(path, v_template=np.array([object()], dtype=object))
    with pytest.raises(ManoFormatError, match="object arrays"):
        load_mano(path)


def test_side_rules(right_pickle, mano_arrays, tmp_path):
    with pytest.raises(SideMismatchError, match="holds a right hand but side='left'"):
        load_mano(right_pickle, side="left")
    anonymous = write_official_style_pickle(tmp_path / "hand_model.pkl", mano_arrays)
    with pytest.raises(ManoFormatError, match="cannot tell which hand"):
        load_mano(anonymous)
    assert load_mano(anonymous, side="left").side == "left"
    with pytest.raises(ManoFormatError, match="side must be"):
        load_mano(right_pickle, side="up")


def test_cli_info_and_convert(right_pickle, tmp_path, capsys):
    assert cli(["mano-info", str(right_pickle)]) == 0
    assert "valid:           yes" in capsys.readouterr().out
    out = tmp_path / "right.npz"
    assert cli(["mano-convert", str(right_pickle), str(out)]) == 0
    assert load_mano(out) == load_mano(right_pickle)
    assert cli(["mano-convert", str(right_pickle), str(out)]) == 2  # exists, no --force
    assert "pass --force" in capsys.readouterr().err
    hostile = write_hostile_pickle(tmp_path / "MANO_LEFT.pkl")
    assert cli(["mano-info", str(hostile)]) == 1
    assert "valid:           no" in capsys.readouterr().out
    assert cli(["mano-info"]) == 0  # the open hand
    assert "open hand" in capsys.readouterr().out
