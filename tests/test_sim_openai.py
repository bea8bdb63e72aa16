"""The simulated OpenAI endpoint does what each behaviour promises, seen through httpx."""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from monitor.sim.openai import HUGE_BODY_BYTES, Behaviour, EndpointSim, main

REPO_ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-test-0123456789abcd"
CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "ping"}], "max_tokens": 8}


@pytest.fixture
def sim() -> Iterator[EndpointSim]:
    with EndpointSim() as sim:
        yield sim


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    # trust_env=False: a proxy set in the environment must not intercept loopback traffic.
    # One client for the module: building its TLS context costs ~45 ms a time.
    with httpx.Client(timeout=5.0, trust_env=False) as client:
        yield client


def chat(client: httpx.Client, sim: EndpointSim, **changes: Any) -> httpx.Response:
    return client.post(f"{sim.base_url}/chat/completions", json={**CHAT, **changes})


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert isinstance(error["message"], str)
    return error


def test_ok_is_a_well_formed_chat_completion(sim: EndpointSim, client: httpx.Client) -> None:
    response = chat(client, sim)

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert isinstance(body["created"], int)
    assert body["model"] == "sim-model"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "OK"},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0
    assert usage["completion_tokens"] == 1
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_records_what_the_probe_sent(sim: EndpointSim, client: httpx.Client) -> None:
    # One tuple, so mypy does not narrow `last_request` to None for the rest of the test.
    assert (sim.requests, sim.last_request) == (0, None)

    client.post(
        f"{sim.base_url}/chat/completions",
        json={**CHAT, "stream": False},
        headers={"Authorization": f"Bearer {KEY}", "X-Trace": "t1"},
    )

    assert sim.requests == 1
    seen = sim.last_request
    assert seen is not None
    assert seen["path"] == "/v1/chat/completions"
    assert seen["headers"]["authorization"] == f"Bearer {KEY}"
    assert seen["headers"]["x-trace"] == "t1"
    assert seen["json"] == {**CHAT, "stream": False}


def test_stream_request_gets_server_sent_events(sim: EndpointSim, client: httpx.Client) -> None:
    response = chat(client, sim, stream=True)

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    first = json.loads(events[0])
    assert first["object"] == "chat.completion.chunk"
    assert first["choices"][0]["delta"]["content"] == "OK"


@pytest.mark.parametrize(
    ("behaviour", "status", "code"),
    [
        (Behaviour.HTTP_500, 500, None),
        (Behaviour.HTTP_503, 503, None),
        (Behaviour.RATE_LIMITED, 429, "rate_limit_exceeded"),
        (Behaviour.FORBIDDEN, 403, "forbidden"),
        (Behaviour.MODEL_NOT_FOUND, 404, "model_not_found"),
    ],
)
def test_error_behaviours_answer_openai_style_errors(
    sim: EndpointSim,
    client: httpx.Client,
    behaviour: Behaviour,
    status: int,
    code: str | None,
) -> None:
    sim.set(behaviour)

    response = chat(client, sim)

    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert error_of(response)["code"] == code


def test_rate_limited_says_when_to_retry(sim: EndpointSim, client: httpx.Client) -> None:
    sim.retry_after = 7
    sim.set(Behaviour.RATE_LIMITED)

    response = chat(client, sim)

    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"


def test_unauthorized_echoes_the_key_masked(sim: EndpointSim, client: httpx.Client) -> None:
    sim.set(Behaviour.UNAUTHORIZED)

    response = client.post(
        f"{sim.base_url}/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {KEY}"}
    )

    assert response.status_code == 401
    error = error_of(response)
    assert error["code"] == "invalid_api_key"
    assert error["type"] == "invalid_request_error"
    assert "sk-...abcd" in error["message"]
    assert KEY not in error["message"]


def test_echo_key_puts_the_whole_key_in_the_401(sim: EndpointSim, client: httpx.Client) -> None:
    sim.echo_key = True
    sim.set(Behaviour.UNAUTHORIZED)

    response = client.post(
        f"{sim.base_url}/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {KEY}"}
    )

    assert response.status_code == 401
    assert KEY in error_of(response)["message"]


def test_bad_key_400_says_the_key_is_invalid(sim: EndpointSim, client: httpx.Client) -> None:
    sim.set(Behaviour.BAD_KEY_400)

    response = chat(client, sim)

    assert response.status_code == 400
    error = error_of(response)
    assert "API key not valid" in error["message"]
    assert error["code"] == "invalid_api_key"


def test_probe_rejected_blames_max_tokens(sim: EndpointSim, client: httpx.Client) -> None:
    sim.set(Behaviour.PROBE_REJECTED)

    response = chat(client, sim)

    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == "max_tokens"
    assert "max_tokens" in error["message"]


