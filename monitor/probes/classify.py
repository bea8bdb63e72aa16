"""Judge one HTTP reply of an OpenAI-compatible server: which outcome kind it is.

Real servers disagree about errors (tests/fixtures/errors holds what they really send):
an unknown model is a 404 at OpenAI, vLLM and Ollama but a 400 at LiteLLM, OpenRouter,
Mistral, Together and Groq; a bad key is 401 at most, 403 at some, 400 at Gemini and at
LiteLLM without a key database; bodies come as `{"error": {...}}`, `{"error": "..."}`, a
flat `{"object": "error", "message": ...}`, `{"detail": ...}`, `{"status", "title",
"detail"}`, a JSON array, nothing at all, or an HTML page. So the message is read from
every shape, and matched on phrases, never on single words such as "model" (OpenAI's
parameter errors and every context-length error contain it).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any

from monitor.domain.outcome import Outcome

DETAIL_MAX = 300

# The request fields a probe sends; a 400/422 naming one of them is about the probe, not
# about whether the endpoint serves Convai (max_new_tokens is TGI's name for max_tokens).
PROBE_PARAMS = (
    "max_completion_tokens",
    "max_new_tokens",
    "max_tokens",
    "temperature",
    "stream",
    "messages",
)
# "stream" and "messages" are everyday words; they count only quoted or as `param`.
_PARAM_BARE = re.compile(r"\b(max_completion_tokens|max_new_tokens|max_tokens|temperature)\b")
_PARAM_QUOTED = re.compile(r"['\"`](stream|messages)['\"`]")
_CONTEXT = re.compile(
    r"maximum context length|context length|context size|context window|"
    r"context_length_exceeded|exceed_context_size|prompt is too long"
)
_AUTH = re.compile(
    r"api[ _-]?key|invalid_api_key|api_key_invalid|authenticat|unauthori[sz]ed|"
    r"no connected db|virtual key|bearer token|access token|credentials|permission denied"
)
_MODEL_GONE = re.compile(
    r"invalid model|not a valid model|model[ _]not[ _]exist|model_not_found|model not found|"
    r"unknown model|no such model|model_not_available|decommissioned|"
    r"deploymentnotfound|deployment for this resource does not exist|"
    r"non-serverless model|not served|not deployed|not found for account|"
    r"models/\S+ is not found|"
    r"model\W+\S+\W+(?:does not exist|not found|is not found|doesn't exist|is not available|"
    r"is not supported by|not available)|"
    r"model\s+\S+\s+is not (?:a )?(?:valid|supported|available)"
)
_QUOTA = re.compile(
    r"insufficient_quota|exceeded your current quota|quota exceeded|quota has been exceeded|"
    r"billing|credit|insufficient balance|insufficient funds|payment required|"
    r"budget has been exceeded|budget_exceeded|spend limit|per day|per-day|daily limit"
)
# A quota that refills within the minute is a rate limit, whatever it is called
# (Gemini's free tier says "exceeded your current quota" with "Please retry in 41s").
_REFILLS = re.compile(
    r"retry in|try again in|retrydelay|per minute|per min\b|\(rpm\)|\(tpm\)|"
    r"requests per min|tokens per min|perminute"
)
_OVERLOADED = re.compile(r"overload|capacity|too many requests in queue|queue is full")


@dataclass(frozen=True, slots=True)
class Reply:
    """What came back for one request, as raw as a probe can keep it."""

    status: int
    body: bytes
    content_type: str = "application/json"
    location: str | None = None
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class Classified:
    outcome: Outcome
    detail: str | None = None
    data: dict[str, Any] | None = None  # the completion (or first stream chunk) when OK
    rejected: tuple[str, ...] = ()  # probe parameters a PROBE_REJECTED reply names


@dataclass(frozen=True, slots=True)
class ErrorText:
    message: str  # for people: the server's own words, shortened
    haystack: str  # for matching: every string field, lower-cased
    param: str | None = None
    code: int | None = None  # an HTTP-like code carried inside the body


def classify(reply: Reply) -> Classified:
    status = reply.status
    if 300 <= status < 400:
        # Convai would not follow a redirect to a place nobody registered either.
        where = reply.location or "?"
        return Classified(Outcome.REDIRECT, f"HTTP {status} to {where} (not followed)")
    if status != 200:
        return judge_error(status, read_error(reply.body, reply.content_type))
    if reply.truncated:
        return Classified(Outcome.BAD_RESPONSE, "response body over the size cap")
    kind = reply.content_type.lower()
    if "html" in kind:
        return Classified(Outcome.BAD_RESPONSE, "HTML instead of JSON (a proxy or login page?)")
    if "event-stream" in kind:
        return read_stream(reply.body)
    try:
        data = json.loads(reply.body)
    except ValueError:
        return Classified(Outcome.BAD_RESPONSE, "not JSON")
    if not isinstance(data, dict):
        return Classified(Outcome.BAD_RESPONSE, "JSON is not an object")
    if "error" in data and not data.get("choices"):
        # A 200 whose body is an error (OpenRouter relays upstream failures this way).
        return _embedded_error(data, "HTTP 200 carrying an error")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        return Classified(Outcome.BAD_RESPONSE, "no choices in the completion")
    first = choices[0]
    if not isinstance(first, dict) or not isinstance(first.get("message"), dict):
        return Classified(Outcome.BAD_RESPONSE, "choice without a message")
    return Classified(Outcome.OK, None, data)


def judge_error(status: int, text: ErrorText) -> Classified:
    """An error status and what its body says, to an outcome kind."""
    hay = text.haystack
    detail = f"HTTP {status}: {text.message}"
    if status in (400, 422):
        # Parameter rules first: "max_tokens is not supported with this model" and
        # "This model's maximum context length is ..." are about the request.
        rejected = rejected_params(text)
        if rejected:
            return Classified(Outcome.PROBE_REJECTED, detail, rejected=rejected)
        if _AUTH.search(hay):
            return Classified(Outcome.AUTH_ERROR, detail)
        if _MODEL_GONE.search(hay):
            return Classified(Outcome.MODEL_NOT_FOUND, detail)
        if _QUOTA.search(hay):
            return Classified(Outcome.QUOTA_EXHAUSTED, detail)
        return Classified(Outcome.HTTP_4XX, detail)
    if status in (401, 407):
        return Classified(Outcome.AUTH_ERROR, detail)
    if status == 402:
        return Classified(Outcome.QUOTA_EXHAUSTED, detail)
    if status == 403:
        if _QUOTA.search(hay):
            return Classified(Outcome.QUOTA_EXHAUSTED, detail)
        return Classified(Outcome.AUTH_ERROR, detail)
    if status == 404:
        if _MODEL_GONE.search(hay):
            return Classified(Outcome.MODEL_NOT_FOUND, detail)
        return Classified(Outcome.HTTP_4XX, f"HTTP 404 (check base_url): {text.message}")
    if status == 429:
        if _QUOTA.search(hay) and not _REFILLS.search(hay):
            return Classified(Outcome.QUOTA_EXHAUSTED, detail)
        if _OVERLOADED.search(hay):
            return Classified(Outcome.OVERLOADED, detail)
        return Classified(Outcome.RATE_LIMITED, detail)
    if status == 529 or (status == 503 and _OVERLOADED.search(hay)):
        return Classified(Outcome.OVERLOADED, detail)
    if status >= 500:
        return Classified(Outcome.HTTP_5XX, detail)
    return Classified(Outcome.HTTP_4XX, detail)


def rejected_params(text: ErrorText) -> tuple[str, ...]:
    """The probe parameters a 400/422 blames, if it blames any."""
    hay = text.haystack
    named: list[str] = []
    if text.param is not None:
        param = text.param.lower().split(".")[-1]
        if param in PROBE_PARAMS:
            named.append(param)
    named += _PARAM_BARE.findall(hay)
    named += _PARAM_QUOTED.findall(hay)
    if _CONTEXT.search(hay):
        named.append("max_tokens")  # the probe's prompt is tiny: its budget is what is big
    return tuple(dict.fromkeys(named))


def _embedded_error(data: Any, where: str) -> Classified:
    text = read_error_data(data)
    if text.code is not None and 400 <= text.code < 600:
        judged = judge_error(text.code, text)
        return Classified(
            judged.outcome, f"{where} {text.code}: {text.message}", rejected=judged.rejected
        )
    return Classified(Outcome.BAD_RESPONSE, f"{where}: {text.message}")


# --- reading bodies ------------------------------------------------------------------


def read_error(body: bytes, content_type: str = "") -> ErrorText:
    raw = body[:8192].decode("utf-8", "replace")
    if not raw.strip():
        return ErrorText("(empty body)", "")
    if "html" in content_type.lower() or raw.lstrip().startswith("<"):
        words = _html_text(raw)
        return ErrorText(f"HTML page: {words}"[:DETAIL_MAX], words.lower())
    try:
        data = json.loads(raw)
    except ValueError:
        flat = " ".join(raw.split())
        return ErrorText(flat[:DETAIL_MAX], flat.lower())
    return read_error_data(data)


def read_error_data(data: Any) -> ErrorText:
    """The message, the matching text, `param` and any code, from any error shape."""
    if isinstance(data, list) and data:
        return read_error_data(data[0])  # Gemini wraps its error object in an array
    strings: list[str] = []
    _strings(data, strings)
    haystack = " ".join(strings).lower()
    if not isinstance(data, dict):
        text = " ".join(strings) or json.dumps(data)
        return ErrorText(text[:DETAIL_MAX], haystack)
    error = data.get("error")
    inner = error if isinstance(error, dict) else data
    message = _first_text(
        inner.get("message"),
        error if isinstance(error, str) else None,
        inner.get("detail"),
        inner.get("title"),
        data.get("message"),
        data.get("detail"),
        data.get("title"),
    )
    if isinstance(error, str) and message != error:
        message = f"{error}: {message}" if message else error
    if inner is data and "title" in data and "detail" in data:
        message = f"{_first_text(data.get('title'))}: {_first_text(data.get('detail'))}"
    code_text = _first_text(inner.get("code"), inner.get("type"), inner.get("error_type"))
    shown = message or " ".join(strings) or "(no message)"
    if code_text and code_text not in shown:
        shown = f"{shown} | {code_text}"
    param = inner.get("param")
    return ErrorText(
        message=" ".join(shown.split())[:DETAIL_MAX],
        haystack=haystack,
        param=param if isinstance(param, str) and param not in ("", "None") else None,
        code=_int_code(inner.get("code"), inner.get("status"), data.get("status")),
    )


def _strings(node: Any, out: list[str], depth: int = 0) -> None:
    if depth > 6 or len(out) > 64:
        return
    if isinstance(node, str):
        out.append(node)
    elif isinstance(node, dict):
        for value in node.values():
            _strings(value, out, depth + 1)
    elif isinstance(node, list):
        for value in node:
            _strings(value, out, depth + 1)
    elif isinstance(node, int | float) and not isinstance(node, bool):
        out.append(str(node))


def _first_text(*values: Any) -> str:
    for value in values:
        if isinstance(value, str) and value.strip():
            return value.strip()
        if isinstance(value, list) and value:
            # FastAPI / pydantic: [{"loc": [...], "msg": "...", "type": ...}, ...]
            parts = [str(v.get("msg") or v.get("message") or v) for v in value if v]
            return "; ".join(parts)
        if isinstance(value, dict) and value:
            return _first_text(value.get("message"), value.get("detail"), json.dumps(value))
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
    return ""


def _int_code(*values: Any) -> int | None:
    for value in values:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.isdigit():
            return int(value)
    return None


class _TextOnly(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.words: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.words.extend(data.split())


def _html_text(raw: str) -> str:
    parser = _TextOnly()
    parser.feed(raw)
    return " ".join(parser.words)[:DETAIL_MAX]


# --- streams -------------------------------------------------------------------------


def read_stream(body: bytes) -> Classified:
    """A streamed completion, judged as `StreamReader` judges it while it arrives."""
    reader = StreamReader()
    for event in sse_events(body):
        if reader.feed(event) is not None:
            break
    return reader.verdict()


def sse_events(body: bytes) -> list[str]:
    """The `data:` payloads of complete events (an event ends at a blank line)."""
    text = body.decode("utf-8", "replace").replace("\r\n", "\n")
    events = []
    for block in text.split("\n\n"):
        data = [line[5:].strip() for line in block.split("\n") if line.startswith("data:")]
        if data:
            events.append("\n".join(data))
    return events


class StreamReader:
    """Reads a chat stream event by event until its verdict is certain.

    The first chunk with a role or content is the first token (`started`); the stream
    passes once it carries content or finishes. Chunks whose `choices` is empty (Azure's
    `prompt_filter_results`, usage-only chunks) or that carry only content-filter
    annotations are read past; an `error` event fails it, as it fails a character.
    """

    def __init__(self) -> None:
        self.started = False
        self.decided: Classified | None = None
        self._first: dict[str, Any] | None = None

    def feed(self, payload: str) -> Classified | None:
        """Take one event; return the verdict once it is certain."""
        if self.decided is None:
            self.decided = self._judge(payload)
        return self.decided

    def verdict(self) -> Classified:
        if self.decided is not None:
            return self.decided
        if self.started:  # the body ended (or was cut) after the first token
            return Classified(Outcome.OK, None, self._first)
        return Classified(Outcome.BAD_RESPONSE, "the stream carried no content")

    def _judge(self, payload: str) -> Classified | None:
        if payload == "[DONE]":
            return self.verdict()
        try:
            chunk = json.loads(payload)
        except ValueError:
            return Classified(Outcome.BAD_RESPONSE, "a stream chunk that is not JSON")
        if not isinstance(chunk, dict):
            return Classified(Outcome.BAD_RESPONSE, "a stream chunk that is not an object")
        if "error" in chunk:
            judged = _embedded_error(chunk, "error event mid-stream")
            if judged.outcome is Outcome.BAD_RESPONSE:
                return Classified(Outcome.HTTP_5XX, judged.detail)
            return judged
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            return Classified(Outcome.BAD_RESPONSE, "a stream chunk without choices")
        for choice in choices:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if not isinstance(delta, dict):
                continue
            opens = delta.get("role") or delta.get("content") is not None
            if opens and not self.started:
                self.started, self._first = True, chunk
            if delta.get("content") or delta.get("tool_calls") or choice.get("finish_reason"):
                return Classified(Outcome.OK, None, self._first or chunk)
        return None
