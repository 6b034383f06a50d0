"""The literal search for marker-free texts gives what the full pattern gives, and spares compiling it."""

from __future__ import annotations

import html
import json
import random
import re
from urllib.parse import quote, quote_plus

import pytest

from prestop_agent import masking
from prestop_agent.masking import MASK, NET_MIN, SHORT, WITHHELD, Secrets

ALPHABET = "abcXYZ019 /\"'\\%&+=:.-_é€😀<>"
PLAIN = "abcdefXYZ0123 .:-_=/"


def reference_foreign(secrets: list[str], text: str) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        pattern = masking._pattern(secret)
        if len(secret) < SHORT:
            if pattern.search(text):
                return WITHHELD
            continue
        text = pattern.sub(MASK, text)
    return text


def reference_net(secrets: list[str], text: str) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= NET_MIN:
            text = masking._pattern(secret).sub(MASK, text)
    return text


def encodings(secret: str) -> list[str]:
    return [
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        json.dumps(json.dumps(secret)[1:-1])[1:-1],
        quote(secret, safe=""),
        quote_plus(secret),
        html.escape(secret),
        "".join(f"&#{ord(c)};" for c in secret),
    ]


def texts(rng: random.Random, secret: str) -> list[str]:
    filler = ["".join(rng.choice(PLAIN) for _ in range(rng.randint(0, 12))) for _ in range(3)]
    return [
        *(f"{filler[0]}{form}{filler[1]}{form}{filler[2]}" for form in encodings(secret)),
        f"{filler[0]}{secret[: len(secret) // 2]}{filler[1]}",  # half a secret is not a secret
        f"{filler[0]}{secret}{secret}{filler[2]}",
        "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 40))),
    ]


@pytest.mark.parametrize("seed", range(40))
def test_masking_matches_the_full_patterns_whatever_the_text(seed: int) -> None:
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, nothing secret
    secrets = ["".join(rng.choice(ALPHABET) for _ in range(rng.choice([2, 3, 5, 8, 12, 20]))) for _ in range(2)]
    masker = Secrets(secrets)
    for secret in secrets:
        for text in texts(rng, secret):
            assert masker.foreign(text) == reference_foreign(secrets, text), (secrets, text)
            assert masker.net(text) == reference_net(secrets, text), (secrets, text)


def test_a_pattern_is_compiled_only_for_a_text_that_may_hold_an_encoded_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compiled: list[str] = []

    def counting(secret: str) -> re.Pattern[str]:
        compiled.append(secret)
        return re.compile(re.escape(secret))

    monkeypatch.setattr(masking, "_pattern", counting)
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJuYWNvcyJ9.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg"
    masker = Secrets([token])
    assert masker.net(f"token {token} in a plain line") == f"token {MASK} in a plain line"
    assert masker.foreign('{"accessToken":"' + token + '","tokenTtl":18000}') == (
        '{"accessToken":"' + MASK + '","tokenTtl":18000}'
    )
    assert compiled == []
    masker.net("a=1&b=2")
    masker.net("100%")
    assert compiled == [token]