def test_garbage_is_not_json(sim: EndpointSim, client: httpx.Client) -> None:
    sim.set(Behaviour.GARBAGE)

    response = chat(client, sim)

    assert response.status_code == 200
    with pytest.raises(ValueError, match=r"."):
        json.loads(response.content)


def test_html_is_a_web_page(sim: EndpointSim, client: httpx.Client) -> None:
    sim.set(Behaviour.HTML)

    response = chat(client, sim)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.text.lstrip().lower().startswith("<!doctype html>")


def test_no_choices_is_an_empty_choice_list(sim: EndpointSim, client: httpx.Client) -> None:
    sim.set(Behaviour.NO_CHOICES)

    response = chat(client, sim)

    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["choices"] == []


def test_huge_sends_twenty_megabytes_of_json(sim: EndpointSim, client: httpx.Client) -> None:
    sim.set(Behaviour.HUGE)

    response = chat(client, sim)

    assert response.status_code == 200
    length = int(response.headers["content-length"])
    assert length > HUGE_BODY_BYTES
    assert len(response.content) == length
    assert response.json()["object"] == "chat.completion"


def test_endless_streams_until_the_client_leaves(sim: EndpointSim, client: httpx.Client) -> None:
    sim.set(Behaviour.ENDLESS)
    received = 0

    with client.stream("POST", f"{sim.base_url}/chat/completions", json=CHAT) as response:
        assert response.status_code == 200
        assert response.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in response.headers
        for chunk in response.iter_bytes():
            received += len(chunk)
            if received > 300_000:
                break

    assert received > 300_000
    # The sim survives the client walking out.
    sim.set(Behaviour.OK)
    assert chat(client, sim).status_code == 200


def test_endless_stops_with_the_sim(client: httpx.Client) -> None:
    sim = EndpointSim(behaviour=Behaviour.ENDLESS)
    sim.start()
    try:
        with client.stream("POST", f"{sim.base_url}/chat/completions", json=CHAT) as response:
            assert response.status_code == 200
            started = time.monotonic()
            sim.stop()
            assert time.monotonic() - started < 2.0
            with pytest.raises(httpx.RemoteProtocolError):
                for _ in response.iter_bytes():
                    pass
    finally:
        sim.stop()


def test_redirect_points_elsewhere(sim: EndpointSim, client: httpx.Client) -> None:
    sim.set(Behaviour.REDIRECT)

    response = chat(client, sim)

    assert response.status_code == 302
    assert response.headers["location"] == f"{sim.origin}/login"
    sim.redirect_to = "https://portal.example/login"
    assert chat(client, sim).headers["location"] == "https://portal.example/login"


def test_refuse_then_restore_on_the_same_port(sim: EndpointSim, client: httpx.Client) -> None:
    port, base_url = sim.port, sim.base_url
    # A pooled keep-alive connection must not outlive the refusal.
    assert chat(client, sim).status_code == 200

    sim.set(Behaviour.REFUSE)
    with pytest.raises(httpx.ConnectError):
        chat(client, sim)
    with pytest.raises(httpx.ConnectError):
        chat(client, sim)

    sim.set(Behaviour.OK)
    assert (sim.port, sim.base_url) == (port, base_url)
    assert chat(client, sim).status_code == 200


def test_a_sim_can_start_refusing(client: httpx.Client) -> None:
    with EndpointSim(behaviour=Behaviour.REFUSE) as sim:
        with pytest.raises(httpx.ConnectError):
            chat(client, sim)
        sim.set(Behaviour.OK)
        assert chat(client, sim).status_code == 200


def test_hang_times_out_and_stop_releases_it(client: httpx.Client) -> None:
    sim = EndpointSim(behaviour=Behaviour.HANG)
    sim.start()
    try:
        with pytest.raises(httpx.ReadTimeout):
            client.post(f"{sim.base_url}/chat/completions", json=CHAT, timeout=0.3)
        assert sim.requests == 1
    finally:
        started = time.monotonic()
        sim.stop()
        elapsed = time.monotonic() - started
    assert elapsed < 2.0


def test_set_releases_a_hanging_request(sim: EndpointSim) -> None:
    sim.set(Behaviour.HANG)
    errors: list[Exception] = []

    def hang() -> None:
        with httpx.Client(timeout=5.0, trust_env=False) as own:
            try:
                chat(own, sim)
            except httpx.HTTPError as exc:
                errors.append(exc)

    thread = threading.Thread(target=hang)
    thread.start()
    deadline = time.monotonic() + 2.0
    while sim.requests == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    sim.set(Behaviour.OK)
    thread.join(timeout=2.0)

    assert not thread.is_alive()
    # Released, the hanging handler hangs up rather than answering late.
    assert len(errors) == 1
    assert isinstance(errors[0], httpx.RemoteProtocolError)


