"""Secrets never printed in any encoding, and masking never mangles our own output."""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
from urllib.parse import parse_qs, quote, quote_plus

import httpx
import pytest

from tests import faults

# Quotes, a backslash, a slash, non-ASCII, an astral character, spaces and URL/HTML specials.
TRICKY = ' p"ä\\ss/wörd&<x>+%20 \U0001f511 '
PASSWORDS = ["nacos", "true", "null", "ab", "x", TRICKY, "Secr3t-Passw0rd"]


def encodings(secret: str) -> dict[str, str]:
    """The ways a server may echo a secret back in an error body."""
    return {
        "raw": secret,
        "json": json.dumps(secret)[1:-1],
        "json-unicode": json.dumps(secret, ensure_ascii=False)[1:-1],
        "json-twice": json.dumps(json.dumps(secret))[1:-1],
        "url": quote(secret, safe=""),
        "url-lower": re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), quote(secret, safe="")),
        "form": quote_plus(secret),
        "html": html.escape(secret),
    }


def echo_app(request: httpx.Request) -> httpx.Response:
    """A server that refuses every login echoing the password (403, then 500), each form between ``##``."""
    form = {k: v[-1] for k, v in parse_qs(request.content.decode(), keep_blank_values=True).items()}
    forms = encodings(form.get("password", ""))
    if request.url.path.endswith("/v1/auth/login"):
        message = " ".join(f"##{forms[name]}##" for name in ("raw", "url", "form", "json"))
        return httpx.Response(403, json={"status": 403, "message": message})
    echoed = " ".join(f"##{forms[name]}##" for name in ("html", "json-twice", "json-unicode", "url-lower"))
    return httpx.Response(500, text=f"<html><body>{echoed}</body></html>", headers={"Content-Type": "text/html"})


def leaks(output: str, secret: str) -> list[str]:
    """The encodings of the secret that the output still shows where the server echoed them."""
    return [name for name, form in encodings(secret).items() if f"##{form}##" in output]


@pytest.mark.parametrize("password", PASSWORDS, ids=["nacos", "true", "null", "ab", "x", "tricky", "long"])
def test_an_echoed_password_leaks_in_no_encoding_and_every_line_stays_json(password: str) -> None:
    with faults.http_app(echo_app) as address:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "POD_IP": "10.0.0.7",
            "NACOS_SERVICE_PORT": "8080",
            "NACOS_SERVICE_NAME": "orders",
            "NACOS_SERVER_ADDR": address,
            "NACOS_USERNAME": "nacos",
            "NACOS_PASSWORD": password,
            "PRESTOP_BUDGET_SECONDS": "2",
            "PRESTOP_LOG_TO_PID1": "false",
        }
        done = subprocess.run(
            [sys.executable, "-m", "prestop_agent", "deregister", "--wait", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert done.returncode == 3, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]  # every line is JSON
    report = json.loads(done.stdout)
    assert leaks(done.stdout + done.stderr, password) == []
    refusal = next(e for e in lines if e["event"] == "registry_failed")["error"]
    assert "login as 'nacos' refused" in refusal
    if len(password) >= 4:
        assert "##***##" in refusal  # masked where the server echoed it, the rest of its words kept
    else:
        assert "withheld" in refusal  # too short to mask without shredding the text around it
    # Our own words are never rewritten: event names, URLs, keys.
    events = {e["event"] for e in lines}
    assert {"deregister_started", "registry_failed", "deregister_finished"} <= events
    assert all(e["server"] == f"http://{address}/nacos" for e in lines if "server" in e)
    assert report["command"] == "deregister"


def test_a_password_that_is_a_common_word_masks_nothing_of_ours() -> None:
    from prestop_agent.masking import Secrets

    secrets = Secrets(["nacos"])
    ours = {"event": "nacos_login", "server": "http://nacos:8848/nacos", "ok": True}
    assert secrets.tree(ours) == ours
    assert secrets.foreign("user nacos refused") == "user *** refused"


@pytest.mark.parametrize("secret", ["true", "null", '"', "\\"])
def test_masking_output_values_never_breaks_json(secret: str) -> None:
    from prestop_agent.masking import Secrets

    secrets = Secrets([secret])
    document = {"ok": True, "error": None, "message": f"x {secret} y", "list": [1, "true"]}
    assert json.loads(secrets.dumps(document))["ok"] is True


@pytest.mark.parametrize("secret", [TRICKY, "Secr3t-Passw0rd", "nacos"])
def test_every_encoding_of_a_secret_is_masked_in_foreign_text(secret: str) -> None:
    from prestop_agent.masking import Secrets

    secrets = Secrets([secret])
    forms = {
        **encodings(secret),
        "json-upper-hex": "".join(f"\\u{ord(c):04X}" if ord(c) < 0x10000 else c for c in secret),
        "html-decimal": "".join(f"&#{ord(c)};" for c in secret),
        "html-hex": "".join(f"&#x{ord(c):x};" for c in secret),
    }
    for name, form in forms.items():
        masked = secrets.foreign(f"before {form} after")
        assert form not in masked, name
        assert masked.startswith("before "), name
        assert masked.endswith(" after"), name
        assert "***" in masked, name


@pytest.mark.parametrize("secret", ["a", "ab", "abc"])
def test_a_short_secret_withholds_the_text_that_contains_it(secret: str) -> None:
    from prestop_agent.masking import WITHHELD, Secrets

    secrets = Secrets([secret])
    assert secrets.foreign(f"login failed for {secret}!") == WITHHELD
    assert secrets.foreign("nothing to see here") == "nothing to see here"
