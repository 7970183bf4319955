"""http.request through the API and a real prefork worker, against a real HTTP server on a
loopback port (the platform here allows private addresses; the default refuses them)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import spec
from tests.support.origin import Answer, Origin, origin
from tests.support.stack import Stack, private_stack


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory: Path = tmp_path_factory.mktemp("http-stack")
    with private_stack("sqlite", directory, {"HTTP_ALLOW_PRIVATE_ADDRESSES": "true"}) as (
        stack,
        _,
    ):
        stack.start_worker(concurrency=2)
        yield stack


@pytest.fixture
def server() -> Iterator[Origin]:
    with origin() as running:
        yield running


ENRICH_PARAMS = {
    "type": "object",
    "required": ["company"],
    "properties": {"company": {"type": "string"}},
}


def enrich_lead(name: str, base_url: str, retry: dict[str, float]) -> dict[str, object]:
    """DESIGN's enrich_lead, pointed at the test's server."""
    return spec(
        name,
        [
            {
                "id": "fetch",
                "action": "http.request",
                "with": {"method": "GET", "url": base_url + "/companies/{{ params.company }}"},
                "retry": retry,
                "timeout_s": 30,
            },
            {
                "id": "score",
                "action": "transform",
                "needs": ["fetch"],
                "with": {"expression": "steps.fetch.output.body.employees > 50"},
            },
        ],
        params=ENRICH_PARAMS,
    )


def test_a_503_then_a_200_succeeds_on_the_retry_after_the_retry_after_wait(
    platform: Stack, server: Origin, unique: str
) -> None:
    server.script(
        "/companies/acme",
        Answer(503, {"error": "warming up"}, {"Retry-After": "2"}),
        Answer(200, {"name": "Acme", "employees": 120}),
    )
    platform.register(
        enrich_lead(unique, server.url, {"max_attempts": 3, "backoff_s": 0.05, "max_backoff_s": 5})
    )
    run = platform.wait_finished(platform.submit(unique, {"company": "acme"}))
    assert run["status"] == "succeeded", run
    steps = {step["step_id"]: step for step in run["steps"]}
    assert steps["fetch"]["attempts"] == 2
    assert steps["fetch"]["output"]["status"] == 200
    assert steps["fetch"]["output"]["body"] == {"name": "Acme", "employees": 120}
    assert steps["score"]["output"] is True
    first, second = server.requests_of("/companies/acme")
    assert second.at - first.at >= 1.9  # the server's Retry-After, not the 0.05 s backoff


def test_a_404_dead_letters_after_one_attempt(platform: Stack, server: Origin, unique: str) -> None:
    server.script("/companies/nobody", Answer(404, {"error": "no such company"}))
    platform.register(
        enrich_lead(unique, server.url, {"max_attempts": 4, "backoff_s": 0.05, "max_backoff_s": 1})
    )
    run_id = platform.submit(unique, {"company": "nobody"})
    run = platform.wait_finished(run_id)
    assert run["status"] == "failed"
    fetch = platform.step(run_id, "fetch")
    assert (fetch["status"], fetch["attempts"]) == ("dead", 1)
    assert f"GET {server.url}/companies/nobody answered 404" in fetch["error"]
    (letter,) = platform.dead_letters(run_id)
    assert letter.exception_type == "NonRetryableError"
    assert len(server.requests_of("/companies/nobody")) == 1


def test_a_worker_with_the_default_settings_refuses_a_loopback_url(
    tmp_path: Path, server: Origin, unique: str
) -> None:
    url = server.script("/hello", Answer(200, {"hello": "world"}))
    with private_stack("sqlite", tmp_path / "stack") as (stack, _):
        stack.start_worker(concurrency=1)
        stack.register(
            spec(unique, [{"id": "fetch", "action": "http.request", "with": {"url": url}}])
        )
        run_id = stack.submit(unique)
        run = stack.wait_finished(run_id)
        assert run["status"] == "failed"
        fetch = stack.step(run_id, "fetch")
        assert fetch["attempts"] == 1
        assert "refused: host '127.0.0.1' resolves to 127.0.0.1" in fetch["error"]
    assert server.received == []