def test_script_applies_in_order_then_falls_back(sim: EndpointSim, client: httpx.Client) -> None:
    sim.script([Behaviour.HTTP_503, Behaviour.RATE_LIMITED, Behaviour.HTML])

    statuses = [chat(client, sim).status_code for _ in range(5)]

    assert statuses == [503, 429, 200, 200, 200]
    assert sim.requests == 5


def test_scripted_refuse_hangs_up(sim: EndpointSim, client: httpx.Client) -> None:
    sim.script([Behaviour.REFUSE])

    with pytest.raises(httpx.RemoteProtocolError):
        chat(client, sim)
    assert chat(client, sim).status_code == 200


def test_wrong_or_missing_key_gets_401(client: httpx.Client) -> None:
    with EndpointSim(api_key=KEY) as sim:
        url = f"{sim.base_url}/chat/completions"
        wrong = client.post(url, json=CHAT, headers={"Authorization": "Bearer sk-wrong-key-9999"})
        missing = client.post(url, json=CHAT)
        right = client.post(url, json=CHAT, headers={"Authorization": f"Bearer {KEY}"})

    assert wrong.status_code == 401
    assert error_of(wrong)["code"] == "invalid_api_key"
    assert "sk-...9999" in error_of(wrong)["message"]
    assert missing.status_code == 401
    assert "didn't provide an API key" in error_of(missing)["message"]
    assert right.status_code == 200


def test_wrong_model_gets_404_naming_it(sim: EndpointSim, client: httpx.Client) -> None:
    response = chat(client, sim, model="gpt-elsewhere")

    assert response.status_code == 404
    error = error_of(response)
    assert error["code"] == "model_not_found"
    assert "`gpt-elsewhere`" in error["message"]


def test_body_that_is_not_json_gets_400(sim: EndpointSim, client: httpx.Client) -> None:
    response = client.post(f"{sim.base_url}/chat/completions", content=b"{nope")

    assert response.status_code == 400
    assert error_of(response)["type"] == "invalid_request_error"


@pytest.mark.parametrize("prefix", ["/v1", "/e17/v1", "/openai/deployments/x", ""])
def test_any_prefix_before_chat_completions_works(
    sim: EndpointSim, client: httpx.Client, prefix: str
) -> None:
    response = client.post(f"{sim.origin}{prefix}/chat/completions?api-version=1", json=CHAT)

    assert response.status_code == 200
    last = sim.last_request
    assert last is not None
    assert last["path"] == f"{prefix}/chat/completions"


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/completions"), ("GET", "/v1/chat/completions"), ("GET", "/")],
)
def test_other_paths_and_methods_get_404_json(
    sim: EndpointSim, client: httpx.Client, method: str, path: str
) -> None:
    response = client.request(
        method, f"{sim.origin}{path}", json=CHAT if method == "POST" else None
    )

    assert response.status_code == 404
    assert f"Invalid URL ({method} {path})" in error_of(response)["message"]
    assert sim.requests == 0


def test_delay_is_honoured(sim: EndpointSim, client: httpx.Client) -> None:
    sim.set(Behaviour.OK, delay=0.3)
    started = time.monotonic()
    ok = chat(client, sim)
    slow_ok = time.monotonic() - started

    sim.set(Behaviour.HTTP_500)  # delay stays until changed
    started = time.monotonic()
    failed = chat(client, sim)
    slow_error = time.monotonic() - started

    assert ok.status_code == 200
    assert failed.status_code == 500
    assert sim.delay == 0.3
    # Lower bounds are the point; the upper bounds only catch a delay applied twice.
    assert 0.3 <= slow_ok < 0.55
    assert 0.3 <= slow_error < 0.55


def test_keep_alive_answers_do_not_stall(sim: EndpointSim, client: httpx.Client) -> None:
    # With Nagle's algorithm on, each keep-alive answer waited ~40 ms for a delayed ACK
    # (20 requests: ~0.9 s); without it they take a few ms. The bound leaves 10x slack.
    started = time.monotonic()
    for _ in range(20):
        assert chat(client, sim).status_code == 200
    assert time.monotonic() - started < 0.5


def test_stop_is_idempotent_and_port_needs_start() -> None:
    sim = EndpointSim()
    with pytest.raises(RuntimeError, match="start"):
        _ = sim.base_url
    sim.start()
    sim.stop()
    sim.stop()


def test_main_rejects_an_unknown_behaviour(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--behaviour", "on_fire"])
    assert exit_info.value.code == 2
    assert "on_fire" in capsys.readouterr().err


def _start_cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "monitor.sim.openai", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )


def _first_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 10.0)
    assert ready, "the sim printed nothing within 10 s"
    return proc.stdout.readline().strip()


