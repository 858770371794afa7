"""The writer of an artifact's plan (device.artifact reads it)."""
from __future__ import annotations

from pathlib import Path

from device.artifact import DIGEST, PLAN, plan_digest
from device.schema import validate
from edge.files import write_json_atomic


def write_plan(directory: Path, plan: dict) -> dict:
    """Write plan.json into `directory` (atomically) with its own digest; returns the plan written.
    The plan must match device/plan.schema.json (else EdgeError, nothing written)."""
    plan = {**{k: v for k, v in plan.items() if k != DIGEST}, DIGEST: plan_digest(plan)}
    validate(plan)
    write_json_atomic(Path(directory) / PLAN, plan)
    return plan
