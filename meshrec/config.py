"""Typed configuration: dataclasses filled from YAML files and ``key=value`` overrides.

A config is a tree of dataclasses (frozen or not). This module turns plain data, as YAML
gives it, into that tree with strict checks, and turns the tree back into plain data:

    >>> from dataclasses import dataclass, field
    >>> @dataclass(frozen=True)
    ... class OptimConfig:
    ...     learning_rate: float = 1e-3
    ...     betas: tuple[float, float] = (0.9, 0.999)
    >>> @dataclass(frozen=True)
    ... class TrainConfig:
    ...     name: str = "run"
    ...     optim: OptimConfig = field(default_factory=OptimConfig)
    >>> data = apply_overrides({"name": "a"}, ["optim.learning_rate=5e-4"], TrainConfig)
    >>> config = config_from_dict(TrainConfig, data)
    >>> config.optim
    OptimConfig(learning_rate=0.0005, betas=(0.9, 0.999))
    >>> config_to_dict(config)
    {'name': 'a', 'optim': {'learning_rate': 0.0005, 'betas': [0.9, 0.999]}}
    >>> config_from_dict(TrainConfig, {"optim": {"learning_rat": 0.1}})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    meshrec.config.ConfigError: unknown key 'optim.learning_rat'; did you mean 'learning_rate'? (valid keys ...

On the command line the same happens through
``load_config(TrainConfig, "configs/x.yaml", ["optim.learning_rate=5e-4"])``.

Supported field types: ``bool``, ``int``, ``float`` (ints accepted), ``str``, ``pathlib.Path``
(from a string), ``None`` and unions such as ``int | None``, ``Literal[...]``,
``tuple[int, ...]`` and fixed-length ``tuple[int, int]`` (from YAML lists), ``list[X]``,
``dict[str, X]``, ``typing.Any`` (taken as is) and nested dataclasses (a missing section takes
its defaults). Annotations may be strings (``from __future__ import annotations``).

YAML is read with one addition to YAML 1.1: ``1e-3`` is a float (plain PyYAML reads it as a
string). Duplicate keys in a mapping are an error. A YAML file may start from another one with
a top-level ``base: other.yaml`` (path relative to the file); ``base`` is therefore a reserved
name at the top level of a config.
"""

import dataclasses
import difflib
import os
import re
import tempfile
import types
import typing
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path, PurePath
from typing import Any, Literal, TypeVar, Union

import yaml

from meshrec.errors import MeshrecError

__all__ = [
    "ConfigError",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "save_config",
]

T = TypeVar("T")

BASE_KEY = "base"


class ConfigError(MeshrecError):
    """A config file, override or value does not fit the typed config; the message says where."""


# ---------------------------------------------------------------------------------------------
# YAML dialect: YAML 1.1 as PyYAML reads it, plus exponent floats without a dot, minus silently
# dropped duplicate keys. The dumper knows the same float form so that it quotes strings like
# "1e-3" and a saved config reads back unchanged.

_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


class _Loader(yaml.SafeLoader):
    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"duplicate key {key!r} (first at line {seen[key].line + 1})",
                    key_node.start_mark,
                )
            if isinstance(key, typing.Hashable):
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


class _Dumper(yaml.SafeDumper):
    def represent_list(self, items):
        # short lists of scalars read best on one line: `widths: [8, 16, 24, 32]`
        flow = all(not isinstance(item, (list, tuple, dict)) for item in items)
        return self.represent_sequence("tag:yaml.org,2002:seq", items, flow_style=flow)


for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789."))
_Dumper.add_representer(list, _Dumper.represent_list)
_Dumper.add_representer(tuple, _Dumper.represent_list)


def _parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text; a syntax error becomes a ConfigError naming ``source`` and the line."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = ": ".join(part for part in (err.context, err.problem) if part)
        raise ConfigError(f"{source}: invalid YAML{where}: {problem}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: invalid YAML: {err}") from err


# ---------------------------------------------------------------------------------------------
# plain data -> typed dataclasses


