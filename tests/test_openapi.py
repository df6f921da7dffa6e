"""The API description (/openapi.json) covers every route the app serves, and nothing else;
schemathesis throws generated requests at a live server and every answer conforms to it."""

from __future__ import annotations

import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from schemathesis import checks

from alltalk_host.web.app import CONTROL_TABLES, ROUTE_TABLES
from alltalk_host.web.openapi import DESCRIPTION
from tools.server import Server

from .helpers import ConfigRepoHelper

# Answers the generator cannot read to their end: an endless event stream.
NOT_FUZZED = {("GET", "/control/events")}
EXAMPLES = 15  # per operation: about 40 operations, well under a minute in all
# What must hold for every answer. Not positive_data_acceptance: a schema cannot say which
# voices and commits exist, so valid-looking input is rightly refused with a 4xx.
CHECKS = [checks.not_a_server_error, checks.status_code_conformance,
          checks.content_type_conformance, checks.response_schema_conformance,
          checks.response_headers_conformance, checks.negative_data_rejection]


def app_routes() -> set[tuple[str, str]]:
    return {(r.method, r.path) for table in (*ROUTE_TABLES, *CONTROL_TABLES) for r in table
            if isinstance(r, web.RouteDef)}


def described_routes() -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, ops in DESCRIPTION["paths"].items()
            for method in ops}


def test_every_route_is_described_and_every_description_is_a_route():
    assert app_routes() == described_routes(), app_routes() ^ described_routes()


def test_every_control_route_says_it_needs_the_control_token():
    control = {(r.method, r.path) for table in CONTROL_TABLES for r in table}
    for method, path in described_routes():
        op = DESCRIPTION["paths"][path][method.lower()]
        assert ("security" in op) == ((method, path) in control), (method, path)


async def test_the_description_and_its_page_are_served(start_server):
    client = await start_server()
    served = await (await client.get("/openapi.json")).json()
    assert served["openapi"] == "3.1.0" and served["paths"].keys() == DESCRIPTION["paths"].keys()
    page = await (await client.get("/docs")).text()
    assert "POST /v1/audio/speech" in page and "<script" not in page


@pytest.fixture(scope="session")
def live_schema(tmp_path_factory):
    root = tmp_path_factory.mktemp("openapi")
    repo = ConfigRepoHelper(root / "config")
    (root / "state").mkdir()
    (root / "state" / "local.toml").write_text(f'[outputs]\ndir = "{root / "outputs"}"\n')
    try:
        with Server(repo.path, root / "state") as server:
            yield schemathesis.openapi.from_url(f"{server.base}/openapi.json")
    finally:
        repo.repo.close()


def test_generated_requests_get_described_answers_and_never_a_5xx(live_schema):
    """Every operation, a bounded number of generated requests each (derandomized, so a run is
    repeatable): no 5xx, every status, content type and body as described."""
    failures = []
    for result in live_schema.get_all_operations():
        operation = result.ok()
        if (operation.method.upper(), operation.path) in NOT_FUZZED:
            continue

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(checks=CHECKS)

        try:
            check()
        except Exception as exc:  # noqa: BLE001 - collect all, report at once
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert not failures, "\n\n".join(failures)
