"""Secrets (the Nacos password, tokens) kept out of every output, without touching anything else.

A secret reaches output only through text that comes from outside: a server that echoes the
login form in an error body, an exception of a library. So that text is masked where it enters
(``foreign``), in every encoding a server may have applied: JSON escapes, URL encoding, HTML
entities. A secret shorter than ``SHORT`` characters cannot be masked without shredding the
text around it (and showing where it was), so a text that contains one is withheld whole.

Our own text (event names, keys, URLs, settings) is never rewritten: with the stock password
``nacos``, masking it there would mangle ``http://nacos:8848/nacos`` and reveal the password.
Output values get one more pass (``tree``) as a safety net, for secrets long enough
(``NET_MIN``) never to occur in our own text by chance; it rewrites string values only, so a
JSON line stays valid whatever the secret (``true``, ``null``, quotes, backslashes).

Every encoded form of a character holds one of ``\\ % & +`` (a JSON escape, URL encoding, an
HTML entity, a form-encoded space). In a text without any of them a secret can only appear
as itself, so such a text is searched for the secret literally, and a secret's pattern is
compiled only when a text with one of them arrives: the pattern of a Nacos access token
(a JWT of some 150 characters) takes 10 to 20 ms of CPU to compile, and most runs never
need it.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable

MASK = "***"
WITHHELD = "[withheld: it contained a secret]"
SHORT = 4
NET_MIN = 8

_NAMED_ENTITIES = {"&": "amp", "<": "lt", ">": "gt", '"': "quot", "'": "apos"}
_ENCODING_MARKS = ("\\", "%", "&", "+")


def _may_encode(text: str) -> bool:
    """Whether ``text`` holds a character without which no encoded form of anything can be written."""
    return any(mark in text for mark in _ENCODING_MARKS)


def _hex(text: str) -> str:
    """A regex for hex digits in either case."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in text)


def _json_forms(ch: str) -> set[str]:
    """The ways a JSON encoder may write ``ch`` inside a string, once or twice encoded."""
    once = {json.dumps(ch, ensure_ascii=flag)[1:-1] for flag in (True, False)}
    twice = {json.dumps(form)[1:-1] for form in once}
    return once | twice


def _char_pattern(ch: str) -> str:
    forms = {re.escape(form) for form in _json_forms(ch) if form != ch}
    code = ord(ch)
    if code <= 0xFFFF:
        forms.add(r"\\u" + _hex(f"{code:04x}"))
    else:  # a surrogate pair, in either case of hex
        high, low = 0xD800 + ((code - 0x10000) >> 10), 0xDC00 + ((code - 0x10000) & 0x3FF)
        forms.add(r"\\u" + _hex(f"{high:04x}") + r"\\u" + _hex(f"{low:04x}"))
    forms.add("".join("%" + _hex(f"{byte:02x}") for byte in ch.encode("utf-8")))
    if ch == " ":
        forms.add(r"\+")  # form encoding
    if ch == "/":
        forms.add(re.escape("\\/"))  # JSON encoders may escape a slash
    forms.add(f"&#0*{code};")
    forms.add("&#[xX]0*" + _hex(f"{code:x}") + ";")
    if ch in _NAMED_ENTITIES:
        forms.add(f"&{_NAMED_ENTITIES[ch]};")
    alternatives = sorted(forms, key=len, reverse=True)
    return "(?:" + "|".join([*alternatives, re.escape(ch)]) + ")"


def _pattern(secret: str) -> re.Pattern[str]:
    return re.compile("".join(_char_pattern(ch) for ch in secret))


class Secrets:
    """The values that must never be printed, and the two ways of keeping them out."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._patterns: dict[str, re.Pattern[str] | None] = {}  # None: not compiled yet
        for value in values:
            self.add(value)

    def add(self, value: str | None) -> None:
        if not value:
            return
        with self._lock:
            self._patterns.setdefault(value, None)

    def _current(self) -> list[str]:
        with self._lock:
            return sorted(self._patterns, key=len, reverse=True)

    def _pattern(self, secret: str) -> re.Pattern[str]:
        with self._lock:
            pattern = self._patterns.get(secret)
            if pattern is None:
                pattern = self._patterns[secret] = _pattern(secret)
            return pattern

    def _found(self, secret: str, text: str) -> bool:
        return self._pattern(secret).search(text) is not None if _may_encode(text) else secret in text

    def _masked(self, secret: str, text: str) -> str:
        return self._pattern(secret).sub(MASK, text) if _may_encode(text) else text.replace(secret, MASK)

    def foreign(self, text: str) -> str:
        """Text from outside (a server's body, a library's error), with every secret masked in any encoding."""
        for secret in self._current():
            if len(secret) < SHORT:
                if self._found(secret, text):
                    return WITHHELD
                continue
            text = self._masked(secret, text)
        return text

    def tree(self, value: object) -> object:
        """A copy of an output value with long secrets masked inside its strings; keys and structure untouched.

        Values that are not JSON types are shown as text, so they go through the net as text.
        """
        if isinstance(value, str):
            return self.net(value)
        if isinstance(value, dict):
            return {key: self.tree(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self.tree(item) for item in value]
        if value is None or isinstance(value, bool | int | float):
            return value
        return self.net(str(value))

    def dumps(self, value: object) -> str:
        """One JSON document of ``value``, through the safety net."""
        return json.dumps(self.tree(value))

    def net(self, text: str) -> str:
        """Our own output text with every secret long enough to be unmistakable masked."""
        for secret in self._current():
            if len(secret) >= NET_MIN:
                text = self._masked(secret, text)
        return text
