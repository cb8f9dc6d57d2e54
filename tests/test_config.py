"""Typed config machinery: dataclasses <-> plain data <-> YAML files, overrides, errors."""

from __future__ import annotations  # the config classes below have string annotations on purpose

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import pytest
import yaml

from meshrec.config import (
    ConfigError,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)
from meshrec.errors import MeshrecError


@dataclass(frozen=True)
class OptimConfig:
    learning_rate: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    milestones: tuple[int, ...] = (10, 20)

    def __post_init__(self) -> None:
        if self.learning_rate <= 0:
            raise MeshrecError(f"learning_rate must be positive, got {self.learning_rate}")


@dataclass(frozen=True)
class HandModelConfig:
    path: Path = Path("assets/open_hand.npz")
    num_betas: int = 10


@dataclass(frozen=True)
class ModelConfig:
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    use_gate: bool = True
    max_iterations: int = 3
    exit_threshold: float | None = None
    hand_model: HandModelConfig | None = field(default_factory=HandModelConfig)


@dataclass(frozen=True)
class TrainConfig:
    name: str = "run"
    seed: int = 0
    device: Literal["cpu", "cuda"] = "cpu"
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss_weights: dict[str, float] = field(default_factory=lambda: {"vertex": 1.0, "joint": 1.0})
    datasets: list[str] = field(default_factory=lambda: ["synthetic"])
    notes: Optional[str] = None
    extra: Any = None


@dataclass(frozen=True)
class NeedsName:
    name: str
    optim: OptimConfig  # nested section without a default: built from its own defaults


@dataclass
class Stage:
    epochs: int = 1
    weights: dict[str, float] = field(default_factory=dict)


@dataclass
class Protocol:
    stages: list[Stage] = field(default_factory=list)
    mixed: int | str = 0


FULL = {
    "name": "full",
    "seed": 7,
    "device": "cuda",
    "model": {
        "widths": [8, 16, 24, 32],
        "use_gate": False,
        "max_iterations": 5,
        "exit_threshold": 0.5,
        "hand_model": {"path": "models/mano_right.npz", "num_betas": 4},
    },
    "optim": {"learning_rate": 2e-4, "betas": [0.5, 0.9], "schedule": "step", "milestones": [3, 6, 9]},
    "loss_weights": {"vertex": 2.0, "edge": 1},
    "datasets": ["synthetic", "freihand"],
    "notes": "a note",
    "extra": {"anything": [1, "two"]},
}


def _message(excinfo) -> str:
    return str(excinfo.value)


# --- config_from_dict ------------------------------------------------------------------------


def test_every_field_type_is_converted():
    config = config_from_dict(TrainConfig, FULL)
    assert config.name == "full" and config.seed == 7 and config.device == "cuda"
    assert config.model.widths == (8, 16, 24, 32)
    assert config.model.use_gate is False and config.model.max_iterations == 5
    assert config.model.exit_threshold == 0.5
    assert config.model.hand_model == HandModelConfig(path=Path("models/mano_right.npz"), num_betas=4)
    assert config.optim == OptimConfig(learning_rate=2e-4, betas=(0.5, 0.9), schedule="step", milestones=(3, 6, 9))
    assert config.loss_weights == {"vertex": 2.0, "edge": 1.0}
    assert isinstance(config.loss_weights["edge"], float)
    assert config.datasets == ["synthetic", "freihand"]
    assert config.notes == "a note" and config.extra == {"anything": [1, "two"]}


def test_missing_sections_and_keys_take_the_defaults():
    assert config_from_dict(TrainConfig, {}) == TrainConfig()
    config = config_from_dict(TrainConfig, {"model": {"max_iterations": 2}})
    assert config.model == ModelConfig(max_iterations=2)
    assert config.optim == OptimConfig()
    built = config_from_dict(NeedsName, {"name": "x"})
    assert built.optim == OptimConfig()


def test_none_for_optional_fields_and_sections():
    config = config_from_dict(TrainConfig, {"model": {"hand_model": None, "exit_threshold": None}, "notes": None})
    assert config.model.hand_model is None and config.model.exit_threshold is None and config.notes is None


def test_lists_of_dataclasses_and_unions():
    protocol = config_from_dict(Protocol, {"stages": [{"epochs": 2}, {"weights": {"gate": 0.1}}], "mixed": "auto"})
    assert protocol.stages == [Stage(epochs=2), Stage(epochs=1, weights={"gate": 0.1})]
    assert protocol.mixed == "auto"
    with pytest.raises(ConfigError) as excinfo:
        config_from_dict(Protocol, {"stages": [{"epochs": 2}, {"epoch": 3}]})
    assert "'stages[1].epoch'" in _message(excinfo) and "did you mean 'epochs'?" in _message(excinfo)
    with pytest.raises(ConfigError, match=r"'mixed': expected int \| str, got 1.5 \(float\)"):
        config_from_dict(Protocol, {"mixed": 1.5})