def test_cli_prints_its_origin_and_exits_on_stdin_eof(client: httpx.Client) -> None:
    with _start_cli("--port", "0", "--delay", "0.05", "--model", "m") as proc:
        origin = _first_line(proc)
        assert origin.startswith("http://127.0.0.1:")
        assert int(origin.rsplit(":", 1)[1]) > 0

        response = client.post(f"{origin}/e3/v1/chat/completions", json={**CHAT, "model": "m"})
        assert response.status_code == 200
        assert response.json()["model"] == "m"

        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait(timeout=5) == 0


def test_cli_exits_cleanly_on_sigterm() -> None:
    with _start_cli("--behaviour", "hang") as proc:
        _first_line(proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0


def test_flaky_fails_about_the_given_share() -> None:
    with EndpointSim() as sim, httpx.Client(trust_env=False, timeout=5) as client:
        sim.flaky(0.3, seed=7)
        statuses = [
            client.post(
                f"{sim.base_url}/chat/completions",
                json={"model": "sim-model", "messages": []},
            ).status_code
            for _ in range(200)
        ]
    failures = statuses.count(500)
    assert statuses.count(200) + failures == 200
    assert 35 <= failures <= 85


def agent(instance: str) -> dict[str, str]:
    return {"User-Agent": f"convai-monitor/9.9.9 (instance {instance})"}


def test_standalone_sim_takes_behaviour_changes_on_stdin() -> None:
    command = [sys.executable, "-m", "monitor.sim.openai", "--model", "m"]
    pipe = subprocess.PIPE
    with subprocess.Popen(command, stdin=pipe, stdout=pipe, text=True) as proc:
        assert proc.stdin is not None
        assert proc.stdout is not None
        try:
            origin = proc.stdout.readline().strip()
            url = f"{origin}/v1/chat/completions"
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            assert httpx.post(url, json=body).status_code == 200
            proc.stdin.write("set invalid_model_400\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "ok"
            reply = httpx.post(url, json=body)
            assert reply.status_code == 400
            assert "Invalid model name" in reply.json()["error"]["message"]
            proc.stdin.write("flaky 1.0 http_503\nset ok\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "ok"
            assert proc.stdout.readline().strip() == "ok"
            assert httpx.post(url, json=body).status_code == 503
            # One monitor instance's path fails, the others' do not.
            proc.stdin.write("for east http_503\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "ok"
            proc.stdin.write("set ok\nflaky 0\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "ok"
            assert proc.stdout.readline().strip() == "ok"
            assert httpx.post(url, json=body, headers=agent("east")).status_code == 503
            assert httpx.post(url, json=body, headers=agent("west")).status_code == 200
            proc.stdin.write("for east -\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "ok"
            assert httpx.post(url, json=body, headers=agent("east")).status_code == 200
            proc.stdin.write("explode now\n")
            proc.stdin.flush()
            assert proc.stdout.readline().startswith("error:")
        finally:
            proc.terminate()


def test_set_for_fails_one_monitor_instance_only(sim: EndpointSim, client: httpx.Client) -> None:
    url = f"{sim.base_url}/chat/completions"
    sim.set_for("east", Behaviour.HTTP_503)
    sim.set_for("west", Behaviour.REFUSE)

    assert client.post(url, json=CHAT, headers=agent("east")).status_code == 503
    with pytest.raises(httpx.RemoteProtocolError):  # hung up unanswered
        client.post(url, json=CHAT, headers=agent("west"))
    # Another instance, an instance whose name only starts the same, and a caller that
    # is not a monitor at all are all served as usual.
    assert client.post(url, json=CHAT, headers=agent("north")).status_code == 200
    assert client.post(url, json=CHAT, headers=agent("east-2")).status_code == 200
    assert chat(client, sim).status_code == 200
    # It wins over the sim-wide behaviour and over a script, and is cleared with None.
    sim.set(Behaviour.HTTP_500)
    assert client.post(url, json=CHAT, headers=agent("east")).status_code == 503
    sim.set_for("east", None)
    sim.set(Behaviour.OK)
    assert client.post(url, json=CHAT, headers=agent("east")).status_code == 200
    assert sim.last_request is not None
    assert sim.last_request["headers"]["user-agent"].endswith("(instance east)")


def test_set_for_releases_a_hanging_request(sim: EndpointSim) -> None:
    sim.set_for("east", Behaviour.HANG)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            with httpx.Client(timeout=10.0, trust_env=False) as c:
                c.post(f"{sim.base_url}/chat/completions", json=CHAT, headers=agent("east"))
        except httpx.HTTPError as exc:
            errors.append(exc)

    thread = threading.Thread(target=call)
    started = time.monotonic()
    thread.start()
    deadline = time.monotonic() + 5
    while sim.requests == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    sim.set_for("east", None)
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert time.monotonic() - started < 5
    assert errors
    assert isinstance(errors[0], httpx.RemoteProtocolError)
