"""Redaction masks secret values, never the words around them."""

from __future__ import annotations

import pytest

from monitor.redact import redact, redactor


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        # Config paths followed by a sentence: the sentence is the message.
        (
            "convai.api_key: environment variable CONVAI_API_KEY is not set",
            "convai.api_key: environment variable CONVAI_API_KEY is not set",
        ),
        (
            "Convai rejected convai.api_key: list failed: HTTP 401",
            "Convai rejected convai.api_key: list failed: HTTP 401",
        ),
        ("groups[0].endpoints[0].api_key: required", "groups[0].endpoints[0].api_key: required"),
        # Values that look like keys are masked even when nobody registered them.
        ("api_key=abc123def456", "api_key=***"),
        ('{"api_key": "Zx9kLmQpRtUv"}', '{"api_key": "***"}'),
        ("api_key: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "api_key: ***"),
        ("Authorization: Bearer tok3n-value", "Authorization: Bearer ***"),
        ("Authorization: Basic dXNlcjpwYXNz", "Authorization: Basic ***"),
        ("CONVAI-API-KEY: 245a4u6864dj6848516l2dr6df", "CONVAI-API-KEY: ***"),
        (
            "upstream said: Incorrect API key provided: sk-abc...wxyz",
            "upstream said: Incorrect API key provided: ***",
        ),
    ],
)
def test_values_masked_words_kept(text: str, shown: str) -> None:
    assert redact(text) == shown


def test_registered_secret_masked_anywhere_words_around_it_kept() -> None:
    redactor.register("plainlettersecret")
    assert redact("the key plainlettersecret was rejected") == "the key *** was rejected"