def test_unknown_top_level_key_names_valid_keys_and_suggestion():
    with pytest.raises(ConfigError) as excinfo:
        config_from_dict(TrainConfig, {"sed": 1})
    message = _message(excinfo)
    assert "unknown key 'sed'" in message
    assert "did you mean 'seed'?" in message
    assert "name, seed, device, model, optim, loss_weights, datasets, notes, extra" in message


def test_unknown_nested_key_names_dotted_path_valid_keys_and_suggestion():
    with pytest.raises(ConfigError) as excinfo:
        config_from_dict(TrainConfig, {"optim": {"learning_rat": 0.1}})
    message = _message(excinfo)
    assert "unknown key 'optim.learning_rat'" in message
    assert "did you mean 'learning_rate'?" in message
    assert "valid keys in 'optim' (OptimConfig): learning_rate, betas, schedule, milestones" in message

    with pytest.raises(ConfigError) as excinfo:
        config_from_dict(TrainConfig, {"model": {"hand_model": {"zzz": 1}}})
    assert "unknown key 'model.hand_model.zzz'" in _message(excinfo)
    assert "did you mean" not in _message(excinfo)
    assert "path, num_betas" in _message(excinfo)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"seed": "3"}, r"'seed': expected int, got '3' \(str\)"),
        ({"seed": True}, r"'seed': expected int, got True \(bool\)"),
        ({"model": {"max_iterations": 2.0}}, r"'model.max_iterations': expected int, got 2.0 \(float\)"),
        ({"model": {"use_gate": 1}}, r"'model.use_gate': expected bool, got 1 \(int\)"),
        ({"optim": {"learning_rate": False}}, r"'optim.learning_rate': expected float, got False \(bool\)"),
        ({"optim": {"learning_rate": "fast"}}, r"'optim.learning_rate': expected float, got 'fast' \(str\)"),
        ({"name": 12}, r"'name': expected str, got 12 \(int\)"),
        (
            {"model": {"widths": [8, 16]}},
            r"'model.widths': expected tuple\[int, int, int, int\], got \[8, 16\] \(list\) with 2 items instead of 4",
        ),
        ({"model": {"widths": [8, 16, 24, "x"]}}, r"'model.widths\[3\]': expected int, got 'x' \(str\)"),
        ({"optim": {"milestones": 5}}, r"'optim.milestones': expected tuple\[int, \.\.\.\], got 5 \(int\)"),
        (
            {"optim": {"schedule": "cosin"}},
            r"'optim.schedule': expected one of 'cosine' \| 'step' \| 'constant', got 'cosin' \(str\); "
            r"did you mean 'cosine'\?",
        ),
        ({"device": "tpu"}, r"'device': expected one of 'cpu' \| 'cuda', got 'tpu' \(str\)"),
        ({"model": {"exit_threshold": "high"}}, r"'model.exit_threshold': expected float, got 'high' \(str\)"),
        ({"model": 3}, r"'model': expected ModelConfig, got 3 \(int\)"),
        ({"model": None}, r"'model': expected ModelConfig, got None"),
        ({"loss_weights": {"vertex": "x"}}, r"'loss_weights.vertex': expected float, got 'x' \(str\)"),
        ({"loss_weights": {1: 1.0}}, r"'loss_weights key 1': expected str, got 1 \(int\)"),
        ({"datasets": "synthetic"}, r"'datasets': expected list\[str\], got 'synthetic' \(str\)"),
        ({"model": {"hand_model": {"path": 3}}}, r"'model.hand_model.path': expected Path, got 3 \(int\)"),
    ],
)
def test_wrong_types_name_path_expected_type_and_value(data, expected):
    with pytest.raises(ConfigError, match=expected):
        config_from_dict(TrainConfig, data)


def test_missing_required_key():
    with pytest.raises(ConfigError, match=r"missing required key 'name' \(str\)"):
        config_from_dict(NeedsName, {})


def test_post_init_errors_are_reraised_with_the_section_path():
    with pytest.raises(ConfigError, match=r"^'optim': learning_rate must be positive, got -1.0$") as excinfo:
        config_from_dict(TrainConfig, {"optim": {"learning_rate": -1}})
    assert isinstance(excinfo.value.__cause__, MeshrecError)
    with pytest.raises(ConfigError, match=r"^'OptimConfig': learning_rate must be positive"):
        config_from_dict(OptimConfig, {"learning_rate": 0})
    with pytest.raises(ConfigError, match=r"^'outer.optim': learning_rate"):
        config_from_dict(OptimConfig, {"learning_rate": 0}, where="outer.optim")


