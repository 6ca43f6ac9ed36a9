"""Property-based run (schemathesis) against the OpenAPI schema the app serves: never a 5xx.

Real HTTP to a live server on a free port, with a write key and a bookable agenda, so generated
requests reach the services (holds, bookings, cancellations), not only the validators. The
number of examples per operation is bounded (SOPHIA_SCHEMATHESIS_EXAMPLES, default 20) so it
stays a few seconds in `make test`.
"""

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from integrations.keys import api_key_create
from integrations.models import ApiKey

EXAMPLES = int(os.getenv("SOPHIA_SCHEMATHESIS_EXAMPLES", "20"))


@pytest.fixture
def api_key(clinic, slots, patient, settings):
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"api_key": "100000/min"},
    }
    return api_key_create(clinic=clinic, name="fuzz", scope=ApiKey.Scope.WRITE)[1]


@pytest.mark.django_db(transaction=True)
def test_no_request_makes_the_api_fail(live_server, api_key):
    schema = schemathesis.openapi.from_url(f"{live_server.url}/api/v1/schema/?format=json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case):
            case.call_and_validate(
                base_url=live_server.url,
                headers={"Authorization": f"Bearer {api_key}"},
                checks=[not_a_server_error],
            )

        run()
