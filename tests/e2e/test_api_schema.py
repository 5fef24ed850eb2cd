"""The API's OpenAPI document, fuzzed by schemathesis against a running gateway: no 5xx, and
every answer (status, content type, headers, body) as the document says, for data that fits the
document and for data that does not (which must be refused with a 4xx).

Every check of schemathesis runs but ``positive_data_acceptance``: some requests that fit the
schema are refused by rules the document states in words but JSON Schema cannot carry (exactly
one of ``to`` and ``followersOf``; an Idempotency-Key reused for another body, which the
fuzzer does as it draws header values; usernames with control characters), and those answers
are checked like every other. (schemathesis's own pytest plugin does not run under pytest 9,
so each operation is a hypothesis test built from the operation's strategy.)
"""

from __future__ import annotations

from collections.abc import Iterator

import hypothesis
import pytest
import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance

from gateway.api.openapi import DOCUMENT_PATH, OPERATIONS, PREFIX
from gateway.settings import Settings
from tests.support.server import LiveServer

KEY = "schema-test-key-0123456789"
# The document's own path is what schemathesis loads (and so checks) first; it fuzzes the rest.
PATHS = [f"{PREFIX}/{op.name}" for op in OPERATIONS]
EXAMPLES = 20


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    settings = Settings.load(
        api_keys=KEY, api_rate_limit=100_000, api_rate_limit_burst=100_000, drain_window=0.2
    )
    server = LiveServer(settings).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api_schema(live: LiveServer) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{live.url}{DOCUMENT_PATH}")


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("path", PATHS)
def test_operation_conforms_to_the_document(api_schema, path: str, mode: GenerationMode) -> None:
    [operation] = [
        result.ok() for result in api_schema.get_all_operations() if result.ok().path == path
    ]

    @hypothesis.settings(
        max_examples=EXAMPLES,
        deadline=2_000,
        derandomize=True,
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(case=operation.as_strategy(mode))
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(
            headers={"Authorization": f"Bearer {KEY}"},
            excluded_checks=[positive_data_acceptance],
            timeout=5,
        )

    check()