def test_non_mapping_data_and_non_dataclass_type():
    with pytest.raises(ConfigError, match="expected a mapping"):
        config_from_dict(TrainConfig, [1, 2])
    with pytest.raises(TypeError, match="needs a dataclass type"):
        config_from_dict(dict, {})


# --- config_to_dict ---------------------------------------------------------------------------


def test_config_to_dict_is_plain_data_in_field_order_and_round_trips():
    config = config_from_dict(TrainConfig, FULL)
    data = config_to_dict(config)
    assert list(data) == ["name", "seed", "device", "model", "optim", "loss_weights", "datasets", "notes", "extra"]
    assert data["model"]["widths"] == [8, 16, 24, 32] and isinstance(data["model"]["widths"], list)
    assert data["model"]["hand_model"]["path"] == "models/mano_right.npz"
    assert config_from_dict(TrainConfig, data) == config
    protocol = Protocol(stages=[Stage(2, {"a": 1.0})], mixed="x")
    assert config_to_dict(protocol) == {"stages": [{"epochs": 2, "weights": {"a": 1.0}}], "mixed": "x"}
    assert config_from_dict(Protocol, config_to_dict(protocol)) == protocol
    with pytest.raises(TypeError):
        config_to_dict(TrainConfig)


# --- apply_overrides --------------------------------------------------------------------------


def test_overrides_of_nested_fields_lists_null_and_strings():
    data = {"model": {"max_iterations": 2}}
    overrides = [
        "optim.learning_rate=1e-3",
        "model.widths=[8,16,24,32]",
        "model.hand_model=null",
        "name=run1",
        "seed=3",
        "optim.betas=[0.8, 0.99]",
        "loss_weights.edge=0.5",
        "notes=a=b",
    ]
    result = apply_overrides(data, overrides, TrainConfig)
    assert data == {"model": {"max_iterations": 2}}, "the input must not be modified"
    config = config_from_dict(TrainConfig, result)
    assert config.optim.learning_rate == 1e-3 and isinstance(config.optim.learning_rate, float)
    assert config.model.widths == (8, 16, 24, 32) and config.model.max_iterations == 2
    assert config.model.hand_model is None
    assert config.name == "run1" and config.seed == 3 and config.optim.betas == (0.8, 0.99)
    assert config.loss_weights == {"edge": 0.5}, "a dict field given in overrides replaces its default"
    assert config.notes == "a=b"


def test_override_fills_an_optional_section_that_is_null():
    result = apply_overrides({"model": {"hand_model": None}}, ["model.hand_model.num_betas=3"], TrainConfig)
    assert config_from_dict(TrainConfig, result).model.hand_model == HandModelConfig(num_betas=3)


def test_override_with_unknown_path_lists_valid_keys_at_that_level():
    with pytest.raises(ConfigError) as excinfo:
        apply_overrides({}, ["model.widht=[1,2,3,4]"], TrainConfig)
    message = _message(excinfo)
    assert "unknown key 'model.widht'" in message and "did you mean 'widths'?" in message
    assert "widths, use_gate, max_iterations, exit_threshold, hand_model" in message
    with pytest.raises(ConfigError, match="unknown key 'lr'"):
        apply_overrides({}, ["lr=1e-3"], TrainConfig)
    with pytest.raises(ConfigError, match=r"'seed' is a int, it has no key 'low'"):
        apply_overrides({}, ["seed.low=1"], TrainConfig)


@pytest.mark.parametrize("item", ["optim.learning_rate", "=3", "model..widths=[1]", ""])
def test_malformed_override_shows_the_expected_form(item):
    with pytest.raises(ConfigError, match=r"malformed override .*expected the form section.key=value"):
        apply_overrides({}, [item], TrainConfig)


def test_override_value_with_bad_yaml():
    with pytest.raises(ConfigError, match=r"override 'model.widths=\[1,2': invalid YAML at line 1"):
        apply_overrides({}, ["model.widths=[1,2"], TrainConfig)


# --- files ------------------------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_load_config_file_and_overrides(tmp_path):
    path = _write(
        tmp_path / "train.yaml",
        "name: from_file\nmodel:\n  widths: [1, 2, 3, 4]\noptim:\n  learning_rate: 5e-4\n",
    )
    config = load_config(TrainConfig, path, ["model.max_iterations=7"])
    assert config.name == "from_file" and config.model.widths == (1, 2, 3, 4)
    assert config.model.max_iterations == 7 and config.optim.learning_rate == 5e-4
    assert load_config(TrainConfig) == TrainConfig()
    assert load_config(TrainConfig, None, ["seed=4"]).seed == 4
    assert load_config(TrainConfig, _write(tmp_path / "empty.yaml", "")) == TrainConfig()


