"""Every recorded error response of a real server, judged by the classifier and by the
real probe against the endpoint simulator serving that exact reply."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from monitor.config import Policy, Target
from monitor.domain.outcome import Outcome
from monitor.probes import ChatProber, Reply, classify
from monitor.sim.openai import EndpointSim

FIXTURES = Path(__file__).parent / "fixtures" / "errors"
REQUIRED = ("name", "status", "content_type", "source", "kind", "body")


@dataclass(frozen=True)
class Case:
    server: str
    name: str
    status: int
    content_type: str
    body: bytes
    kind: Outcome
    source: str


def _cases() -> list[Case]:
    cases = []
    for path in sorted(FIXTURES.glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        for raw in data["cases"]:
            missing = [k for k in REQUIRED if k not in raw]
            assert not missing, f"{path.name}: {raw.get('name')}: missing {missing}"
            cases.append(
                Case(
                    server=data["server"],
                    name=raw["name"],
                    status=int(raw["status"]),
                    content_type=raw["content_type"],
                    body=raw["body"].encode(),
                    kind=Outcome(raw["kind"]),
                    source=raw["source"],
                )
            )
    return cases


CASES = _cases()
IDS = [f"{c.server}: {c.name}" for c in CASES]


def test_the_table_covers_the_servers_and_cases_the_issue_names() -> None:
    servers = {c.server for c in CASES}
    for name in (
        "OpenAI", "Azure OpenAI", "vLLM", "Ollama", "Hugging Face TGI", "LiteLLM proxy",
        "OpenRouter", "Together AI", "Groq", "Fireworks AI", "llama.cpp server",
        "NVIDIA NIM", "Gemini (OpenAI compatibility)", "Mistral",
    ):  # fmt: skip
        assert name in servers, name
    kinds = {c.kind for c in CASES}
    for kind in (
        Outcome.AUTH_ERROR, Outcome.MODEL_NOT_FOUND, Outcome.RATE_LIMITED,
        Outcome.QUOTA_EXHAUSTED, Outcome.OVERLOADED, Outcome.PROBE_REJECTED,
        Outcome.HTTP_4XX, Outcome.HTTP_5XX, Outcome.BAD_RESPONSE, Outcome.OK,
    ):  # fmt: skip
        assert kind in kinds, kind
    # The shapes the issue lists: 400 for an unknown model, 400 for a key, 529, a 200
    # carrying an error, HTML, streams, a body that is a JSON array, an empty body.
    assert any(c.status == 400 and c.kind is Outcome.MODEL_NOT_FOUND for c in CASES)
    assert any(c.status == 400 and c.kind is Outcome.AUTH_ERROR for c in CASES)
    assert any(c.status == 529 for c in CASES)
    assert any(c.status == 200 and c.kind is Outcome.HTTP_5XX for c in CASES)
    assert any("html" in c.content_type for c in CASES)
    assert any(c.body.lstrip().startswith(b"[") for c in CASES)
    assert any(not c.body for c in CASES)
    assert sum("event-stream" in c.content_type for c in CASES) >= 3
    assert all(c.source.strip() for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_classifier_judges_every_recorded_reply(case: Case) -> None:
    judged = classify(Reply(case.status, case.body, case.content_type))
    assert judged.outcome is case.kind, judged.detail
    if case.kind is not Outcome.OK:
        assert judged.detail, "a failure must say what the server said"


@pytest.fixture(scope="module")
def served() -> Iterator[EndpointSim]:
    sim = EndpointSim(model="m", api_key="sk-fixture")
    sim.start()
    yield sim
    sim.stop()


@pytest.fixture
async def prober() -> AsyncIterator[ChatProber]:
    p = ChatProber(max_in_flight=4)
    yield p
    await p.aclose()


def _target(sim: EndpointSim, stream: bool) -> Target:
    return Target(
        group="g",
        endpoint="e",
        base_url=sim.base_url,
        api_key="sk-fixture",
        model="m",
        policy=Policy(interval=5.0, fast_interval=0.5, timeout=2.0, stream=stream),
        priority=0,
    )


@pytest.mark.parametrize("case", CASES, ids=IDS)
async def test_the_probe_judges_every_recorded_reply_over_http(
    case: Case, served: EndpointSim, prober: ChatProber
) -> None:
    served.canned(case.status, case.body, case.content_type)
    result = await prober.probe(_target(served, "event-stream" in case.content_type))
    assert result.outcome is case.kind, result.detail
    assert result.http_status == case.status