def _type_name(tp: Any) -> str:
    """Readable name of a type annotation: ``tuple[int, ...]``, ``float | None``, ``'a' | 'b'``."""
    if tp is type(None) or tp is None:
        return "None"
    if tp is Any:
        return "Any"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " | ".join(repr(arg) for arg in args)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(arg) for arg in args)
    if origin is not None:
        inner = ", ".join("..." if arg is Ellipsis else _type_name(arg) for arg in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    return getattr(tp, "__name__", str(tp))


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({type(value).__name__})"


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def _wrong_type(where: str, tp: Any, value: Any, detail: str = "") -> ConfigError:
    return ConfigError(f"'{where}': expected {_type_name(tp)}, got {_describe(value)}{detail}")


@lru_cache(maxsize=None)
def _field_types(cls: type) -> dict[str, Any]:
    """Resolved annotations of the init fields of dataclass ``cls``, in field order."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception as err:  # a NameError/TypeError here is a bug in the config class itself
        raise TypeError(f"cannot resolve the field annotations of {cls.__qualname__}: {err}") from err
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _unknown_key(where: str, key: Any, cls: type, valid: Sequence[str]) -> ConfigError:
    close = difflib.get_close_matches(str(key), valid, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    section = f"'{where}' ({cls.__name__})" if where else cls.__name__
    return ConfigError(f"unknown key '{_join(where, key)}'{hint} (valid keys in {section}: {', '.join(valid)})")


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def config_from_dict(cls: type[T], data: Mapping, *, where: str = "") -> T:
    """Build dataclass ``cls`` (nested dataclasses included) from plain ``data``, checking every value.

    Keys missing from ``data`` take the dataclass defaults; a nested dataclass field without a
    default is built from its own defaults. ``where`` is the dotted path of ``data`` inside a
    larger config, used in messages.

    Raises:
        ConfigError: an unknown key (with the valid keys and the closest match), a missing
            required key, a value of the wrong type (with the dotted path, the expected type and
            the value), or an error raised by a dataclass's ``__post_init__`` (prefixed with the
            dotted path of that section).
    """
    if not _is_dataclass_type(cls):
        raise TypeError(f"config_from_dict needs a dataclass type, got {cls!r}")
    if not isinstance(data, Mapping):
        section = where or cls.__name__
        raise ConfigError(f"'{section}': expected a mapping of {cls.__name__} keys, got {_describe(data)}")
    field_types = _field_types(cls)
    for key in data:
        if key not in field_types:
            raise _unknown_key(where, key, cls, list(field_types))

    kwargs = {}
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        tp, path = field_types[field.name], _join(where, field.name)
        if field.name in data:
            kwargs[field.name] = _convert(tp, data[field.name], path)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            if not _is_dataclass_type(tp):
                raise ConfigError(f"missing required key '{path}' ({_type_name(tp)})")
            kwargs[field.name] = config_from_dict(tp, {}, where=path)
    try:
        return cls(**kwargs)
    except MeshrecError as err:
        raise ConfigError(f"'{where or cls.__name__}': {err}") from err


def _convert(tp: Any, value: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp`` and convert it (lists to tuples, ints to floats...)."""
    if tp is Any:
        return value
    if tp is type(None) or tp is None:
        if value is not None:
            raise _wrong_type(where, None, value)
        return None
    origin, args = typing.get_origin(tp), typing.get_args(tp)

    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        members = [arg for arg in args if arg is not type(None)]
        if len(members) == 1:  # X | None: report X's own, more precise, error
            return _convert(members[0], value, where)
        for member in members:
            try:
                return _convert(member, value, where)
            except ConfigError:
                continue
        raise _wrong_type(where, tp, value)

    if origin is Literal:
        if any(value == choice and type(value) is type(choice) for choice in args):
            return value
        names = [choice for choice in args if isinstance(choice, str)]
        close = difflib.get_close_matches(value, names, n=1) if isinstance(value, str) else []
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"'{where}': expected one of {_type_name(tp)}, got {_describe(value)}{hint}")

    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise _wrong_type(where, tp, value, " (a mapping of its keys)")
        return config_from_dict(tp, value, where=where)

    if origin is tuple or tp is tuple:
        if not isinstance(value, (list, tuple)):
            raise _wrong_type(where, tp, value, " (a list)")
        if not args:
            return tuple(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], item, f"{where}[{i}]") for i, item in enumerate(value))
        if len(value) != len(args):
            raise _wrong_type(where, tp, value, f" with {len(value)} items instead of {len(args)}")
        return tuple(_convert(arg, item, f"{where}[{i}]") for i, (arg, item) in enumerate(zip(args, value)))

    if origin is list or tp is list:
        if not isinstance(value, (list, tuple)):
            raise _wrong_type(where, tp, value)
        item_type = args[0] if args else Any
        return [_convert(item_type, item, f"{where}[{i}]") for i, item in enumerate(value)]

    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise _wrong_type(where, tp, value)
        key_type, value_type = args if args else (Any, Any)
        return {
            _convert(key_type, key, f"{where} key {key!r}"): _convert(value_type, item, _join(where, key))
            for key, item in value.items()
        }

    if tp is bool:
        if not isinstance(value, bool):
            raise _wrong_type(where, tp, value, " (true or false)")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _wrong_type(where, tp, value)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _wrong_type(where, tp, value)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _wrong_type(where, tp, value, " (quote it in YAML to make it a string)")
        return value
    if isinstance(tp, type) and issubclass(tp, PurePath):
        if not isinstance(value, (str, PurePath)):
            raise _wrong_type(where, tp, value, " (a path string)")
        return tp(value)
    raise TypeError(f"'{where}': meshrec.config does not support fields of type {_type_name(tp)}")


# ---------------------------------------------------------------------------------------------
# typed dataclasses -> plain data


def config_to_dict(config: Any) -> dict:
    """Plain data of a config dataclass: dicts in field order, tuples as lists, paths as strings.

    The result round-trips: ``config_from_dict(type(config), config_to_dict(config)) == config``.
    """
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"config_to_dict needs a dataclass instance, got {config!r}")
    return _to_plain(config)


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, (list, tuple)):
        return [_to_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _to_plain(item) for key, item in value.items()}
    if isinstance(value, PurePath):
        return str(value)
    return value


