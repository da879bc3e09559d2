"""Schema-driven fuzzing (schemathesis) of every operation in the app's OpenAPI document: no input may cause a
5xx, and every response must match its documented status, content type and schema.

Operations are driven directly with hypothesis (``operation.as_strategy()``) rather than through schemathesis'
pytest plugin, whose lazy fixtures do not work with the pytest in use here.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.service.conftest import Running

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = 12


def _fuzzer(operation, mode: GenerationMode, headers: dict[str, str]):
    """A hypothesis test calling ``operation`` with generated input and validating the response."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def fuzz(case) -> None:
        case.call_and_validate(headers=headers, checks=CHECKS)

    return fuzz


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_input_causes_a_server_error(running: Running, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", running.app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9
    for operation in operations:
        role = "admin" if operation.path.startswith(("/v1/keys", "/v1/audit")) else "clinician"
        try:
            _fuzzer(operation, mode, running.keys.header(role))()
        except Unsatisfiable:  # negative mode: an operation without parameters has no invalid input
            assert mode == GenerationMode.NEGATIVE
