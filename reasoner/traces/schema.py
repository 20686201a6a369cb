"""The trace JSON Schema, loaded and compiled once per process."""
from __future__ import annotations

import functools
import json
from importlib import resources

from reasoner.errors import ReasonerError


class TraceValidationError(ReasonerError):
    """A trace does not match trace.schema.json."""


@functools.cache
def load_schema() -> dict:
    return json.loads(resources.files(__package__).joinpath("trace.schema.json").read_text("utf-8"))


@functools.cache
def _validator():
    import jsonschema  # deferred: keeps `reasoner --help` fast

    return jsonschema.Draft202012Validator(load_schema())  # tests check the schema itself once


def validate_trace_dict(data: dict, where: str = "trace") -> None:
    """Raise TraceValidationError naming the first offending field."""
    error = next(iter(_validator().iter_errors(data)), None)
    if error is None:
        return
    if isinstance(data, dict) and isinstance(data.get("schema_version"), int) and data["schema_version"] > 1:
        raise TraceValidationError(
            f"{where} uses trace schema v{data['schema_version']}; this reasoner reads v1 (upgrade reasoner)")
    path = "/".join(str(part) for part in error.absolute_path) or "(top level)"
    message = error.message if len(error.message) <= 300 else error.message[:300] + "..."
    raise TraceValidationError(f"{where} does not match the trace schema at {path}: {message}")
