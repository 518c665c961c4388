"""Config foundations: a strict Pydantic base model, YAML/JSON files and dotted command-line overrides.

Every config is a :class:`StrictModel`: unknown keys are rejected (``extra="forbid"``), values are validated on
assignment, and errors become a :class:`~lmforge.errors.ConfigError` that names the field and the valid choices.
This package imports no torch, so configs can be read and checked cheaply.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from lmforge.errors import ConfigError
from lmforge.utils.files import atomic_write_text

__all__ = [
    "StrictModel",
    "read_config_file",
    "write_config_file",
    "parse_overrides",
    "apply_overrides",
    "format_validation_error",
]

M = TypeVar("M", bound="StrictModel")


class StrictModel(BaseModel):
    """Base of all lmforge configs: unknown keys are errors, and a config round-trips through YAML/JSON."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    @classmethod
    def parse(cls: type[M], data: Any, source: str = "config") -> M:
        """Validates ``data`` (a dict) into this config, raising :class:`ConfigError` with a readable message."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of keys to values, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise ConfigError(format_validation_error(err, cls, source)) from None

    @classmethod
    def from_yaml(cls: type[M], path: str | Path) -> M:
        """Loads this config from a YAML file."""
        return cls.parse(read_config_file(path), source=str(path))

    @classmethod
    def from_json(cls: type[M], path: str | Path) -> M:
        """Loads this config from a JSON file."""
        return cls.parse(read_config_file(path), source=str(path))

    @classmethod
    def from_file(cls: type[M], path: str | Path) -> M:
        """Loads this config from a ``.yaml``/``.yml`` or ``.json`` file."""
        return cls.parse(read_config_file(path), source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-safe dict of every field (derived properties are not included)."""
        return self.model_dump(mode="json")

    def save(self, path: str | Path) -> None:
        """Writes this config to ``path`` (YAML or JSON by extension), atomically."""
        write_config_file(path, self.to_dict())

    def with_overrides(self: M, overrides: dict[str, Any] | list[str]) -> M:
        """Returns a copy with dotted overrides applied (``{"attention.num_heads": 4}`` or ``["a.b=c"]``)."""
        if isinstance(overrides, list):
            overrides = parse_overrides(overrides)
        data = apply_overrides(self.to_dict(), overrides)
        return type(self).parse(data, source="overrides")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Reads a YAML or JSON mapping, with clear errors for missing, empty or malformed files."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist; check the path")
    if path.is_dir():
        raise ConfigError(f"config path {path} is a folder; pass a .yaml or .json file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {err.start}); pass a YAML or JSON file") from None
    if not text.strip():
        raise ConfigError(f"config file {path} is empty; write at least one key, e.g. 'model: {{...}}'")
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"config file {path} could not be parsed ({first}); fix the syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values, not {type(data).__name__}")
    return data


def write_config_file(path: str | Path, data: dict[str, Any]) -> None:
    """Writes ``data`` as JSON (``.json``) or YAML (anything else), atomically."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        text = json.dumps(data, indent=2) + "\n"
    else:
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    atomic_write_text(path, text)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Parses ``["model.d_model=256", "train.lr=3e-4"]`` into ``{"model.d_model": 256, "train.lr": 3e-4}``.

    Values are parsed as YAML scalars, so ``true``, ``null``, ``3e-4`` and ``[1, 2]`` get their natural types.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. model.d_model=256)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        # YAML 1.1 reads "3e-4" as a string; numbers users type should be numbers.
        if isinstance(value, str):
            try:
                value = float(value) if any(c in value for c in ".eE") else int(value)
            except ValueError:
                pass
        out[key] = value
    return out


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Returns a deep copy of ``data`` with each dotted key set; unknown intermediate keys create mappings, so
    that validation (not this function) reports a misspelt key with the list of valid ones."""
    data = json.loads(json.dumps(data))
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
    return data


def _models_in(ann: Any) -> list[type[BaseModel]]:
    """The Pydantic models an annotation refers to (itself, or the members of a union / Annotated)."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return [ann]
    out: list[type[BaseModel]] = []
    for arg in typing.get_args(ann):
        out.extend(_models_in(arg))
    return out


def _walk(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[list[str] | None, list[str]]:
    """Follows ``loc`` into nested models. Returns the valid field names of the model it ends in (``None`` when
    unknown) and the path as the user wrote it: a discriminated union's tag (e.g. 'transformer') is dropped."""
    candidates: list[type[BaseModel]] = [model]
    path: list[str] = []
    for part in loc:
        if not isinstance(part, str):
            path.append(str(part))
            continue
        tagged = [m for m in candidates if "family" in m.model_fields and m.model_fields["family"].default == part]
        if tagged:
            candidates = tagged
            continue
        path.append(part)
        nxt: list[type[BaseModel]] = []
        for m in candidates:
            if part in m.model_fields:
                nxt.extend(_models_in(m.model_fields[part].annotation))
        candidates = nxt
    fields = sorted(candidates[0].model_fields) if len(candidates) == 1 else None
    return fields, path


def format_validation_error(err: ValidationError, cls: type[BaseModel], source: str = "config") -> str:
    """Turns a Pydantic error into one readable line per problem, naming the field and the valid choices."""
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        _, path = _walk(cls, loc)
        loc_str = ".".join(path) or "(root)"
        if e["type"] == "extra_forbidden":
            valid, _ = _walk(cls, loc[:-1])
            hint = f"; valid keys here: {', '.join(valid)}" if valid else ""
            lines.append(f"unknown key '{loc_str}'{hint}")
        elif e["type"] in ("literal_error", "union_tag_invalid"):
            lines.append(f"invalid value for '{loc_str}': {e['msg']}")
        elif e["type"] == "missing":
            lines.append(f"missing required key '{loc_str}'")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"invalid value for '{loc_str}': {msg}" if e["type"] == "value_error" else f"invalid value for '{loc_str}' ({e.get('input')!r}): {msg}")
    return f"{source}: " + "; ".join(lines)
