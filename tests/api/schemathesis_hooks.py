"""schemathesis hooks for tests/api/test_schemathesis.py (loaded through ``SCHEMATHESIS_HOOKS``).

One check is registered: ``positive_data_acceptance_or_semantic``, which
runs schemathesis' own ``positive_data_acceptance`` and pardons only the
refusals listed in ``tests/fixtures/hardening/openapi_semantic.json``:
constraints that no JSON Schema can express (a signed cursor, the rule
language, a phone numbering plan...), each recognised by the problem
document's status, type, field and problem.  The test runs every other
check of schemathesis unchanged.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance

RULES = json.loads(
    (Path(__file__).resolve().parents[1] / "fixtures" / "hardening" / "openapi_semantic.json").read_text()
)["rules"]


def pardoned(status: int, problem: Any) -> bool:
    """Whether a problem document is one of the semantic refusals listed in the data file."""
    if not isinstance(problem, dict):
        return False
    errors = problem.get("errors")
    if not isinstance(errors, list) or not errors:
        return False
    for error in errors:
        if not any(
            status in (rule["status"] if isinstance(rule["status"], list) else [rule["status"]])
            and rule.get("type", problem.get("type")) == problem.get("type")
            and re.search(rule["field"], str(error.get("field", "")))
            and re.search(rule["problem"], str(error.get("problem", "")))
            for rule in RULES
        ):
            return False
    return True


@schemathesis.check
def positive_data_acceptance_or_semantic(ctx: Any, response: Any, case: Any) -> bool | None:
    """schemathesis' ``positive_data_acceptance``, minus the listed semantic refusals."""
    try:
        return positive_data_acceptance(ctx, response, case)
    except AssertionError:
        try:
            body = json.loads(response.content)
        except (ValueError, TypeError):
            raise
        if pardoned(response.status_code, body):
            return None
        raise
