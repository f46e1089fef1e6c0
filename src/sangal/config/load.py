"""Reading a configuration: YAML files (with ``base:`` chains), dotted overrides, and the keys a user gave."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import yaml

from sangal.config.checks import validate
from sangal.config.schema import Config
from sangal.errors import ConfigError, read_text

def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the annotated type, or raise ConfigError naming the key."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is list:
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else value.split(",")
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], key) for v in value]
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "yes", "1", "on"):
                return True
            if text in ("false", "no", "0", "off"):
                return False
            raise ValueError(value)
        if isinstance(value, bool) and tp in (int, float):
            raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r} (a boolean; write a number)")
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if tp is float:
            return float(value)
        if tp is str:
            return str(value).lower() if isinstance(value, bool) else str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected {getattr(tp, '__name__', tp)}, got {value!r}") from None
    return value


def _elsewhere(key: str, prefix: str) -> str:
    """' — did you mean optim.lr?' when ``key`` exists in another section (e.g. train.lr)."""
    if not prefix:
        return ""
    sections = {name: tp for name, tp in typing.get_type_hints(Config).items() if dataclasses.is_dataclass(tp)}
    found = [f"{name}.{key}" for name, tp in sections.items()
             if key in {f.name for f in dataclasses.fields(tp)}]
    return f" — did you mean {' or '.join(found)}?" if found else ""


#: Top-level keys earlier versions wrote that nothing reads any more: accepted and ignored, so old configs load.
RETIRED = frozenset({"name"})


def _apply(obj: Any, values: dict, prefix: str, source: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if not prefix and key in RETIRED:
            continue
        if key not in names:
            hint = _elsewhere(key, prefix)
            raise ConfigError(f"{source}: unknown key '{dotted}'{hint} "
                              f"(valid: {', '.join(sorted(prefix + n for n in names))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{dotted}' is a section; give it keys, not {value!r}")
            _apply(current, value, dotted + ".", source)
        else:
            try:
                setattr(obj, key, _coerce(value, hints[key], dotted))
            except ConfigError as exc:
                raise ConfigError(f"{source}: {exc}") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b=value`` into its key path and YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value (e.g. optim.lr=1e-3)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file (which may name a `base:` file), then dotted overrides."""
    cfg = Config()
    if path is not None:
        for layer_path, layer in _read_yaml_chain(Path(path)):
            _apply(cfg, layer, "", str(layer_path))
    _apply_overrides(cfg, overrides)
    return validate(cfg)


def given_keys(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> frozenset[str]:
    """The dotted keys the config file chain or the overrides set: what the user decided, not the defaults."""
    layers = [layer for _, layer in _read_yaml_chain(Path(path))] if path is not None else []
    for text in overrides:
        keys, value = parse_override(text)
        for key in reversed(keys):
            value = {key: value}
        layers.append(value)
    found: set[str] = set()
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict):
                found.update(f"{key}.{inner}" for inner in value)
            else:
                found.add(str(key))
    return frozenset(found)


def with_overrides(cfg: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """A copy of ``cfg`` with dotted overrides applied (``cfg`` is left as it is)."""
    out = from_dict(to_dict(cfg))
    _apply_overrides(out, overrides)
    return validate(out)


def with_decided(cfg: Config, decided: Mapping[str, Any], given: Collection[str], source: str) -> Config:
    """A copy of ``cfg`` with the dotted keys a checkpoint decides (``decided``: key -> its value); a key the user
    set (``given``) to another value is refused in one line naming ``source`` (e.g. "checkpoint runs/x/final")."""
    current = {key: getattr(getattr(cfg, key.split(".")[0]), key.split(".")[1]) for key in decided}
    clash = [f"{key}={current[key]} (the checkpoint has {value})" for key, value in decided.items()
             if key in given and current[key] != value]
    if clash:
        raise ConfigError(f"{source} was trained with other settings than the config gives: {'; '.join(clash)}; "
                          f"drop those keys, the checkpoint decides them")
    return with_overrides(cfg, [f"{key}={value}" for key, value in decided.items()])


def _apply_overrides(cfg: Config, overrides: list[str] | tuple[str, ...]) -> None:
    for text in overrides:
        keys, value = parse_override(text)
        nested: Any = value
        for key in reversed(keys):
            nested = {key: nested}
        _apply(cfg, nested, "", f"override '{text}'")


def _read_yaml_chain(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict]]:
    """Read a YAML file and the chain of `base:` files it extends (base first)."""
    text = read_text(path, ConfigError, "config file")
    if path.resolve() in seen:
        raise ConfigError(f"config file {path} extends itself through 'base:'")
    try:
        data = yaml.safe_load(text) or {}
        twice = _duplicate_key(yaml.compose(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections")
    if twice:
        raise ConfigError(f"config file {path}: {twice}; keep one (YAML would silently take the last)")
    base = data.pop("base", None)
    if base is not None and not isinstance(base, str):
        kind = {dict: "mapping", list: "list"}.get(type(base), type(base).__name__)
        raise ConfigError(f"config file {path}: 'base' must be the path of the YAML file it extends, "
                          f"got a {kind}: {base!r}")
    chain: list[tuple[Path, dict]] = []
    if base:
        chain = _read_yaml_chain((path.parent / base), seen + (path.resolve(),))
    return chain + [(path, data)]


def _duplicate_key(node: Any, prefix: str = "") -> str | None:
    """"key 'train.epochs' is given twice (lines 2 and 4)" for the first key a YAML mapping repeats, else None."""
    if not isinstance(node, yaml.MappingNode):
        return None
    lines: dict[str, int] = {}
    for key, value in node.value:
        name = f"{prefix}{key.value}" if isinstance(key, yaml.ScalarNode) else prefix
        line = key.start_mark.line + 1
        if name in lines and name != prefix:
            return f"key '{name}' is given twice (lines {lines[name]} and {line})"
        lines[name] = line
        if found := _duplicate_key(value, f"{name}."):
            return found
    return None


def to_dict(cfg: Config) -> dict:
    """The resolved configuration as plain data (saved next to every run and checkpoint)."""
    return dataclasses.asdict(cfg)


def from_dict(data: dict) -> Config:
    """Rebuild a Config from `to_dict` output (e.g. a checkpoint's state.json)."""
    cfg = Config()
    _apply(cfg, data, "", "saved config")
    return validate(cfg)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def parse_pretrained(value: str) -> bool | str:
    """`true`/`false` or a local weights path (config strings are kept as written)."""
    text = str(value).strip()
    if text.lower() in ("true", "yes", "1"):
        return True
    if text.lower() in ("false", "no", "0", "none", ""):
        return False
    return text
