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
    re.compile(
        r"(?i)((?:api[_-]?key|convai-api-key|authorization)[\"']?\s*[:=]\s*[\"']?)[^\s\"',;]+"
    ),
    re.compile(r"\bsk-[A-Za-z0-9_\-*.]{6,}"),
)


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
        return text


redactor = Redactor()


def redact(text: str) -> str:
    return redactor.redact(text)
