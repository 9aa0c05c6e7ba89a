"""schemathesis against the app's own OpenAPI document: whatever it generates, for every
operation, a real server answers without a 5xx, with a status the document declares, and a body
matching the declared schema. Bounded: a few dozen examples per operation, well under a minute.

(schemathesis's pytest plugin does not run under this pytest, so each operation's hypothesis
strategy is driven directly.)
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import checks

from lossreg_service.server import create_app
from lossreg_service.settings import Settings

pytestmark = pytest.mark.slow

DOCUMENT = create_app(Settings(device="cpu", log_level="critical")).openapi()
SCHEMA = schemathesis.openapi.from_dict(DOCUMENT)
OPERATIONS = {op.label: op for op in (r.ok() for r in SCHEMA.get_all_operations())}
EXAMPLES = 50
LOSSES = ["mse_loss", "cross_entropy", "ctc_loss", "dice", "lovasz_softmax", "lossreg:kl_div"]
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)


def test_the_document_lists_every_route() -> None:
    paths = {label.split(" ", 1)[1] for label in OPERATIONS}
    assert "/v2/models/{name}/infer" in paths and "/v1/evaluate" in paths
    assert len(OPERATIONS) >= 12


@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_every_operation_answers_within_its_documented_contract(
    reliability_url: str, label: str
) -> None:
    operation = OPERATIONS[label]

    @given(case=operation.as_strategy())
    @FUZZ
    def fuzz(case: Any) -> None:
        # The document's examples name real losses; a generic schema-valid body need not fit
        # the loss a name picks (its inputs live in the loss's own metadata), so "valid data is
        # accepted" cannot be asked of named routes here either.
        excluded = [checks.positive_data_acceptance] if "{name}" in operation.path else []
        case.call_and_validate(base_url=reliability_url, excluded_checks=excluded)

    fuzz()


NAMED = sorted(label for label, op in OPERATIONS.items() if "{name}" in op.path)


@pytest.mark.parametrize("label", NAMED)
def test_fuzzed_bodies_for_real_losses_stay_within_the_contract(
    reliability_url: str, label: str
) -> None:
    """The same, with the path naming a registered loss, so bodies reach decoding and compute.

    A schema-valid body may still lack what this loss needs (its inputs are in the loss's own
    metadata, not in the generic document), so "valid data is accepted" is not asked here.
    """
    operation = OPERATIONS[label]

    def named(pair: tuple[Any, str]) -> Any:
        case, name = pair
        case.path_parameters = {**(case.path_parameters or {}), "name": name}
        if "version" in case.path_parameters:
            case.path_parameters["version"] = "0.1.0"
        return case

    @given(case=st.tuples(operation.as_strategy(), st.sampled_from(LOSSES)).map(named))
    @FUZZ
    def fuzz(case: Any) -> None:
        case.call_and_validate(
            base_url=reliability_url, excluded_checks=[checks.positive_data_acceptance]
        )

    fuzz()
