"""PII scrubbing: what is replaced, what is left alone, and stable placeholders."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bot.scrub import Scrubber

# Real chat in the repository (an excerpt with its attribution, see its SOURCE.md).
GITTER = (Path(__file__).resolve().parent / "data" / "external" / "gitter-livechat" /
          "gitter_gitter_first3000.txt")


@pytest.mark.parametrize("text, expected", [
    ("mail alice.smith@example.com today", "mail <EMAIL_1> today"),
    ("call +1 (415) 555-2671 now", "call <PHONE_1> now"),
    ("or 020 7946 0958, or 555-123-4567", "or <PHONE_1>, or <PHONE_2>"),
    ("card 4111 1111 1111 1111 exp 12/27", "card <CARD_1> exp 12/27"),
    ("amex 378282246310005.", "amex <CARD_1>."),
    ("IBAN DE89 3704 0044 0532 0130 00 please", "IBAN <IBAN_1> please"),
    ("to GB82WEST12345698765432", "to <IBAN_1>"),
    ("account number: 12345678, routing 021000021",
     "account number: <ACCOUNT_1>, routing <ACCOUNT_2>"),
    ("ssh to 10.1.2.3 or 2001:db8::8a2e:370:7334", "ssh to <IP_1> or <IP_2>"),
    ("https://api.example.com/v1?access_token=abc123def456&x=1", "<URL_1>"),
    ("clone https://bob:hunter2@git.example.com/r.git.", "clone <URL_1>."),
    ("https://hooks.slack.com/services/T0000/B0000/XXXXXXXXXXXXXXXXXXXXXXXX", "<URL_1>"),
    ("key sk-proj-abcdefghijklmnop1234567890", "key <SECRET_1>"),
    ("xoxb-1234-5678-abcdefghijkl and ghp_abcdefghijklmnopqrstuvwxyz0123456789",
     "<SECRET_1> and <SECRET_2>"),
    ("AKIAIOSFODNN7EXAMPLE", "<SECRET_1>"),
    ("password=hunter22 and api_key: 'q9f8e7d6c5b4'",
     "password=<SECRET_1> and api_key: '<SECRET_2>'"),
    ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.dozjgNryP4J3jVmNHl0w5N",
     "Authorization: Bearer <SECRET_1>"),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEabc\n-----END RSA PRIVATE KEY----- ok",
     "<SECRET_1> ok"),
    ("token Zx9Qw8Ert7Yui6Opa5Sdf4Ghj3Klz2Xcv1Bnm0", "token <SECRET_1>"),
    # Found by an audit: plain 10-11 digit numbers, and secret keys inside longer names.
    ("4155552671", "<PHONE_1>"),
    ("my phone: 4155552671", "my phone: <PHONE_1>"),
    ("call me at 07911 123456.", "call me at <PHONE_1>."),
    ("my number is 07911123456, or tel 0201234567", "my number is <PHONE_1>, or tel <PHONE_2>"),
    ("aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
     "aws_secret_access_key=<SECRET_1>"),
    ("DB_PASSWORD: hunter22 and GITHUB_TOKEN=abc123def",
     "DB_PASSWORD: <SECRET_1> and GITHUB_TOKEN=<SECRET_2>"),
])
def test_replaced(text: str, expected: str) -> None:
    assert Scrubber(use_presidio=False).scrub(text) == expected


@pytest.mark.parametrize("text", [
    "deploy on 2016-11-21 at 12:30:45, version 1.2.3 and 3.10.12",
    "build 12345678 took 1499185136761 ms; pid 4242, port 8080, pi 3.14159",
    "commit 062c40fa346b72f330582bf7bd63b539ff84cc86 and uuid c3a5ce45-7b7b-41c7-998f-8b105fd8",
    "listening on 127.0.0.1:4723 and 0.0.0.0:8080, ubuntu 14.04.1, kernel 3.13.0-24-generic",
    "see https://example.com/docs/getting-started?page=2#install",
    "https://medium.com/@someone/how-to-turn-on-wifi-on-ios-by-using-appium-64fe75fa903",
    "chromedriver=2.30.477691 (6ee44a7247c639c0703f291d320bdf05c1531b57)",
    # Ordinary numbers are not phones: years, order ids, versions, (ms) timestamps, prices.
    "in 2023, order #12345 and #4155552671 on python 3.11.7 at 1700000000 (1700000000123 ms)",
    "slack ts 1700000001.000100, build 4155552671.2, $4155552671, 2024 12345678, 0000000000",
    "tokenizer: gpt2-tokenizer, max_tokens=4096, secret: no",
    "مرحبا بالعالم \u200f שלום 😂👩‍👩‍👧 \u200b zero width \x00 nul",
    "助手，今天天气怎么样？我们下午三点开会。",
    "",
])
def test_left_alone(text: str) -> None:
    assert Scrubber(use_presidio=False).scrub(text) == text


def test_placeholders_are_stable_within_a_scrubber_and_fresh_in_another() -> None:
    s = Scrubber(use_presidio=False)
    a = s.scrub("write to ann@example.com or bob@example.com")
    b = s.scrub("did ann@example.com answer? call +44 20 7946 0958")
    c = s.scrub("+44 (20) 7946-0958 again")  # the same number written differently
    assert a == "write to <EMAIL_1> or <EMAIL_2>"
    assert b == "did <EMAIL_1> answer? call <PHONE_1>"
    assert c == "<PHONE_1> again"
    assert s.found == {"EMAIL": 3, "PHONE": 2}
    assert Scrubber(use_presidio=False).scrub("bob@example.com") == "<EMAIL_1>"


def test_invisible_characters_do_not_hide_a_value() -> None:
    s = Scrubber(use_presidio=False)
    assert s.scrub("mail ali\u200bce@exa\u200dmple.com") == "mail <EMAIL_1>"
    assert s.scrub("zero\u200bwidth but nothing to hide") == "zero\u200bwidth but nothing to hide"


def test_placeholders_are_never_scrubbed_again() -> None:
    s = Scrubber(use_presidio=False)
    once = s.scrub("x@example.com 10.0.0.1")
    assert s.scrub(once) == once


def test_real_chat_keeps_no_email_or_private_key_and_little_is_touched() -> None:
    """Gitter's own support room (gitterHQ/gitter, LiveChat, Shi et al. FSE 2021, MIT)."""
    rec = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\] <([^>]*)> ?(.*)$")
    lines = GITTER.read_text(encoding="utf-8").split("\n")
    texts = [m.group(3) for line in lines[:3000] if (m := rec.match(line.rstrip("\r")))]
    email = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")
    changed = 0
    for t in texts:
        out = Scrubber(use_presidio=False).scrub(t)
        assert not email.search(out), (t, out)
        changed += out != t
    # Ordinary support chat stays readable: only a small share of messages hold PII.
    assert 0 < changed < len(texts) * 0.05


def test_presidio_is_used_when_installed() -> None:
    pytest.importorskip("presidio_analyzer")
    s = Scrubber(use_presidio=True)
    assert "<US_SSN_1>" in s.scrub("my social security number is 078-05-1120")


def test_presidio_required_but_missing_says_how_to_install() -> None:
    try:
        import presidio_analyzer  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="chimein\\[pii\\]"):
            Scrubber(use_presidio=True)
    else:
        pytest.skip("presidio is installed")
