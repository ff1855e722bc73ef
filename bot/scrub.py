"""PII scrubbing for exported conversations, with stable placeholders.

`Scrubber().scrub(text)` replaces e-mail addresses, phone numbers, payment card numbers (Luhn
checked), IBANs (mod-97 checked) and account numbers named as such, IPv4/IPv6 addresses, URLs
that carry credentials or tokens, and API keys / secrets (well-known token prefixes, private key
blocks, JWTs, `password=...`-style assignments, long high-entropy strings) with placeholders such
as `<EMAIL_1>`. One Scrubber numbers what it sees: the same value always gets the same
placeholder within it, so a conversation still reads naturally ("mail <EMAIL_1> ... did
<EMAIL_1> answer?"), while a fresh Scrubber per conversation keeps conversations unlinkable.

Regular expressions are the baseline and always run. When Microsoft Presidio
(`presidio-analyzer`, optional: `pip install chimein[pii]`) is installed, its recognizers run
afterwards over the already-scrubbed text for what patterns cannot see (national ids,
passports, crypto wallets, ...). If Presidio is installed but cannot start (for example its
spaCy model is missing on an offline machine), one warning is logged and the regular
expressions carry on alone.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)

# Presidio entities used when it is installed. PERSON/LOCATION/DATE_TIME are left out on
# purpose: in group chat they mostly hit speakers' names and ordinary words, and the speakers'
# names are part of the training format (`Name: text`).
PRESIDIO_ENTITIES = ("US_SSN", "US_PASSPORT", "US_DRIVER_LICENSE", "US_BANK_NUMBER", "US_ITIN",
                     "UK_NHS", "CRYPTO", "MEDICAL_LICENSE", "IBAN_CODE", "CREDIT_CARD",
                     "EMAIL_ADDRESS", "PHONE_NUMBER", "IP_ADDRESS")

# Zero-width and invisible format characters that can be slipped into a value to dodge a
# pattern ("ali\u200bce@example.com").
_INVISIBLE = re.compile(r"[\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff\u00ad]")

_PLACEHOLDER = re.compile(r"<[A-Z_]+_\d+>")

# -- secrets --------------------------------------------------------------------------------
_PRIVATE_KEY = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY"
    r"(?: BLOCK)?-----|\Z)", re.DOTALL)
_KNOWN_TOKENS = re.compile(
    r"(?<![\w-])(?:"
    r"sk-(?:proj-|ant-|live-)?[A-Za-z0-9_-]{16,}"  # OpenAI / Anthropic style
    r"|(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{10,}"  # Stripe
    r"|whsec_[A-Za-z0-9]{16,}"
    r"|xox[abposr]-[A-Za-z0-9-]{10,}"  # Slack tokens
    r"|xapp-\d-[A-Za-z0-9-]{10,}"
    r"|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}"
    r"|glpat-[A-Za-z0-9_-]{20,}"
    r"|hf_[A-Za-z0-9]{30,}"
    r"|npm_[A-Za-z0-9]{30,}"
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"  # AWS access key id
    r"|AIza[0-9A-Za-z_-]{35}"  # Google API key
    r"|SG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}"  # SendGrid
    r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"  # JWT
    r"|[MNO][A-Za-z0-9_-]{23,27}\.[A-Za-z0-9_-]{6}\.[A-Za-z0-9_-]{27,40}"  # Discord bot token
    r")(?![\w-])")
_BEARER = re.compile(r"(?i)\b(bearer|token|basic)\s+([A-Za-z0-9._~+/=-]{20,})")
# A key that names a secret, also inside a longer name (`aws_secret_access_key=`, `DB_PASSWORD:`,
# `GITHUB_TOKEN=`): a word boundary would miss those, since "_" is a word character.
_ASSIGNED = re.compile(
    r"(?i)(?<![\w-])([\w-]*?(?:api[_-]?key|apikey|secret|access[_-]?token|auth[_-]?token|"
    r"refresh[_-]?token|private[_-]?key|passw(?:or)?d|pwd|passphrase|token)(?:[_-]\w+)*"
    r"[\"']?\s*(?:=|:|=>)\s*[\"']?)([^\s\"',;]{6,})")
_HIGH_ENTROPY = re.compile(r"(?<![\w/.-])[A-Za-z0-9_+-]{32,}={0,2}(?![\w/.-])")

# -- URLs -----------------------------------------------------------------------------------
_URL = re.compile(r"\b(?:https?|ftp|wss?)://[^\s<>\"'`]+", re.IGNORECASE)
_SECRET_PARAM = re.compile(
    r"(?i)(?:^|[?&#;])(?:[\w.-]*(?:token|key|secret|sig|signature|password|passwd|pwd|auth|"
    r"session|sessionid|sid|code|credential|apikey|jwt|otp)[\w.-]*|x-amz-[\w-]+)=[^&#\s]+")
_WEBHOOK = re.compile(r"(?i)hooks\.slack\.com/|discord(?:app)?\.com/api/webhooks/|"
                      r"/services/T[A-Z0-9]+/B[A-Z0-9]+/")

# -- contact and money ------------------------------------------------------------------------
_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@(?:[A-Za-z0-9-]+\.)+"
                    r"[A-Za-z]{2,24}(?![\w-])")
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]){11,30}(?![A-Za-z0-9])")
_CARD = re.compile(r"(?<![\w.-])\d(?:[ -]?\d){12,18}(?![\w-]|\.\w|[ -]\d)")
_ACCOUNT = re.compile(
    r"(?i)\b((?:account|acct|a/c|konto|routing|sort[ -]?code|bsb|kontonummer|账号|账户)"
    r"(?:\s*(?:number|no\.?|num|#|nr\.?))?\s*[:#]?\s*)(\d[\d -]{4,22}\d)")
_PHONE = re.compile(
    r"(?<![\w+.:/-])(?:\+|00)?\(?\d{1,4}\)?(?:[ .\-\u00a0]?\(?\d{1,4}\)?){2,6}(?![\w.:/-])")
# A 10-11 digit number that a phone word announces ("my phone: 4155552671", "call me at 07911
# 123456"), or that has a phone's shape on its own: a valid North American number (area code
# and exchange 2-9, so 1700000000-style timestamps are not) or a national number with a
# leading 0 (07911123456, 07911 123456). At most one space group.
_PHONE_WORD = (r"(?:phone|telephone|tel|mobile|mob|cell|cellphone|landline|whatsapp|sms|fax|ph"
               r"|call|ring|text|contact|(?:my|his|her|their|your|our)\s+(?:number|no\.?|#))")
_PHONE_WORDED = re.compile(
    rf"(?i)(?<![\w-]){_PHONE_WORD}(?![\w-])(?:\s*(?:number|no\.?|nr\.?|#)(?![\w-]))?"
    r"(?:\s+(?:is|me|us|him|her|them))?(?:\s+(?:at|on))?\s*[:=#-]?\s*"
    r"(\d{10,11}|\d{2,6} \d{4,9})(?![\w:/-]|[.,]\d|[ -]\d)")
_PHONE_SHAPED = re.compile(
    r"(?<![\w.+#$\u00a3\u20ac:/-])(1?[2-9]\d\d[2-9]\d{6}|0[1-9]\d{8,9}|0[1-9]\d{2,4} \d{5,7})"
    r"(?![\w:/-]|[.,]\d|[ -]\d)")
_DATE_LIKE = re.compile(r"^\d{4}[-./]\d{1,2}[-./]\d{1,2}$|^\d{1,2}[-./]\d{1,2}[-./]\d{2,4}$")

# -- network ----------------------------------------------------------------------------------
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?:/\d{1,2})?(?![\w.]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?:%\w+)?"
                   r"(?:/\d{1,3})?(?![\w:])")


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _iban_ok(value: str) -> bool:
    s = value.replace(" ", "").upper()
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    try:
        n = int("".join(str(int(c, 36)) for c in moved))
    except ValueError:
        return False
    return n % 97 == 1


def _entropy(s: str) -> float:
    counts = Counter(s)
    return -sum(c / len(s) * math.log2(c / len(s)) for c in counts.values())


def _looks_secret(s: str) -> bool:
    """A long token mixing letters and digits with high entropy: not a word, a slug
    ("how-to-run-tests-64fe75"), a UUID or a hex digest (ids people talk about)."""
    core = s.rstrip("=")
    if not (any(c.isdigit() for c in core) and any(c.isalpha() for c in core)):
        return False
    if re.fullmatch(r"[0-9a-f-]+", core) or re.fullmatch(r"[0-9A-F-]+", core):
        return False
    parts = [p for p in re.split(r"[-_.~]", core) if p]
    words = [p for p in parts if p.isalpha()]
    if len(parts) >= 3 and len(words) * 2 >= len(parts):
        return False
    has_case = any(c.isupper() for c in core) and any(c.islower() for c in core)
    return _entropy(core) >= 3.5 and (has_case or len(core) >= 40)


class Scrubber:
    """Replaces PII with numbered placeholders; the same value keeps its placeholder.

    `use_presidio`: None = use it when installed, False = never, True = require it (raises
    ImportError when it is not installed).
    """

    def __init__(self, use_presidio: bool | None = None,
                 presidio_entities: Iterable[str] = PRESIDIO_ENTITIES):
        self._seen: dict[tuple[str, str], str] = {}
        self._counts: Counter[str] = Counter()
        self.found: Counter[str] = Counter()  # kind -> replacements made (for reports)
        self._presidio = _presidio_analyzer(use_presidio)
        self._presidio_entities = list(presidio_entities)

    # -- placeholders ---------------------------------------------------------------------
    def _placeholder(self, kind: str, value: str) -> str:
        norm = re.sub(r"[\s().-]", "", value).lower() if kind in ("PHONE", "CARD", "IBAN",
                                                                   "ACCOUNT") else value
        key = (kind, norm)
        ph = self._seen.get(key)
        if ph is None:
            self._counts[kind] += 1
            ph = self._seen[key] = f"<{kind}_{self._counts[kind]}>"
        self.found[kind] += 1
        return ph

    def _sub(self, pattern: re.Pattern[str], kind: str, text: str,
             accept: Callable[[str], bool] | None = None, group: int = 0) -> str:
        def repl(m: re.Match[str]) -> str:
            value = m.group(group)
            if _PLACEHOLDER.fullmatch(value) or (accept is not None and not accept(value)):
                return m.group(0)
            if group:
                return m.group(0)[:m.start(group) - m.start()] + self._placeholder(kind, value) \
                    + m.group(0)[m.end(group) - m.start():]
            return self._placeholder(kind, value)

        return pattern.sub(repl, text)

    # -- the passes -----------------------------------------------------------------------
    def _url(self, url: str) -> str:
        trail = ""
        while url and url[-1] in ".,;:!?)]}>'\"":
            trail = url[-1] + trail
            url = url[:-1]
        # `https://user:pass@host/`, a signed/tokenized query, a webhook, or a secret-looking
        # path segment: the whole URL is a credential.
        userinfo = re.match(r"(?i)^[a-z]+://[^/@\s]+:[^/@\s]+@", url)
        query = url.split("?", 1)[1] if "?" in url else ""
        fragment = url.split("#", 1)[1] if "#" in url else ""
        segments = re.split(r"[/?#&=]", url.split("://", 1)[-1])
        if (userinfo or _SECRET_PARAM.search("?" + query) or _SECRET_PARAM.search("#" + fragment)
                or _WEBHOOK.search(url) or _KNOWN_TOKENS.search(url)
                or any(len(s) >= 32 and _looks_secret(s) for s in segments)):
            return self._placeholder("URL", url) + trail
        return url + trail

    def _apply(self, text: str) -> str:
        text = self._sub(_PRIVATE_KEY, "SECRET", text)
        text = _URL.sub(lambda m: self._url(m.group(0)), text)
        text = self._sub(_KNOWN_TOKENS, "SECRET", text)
        text = self._sub(_BEARER, "SECRET", text, group=2)
        text = self._sub(_ASSIGNED, "SECRET", text, group=2)
        text = self._sub(_EMAIL, "EMAIL", text)
        text = self._sub(_IBAN, "IBAN", text, accept=_iban_ok)
        text = self._sub(_CARD, "CARD", text, accept=_card_ok)
        text = self._sub(_ACCOUNT, "ACCOUNT", text, group=2)
        text = self._sub(_IP, "IP", text, accept=_ip_ok)
        text = self._sub(_PHONE, "PHONE", text, accept=_phone_ok)
        text = self._sub(_PHONE_WORDED, "PHONE", text, accept=_national_ok, group=1)
        text = self._sub(_PHONE_SHAPED, "PHONE", text, accept=_national_ok, group=1)
        text = self._sub(_HIGH_ENTROPY, "SECRET", text, accept=_looks_secret)
        if self._presidio is not None:
            text = self._apply_presidio(text)
        return text

    def _apply_presidio(self, text: str) -> str:
        try:
            results = self._presidio.analyze(text=text, language="en",
                                             entities=self._presidio_entities)
        # A broken optional dependency must not stop an export.
        except Exception as e:  # noqa: BLE001
            log.warning("Presidio failed (%s); continuing with pattern scrubbing only", e)
            self._presidio = None
            return text
        for r in sorted(results, key=lambda r: r.start, reverse=True):
            value = text[r.start:r.end]
            if r.score < 0.5 or _PLACEHOLDER.search(value):
                continue
            text = text[:r.start] + self._placeholder(r.entity_type, value) + text[r.end:]
        return text

    def scrub(self, text: str) -> str:
        """The text with PII replaced; text without PII comes back unchanged (character for
        character, invisible characters included)."""
        if not text:
            return text
        if _INVISIBLE.search(text):
            # Invisible characters can hide a value from the patterns ("ali\u200bce@x.com"):
            # scrub without them when that finds anything; otherwise the text stays intact.
            before = sum(self.found.values())
            bare = self._apply(_INVISIBLE.sub("", text))
            if sum(self.found.values()) > before:
                return bare
            return text
        return self._apply(text)


_IP = re.compile(f"{_IPV6.pattern}|{_IPV4.pattern}")


def _ip_ok(value: str) -> bool:
    return _ipv4_ok(value) if _IPV4.fullmatch(value) else _ipv6_ok(value)


def _card_ok(value: str) -> bool:
    digits = re.sub(r"\D", "", value)
    # Issuer prefixes 2-6 (Mastercard, Amex, Visa, Discover...). Written without separators,
    # only the 15/16-digit lengths count: 13-digit runs are mostly millisecond timestamps.
    if digits[0] not in "23456" or len(set(digits)) <= 1:
        return False
    if digits == value and len(digits) not in (15, 16):
        return False
    return _luhn_ok(digits)


def _ipv4_ok(value: str) -> bool:
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    # 127.0.0.1 and 0.0.0.0 identify nobody and are half of every support question.
    return not (net.is_loopback or net.is_unspecified)


def _ipv6_ok(value: str) -> bool:
    addr = value.split("%", 1)[0].split("/", 1)[0]
    if addr.count(":") < 2 or not re.search(r"[0-9A-Fa-f]", addr):
        return False
    try:
        ipaddress.IPv6Address(addr)
    except ValueError:
        return False
    return True


def _phone_ok(value: str) -> bool:
    digits = re.sub(r"\D", "", value)
    if not 8 <= len(digits) <= 15 or len(set(digits)) <= 2:
        return False
    v = value.strip()
    bare = v.strip("()")
    if (_DATE_LIKE.match(bare) or re.search(r"\d{4}-\d\d-\d\d", v)
            or re.fullmatch(r"\d{1,2}:\d{2}(?::\d{2})?", bare)):
        return False
    if v.startswith(("+", "00")):
        return True
    # Without a country code, only the usual national shapes (555-123-4567, (415) 555 2671,
    # 020 7946 0958): plain digit runs, versions (2.30.477691) and "200 12637 ms" are not.
    groups = re.findall(r"\d+", v)
    if len(groups) < 2 or any(len(g) > 4 for g in groups):
        return False
    return not (any(len(g) == 1 for g in groups[1:]) or (len(groups[0]) == 1 and "." in v))


def _national_ok(value: str) -> bool:
    """10-11 digits, not a run of one or two repeated digits."""
    digits = value.replace(" ", "")
    return 10 <= len(digits) <= 11 and len(set(digits)) > 2


_PRESIDIO_UNUSABLE = False
_ANALYZER: Any = None


def _presidio_analyzer(use: bool | None) -> Any:
    """One shared Presidio AnalyzerEngine (it loads a spaCy model: seconds, once)."""
    global _PRESIDIO_UNUSABLE, _ANALYZER
    if use is False or (use is None and _PRESIDIO_UNUSABLE):  # failed once: not every time
        return None
    if _ANALYZER is not None:
        return _ANALYZER
    try:
        from presidio_analyzer import AnalyzerEngine  # optional: chimein[pii]
    except ImportError:
        if use:
            raise ImportError("Presidio was asked for but is not installed: "
                              "pip install 'chimein[pii]'") from None
        return None
    try:
        _ANALYZER = AnalyzerEngine()
        return _ANALYZER
    except Exception as e:  # e.g. its spaCy model is not installed and there is no network
        if use:
            raise
        if not _PRESIDIO_UNUSABLE:
            log.warning("Presidio is installed but could not start (%s); scrubbing with "
                        "patterns only", e)
            _PRESIDIO_UNUSABLE = True
        return None