def test_load_config_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.yaml"):
        load_config(TrainConfig, tmp_path / "nope.yaml")
    listed = _write(tmp_path / "list.yaml", "- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: expected a mapping .* got list"):
        load_config(TrainConfig, listed)
    wrong = _write(tmp_path / "wrong.yaml", "model:\n  widths: [1, 2]\n")
    with pytest.raises(ConfigError, match=r"wrong\.yaml: 'model\.widths': expected tuple"):
        load_config(TrainConfig, wrong)
    with pytest.raises(ConfigError, match=r"ok\.yaml with overrides seed=x: 'seed': expected int"):
        load_config(TrainConfig, _write(tmp_path / "ok.yaml", "{}"), ["seed=x"])


def test_bad_yaml_gives_file_and_line(tmp_path):
    bad = _write(tmp_path / "bad.yaml", "name: a\nmodel:\n  widths: [1, 2\n  use_gate: true\nseed: 1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: invalid YAML at line \d+, column \d+") as excinfo:
        load_config(TrainConfig, bad)
    assert "line 4" in _message(excinfo) or "line 5" in _message(excinfo)
    tabs = _write(tmp_path / "tabs.yaml", "name: a\nmodel:\n\twidths: [1]\n")
    with pytest.raises(ConfigError, match=r"tabs\.yaml: invalid YAML at line 3"):
        load_config(TrainConfig, tabs)


def test_duplicate_keys_are_an_error(tmp_path):
    path = _write(tmp_path / "dup.yaml", "seed: 1\nname: a\nseed: 2\n")
    expected = r"dup\.yaml: invalid YAML at line 3.*duplicate key 'seed' \(first at line 1\)"
    with pytest.raises(ConfigError, match=expected):
        load_config(TrainConfig, path)


def test_base_inheritance_deep_merges(tmp_path):
    (tmp_path / "shared").mkdir()
    _write(
        tmp_path / "shared" / "full.yaml",
        "name: full\nseed: 1\nmodel:\n  widths: [1, 2, 3, 4]\n  max_iterations: 4\noptim:\n  schedule: step\n",
    )
    _write(tmp_path / "shared" / "weak.yaml", "base: full.yaml\nname: weak\nmodel:\n  max_iterations: 2\n")
    top = _write(tmp_path / "top.yaml", "base: shared/weak.yaml\nseed: 9\n")
    config = load_config(TrainConfig, top, ["optim.learning_rate=0.01"])
    assert config.name == "weak" and config.seed == 9
    assert config.model.widths == (1, 2, 3, 4) and config.model.max_iterations == 2
    assert config.optim.schedule == "step" and config.optim.learning_rate == 0.01


def test_base_cycles_and_bad_base_are_errors(tmp_path):
    _write(tmp_path / "a.yaml", "base: b.yaml\nseed: 1\n")
    _write(tmp_path / "b.yaml", "base: ./a.yaml\nseed: 2\n")
    with pytest.raises(ConfigError, match=r"form a cycle: .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        load_config(TrainConfig, tmp_path / "a.yaml")
    _write(tmp_path / "self.yaml", "base: self.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(TrainConfig, tmp_path / "self.yaml")
    _write(tmp_path / "missing.yaml", "base: gone.yaml\n")
    with pytest.raises(ConfigError, match=r"config file not found: .*gone\.yaml"):
        load_config(TrainConfig, tmp_path / "missing.yaml")
    _write(tmp_path / "number.yaml", "base: 3\n")
    with pytest.raises(ConfigError, match=r"number\.yaml: 'base' must be a file name"):
        load_config(TrainConfig, tmp_path / "number.yaml")


def test_round_trip_config_dict_yaml_file_load(tmp_path):
    config = config_from_dict(
        TrainConfig, {**FULL, "name": "1e-3", "notes": "null", "optim": {**FULL["optim"], "learning_rate": 1e-5}}
    )
    path = save_config(config, tmp_path / "run" / "config.yaml")
    assert path == tmp_path / "run" / "config.yaml"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# meshrec config tests.test_config.TrainConfig\n")
    assert "widths: [8, 16, 24, 32]" in text, "short scalar lists are written on one line"
    assert "model:\n  widths" in text, "sections are written in block style"
    top_keys = [line.split(":")[0] for line in text.splitlines() if line and line[0] not in "# "]
    assert top_keys == list(config_to_dict(config)), "keys are written in field order"
    assert load_config(TrainConfig, path) == config
    assert yaml.safe_load(text)["name"] == "1e-3", "strings that look like numbers are quoted"
    assert load_config(TrainConfig, save_config(TrainConfig(), path)) == TrainConfig()


def test_save_config_is_atomic(tmp_path, monkeypatch):
    path = save_config(TrainConfig(name="old"), tmp_path / "config.yaml")
    before = path.read_text(encoding="utf-8")

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        save_config(TrainConfig(name="new"), path)
    assert path.read_text(encoding="utf-8") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"], "no temporary file is left"
