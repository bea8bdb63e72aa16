"""One registry of secrets, and the redaction every output path applies.

Endpoint keys, the Convai key and apprise URLs are registered when the config is loaded;
logs, stored probe details and CLI output pass through `redact` so a secret echoed back by
an upstream (OpenAI's 401 quotes part of the key) never leaks further.
"""

from __future__ import annotations

import re
import threading

MASK = "***"

# Shorter values are not worth masking inside arbitrary text: they would shred ordinary
# words, and a key that short is not a real key.
_MIN_SECRET_LEN = 6
# Bearer tokens and key-looking tokens are masked even when nobody registered them.
_PATTERNS = (
    re.compile(r"(?i)(bearer\s+)[^\s\"',;]+"),
    re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?basic\s+)[^\s\"',;]+"),
    re.compile(r"\bsk-[A-Za-z0-9_\-*.]{6,}"),
)
# `api_key: VALUE`: the value is masked, but only when it looks like one. The same shape
# is a config path followed by a sentence ("convai.api_key: environment variable ... is
# not set"), and masking the sentence's first word tells the reader nothing.
_KEYED = re.compile(
    r"(?i)((?:api[_-]?key|convai-api-key|authorization)[\"']?\s*[:=]\s*[\"']?)([^\s\"',;]+)"
)
# Plain words are letters only, in lower case or capitalised; a key has digits, symbols,
# mixed case, or is long.
_WORD = re.compile(r"[A-Za-z][a-z]{0,23}")


def _mask_value(match: re.Match[str]) -> str:
    if _WORD.fullmatch(match.group(2)):
        return match.group(0)
    return match.group(1) + MASK


class Redactor:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: tuple[str, ...] = ()

    def register(self, *secrets: str | None) -> None:
        with self._lock:
            known = set(self._secrets)
            known.update(s for s in secrets if s and len(s) >= _MIN_SECRET_LEN)
            # Longest first, so a secret that contains another is masked whole.
            self._secrets = tuple(sorted(known, key=len, reverse=True))

    def clear(self) -> None:
        with self._lock:
            self._secrets = ()

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        for pattern in _PATTERNS:
            text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + MASK, text)
        return _KEYED.sub(_mask_value, text)


redactor = Redactor()


def redact(text: str) -> str:
    return redactor.redact(text)
