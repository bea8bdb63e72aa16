"""The Convai client against the real simulator over loopback HTTP."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from monitor.convai import (
    ConvaiClient,
    ConvaiError,
    ConvaiReply,
    ConvaiUnreachable,
    ModelList,
    RegisteredModel,
)
from monitor.sim.convai import ConvaiSim

KEY = "convai-key"
CANARY_CONVAI_KEY = "CANARY-convai-9f3a61"
CANARY_ENDPOINT_KEY = "sk-CANARY-endpoint-77c2e0"
# Small numbers keep the file fast; the budget test below allows generous slack on top.
FAST: dict[str, Any] = {
    "timeout": 0.5,
    "retry_budget": 2.0,
    "backoff_base": 0.01,
    "backoff_max": 0.05,
}


@pytest.fixture(scope="module")
def running_sim() -> Iterator[ConvaiSim]:
    with ConvaiSim((KEY, CANARY_CONVAI_KEY, "other-key")) as running:
        yield running


@pytest.fixture
def sim(running_sim: ConvaiSim) -> ConvaiSim:
    running_sim.start()
    running_sim.reset()
    return running_sim


def client_for(sim: ConvaiSim, key: str = KEY, **options: Any) -> ConvaiClient:
    return ConvaiClient(sim.base_url, key, **{**FAST, **options})


def statuses(sim: ConvaiSim, op: str) -> list[int | None]:
    return [call.status for call in sim.calls_of(op)]


# -- the four calls ---------------------------------------------------------------------------


async def test_register_list_update_deregister(sim: ConvaiSim) -> None:
    async with client_for(sim) as client:
        assert await client.list_models() == ModelList((), sim.calls[-1].transaction_id)

        registered = await client.register(
            "my-turbo", "gpt-4o-mini", "sk-1", display_name="Turbo", base_url="http://a.test/v1"
        )
        listed = await client.list_models()
        updated = await client.update("my-turbo", base_url="http://b.test/v1", api_key="sk-2")
        after_update = await client.list_models()
        removed = await client.deregister("my-turbo")
        final = await client.list_models()

    assert registered == ConvaiReply(
        sim.calls_of("register")[0].transaction_id, "Model 'my-turbo' registered successfully"
    )
    (model,) = listed.models
    assert isinstance(model, RegisteredModel)
    assert model.model_group_name == "my-turbo"
    assert model.model_name == "gpt-4o-mini"
    assert model.display_name == "Turbo"
    assert model.base_url == "http://a.test/v1"
    assert model.is_uncensored is False
    assert model.category == "Private"
    assert model.created_at is not None
    assert listed.get("my-turbo") == model
    assert listed.get("nope") is None
    assert updated.updated_fields == ("base_url", "api_key")
    assert updated.message == "Model 'my-turbo' updated successfully"
    assert after_update.models[0].base_url == "http://b.test/v1"
    assert removed.message == "Model 'my-turbo' deregistered successfully"
    assert final.models == ()
    for reply in (registered, updated, removed, listed, final):
        assert reply.transaction_id is not None
        assert uuid.UUID(reply.transaction_id).version == 4


async def test_update_sets_the_endpoint_key(sim: ConvaiSim) -> None:
    sim.seed("g", "m", "sk-old")
    async with client_for(sim) as client:
        await client.update("g", api_key="sk-new", is_uncensored=True)

    stored = sim.record("g")
    assert stored is not None
    assert stored["api_key"] == "sk-new"
    assert stored["is_uncensored"] is True


async def test_register_omits_unset_optionals_so_convai_defaults_apply(sim: ConvaiSim) -> None:
    async with client_for(sim) as client:
        await client.register("g", "m", "sk", is_uncensored=True)

    assert sim.calls[-1].body == {
        "model_group_name": "g",
        "model_name": "m",
        "api_key": "sk",
        "is_uncensored": True,
    }
    stored = sim.record("g")
    assert stored is not None
    assert stored["display_name"] == "g"
    assert stored["base_url"] == "https://api.openai.com/v1"


async def test_update_sends_only_the_given_fields_and_never_model_name(sim: ConvaiSim) -> None:
    sim.seed("g", "m", "sk")
    async with client_for(sim) as client:
        await client.update("g", display_name="New")

    assert sim.calls[-1].body == {"model_group_name": "g", "display_name": "New"}


async def test_update_without_fields_is_refused_before_any_call(sim: ConvaiSim) -> None:
    async with client_for(sim) as client:
        with pytest.raises(ValueError, match="at least one field"):
            await client.update("g")

    assert sim.calls == []


async def test_trailing_slash_in_base_url_is_stripped(sim: ConvaiSim) -> None:
    async with ConvaiClient(sim.base_url + "/", KEY, **FAST) as client:
        assert client.base_url == sim.base_url
        await client.list_models()

    assert statuses(sim, "list") == [200]


# -- typed errors, no retry on 4xx ------------------------------------------------------------


async def test_error_carries_status_message_and_transaction_id(sim: ConvaiSim) -> None:
    async with client_for(sim) as client:
        with pytest.raises(ConvaiError) as caught:
            await client.update("nope", api_key="sk")

    error = caught.value
    transaction_id = sim.calls[-1].transaction_id
    assert error.op == "update"
    assert error.http_status == 404
    assert error.message == "Model not found"
    assert error.transaction_id == transaction_id
    assert error.retryable is False
    assert (
        str(error)
        == f"convai update failed: HTTP 404 Model not found (transactionID {transaction_id})"
    )
    assert not isinstance(error, ConvaiUnreachable)


async def test_duplicate_register_is_409_and_not_retried(sim: ConvaiSim) -> None:
    sim.seed("g", "m", "sk")
    async with client_for(sim) as client:
        with pytest.raises(ConvaiError) as caught:
            await client.register("g", "m", "sk")

    assert caught.value.http_status == 409
    assert caught.value.message == "Model group name already exists"
    assert statuses(sim, "register") == [409]


async def test_deregister_twice_is_404_and_not_retried(sim: ConvaiSim) -> None:
    sim.seed("g", "m", "sk")
    async with client_for(sim) as client:
        await client.deregister("g")
        with pytest.raises(ConvaiError) as caught:
            await client.deregister("g")

    assert caught.value.http_status == 404
    assert statuses(sim, "deregister") == [200, 404]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409])
async def test_other_4xx_are_not_retried(sim: ConvaiSim, status: int) -> None:
    sim.fail_next("list", status, times=5)
    async with client_for(sim) as client:
        with pytest.raises(ConvaiError) as caught:
            await client.list_models()

    assert caught.value.http_status == status
    assert caught.value.retryable is False
    assert statuses(sim, "list") == [status]


async def test_a_wrong_convai_key_is_401(sim: ConvaiSim) -> None:
    async with client_for(sim, key="not-a-key") as client:
        with pytest.raises(ConvaiError) as caught:
            await client.list_models()

    assert caught.value.http_status == 401
    assert caught.value.message == "Unauthorized: missing or invalid CONVAI-API-KEY"
    assert statuses(sim, "list") == [401]


async def test_http_200_with_status_error_is_an_error(sim: ConvaiSim) -> None:
    sim.fail_next("list", 200, message="Something odd")
    async with client_for(sim) as client:
        with pytest.raises(ConvaiError) as caught:
            await client.list_models()

    assert caught.value.http_status == 200
    assert caught.value.message == "Something odd"
    assert statuses(sim, "list") == [200]


# -- retries ----------------------------------------------------------------------------------


async def test_500_twice_then_success(sim: ConvaiSim) -> None:
    sim.seed("g", "m", "sk-old")
    sim.fail_next("update", 500, times=2)
    async with client_for(sim) as client:
        reply = await client.update("g", api_key="sk-new")

    assert reply.updated_fields == ("api_key",)
    assert statuses(sim, "update") == [500, 500, 200]
    stored = sim.record("g")
    assert stored is not None
    assert stored["api_key"] == "sk-new"


async def test_429_is_retried(sim: ConvaiSim) -> None:
    sim.fail_next("list", 429)
    async with client_for(sim) as client:
        await client.list_models()

    assert statuses(sim, "list") == [429, 200]


async def test_a_non_json_gateway_error_is_retried(sim: ConvaiSim) -> None:
    sim.fail_next("list", 502, raw="<html>Bad Gateway</html>")
    async with client_for(sim) as client:
        await client.list_models()

    assert statuses(sim, "list") == [502, 200]


async def test_persistent_5xx_fails_when_the_budget_runs_out(sim: ConvaiSim) -> None:
    sim.fail_next("list", 502, times=1000, raw="<html>Bad Gateway</html>")
    async with client_for(sim, retry_budget=0.3) as client:
        with pytest.raises(ConvaiError) as caught:
            await client.list_models()

    error = caught.value
    assert error.http_status == 502
    assert error.message == "Bad Gateway: non-JSON response"
    assert error.retryable is True
    assert error.attempts == len(sim.calls_of("list")) > 1
    assert str(error).endswith(f"after {error.attempts} attempts")


async def test_refused_connection_raises_unreachable_within_the_budget(sim: ConvaiSim) -> None:
    budget, timeout = 0.5, 0.5
    sim.refuse()
    try:
        async with client_for(sim, retry_budget=budget, timeout=timeout) as client:
            started = time.monotonic()
            with pytest.raises(ConvaiUnreachable) as caught:
                await client.list_models()
            elapsed = time.monotonic() - started
    finally:
        sim.restore()

    error = caught.value
    assert error.http_status is None
    assert error.transaction_id is None
    assert error.retryable is True
    assert error.attempts > 1
    assert "ConnectError" in str(error)
    assert elapsed < budget + timeout + 1.0


async def test_a_hung_call_times_out_and_is_retried(sim: ConvaiSim) -> None:
    sim.seed("g", "m", "sk-old")
    sim.hang_next("update")
    async with client_for(sim, timeout=0.2) as client:
        reply = await client.update("g", api_key="sk-new")

    assert reply.updated_fields == ("api_key",)
    assert statuses(sim, "update") == [None, 200]


async def test_the_retry_budget_bounds_a_call(sim: ConvaiSim) -> None:
    budget, timeout = 0.4, 0.2
    sim.hang_next("list", times=100)
    async with client_for(sim, retry_budget=budget, timeout=timeout) as client:
        started = time.monotonic()
        with pytest.raises(ConvaiUnreachable) as caught:
            await client.list_models()
        elapsed = time.monotonic() - started

    assert "Timeout" in caught.value.message
    assert caught.value.attempts >= 2
    # At most one attempt may start just before the budget ends and run its full timeout.
    assert elapsed < budget + timeout + 0.5


async def test_a_zero_budget_means_a_single_attempt(sim: ConvaiSim) -> None:
    sim.fail_next("list", 500, times=5)
    async with client_for(sim, retry_budget=0.0) as client:
        with pytest.raises(ConvaiError):
            await client.list_models()

    assert statuses(sim, "list") == [500]


# -- seams: transport -------------------------------------------------------------------------


async def test_redirects_are_not_followed() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(307, headers={"Location": "http://elsewhere.test/"})

    client = ConvaiClient("http://convai.test", KEY, transport=httpx.MockTransport(handler), **FAST)
    async with client:
        with pytest.raises(ConvaiError) as caught:
            await client.list_models()

    assert caught.value.http_status == 307
    assert len(seen) == 1


async def test_a_malformed_success_is_an_error_not_retried() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        models = [{"model_group_name": "g", "model_name": "m"}]  # no base_url
        return httpx.Response(200, json={"status": "success", "models": models, "count": 1})

    client = ConvaiClient("http://convai.test", KEY, transport=httpx.MockTransport(handler), **FAST)
    async with client:
        with pytest.raises(ConvaiError, match="malformed response") as caught:
            await client.list_models()

    assert caught.value.http_status == 200
    assert len(seen) == 1


# -- hooks and secrets ------------------------------------------------------------------------


async def test_on_call_reports_each_logical_call(sim: ConvaiSim) -> None:
    outcomes: list[tuple[str, str]] = []
    sim.fail_next("list", 500)

    def record(op: str, outcome: str) -> None:
        outcomes.append((op, outcome))

    async with client_for(sim, on_call=record, retry_budget=0.2) as c:
        await c.list_models()
        with pytest.raises(ConvaiError):
            await c.deregister("nope")
        sim.refuse()
        try:
            with pytest.raises(ConvaiUnreachable):
                await c.list_models()
        finally:
            sim.restore()

    assert outcomes == [("list", "success"), ("deregister", "error"), ("list", "unreachable")]


async def test_a_failing_on_call_hook_does_not_fail_the_call(sim: ConvaiSim) -> None:
    def broken(op: str, outcome: str) -> None:
        raise RuntimeError("metrics down")

    with capture_logs() as logs:
        async with client_for(sim, on_call=broken) as client:
            await client.list_models()

    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
        "convai_on_call_hook_failed"
    ]


async def test_keys_never_leak(sim: ConvaiSim) -> None:
    sim.seed("g", "m", "sk-old", convai_key=CANARY_CONVAI_KEY)
    errors: list[ConvaiError] = []
    with capture_logs() as logs:
        async with client_for(sim, key=CANARY_CONVAI_KEY, retry_budget=0.3) as client:
            # A retried 500 then a final 404, with an endpoint key in the body.
            sim.fail_next("update", 500)
            with pytest.raises(ConvaiError) as caught:
                await client.update("nope", api_key=CANARY_ENDPOINT_KEY)
            errors.append(caught.value)
            # Convai's own message repeating a secret must be masked.
            sim.fail_next("update", 500, message=f"bad key {CANARY_ENDPOINT_KEY}")
            sim.fail_next("update", 400, message=f"key {CANARY_CONVAI_KEY} is not allowed")
            with pytest.raises(ConvaiError) as caught:
                await client.update("g", api_key=CANARY_ENDPOINT_KEY)
            errors.append(caught.value)
            sim.fail_next("register", 503, times=1000)
            with pytest.raises(ConvaiError) as caught:
                await client.register("h", "m", CANARY_ENDPOINT_KEY)
            errors.append(caught.value)
            sim.refuse()
            try:
                with pytest.raises(ConvaiUnreachable) as unreachable:
                    await client.update("g", api_key=CANARY_ENDPOINT_KEY)
                errors.append(unreachable.value)
            finally:
                sim.restore()
            client_repr = repr(client)

    assert "***" in errors[1].message
    assert {e["event"] for e in logs} >= {"convai_call_retry", "convai_call_failed"}
    texts = [client_repr, repr(logs)]
    for error in errors:
        texts += [str(error), repr(error), repr(error.args), repr(vars(error))]
    for text in texts:
        assert CANARY_CONVAI_KEY not in text
        assert CANARY_ENDPOINT_KEY not in text


async def test_failure_logs_name_op_attempt_and_status(sim: ConvaiSim) -> None:
    sim.fail_next("list", 500)
    sim.fail_next("list", 404)
    with capture_logs() as logs:
        async with client_for(sim) as client:
            with pytest.raises(ConvaiError):
                await client.list_models()

    retry, failed = (e for e in logs if e["event"] in {"convai_call_retry", "convai_call_failed"})
    assert retry["event"] == "convai_call_retry"
    assert (retry["op"], retry["attempt"], retry["http_status"]) == ("list", 1, 500)
    assert failed["event"] == "convai_call_failed"
    assert (failed["op"], failed["attempts"], failed["http_status"]) == ("list", 2, 404)
    assert failed["transaction_id"] == sim.calls[-1].transaction_id


def test_constructor_validates_its_arguments() -> None:
    with pytest.raises(ValueError, match="base_url"):
        ConvaiClient("ftp://convai.test", KEY)
    with pytest.raises(ValueError, match="api_key"):
        ConvaiClient("http://convai.test", "")
    with pytest.raises(ValueError, match="timeout"):
        ConvaiClient("http://convai.test", KEY, timeout=0)
