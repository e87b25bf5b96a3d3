"""YAML configs -> frozen dataclasses, validated key by key.

A config class is a (frozen) dataclass whose fields are ``int``, ``float``, ``bool``, ``str``,
``tuple[T, ...]`` of those, ``X | None`` or another config dataclass. ``load_config`` reads a YAML
file, applies dotted ``key=value`` overrides (values parsed as YAML scalars), and builds the
dataclass tree. Any problem -- an unknown key (with the closest valid name suggested), a wrong type,
an impossible value rejected by a ``__post_init__`` -- raises ``ConfigError`` naming the key and the
file. A section may start from a named preset (``model: {preset: tiny, num_blocks: 2}``) when the
caller passes a preset lookup for that section's class.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import numbers
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

PresetLookup = Mapping[type, Callable[[str], Any]]
PRESET_KEY = "preset"
_FLOAT_STRING = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key and the source."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping holding a key twice (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # "<<: *anchor": merged keys may be overridden, only explicit ones are checked
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, typing.Hashable):
                continue  # PyYAML's own construct_mapping reports it
            if key in seen:
                line = key_node.start_mark.line + 1
                raise yaml.constructor.ConstructorError(problem=f"the key {key!r} appears twice (again on line {line})")
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_config[T](
    path: str | Path, cls: type[T], overrides: Sequence[str] = (), presets: PresetLookup | None = None
) -> T:
    """Read ``path`` (YAML), apply ``overrides`` (``"a.b=value"``) and build a ``cls`` instance."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}" if not path.exists() else f"config {path} is not a file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a YAML text file (byte {err.start} is not UTF-8)") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {_one_line(err)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    for override in overrides:
        apply_override(data, override, cls, source=str(path))
    return from_dict(cls, data, source=str(path), presets=presets)


def parse_override(override: str) -> tuple[list[str], Any]:
    """``"optim.lr=3e-4"`` -> (["optim", "lr"], 3e-4); the value is parsed as a YAML scalar."""
    key, sep, raw = override.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ConfigError(f"bad override {override!r}: expected dotted.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"bad override {override!r}: value is not valid YAML: {_one_line(err)}") from None
    return parts, value


def apply_override(data: dict, override: str, cls: type, *, source: str) -> None:
    """Set one dotted override in the raw ``data`` dict, checking the key path against ``cls``."""
    parts, value = parse_override(override)
    where = f"override {override!r} (config {source})"
    node, node_cls = data, cls
    for depth, part in enumerate(parts):
        dotted = ".".join(parts[: depth + 1])
        last = depth == len(parts) - 1
        hints = _field_types(node_cls) if node_cls else {}
        if node_cls is not None and part not in hints and not (last and part == PRESET_KEY):
            raise ConfigError(_unknown_key_message(dotted, part, hints, where))
        if last:
            node[part] = value
            return
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{where}: {dotted} is a value, not a section")
        node, node_cls = child, _dataclass_in(hints.get(part))


def from_dict[T](cls: type[T], data: Any, *, source: str, presets: PresetLookup | None = None, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a raw mapping, validating every key; ``prefix`` is the dotted
    path of this section (for messages)."""
    where = f"{source}: {prefix.rstrip('.') or '<top level>'}"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {_describe(data)}")
    data = dict(data)
    if PRESET_KEY in data and presets and cls in presets:
        data = _merge(_preset_dict(cls, data.pop(PRESET_KEY), presets, where), data)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            raise ConfigError(_unknown_key_message(prefix + str(key), str(key), fields, f"{source}"))
    hints = _field_types(cls)
    values = {}
    for name, value in data.items():
        dotted = f"{prefix}{name}"
        values[name] = _convert(value, hints[name], dotted=dotted, source=source, presets=presets)
    missing = [n for n, f in fields.items() if n not in values and _has_no_default(f)]
    if missing:
        raise ConfigError(f"{where}: missing required key(s): {', '.join(prefix + m for m in missing)}")
    try:
        return cls(**values)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{where}: {err}") from None


def is_int(value: Any) -> bool:
    """An integer (Python or numpy), and not a bool: the check behind every int option of the package."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_field_types(config: Any) -> None:
    """For a config dataclass built in Python (the YAML loader checks its own): ConfigError naming
    ``Class.field`` for a value of the wrong type, as the loader would; a list given for a tuple field
    becomes a tuple and an int for a float field a float (so the config stays hashable and equal to the
    loaded one). Call it first in ``__post_init__``."""
    cls = type(config)
    for name, annotation in _field_types(cls).items():
        value, dotted = getattr(config, name), f"{cls.__name__}.{name}"
        section = _dataclass_in(annotation)
        if section is not None and value is not None:
            if not isinstance(value, section):
                raise ConfigError(f"{dotted}: expected a {section.__name__}, got {_describe(value)}")
            continue
        converted = _convert(value, annotation, dotted=dotted, source="", presets=None)
        if converted is not value:
            object.__setattr__(config, name, converted)


def to_dict(config: Any) -> dict:
    """A dataclass tree as plain YAML-friendly data (tuples become lists)."""

    def plain(value):
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        return value

    return plain(config)


def save_config(config: Any, path: str | Path, *, comment: str | None = None) -> Path:
    """Write the resolved config as YAML (loadable again with ``load_config``), after ``comment``
    (each line as a ``#`` comment) when given."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "".join(f"# {line}\n" for line in comment.splitlines()) if comment else ""
    path.write_text(header + yaml.safe_dump(to_dict(config), sort_keys=False))
    return path


def _preset_dict(cls: type, name: Any, presets: PresetLookup, where: str) -> dict:
    try:
        preset = presets[cls](name)
    except (KeyError, ValueError) as err:
        raise ConfigError(f"{where}.{PRESET_KEY}: {err}") from None
    return to_dict(preset)


def _merge(base: dict, updates: dict) -> dict:
    """Recursive dict update: nested sections merge key by key."""
    merged = dict(base)
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _convert(value: Any, annotation: Any, *, dotted: str, source: str, presets: PresetLookup | None):
    """Check ``value`` against a field annotation and convert it (list -> tuple, int -> float)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _convert(value, option, dotted=dotted, source=source, presets=presets)
            except ConfigError as err:
                errors.append(err)
        if len(options) == 1:
            raise errors[0]
        raise _type_error(dotted, source, " or ".join(_type_name(o) for o in options), value)
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value, source=source, presets=presets, prefix=dotted + ".")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _type_error(dotted, source, _type_name(annotation), value)
        item_type = args[0]
        if len(args) != 2 or args[1] is not Ellipsis:
            raise TypeError(f"config field {dotted}: only tuple[T, ...] is supported, got {annotation}")
        return tuple(
            _convert(v, item_type, dotted=f"{dotted}[{i}]", source=source, presets=presets) for i, v in enumerate(value)
        )
    if annotation is bool:
        if not isinstance(value, bool):
            raise _type_error(dotted, source, "bool", value)
        return value
    if annotation is int:
        if not is_int(value):
            raise _type_error(dotted, source, "int", value)
        return int(value)
    if annotation is float:
        if isinstance(value, str) and _FLOAT_STRING.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads "3e-4" (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise _type_error(dotted, source, "float", value)
        if not math.isfinite(value):
            raise _type_error(dotted, source, "a finite float", value)
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise _type_error(dotted, source, "str", value)
        return value
    raise TypeError(f"config field {dotted}: unsupported annotation {annotation!r}")


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _dataclass_in(annotation: Any) -> type | None:
    """The config dataclass inside an annotation (``X`` or ``X | None``), else None."""
    if dataclasses.is_dataclass(annotation):
        return annotation
    for arg in typing.get_args(annotation):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def _has_no_default(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def _unknown_key_message(dotted: str, key: str, valid: Mapping[str, Any], where: str) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(sorted(valid))}"
    return f"{where}: unknown key {dotted!r}{hint}"


def _type_error(dotted: str, source: str, expected: str, value: Any) -> ConfigError:
    where = f"{source}: " if source else ""
    return ConfigError(f"{where}{dotted}: expected {expected}, got {_describe(value)}")


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation)
