"""The Convai simulator, driven over real HTTP through every case convai-api.md documents."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from monitor.sim.convai import (
    DEFAULT_BASE_URL,
    MSG_DATABASE,
    MSG_DISPLAY_EXISTS,
    MSG_GROUP_EXISTS,
    MSG_MISSING_FIELD,
    MSG_NO_FIELDS,
    MSG_NOT_FOUND,
    MSG_RATE_LIMIT,
    MSG_UNAUTHORIZED,
    ConvaiSim,
)

KEY = "key-a"
OTHER_KEY = "key-b"
OPS = ("register", "update", "deregister", "list")
CREATED_AT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


@pytest.fixture(scope="module")
def running_sim() -> Iterator[ConvaiSim]:
    with ConvaiSim((KEY, OTHER_KEY)) as running:
        yield running


@pytest.fixture
def sim(running_sim: ConvaiSim) -> ConvaiSim:
    # One server for the module, emptied before each test: starting a server and an
    # httpx client per test would cost more than the tests themselves.
    running_sim.start()
    running_sim.reset()
    return running_sim


@pytest.fixture(scope="module")
def module_http(running_sim: ConvaiSim) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=running_sim.base_url, timeout=5.0) as client:
        yield client


@pytest.fixture
def http(sim: ConvaiSim, module_http: httpx.Client) -> httpx.Client:
    return module_http


def call(
    http: httpx.Client,
    op: str,
    body: dict[str, Any] | None = None,
    key: str | None = KEY,
    content: bytes | None = None,
) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["CONVAI-API-KEY"] = key
    if content is None and body is not None:
        content = json.dumps(body).encode()
    return http.post(f"/llm-models/{op}", content=content, headers=headers)


def register_body(group: str = "my-turbo", **extra: Any) -> dict[str, Any]:
    return {
        "model_group_name": group,
        "model_name": "gpt-4o-mini",
        "api_key": "sk-proxy-123",
        "is_uncensored": False,
        **extra,
    }


def assert_error(response: httpx.Response, status: int, message: str) -> None:
    assert response.status_code == status
    payload = response.json()
    assert payload["status"] == "error"
    assert payload["message"] == message
    assert_uuid4(payload["transactionID"])
    assert set(payload) == {"status", "message", "transactionID"}


def assert_uuid4(value: object) -> None:
    assert isinstance(value, str)
    parsed = uuid.UUID(value)
    assert parsed.version == 4
    assert str(parsed) == value


# -- register ---------------------------------------------------------------------------------


def test_register_answers_like_the_spec_example(http: httpx.Client) -> None:
    body = register_body(display_name="Turbo (Private)", base_url="https://api.openai.com/v1")
    response = call(http, "register", body)

    assert response.status_code == 200
    payload = response.json()
    assert_uuid4(payload.pop("transactionID"))
    assert payload == {
        "status": "success",
        "model_group_name": "my-turbo",
        "model_name": "gpt-4o-mini",
        "display_name": "Turbo (Private)",
        "message": "Model 'my-turbo' registered successfully",
    }


def test_register_applies_documented_defaults(sim: ConvaiSim, http: httpx.Client) -> None:
    assert call(http, "register", register_body("raw", is_uncensored=True)).status_code == 200

    stored = sim.record("raw")
    assert stored is not None
    assert stored["display_name"] == "raw"
    assert stored["base_url"] == DEFAULT_BASE_URL
    assert stored["category"] == "Private"
    assert stored["is_uncensored"] is True
    assert stored["api_key"] == "sk-proxy-123"
    assert CREATED_AT.match(stored["created_at"])


@pytest.mark.parametrize("field", ["model_group_name", "model_name", "api_key", "is_uncensored"])
@pytest.mark.parametrize("how", ["absent", "null", "empty"])
def test_register_requires_each_field(http: httpx.Client, field: str, how: str) -> None:
    body = register_body()
    if how == "absent":
        del body[field]
    else:
        body[field] = None if how == "null" else ""

    assert_error(call(http, "register", body), 400, MSG_MISSING_FIELD)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("is_uncensored", "false"),
        ("is_uncensored", 0),
        ("model_name", 5),
        ("api_key", ["sk"]),
        ("display_name", 7),
        ("base_url", ""),
    ],
)
def test_register_rejects_wrong_types(http: httpx.Client, field: str, value: object) -> None:
    body = register_body()
    body[field] = value

    response = call(http, "register", body)

    assert_error(response, 400, f"Invalid value for field '{field}'")


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b'"text"'])
def test_register_rejects_a_body_that_is_not_a_json_object(
    http: httpx.Client, content: bytes
) -> None:
    assert_error(call(http, "register", content=content), 400, "Malformed JSON body")


def test_register_with_no_body_is_a_missing_field(http: httpx.Client) -> None:
    assert_error(call(http, "register"), 400, MSG_MISSING_FIELD)


def test_register_duplicate_group_is_409(sim: ConvaiSim, http: httpx.Client) -> None:
    assert call(http, "register", register_body()).status_code == 200

    response = call(http, "register", register_body(model_name="other", display_name="Other"))

    assert_error(response, 409, MSG_GROUP_EXISTS)
    stored = sim.record("my-turbo")
    assert stored is not None
    assert stored["model_name"] == "gpt-4o-mini"


def test_register_duplicate_display_name_is_409(http: httpx.Client) -> None:
    assert call(http, "register", register_body("a", display_name="Shared")).status_code == 200

    assert_error(
        call(http, "register", register_body("b", display_name="Shared")), 409, MSG_DISPLAY_EXISTS
    )
    # An omitted display name defaults to the group name, which can collide too.
    assert call(http, "register", register_body("c", display_name="d")).status_code == 200
    assert_error(call(http, "register", register_body("d")), 409, MSG_DISPLAY_EXISTS)


def test_names_are_unique_per_key_only(sim: ConvaiSim, http: httpx.Client) -> None:
    assert call(http, "register", register_body()).status_code == 200

    response = call(http, "register", register_body(), key=OTHER_KEY)

    assert response.status_code == 200
    assert sim.record("my-turbo", api_key=OTHER_KEY) is not None


# -- auth -------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("key", [None, "wrong-key", ""])
def test_every_call_needs_a_valid_key(http: httpx.Client, op: str, key: str | None) -> None:
    assert_error(call(http, op, register_body(), key=key), 401, MSG_UNAUTHORIZED)


def test_auth_is_checked_before_the_body(http: httpx.Client) -> None:
    assert_error(call(http, "register", content=b"{not json", key=None), 401, MSG_UNAUTHORIZED)


# -- update -----------------------------------------------------------------------------------


def test_update_answers_like_the_spec_example(sim: ConvaiSim, http: httpx.Client) -> None:
    call(http, "register", register_body(display_name="Turbo (Private)"))

    body = {"model_group_name": "my-turbo", "display_name": "Turbo v2", "api_key": "sk-proxy-456"}
    response = call(http, "update", body)

    assert response.status_code == 200
    payload = response.json()
    assert_uuid4(payload.pop("transactionID"))
    assert payload == {
        "status": "success",
        "message": "Model 'my-turbo' updated successfully",
        "updated_fields": ["display_name", "api_key"],
    }
    stored = sim.record("my-turbo")
    assert stored is not None
    assert stored["display_name"] == "Turbo v2"
    assert stored["api_key"] == "sk-proxy-456"


def test_update_reports_fields_in_request_order(sim: ConvaiSim, http: httpx.Client) -> None:
    call(http, "register", register_body())
    body = {
        "model_group_name": "my-turbo",
        "is_uncensored": True,
        "base_url": "http://fallback.test/v1",
        "api_key": "sk-2",
        "display_name": "Fallback",
    }

    response = call(http, "update", body)

    assert response.json()["updated_fields"] == [
        "is_uncensored",
        "base_url",
        "api_key",
        "display_name",
    ]
    stored = sim.record("my-turbo")
    assert stored is not None
    assert {name: stored[name] for name in body} == body


def test_update_ignores_model_name(sim: ConvaiSim, http: httpx.Client) -> None:
    call(http, "register", register_body())

    only_model = call(http, "update", {"model_group_name": "my-turbo", "model_name": "gpt-5"})
    with_key = call(
        http, "update", {"model_group_name": "my-turbo", "model_name": "gpt-5", "api_key": "k2"}
    )

    assert_error(only_model, 400, MSG_NO_FIELDS)
    assert with_key.status_code == 200
    assert with_key.json()["updated_fields"] == ["api_key"]
    stored = sim.record("my-turbo")
    assert stored is not None
    assert stored["model_name"] == "gpt-4o-mini"
    assert stored["api_key"] == "k2"


@pytest.mark.parametrize(
    "body",
    [
        {"model_group_name": "my-turbo"},
        {"model_group_name": "my-turbo", "display_name": None, "api_key": None},
        {"model_group_name": "my-turbo", "unknown": 1},
    ],
)
def test_update_without_updatable_fields_is_400(http: httpx.Client, body: dict[str, Any]) -> None:
    call(http, "register", register_body())

    assert_error(call(http, "update", body), 400, MSG_NO_FIELDS)


def test_update_checks_types(http: httpx.Client) -> None:
    call(http, "register", register_body())

    response = call(http, "update", {"model_group_name": "my-turbo", "is_uncensored": "yes"})

    assert_error(response, 400, "Invalid value for field 'is_uncensored'")


def test_update_requires_the_group_name(http: httpx.Client) -> None:
    assert_error(call(http, "update", {"api_key": "k"}), 400, MSG_MISSING_FIELD)


def test_update_of_unknown_model_is_404(http: httpx.Client) -> None:
    assert_error(
        call(http, "update", {"model_group_name": "nope", "api_key": "k"}), 404, MSG_NOT_FOUND
    )


def test_update_of_a_foreign_model_is_404_and_changes_nothing(
    sim: ConvaiSim, http: httpx.Client
) -> None:
    call(http, "register", register_body(), key=OTHER_KEY)

    response = call(http, "update", {"model_group_name": "my-turbo", "api_key": "stolen"})

    assert_error(response, 404, MSG_NOT_FOUND)
    stored = sim.record("my-turbo", api_key=OTHER_KEY)
    assert stored is not None
    assert stored["api_key"] == "sk-proxy-123"


def test_update_to_another_models_display_name_is_409(http: httpx.Client) -> None:
    call(http, "register", register_body("a", display_name="A"))
    call(http, "register", register_body("b", display_name="B"))

    taken = call(http, "update", {"model_group_name": "b", "display_name": "A"})
    own = call(http, "update", {"model_group_name": "b", "display_name": "B"})

    assert_error(taken, 409, MSG_DISPLAY_EXISTS)
    assert own.status_code == 200


def test_validation_comes_before_existence_and_existence_before_uniqueness(
    http: httpx.Client,
) -> None:
    call(http, "register", register_body("a", display_name="A"))

    assert_error(call(http, "update", {"model_group_name": "nope"}), 400, MSG_NO_FIELDS)
    assert_error(
        call(http, "update", {"model_group_name": "nope", "display_name": "A"}), 404, MSG_NOT_FOUND
    )


# -- deregister -------------------------------------------------------------------------------


def test_deregister_is_not_idempotent(sim: ConvaiSim, http: httpx.Client) -> None:
    call(http, "register", register_body())

    first = call(http, "deregister", {"model_group_name": "my-turbo"})
    second = call(http, "deregister", {"model_group_name": "my-turbo"})

    assert first.status_code == 200
    payload = first.json()
    assert_uuid4(payload.pop("transactionID"))
    assert payload == {"status": "success", "message": "Model 'my-turbo' deregistered successfully"}
    assert_error(second, 404, MSG_NOT_FOUND)
    assert sim.record("my-turbo") is None


def test_deregister_of_a_foreign_model_is_404(sim: ConvaiSim, http: httpx.Client) -> None:
    call(http, "register", register_body(), key=OTHER_KEY)

    assert_error(call(http, "deregister", {"model_group_name": "my-turbo"}), 404, MSG_NOT_FOUND)
    assert sim.record("my-turbo", api_key=OTHER_KEY) is not None


def test_deregister_requires_the_group_name(http: httpx.Client) -> None:
    assert_error(call(http, "deregister", {}), 400, MSG_MISSING_FIELD)


def test_a_deregistered_name_can_be_registered_again(http: httpx.Client) -> None:
    call(http, "register", register_body())
    call(http, "deregister", {"model_group_name": "my-turbo"})

    assert call(http, "register", register_body()).status_code == 200


# -- list -------------------------------------------------------------------------------------


def test_list_is_newest_first_has_count_and_no_api_key(sim: ConvaiSim, http: httpx.Client) -> None:
    sim.seed("old", "m1", "sk-1", created_at="2025-05-21T14:02:05.551Z")
    call(http, "register", register_body("new", display_name="New", base_url="http://x.test/v1"))
    call(http, "register", register_body("foreign"), key=OTHER_KEY)

    response = call(http, "list")

    assert response.status_code == 200
    payload = response.json()
    assert_uuid4(payload["transactionID"])
    assert payload["status"] == "success"
    assert payload["count"] == 2
    assert [m["model_group_name"] for m in payload["models"]] == ["new", "old"]
    for model in payload["models"]:
        assert set(model) == {
            "model_group_name",
            "model_name",
            "display_name",
            "base_url",
            "is_uncensored",
            "category",
            "created_at",
        }
    assert payload["models"][0]["base_url"] == "http://x.test/v1"
    assert "sk-" not in response.text


def test_list_ignores_any_body(http: httpx.Client) -> None:
    response = call(http, "list", content=b"{not json")

    assert response.status_code == 200
    assert response.json()["count"] == 0


# -- transaction ids, routing -----------------------------------------------------------------


def test_every_response_has_a_fresh_uuid4_transaction_id(
    sim: ConvaiSim, http: httpx.Client
) -> None:
    responses = [
        call(http, "register", register_body()),
        call(http, "register", register_body()),
        call(http, "list"),
        call(http, "list", key="bad"),
        call(http, "update", {"model_group_name": "my-turbo"}),
        call(http, "deregister", {"model_group_name": "zzz"}),
        http.get("/llm-models/list"),
        http.post("/nowhere"),
    ]

    ids = [r.json()["transactionID"] for r in responses]
    for value in ids:
        assert_uuid4(value)
    assert len(set(ids)) == len(ids)
    assert [c.transaction_id for c in sim.calls] == ids


def test_wrong_method_is_405_and_unknown_path_is_404(http: httpx.Client) -> None:
    wrong_method = http.get("/llm-models/list", headers={"CONVAI-API-KEY": KEY})
    unknown = http.post("/llm-models/rename", headers={"CONVAI-API-KEY": KEY})

    assert_error(wrong_method, 405, "Method not allowed")
    assert wrong_method.headers["Allow"] == "POST"
    assert_error(unknown, 404, "Not found")


# -- test controls ----------------------------------------------------------------------------


def test_fail_next_injects_database_error_then_recovers(sim: ConvaiSim, http: httpx.Client) -> None:
    sim.fail_next("register", 500, times=2)

    first = call(http, "register", register_body())
    second = call(http, "register", register_body())
    third = call(http, "register", register_body())

    assert_error(first, 500, MSG_DATABASE)
    assert_error(second, 500, MSG_DATABASE)
    assert third.status_code == 200
    assert [c.status for c in sim.calls_of("register")] == [500, 500, 200]


def test_fail_next_rate_limit_and_custom_message(sim: ConvaiSim, http: httpx.Client) -> None:
    sim.fail_next("list", 429)
    sim.fail_next("list", 503, message="Down for maintenance")

    assert_error(call(http, "list"), 429, MSG_RATE_LIMIT)
    assert_error(call(http, "list"), 503, "Down for maintenance")
    assert call(http, "list").status_code == 200


def test_a_faulted_call_changes_nothing(sim: ConvaiSim, http: httpx.Client) -> None:
    call(http, "register", register_body())
    sim.fail_next("update", 500)
    sim.fail_next("deregister", 500)

    assert (
        call(http, "update", {"model_group_name": "my-turbo", "api_key": "k2"}).status_code == 500
    )
    assert call(http, "deregister", {"model_group_name": "my-turbo"}).status_code == 500

    stored = sim.record("my-turbo")
    assert stored is not None
    assert stored["api_key"] == "sk-proxy-123"


def test_injected_faults_wait_for_a_call_that_would_succeed(
    sim: ConvaiSim, http: httpx.Client
) -> None:
    sim.fail_next("update", 500)

    # Validation and existence come first (§8 check order); the fault stays queued.
    assert call(http, "update", {"model_group_name": "nope", "api_key": "k"}).status_code == 404
    call(http, "register", register_body())
    assert call(http, "update", {"model_group_name": "my-turbo", "api_key": "k"}).status_code == 500


def test_fail_next_can_send_an_error_envelope_with_http_200(
    sim: ConvaiSim, http: httpx.Client
) -> None:
    sim.fail_next("list", 200, message="Something odd")

    response = call(http, "list")

    assert response.status_code == 200
    assert response.json()["status"] == "error"
    assert response.json()["message"] == "Something odd"


def test_fail_next_can_send_a_non_json_body(sim: ConvaiSim, http: httpx.Client) -> None:
    sim.fail_next("list", 502, raw="<html>Bad Gateway</html>")

    response = call(http, "list")

    assert response.status_code == 502
    assert response.headers["Content-Type"].startswith("text/html")
    assert response.text == "<html>Bad Gateway</html>"


def test_fail_next_validates_its_arguments(sim: ConvaiSim) -> None:
    with pytest.raises(ValueError, match="unknown op"):
        sim.fail_next("rename", 500)
    with pytest.raises(ValueError, match="status"):
        sim.fail_next("list", 302)
    with pytest.raises(ValueError, match="times"):
        sim.fail_next("list", 500, times=0)


def test_hang_next_holds_the_request_until_the_client_gives_up(
    sim: ConvaiSim, http: httpx.Client
) -> None:
    call(http, "register", register_body())
    sim.hang_next("update")

    with pytest.raises(httpx.ReadTimeout):
        http.post(
            "/llm-models/update",
            json={"model_group_name": "my-turbo", "api_key": "k2"},
            headers={"CONVAI-API-KEY": KEY},
            timeout=0.2,
        )

    hung = sim.calls_of("update")
    assert len(hung) == 1
    assert hung[0].status is None
    stored = sim.record("my-turbo")
    assert stored is not None
    assert stored["api_key"] == "sk-proxy-123"
    assert (
        call(http, "update", {"model_group_name": "my-turbo", "api_key": "k2"}).status_code == 200
    )


def test_delay_slows_every_answer(sim: ConvaiSim, http: httpx.Client) -> None:
    sim.delay = 0.3

    with pytest.raises(httpx.ReadTimeout):
        http.post("/llm-models/list", headers={"CONVAI-API-KEY": KEY}, timeout=0.1)


def test_refuse_and_restore_keep_the_port_and_the_models(
    sim: ConvaiSim, http: httpx.Client
) -> None:
    call(http, "register", register_body())
    url = sim.base_url

    sim.refuse()
    with pytest.raises(httpx.ConnectError):
        call(http, "list")
    sim.restore()

    assert sim.base_url == url
    assert call(http, "list").json()["count"] == 1


# -- inspection helpers -----------------------------------------------------------------------


def test_calls_record_what_was_received(sim: ConvaiSim, http: httpx.Client) -> None:
    body = register_body()
    response = call(http, "register", body)

    (recorded,) = sim.calls
    assert recorded.op == "register"
    assert recorded.status == 200
    assert recorded.body == body
    assert recorded.transaction_id == response.json()["transactionID"]
    assert recorded.message == "Model 'my-turbo' registered successfully"


def test_seed_registers_without_http(sim: ConvaiSim, http: httpx.Client) -> None:
    seeded = sim.seed("g", "m", "sk-seed", display_name="G", convai_key=OTHER_KEY)

    assert seeded["api_key"] == "sk-seed"
    assert sim.calls == []
    listed = call(http, "list", key=OTHER_KEY).json()["models"]
    assert [m["model_group_name"] for m in listed] == ["g"]
    with pytest.raises(ValueError, match="already exists"):
        sim.seed("g", "m", "sk", convai_key=OTHER_KEY)
    with pytest.raises(ValueError, match="already exists"):
        sim.seed("h", "m", "sk", display_name="G", convai_key=OTHER_KEY)


def test_record_of_an_unknown_key_raises(sim: ConvaiSim) -> None:
    with pytest.raises(KeyError):
        sim.record("g", api_key="not-a-sim-key")


def test_reset_forgets_everything_and_releases_hung_requests(
    sim: ConvaiSim, http: httpx.Client
) -> None:
    call(http, "register", register_body())
    sim.fail_next("list", 500)
    sim.hang_next("update")
    sim.delay = 0.01
    held: list[BaseException] = []

    def hung_update() -> None:
        # Its own client, with a timeout far longer than the test waits: only a release
        # by the simulator can end this request in time.
        with httpx.Client(base_url=sim.base_url, timeout=30.0, trust_env=False) as client:
            try:
                client.post(
                    "/llm-models/update",
                    json={"model_group_name": "my-turbo", "api_key": "k2"},
                    headers={"CONVAI-API-KEY": KEY},
                )
            except httpx.HTTPError as exc:
                held.append(exc)

    waiter = threading.Thread(target=hung_update, daemon=True)
    waiter.start()
    deadline = time.monotonic() + 5
    while not sim.calls_of("update") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [c.status for c in sim.calls_of("update")] == [None]  # arrived, held
    waiter.join(0.3)
    assert waiter.is_alive()  # still held

    released = time.monotonic()
    sim.reset()
    waiter.join(5)

    assert not waiter.is_alive()
    assert time.monotonic() - released < 3  # released, not timed out (30 s)
    # Released without an answer: a hang changes nothing, so the connection just closes.
    assert len(held) == 1
    assert not isinstance(held[0], httpx.TimeoutException)
    assert sim.calls == []
    assert sim.delay == 0.0
    assert sim.record("my-turbo") is None
    assert call(http, "list").json()["count"] == 0


# -- standalone runner ------------------------------------------------------------------------


def test_main_prints_its_url_and_stops_on_sigterm() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "monitor.sim.convai", "--port", "0", "--api-key", "cli-key"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", base_url)
        response = httpx.post(
            f"{base_url}/llm-models/list", headers={"CONVAI-API-KEY": "cli-key"}, timeout=5.0
        )
        assert response.json()["count"] == 0
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
