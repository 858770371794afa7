"""The plan format, defined once: plan.schema.json beside this file, a JSON Schema (draft 2020-12) of
every field `edge export` writes into plan.json. The plan version is that schema's `version` const;
the Python drivers import PLAN_VERSION from here, and the C++ and Java drivers' constants are checked
against it (tests/test_plan_schema.py).

Reading the version needs only the standard library; `validate` needs the jsonschema package (the
`export` extra), imported when called: a device checks plans with device.artifact.check_plan.

    >>> from device.schema import PLAN_VERSION, validate
    >>> PLAN_VERSION
    4
    >>> validate({"format": "edge-plan", "version": PLAN_VERSION})
    Traceback (most recent call last):
    edge.errors.EdgeError: the plan does not match device/plan.schema.json at $: 'edge_version' is a required property
"""
from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from edge.errors import EdgeError

SCHEMA_FILE = Path(__file__).with_name("plan.schema.json")


@cache
def schema() -> dict:
    """The parsed schema (read once)."""
    return json.loads(SCHEMA_FILE.read_text())


PLAN_VERSION: int = schema()["properties"]["version"]["const"]


@cache
def _validator():
    from jsonschema import Draft202012Validator

    Draft202012Validator.check_schema(schema())
    return Draft202012Validator(schema())


def validate(plan: dict) -> None:
    """Check `plan` against the schema; raises EdgeError with one line that names the JSON path of the
    most relevant failure (jsonschema's best_match), e.g. `$.routed.segments[0].then`."""
    try:
        from jsonschema.exceptions import best_match
    except ImportError:
        raise EdgeError("checking a plan against its schema needs the jsonschema package: "
                        "pip install 'jsonschema>=4.20' (part of edge's `export` extra)") from None
    error = best_match(_validator().iter_errors(plan))
    if error is not None:
        message = " ".join(error.message.split())  # (one line)
        message = f"key {message}" if "propertyNames" in error.schema_path else message  # (the path is its object's)
        message = message if len(message) <= 200 else message[:197] + "..."
        raise EdgeError(f"the plan does not match device/{SCHEMA_FILE.name} at {error.json_path}: {message}")
