"""Apprise targets: validation, identity and redaction. An apprise URL is a secret."""

from __future__ import annotations

import hashlib
from urllib.parse import parse_qsl, urlsplit

import apprise

# What looks like a token in a URL: long enough and not a plain word, so that ordinary
# path words ("webhook", "alerts") are not masked all over the logs.
_TOKEN_MIN = 8
_WORD_MAX = 20
_SECRET_MIN = 6


def _looks_secret(part: str) -> bool:
    if len(part) >= _WORD_MAX:
        return True
    if len(part) < _TOKEN_MIN:
        return False
    mixed_case = part.lower() != part and part.upper() != part
    return mixed_case or any(c.isdigit() for c in part)


def scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else "?"


def check_url(url: str) -> None:
    """Raise ValueError (without the URL in it) unless apprise understands the URL."""
    if not url.strip():
        raise ValueError("must not be empty")
    if "://" not in url:
        raise ValueError("not an apprise URL (expected scheme://...)")
    if apprise.Apprise.instantiate(url, suppress_exceptions=True) is None:
        raise ValueError(f"apprise does not understand this {scheme(url)}:// URL")


def target_id(url: str) -> str:
    """A stable, non-reversible name for a target, stored with each delivery."""
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def describe(index: int, url: str, name: str | None = None) -> str:
    """How a target is shown to people: its name or position, and scheme; nothing secret."""
    if name:
        return f"{name} (targets[{index}], {scheme(url)}://...)"
    return f"targets[{index}] ({scheme(url)}://...)"


def target_names(targets: list[tuple[str, str | None]]) -> dict[str, str]:
    """target id -> how it is shown, for (url, name) in config order."""
    return {target_id(url): describe(i, url, name) for i, (url, name) in enumerate(targets)}


def secret_parts(url: str) -> list[str]:
    """The URL and every part of it that could be a token, for the redactor."""
    parts = [url]
    try:
        split = urlsplit(url)
    except ValueError:
        return parts
    if split.password:
        parts.append(split.password)
    # Apprise puts tokens in the user and "host" of many schemes (slack://T000/B000/XXXX);
    # the host is taken from netloc because urlsplit lower-cases `hostname`. A real host
    # name (with a dot) is not secret; user names and query values always may be.
    host = split.netloc.rsplit("@", 1)[-1].split(":", 1)[0]
    always = [split.username or "", *(v for _k, v in parse_qsl(split.query))]
    parts.extend(p for p in always if len(p) >= _SECRET_MIN)
    maybe = [*split.path.split("/"), "" if "." in host else host]
    parts.extend(p for p in maybe if p and _looks_secret(p))
    return parts
