"""The http.request action against a real HTTP server on a loopback port: its output, its
errors (retryable or not), its caps, and what it never shows. Loopback is a private
address, so these settings allow private addresses; one test shows the default refusing."""

from __future__ import annotations

import time
from typing import Any

import pytest

from engine import actions, dlq
from engine.actions import ActionContext
from engine.config import Settings
from engine.errors import ActionError, InvalidInput, NonRetryableError
from tests.support.origin import Answer, Origin, origin

LOCAL = Settings(http_allow_private_addresses=True)


@pytest.fixture
def server() -> Any:
    with origin() as running:
        yield running


def call(inputs: dict[str, Any], settings: Settings = LOCAL, timeout_s: float = 30) -> Any:
    action = actions.get("http.request")
    assert action is not None
    action.check_inputs(inputs)
    context = ActionContext("run", "fetch", 1, {}, timeout_s=timeout_s, settings=settings)
    return action.function(inputs, context)


def test_a_json_answer_is_parsed_and_headers_come_lower_cased_without_secrets(
    server: Origin,
) -> None:
    url = server.script(
        "/companies/acme",
        Answer(200, {"employees": 120}, {"X-Request-Id": "r1", "Set-Cookie": "session=abc"}),
    )
    output = call({"url": url, "headers": {"Authorization": "Bearer s3cr3t-value"}})
    assert output["status"] == 200
    assert output["body"] == {"employees": 120}
    assert output["headers"]["x-request-id"] == "r1"
    assert output["headers"]["content-type"] == "application/json"
    assert "set-cookie" not in output["headers"]
    assert "s3cr3t" not in repr(output)
    assert server.received[0].headers["Authorization"] == "Bearer s3cr3t-value"


def test_a_post_sends_json_and_query_and_a_text_answer_stays_text(server: Origin) -> None:
    url = server.script("/echo", Answer(201, "created"))
    output = call(
        {"method": "POST", "url": url, "query": {"q": "x y", "n": [1, 2]}, "json": {"a": 1}}
    )
    assert (output["status"], output["body"]) == (201, "created")
    received = server.received[0]
    assert received.method == "POST" and received.path == "/echo?q=x+y&n=1&n=2"
    assert received.body == b'{"a": 1}'
    assert received.headers["Content-Type"] == "application/json"


def test_a_text_body_and_a_head_request(server: Origin) -> None:
    url = server.script("/put", Answer(200, {"ok": True}))
    call({"method": "PUT", "url": url, "body": "plain words"})
    assert server.received[0].body == b"plain words"
    head = call({"method": "HEAD", "url": url})
    assert head["status"] == 200 and head["body"] is None


@pytest.mark.parametrize("status", [500, 502, 503, 408, 429])
def test_server_errors_timeouts_and_throttling_are_retryable(server: Origin, status: int) -> None:
    url = server.script("/flaky", Answer(status, {"error": "busy"}, {"Retry-After": "7"}))
    with pytest.raises(ActionError) as raised:
        call({"url": url + "?api_key=k3y-in-query"})
    assert raised.value.retryable and not isinstance(raised.value, NonRetryableError)
    assert raised.value.retry_after_s == 7
    assert str(raised.value).startswith(f"GET {url} answered {status}")
    assert "k3y" not in str(raised.value)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_other_client_errors_are_not_retryable(server: Origin, status: int) -> None:
    url = server.script("/nope", Answer(status, {"error": "no"}))
    with pytest.raises(NonRetryableError, match=f"answered {status}"):
        call({"url": url})


def test_expect_names_the_statuses_that_succeed(server: Origin) -> None:
    url = server.script("/maybe", Answer(404, {"found": False}))
    assert call({"url": url, "expect": [200, 404]})["body"] == {"found": False}
    ok = server.script("/ok", Answer(200, "fine"))
    with pytest.raises(NonRetryableError, match="answered 200"):
        call({"url": ok, "expect": [204]})


def test_credentials_and_query_stay_out_of_messages(server: Origin) -> None:
    url = server.script("/nope", Answer(404, "no"))
    with_credentials = url.replace("http://", "http://ada:pa55word@") + "?token=abc123"
    with pytest.raises(NonRetryableError) as raised:
        call({"url": with_credentials})
    assert str(raised.value) == f"GET {url} answered 404 Not Found"
    _, _, trace = dlq.describe(raised.value)
    assert "pa55word" not in trace and "abc123" not in trace


