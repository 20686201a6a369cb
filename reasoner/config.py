"""YAML configuration files, validated with JSON Schema before anything runs.

Every error names the file, the key path, what was expected and, for a misspelt key, the closest
valid key, so a user can fix it without reading a traceback.
"""
from __future__ import annotations

import copy
import difflib
import re
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from reasoner.errors import ConfigError


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-4` as a string (it wants `1.0e-4`); accept the form everyone writes."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
                              list("-+0123456789."))


def parse_yaml(text: str):
    return yaml.load(text, Loader=_Loader)


def packaged_config(kind: str, name: str) -> Path:
    """Path of a config shipped with the package (configs/ is package data, reasoner.configs), e.g.
    packaged_config("models", "tiny")."""
    return Path(files("reasoner.configs") / kind / f"{name}.yaml")


def resolve_config_path(kind: str, name_or_path: str | Path) -> Path:
    """A path as given, or the name of a packaged config ("tiny" -> configs/models/tiny.yaml)."""
    path = Path(name_or_path)
    if path.exists() or path.suffix in (".yaml", ".yml") or "/" in str(name_or_path):
        return path
    packaged = packaged_config(kind, str(name_or_path))
    if packaged.exists():
        return packaged
    available = sorted(p.stem for p in packaged.parent.glob("*.yaml"))
    raise ConfigError(f"no {kind[:-1]} config named '{name_or_path}'; available: {', '.join(available)}")


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: file not found")
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, expected a YAML file")
    try:
        data = parse_yaml(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
    return data


def validate(data: dict[str, Any], schema: dict[str, Any], source: str | Path) -> dict[str, Any]:
    """Validate against a JSON Schema; raise one readable ConfigError for the most relevant problem."""
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is not None:
        raise ConfigError(describe_error(error, source))
    return data


def load_config(path: str | Path, schema: dict[str, Any], overrides: list[str] = ()) -> dict[str, Any]:
    data = apply_overrides(read_yaml(path), overrides, source=path)
    return validate(data, schema, path)


def describe_error(error: jsonschema.ValidationError, source: str | Path) -> str:
    key_path = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    if error.validator == "additionalProperties":
        allowed = list(error.schema.get("properties", {}))
        unknown = [k for k in error.instance if k not in allowed]
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            hint = f"unknown key '{key}'" + (f" (did you mean '{close[0]}'?)" if close else "")
            hints.append(hint)
        where = key_path if error.absolute_path else "top level"
        return f"{source}: {where}: {'; '.join(hints)}. Allowed keys: {', '.join(allowed)}"
    if error.validator == "required":
        return f"{source}: {key_path}: {error.message}"
    expected = _expected(error)
    return f"{source}: {key_path}: got {error.instance!r}, expected {expected}"


def _expected(error: jsonschema.ValidationError) -> str:
    schema = error.schema
    parts = []
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        parts.append(" or ".join(types))
    if "enum" in schema:
        parts.append("one of " + ", ".join(repr(v) for v in schema["enum"]))
    for bound, word in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
        if bound in schema:
            parts.append(f"{word} {schema[bound]}")
    return " ".join(parts) if parts else error.message


def apply_overrides(data: dict[str, Any], overrides: list[str], source: str | Path = "--set") -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (values parsed as YAML) to a copy of `data`."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY.PATH=VALUE, e.g. grpo.beta=0.01")
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: '{part}' in {source} is not a section")
        try:
            node[leaf] = parse_yaml(raw)
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"--set {item!r}: {key}: the value is not valid YAML ({problem}); quote it, "
                              f"e.g. --set '{key}=\"...\"'") from None
    return data