# ---------------------------------------------------------------------------------------------
# overrides, files


def apply_overrides(data: dict, overrides: Sequence[str], cls: type) -> dict:
    """Return a copy of ``data`` with ``"a.b.c=value"`` overrides applied, each path checked against ``cls``.

    The value is parsed as YAML: ``lr=1e-3`` is a float, ``model.widths=[8,16,24,32]`` a list,
    ``hand_model=null`` is None, ``name=run1`` a string. A mapping value replaces the whole
    section. Values are type-checked later, by :func:`config_from_dict`.

    Raises:
        ConfigError: an item without ``=``, or a path that names no field (with the valid keys
            at that level and the closest match).
    """
    result = _deep_copy(data)
    for item in overrides:
        key_path, sep, text = item.partition("=")
        keys = [key.strip() for key in key_path.split(".")]
        if not sep or not all(keys):
            raise ConfigError(
                f"malformed override {item!r}: expected the form section.key=value, e.g. optim.learning_rate=1e-3"
            )
        value = _parse_yaml(text, f"override {item!r}")

        node, tp, where = result, cls, ""
        for depth, key in enumerate(keys):
            tp = _section_type(tp)
            if _is_dataclass_type(tp):
                field_types = _field_types(tp)
                if key not in field_types:
                    raise _unknown_key(where, key, tp, list(field_types))
                tp = field_types[key]
            elif typing.get_origin(tp) is dict:
                tp = typing.get_args(tp)[1] if typing.get_args(tp) else Any
            elif tp is not Any:
                raise ConfigError(f"override {item!r}: '{where}' is a {_type_name(tp)}, it has no key '{key}'")
            where = _join(where, key)
            if depth == len(keys) - 1:
                node[key] = value
            else:
                if node.get(key) is None:  # missing, or `section: null` being filled in
                    node[key] = {}
                elif not isinstance(node[key], dict):
                    raise ConfigError(f"override {item!r}: '{where}' holds {_describe(node[key])}, not a section")
                node = node[key]
    return result


def _section_type(tp: Any) -> Any:
    """``X`` of ``X | None`` (so that overrides can reach into optional sections), else ``tp``."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        members = [arg for arg in typing.get_args(tp) if arg is not type(None)]
        if len(members) == 1:
            return members[0]
    return tp


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _deep_copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_deep_copy(item) for item in value]
    return value


def _deep_merge(base: dict, top: dict) -> dict:
    """``top`` over ``base``: sections present in both merge key by key, anything else ``top`` wins."""
    merged = _deep_copy(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = _deep_copy(value)
    return merged


def _read_yaml_mapping(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """The mapping in YAML file ``path``, with its ``base:`` chain merged underneath."""
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise ConfigError(f"{path}: 'base' files form a cycle: {cycle}")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise ConfigError(f"config file not found: {path}") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read config file {path}: {err}") from err
    data = _parse_yaml(text, str(path))
    if data is None:  # an empty file means "all defaults"
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level, got {type(data).__name__}")
    if BASE_KEY not in data:
        return data
    base_name = data.pop(BASE_KEY)
    if not isinstance(base_name, str) or not base_name:
        raise ConfigError(f"{path}: 'base' must be a file name relative to this file, got {_describe(base_name)}")
    base = _read_yaml_mapping(path.parent / base_name, (*chain, resolved))
    return _deep_merge(base, data)


def load_config(cls: type[T], path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> T:
    """Typed config ``cls`` from YAML file ``path`` (None: the defaults) with ``key=value`` overrides.

    The file holds a mapping; an optional top-level ``base: other.yaml`` (relative to the file)
    is loaded first and this file's keys are deep-merged over it, recursively; cycles are errors.

    Raises:
        ConfigError: a missing or unreadable file, a YAML syntax error (with its line), a top
            level that is not a mapping, a bad override or a value that does not fit ``cls``;
            the message names the file.
    """
    data = {} if path is None else _read_yaml_mapping(Path(path))
    source = "defaults" if path is None else str(path)
    if overrides:
        source += f" with overrides {' '.join(overrides)}"
    try:
        return config_from_dict(cls, apply_overrides(data, overrides, cls))
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from err


def save_config(config: Any, path: str | os.PathLike) -> Path:
    """Write ``config`` as YAML (keys in field order, a header comment) atomically; return the path.

    The text goes to a temporary file in the same folder that then replaces ``path`` in one step,
    so a crash never leaves a half-written config behind. Parent folders are created.
    """
    path = Path(path)
    header = (
        f"# meshrec config {type(config).__module__}.{type(config).__qualname__}\n"
        f"# written by meshrec.config.save_config; read back with load_config({type(config).__name__}, path)\n"
    )
    text = header + yaml.dump(config_to_dict(config), Dumper=_Dumper, sort_keys=False, allow_unicode=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp makes the file private (0600); keep the mode of the file being replaced instead
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(temp_name, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path