def test_a_connection_error_is_retryable_and_quotes_no_query() -> None:
    with origin() as server:
        url = server.url + "/gone?secret=xyz"
    with pytest.raises(ActionError) as raised:
        call({"url": url})
    assert raised.value.retryable
    assert "connection failed (ConnectionError)" in str(raised.value)
    assert "xyz" not in dlq.describe(raised.value)[2]  # nor in the traceback stored with it


def test_the_step_time_limit_bounds_the_request_timeout(server: Origin) -> None:
    url = server.script("/slow", Answer(200, "late", delay_s=3))
    started = time.monotonic()
    with pytest.raises(ActionError, match="timed out after 0.5 s") as raised:
        call({"url": url, "timeout_s": 20}, timeout_s=0.5)
    assert raised.value.retryable
    assert time.monotonic() - started < 2.5


def test_a_response_over_the_cap_is_refused_with_or_without_a_length(server: Origin) -> None:
    small = LOCAL.with_changes(http_max_response_bytes=1000)
    declared = server.script("/big", Answer(200, "x" * 5000))
    streamed = server.script("/stream", Answer(200, "y" * 50_000, chunked=True))
    for url in (declared, streamed):
        with pytest.raises(NonRetryableError, match=r"HTTP_MAX_RESPONSE_BYTES \(1000\)"):
            call({"url": url}, small)
    assert call({"url": server.script("/fits", Answer(200, "z" * 1000))}, small)["body"] == (
        "z" * 1000
    )


def test_the_default_settings_refuse_a_loopback_server(server: Origin) -> None:
    url = server.script("/hello", Answer(200, "hi"))
    with pytest.raises(NonRetryableError, match="refused: host '127.0.0.1' resolves to"):
        call({"url": url}, Settings())
    assert server.received == []


def test_redirects_are_followed_at_most_five_times(server: Origin) -> None:
    final = server.script("/final", Answer(200, {"here": True}))
    server.script("/hop", Answer(302, "", {"Location": final}))
    assert call({"url": server.url + "/hop"})["body"] == {"here": True}
    with pytest.raises(NonRetryableError, match="answered 302"):
        call({"url": server.url + "/hop", "follow_redirects": False})
    server.script("/loop", Answer(302, "", {"Location": "/loop"}))
    with pytest.raises(NonRetryableError, match="more than 5 redirects"):
        call({"url": server.url + "/loop"})
    assert len(server.requests_of("/loop")) == 6


@pytest.mark.parametrize(
    ("inputs", "field"),
    [
        ({}, "inputs"),
        ({"url": "ftp://example.com/x"}, "inputs.url"),
        ({"url": "file:///etc/passwd"}, "inputs.url"),
        ({"url": "https://example.com", "method": "TRACE"}, "inputs.method"),
        ({"url": "https://example.com", "headers": {"X-N": 1}}, "inputs.headers.X-N"),
        ({"url": "https://example.com", "timeout_s": 0}, "inputs.timeout_s"),
        ({"url": "https://example.com", "json": {}, "body": "x"}, "inputs"),
        ({"url": "https://example.com", "expect": [99]}, "inputs.expect.0"),
        ({"url": "https://example.com", "data": "x"}, "inputs"),
    ],
)
def test_invalid_inputs_are_refused_naming_the_field(inputs: dict[str, Any], field: str) -> None:
    action = actions.get("http.request")
    assert action is not None
    with pytest.raises(InvalidInput) as raised:
        action.check_inputs(inputs)
    assert field in [error["field"] for error in raised.value.errors]


def test_an_answer_no_step_row_can_hold_is_cleaned_or_refused(server: Origin) -> None:
    text = server.script("/text", Answer(200, "a\x00b"))
    assert call({"url": text})["body"] == "a\ufffdb"
    nul = server.script(
        "/nul", Answer(200, b'{"name": "a\\u0000b"}', {"Content-Type": "application/json"})
    )
    with pytest.raises(NonRetryableError, match="JSON answer holds a NUL"):
        call({"url": nul})
    broken = server.script(
        "/broken", Answer(200, b"{not json", {"Content-Type": "application/json"})
    )
    assert call({"url": broken})["body"] == "{not json"
