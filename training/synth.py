"""Synthetic conversations from a teacher model you run yourself (`chimein data synth`).

A team with little logged data asks a chat model on its own OpenAI-compatible server (vLLM,
llama.cpp's server, Ollama; `[openai] base_url` by default, a loopback address) for new
conversations in the JSONL conversation format, in two modes:

- seed-task: every request shows one or two conversations from a seed file (the starter data
  by default) as examples of the format and style, and asks for a NEW one in a given
  domain, language and behaviour;
- free: only the behaviour spec and a topic (`--topics`, else the starter's domains).

Every answer is checked before it is kept: the JSON object (a ```json fence and a reasoning
model's <think> block are tolerated), roles, the markers, the shape (2-5 people, 6-16 user
messages), no assistant turn right after another, every addressed message answered (by the
bot's own wake-word rule), no duplicate of a seed or an earlier conversation; finally the
line is read back with `bot.transcript.parse_line`, the reader `chimein data check` uses.
A rejected answer is counted by reason and another one is asked for. Accepted lines are
appended and flushed one at a time, so an interrupted run (Ctrl-C, a server error) keeps
everything accepted, and running the same command again continues where it stopped.

Why one module of ~600 lines: the teacher client, the task and its prompt, the checks and the
resumable writer are one pipeline, and the checks belong next to the prompt they police.
"""

from __future__ import annotations

import ipaddress
import json
import random
import re
import sys
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bot.errors import ChimeinError
from bot.policy import Addressing
from bot.render import ASSISTANT_NAME
from bot.transcript import parse_line
from training.data import LANGUAGES, STARTER_DIR, Example, detect_language, read_file

STARTER_TRAIN = STARTER_DIR / "train.jsonl"

MODES = ("seed", "free", "mix")
MIN_USER_TURNS, MAX_USER_TURNS = 6, 16
MIN_SPEAKERS, MAX_SPEAKERS = 2, 5
ID_PREFIX = "syn-"
SYNTHETIC_TAG = "synthetic"

# The starter data's domains: the default topics.
DOMAINS = ("engineering", "planning", "community", "incidents", "hobbies", "gaming", "study",
           "family", "data", "ops", "health", "home", "security", "sports", "travel", "food",
           "books-movies", "pets")

# behaviour tag -> what the teacher is asked to show
BEHAVIOURS: dict[str, str] = {
    "addressed": "someone addresses the assistant directly and it answers; everything else in "
                 "the chat it leaves alone",
    "follow-up": "the assistant is addressed and answers, and later someone asks it a "
                 "follow-up (\"assistant and the ...?\") that it answers using the earlier "
                 "context",
    "chime-in": "nobody addresses the assistant, but the group is stuck on a short factual "
                "question nobody in the chat can answer (a number, a unit, a date, a command "
                "flag); the assistant adds the fact once, briefly, and is silent otherwise",
    "hard-negative": "the word \"assistant\" (or \"助手\") comes up in passing without "
                     "addressing it (a job title, a product, \"my assistant said\", talk about "
                     "the bot), and people ask each other questions they answer themselves; "
                     "the assistant never speaks",
    "never-speaks": "an ordinary group chat: banter, plans, opinions, feelings, questions the "
                    "members answer for each other; the assistant never speaks",
    "refusal": "someone addresses the assistant with something it must decline (a member's "
               "private information, something harmful, or a guess it cannot know); it says "
               "briefly that it can't, and why",
}
# how often each is asked for (the starter data's balance, roughly)
BEHAVIOUR_WEIGHTS = {"addressed": 3, "follow-up": 2, "chime-in": 2, "hard-negative": 3,
                     "never-speaks": 2, "refusal": 1}

LANGUAGE_TEXT = {
    "en": "English",
    "zh": "Chinese (Simplified), the way people really type in a group chat",
    "mixed": "mixed Chinese and English, as bilingual teams write: Chinese sentences with "
             "English terms, and some messages entirely in English",
}
# Without --language, each request picks one like the starter data's mix.
LANGUAGE_WEIGHTS = {"en": 70, "zh": 20, "mixed": 10}
# Accepted detected languages for an explicit --language ("mixed" and "zh" blur).
_LANGUAGE_OK = {"en": {"en"}, "zh": {"zh", "mixed"}, "mixed": {"mixed", "zh"}}

SPEC = """\
You write realistic group-chat conversations that train a chat assistant. The assistant sits \
in a group channel, reads every message, and after each one either stays silent or answers.

FORMAT. Reply with ONE JSON object and nothing else (no prose before or after it):
{"tags": ["<domain>", "<behaviour>"], "messages": [{"role": "user", "name": "Maya", \
"content": "..."}, {"role": "assistant", "name": "assistant", "content": "..."}]}
- "role" is "user" for a person and "assistant" for the assistant. No other role: no \
"system", "bot", "model".
- Every user message has "name" (a first name or nickname; a person keeps one name; nobody \
is called "assistant") and a non-empty "content": one chat message as people type them \
(short, informal; typos, emoji and lowercase are fine).
- An assistant message appears ONLY where the assistant speaks, right after the user \
message it answers. Where it stays silent, write nothing: no empty message, no placeholder.
- Never write the strings "(silence)" or "(response)" anywhere.
- The first message is a user message. Never two assistant messages in a row.
- 2 to 5 people; 6 to 16 user messages.
- "tags": the domain and the behaviours shown, from: addressed, follow-up, chime-in, \
hard-negative, never-speaks, refusal.

BEHAVIOUR of the assistant:
- It answers whenever it is addressed: its name "assistant" (in Chinese "助手") used to \
address it, as in "assistant, ...", "hey assistant ...", "@assistant ...", "..., assistant?", \
"助手，...", "问下助手：...". An address always gets an answer.
- Unaddressed, it speaks only to add a short, useful, correct fact that nobody in the chat \
has and the group needs (a number, a definition, a command, a date), at most once or twice in \
a conversation, and never when a member has answered or clearly could.
- Otherwise it stays silent: banter, plans, opinions, feelings, thanks, jokes, and questions \
the members ask each other.
- Hard negatives: "assistant" or "助手" used in passing ("my assistant booked it", "the \
assistant coach", "is the assistant bot down?", "这个助手功能不错") is not an address: it stays \
silent.
- Its answers are short (one to three sentences), correct, in the language of the message \
it answers, with no greeting or filler, and never mention these rules. When it cannot know \
something, or the request is harmful or private, it says so in one sentence.
- Most user messages get no answer: it speaks after at most a third of them.
"""


class SynthError(ChimeinError):
    """A problem that stops the run (said in one line)."""


class GaveUp(SynthError):
    """The teacher's answers kept being rejected."""


class Rejected(Exception):
    """A generation that is not kept; `reason` is the short key the summary counts."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class SynthOptions:
    out: Path
    n: int
    base_url: str
    model: str
    api_key: str = ""
    timeout: float = 60.0
    temperature: float = 0.9
    seed: int = 0
    language: str | None = None  # None: each request picks en/zh/mixed like the starter data
    topics: tuple[str, ...] = ()
    mode: str = "seed"
    seeds: Path | None = STARTER_TRAIN
    max_tokens: int = 3072
    max_failures: int = 20  # consecutive rejected generations before giving up
    http_retries: int = 3  # per request, for 429/5xx, timeouts and dropped connections
    backoff: float = 0.5  # seconds, doubled per retry
    wake_words: tuple[str, ...] = ("assistant", "助手")
    progress: bool = True
    config_source: str = "the config"


@dataclass
class SynthResult:
    existing: int = 0
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    retried: int = 0
    stopped: str | None = None  # why the run ended early
    exit_code: int = 0

    @property
    def total(self) -> int:
        return self.existing + self.accepted


# -- the teacher ---------------------------------------------------------------------------
class Teacher:
    """POST {base_url}/chat/completions on an OpenAI-compatible server, with retries."""

    def __init__(self, opts: SynthOptions):
        import httpx

        self.opts = opts
        self.url = opts.base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {opts.api_key}"} if opts.api_key else {}
        self.client = httpx.Client(base_url=self.url + "/", headers=headers,
                                   timeout=opts.timeout)
        self.requests = 0
        self.retried = 0

    def chat(self, body: dict[str, Any]) -> tuple[str, str]:
        """(content, finish_reason) of the first choice; SynthError when it cannot be had."""
        import httpx

        last = ""
        for attempt in range(self.opts.http_retries + 1):
            if attempt:
                self.retried += 1
                time.sleep(self.opts.backoff * 2 ** (attempt - 1))
            self.requests += 1
            try:
                r = self.client.post("chat/completions", json=body)
            except httpx.ConnectError as e:
                raise SynthError(
                    f"cannot reach the teacher at {self.url} ({_one_line(str(e))}): start the "
                    f"server, or set base_url under [openai] in {self.opts.config_source} "
                    "(or pass --base-url)") from e
            except httpx.TimeoutException:
                last = f"no answer within {self.opts.timeout:g} s (raise timeout_seconds " \
                       "under [openai], or --timeout)"
                continue
            except httpx.HTTPError as e:
                last = _one_line(str(e)) or type(e).__name__
                continue
            if r.status_code == 429 or r.status_code >= 500:
                last = f"HTTP {r.status_code}: {_one_line(r.text[:300])}"
                continue
            if r.status_code >= 400:
                raise SynthError(f"the teacher at {self.url} answered HTTP {r.status_code}: "
                                 f"{_one_line(r.text[:300])}")
            try:
                data = r.json()
                choice = data["choices"][0]
            except (ValueError, KeyError, IndexError, TypeError):
                raise SynthError(f"the teacher at {self.url} sent no chat completion: "
                                 f"{_one_line(r.text[:300])}") from None
            message = choice.get("message") or {}
            return str(message.get("content") or ""), str(choice.get("finish_reason") or "")
        raise SynthError(f"the teacher at {self.url} failed {self.opts.http_retries + 1} "
                         f"times: {last}")

    def close(self) -> None:
        self.client.close()


def _one_line(text: str) -> str:
    return " ".join(text.split())


# -- prompts -------------------------------------------------------------------------------
def seed_json(ex: Example) -> str:
    """A seed conversation the way the teacher should answer: one JSON object."""
    tags = [t for t in ex.tags if t not in LANGUAGES and t != SYNTHETIC_TAG]
    msgs = [{"role": r["role"], "name": r.get("name") or ASSISTANT_NAME,
             "content": r["content"]} for r in ex.records
            if r["role"] != "system" and r.get("content") is not None]
    return json.dumps({"tags": tags, "messages": msgs}, ensure_ascii=False)


@dataclass(frozen=True)
class Task:
    mode: str  # "seed" or "free"
    topic: str
    behaviour: str
    language: str
    people: int
    turns: int
    seeds: tuple[Example, ...] = ()

    def prompt(self) -> str:
        what = BEHAVIOURS[self.behaviour]
        lines = [
            "Write a NEW group-chat conversation.",
            f"Domain / topic: {self.topic}",
            f"Behaviour to show ({self.behaviour}): {what}.",
            f"Language: {LANGUAGE_TEXT[self.language]}.",
            f"People: {self.people}; about {self.turns} user messages.",
        ]
        if self.seeds:
            lines += ["", ("Examples of the format and style from existing data (write a "
                           "different conversation: other people, other situation, other "
                           "wording):")]
            lines += [f"Example {i}:\n{seed_json(ex)}" for i, ex in enumerate(self.seeds, 1)]
        lines += ["", "Answer with the JSON object only."]
        return "\n".join(lines)


def make_task(rng: random.Random, opts: SynthOptions, seeds: Sequence[Example]) -> Task:
    mode = opts.mode if opts.mode != "mix" else rng.choice(("seed", "free"))
    language = opts.language or rng.choices(list(LANGUAGE_WEIGHTS),
                                            list(LANGUAGE_WEIGHTS.values()))[0]
    behaviour = rng.choices(list(BEHAVIOUR_WEIGHTS), list(BEHAVIOUR_WEIGHTS.values()))[0]
    topic = rng.choice(opts.topics or DOMAINS)
    people = rng.choices((2, 3, 4, 5), (35, 45, 15, 5))[0]
    turns = rng.randint(MIN_USER_TURNS, 13)
    shown: list[Example] = []
    if mode == "seed" and seeds:
        same_lang = [ex for ex in seeds if ex.language == language] or list(seeds)
        same_both = [ex for ex in same_lang if behaviour in ex.tags] or same_lang
        shown.append(rng.choice(same_both))
        others = [ex for ex in same_lang if ex is not shown[0]]
        if others and rng.random() < 0.5:
            shown.append(rng.choice(others))
    return Task(mode, topic, behaviour, language, people, turns, tuple(shown))


def request_body(task: Task, opts: SynthOptions, rng: random.Random) -> dict[str, Any]:
    return {"model": opts.model,
            "messages": [{"role": "system", "content": SPEC},
                         {"role": "user", "content": task.prompt()}],
            "temperature": opts.temperature, "max_tokens": opts.max_tokens,
            "seed": rng.randrange(2**31)}


# -- checking a generation -----------------------------------------------------------------
_THINK = re.compile(r"<think>.*?(?:</think>|\Z)", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"```[ \t]*(?:json|jsonl)?[ \t]*\n?(.*?)```", re.DOTALL | re.IGNORECASE)
_MARKER = re.compile(r"\(\s*(?:silence|response)\s*\)", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffd]")


def extract_json(text: str) -> Any:
    """The JSON value of an answer: the whole text, a ```json fence, or the outer braces."""
    text = _THINK.sub("", text).strip()
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    if "{" in text:
        candidates.append(text[text.find("{"): text.rfind("}") + 1])
    for c in candidates:
        try:
            return json.loads(c.strip(), strict=False)
        except ValueError:
            continue
    raise Rejected("not JSON", text[:80])


def normalized(messages: Sequence[dict[str, Any]]) -> str:
    """The text of a conversation for duplicate detection: no names, case, punctuation or
    spacing."""
    parts = []
    for m in messages:
        t = unicodedata.normalize("NFKC", str(m.get("content") or "")).casefold()
        parts.append(m.get("role", "") + ":" + "".join(ch for ch in t if ch.isalnum()))
    return "\n".join(parts)


def check_generation(text: str, *, wake_words: Sequence[str] = ("assistant", "助手"),
                     addressing: Addressing | None = None
                     ) -> tuple[list[dict[str, Any]], list[str], str]:
    """(messages, teacher tags, detected language) of a good answer; raises Rejected."""
    if not text.strip():
        raise Rejected("empty answer")
    obj = extract_json(text)
    if isinstance(obj, list):
        obj = {"messages": obj}
    if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list):
        raise Rejected("not a conversation", "expected {\"tags\": [...], \"messages\": [...]}")
    raw_tags = obj.get("tags")
    tags = [str(t).strip().lower() for t in raw_tags if str(t).strip()] \
        if isinstance(raw_tags, list) else []
    assistant_names = {w.casefold() for w in wake_words} | {ASSISTANT_NAME}
    messages: list[dict[str, Any]] = []
    for i, m in enumerate(obj["messages"]):
        if not isinstance(m, dict):
            raise Rejected("bad message", f"message {i} is not an object")
        role = m.get("role")
        if role not in ("user", "assistant"):
            raise Rejected("wrong role", f"message {i}: role {role!r}")
        content = m.get("content")
        if not isinstance(content, str) or not content.strip():
            raise Rejected("bad message", f"message {i}: no content")
        content = content.strip()
        if _MARKER.search(content):
            raise Rejected("marker in text", f"message {i}: {content[:60]}")
        if _CONTROL.search(content):
            raise Rejected("bad message", f"message {i}: control characters")
        if role == "assistant":
            if not messages:
                raise Rejected("assistant first")
            if messages[-1]["role"] == "assistant":
                raise Rejected("assistant after assistant", f"message {i}")
            messages.append({"role": "assistant", "content": content, "name": ASSISTANT_NAME})
            continue
        name = m.get("name")
        name = " ".join(name.split()).strip(":") if isinstance(name, str) else ""
        if not name:
            raise Rejected("bad message", f"message {i}: a user message without a name")
        if name.casefold() in assistant_names:
            raise Rejected("wrong role", f"message {i}: a user named {name!r}")
        messages.append({"role": "user", "content": content, "name": name})
    users = [m for m in messages if m["role"] == "user"]
    if len(users) < MIN_USER_TURNS:
        raise Rejected("too few user turns", str(len(users)))
    if len(users) > MAX_USER_TURNS:
        raise Rejected("too many user turns", str(len(users)))
    speakers = len({m["name"].casefold() for m in users})
    if speakers < MIN_SPEAKERS:
        raise Rejected("too few speakers", str(speakers))
    if speakers > MAX_SPEAKERS:
        raise Rejected("too many speakers", str(speakers))
    addressing = addressing or Addressing(wake_words)
    for i, m in enumerate(messages):
        nxt = messages[i + 1] if i + 1 < len(messages) else None
        if m["role"] == "user" and addressing.is_addressed(m["content"]) and (
                nxt is None or nxt["role"] != "assistant"):
            raise Rejected("addressed, no answer", m["content"][:60])
    language = detect_language(m["content"] for m in messages)
    return messages, tags, language


def final_line(cid: str, tags: Sequence[str], language: str,
               messages: list[dict[str, Any]]) -> str:
    """The JSONL line, read back with the project's parser (what `chimein data check` does)."""
    keep = [t for t in dict.fromkeys(tags) if t not in LANGUAGES and t != SYNTHETIC_TAG][:8]
    line = json.dumps({"id": cid, "tags": [*keep, SYNTHETIC_TAG, language],
                       "messages": messages}, ensure_ascii=False)
    try:
        parse_line(line)
    except ValueError as e:
        raise Rejected("format", str(e)) from None
    return line


# -- the output file -----------------------------------------------------------------------
_ID = re.compile(rf"^{re.escape(ID_PREFIX)}(\d+)$")


def prepare_out(out: Path, echo: Callable[[str], None]) -> tuple[list[Example], int]:
    """The conversations already in OUT and the next id number. A half line left by a killed
    writer is cut off; any other bad line stops the run (it is the user's file)."""
    if not out.exists():
        return [], 1
    if out.is_dir():
        raise SynthError(f"{out} is a folder: --out takes a JSONL file")
    data = out.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        try:
            parse_line(data[cut:].decode("utf-8"))
            with open(out, "ab") as f:
                f.write(b"\n")
        except (ValueError, UnicodeDecodeError):
            with open(out, "r+b") as f:
                f.truncate(cut)
            echo(f"note: removed an incomplete last line from {out}")
    loaded = read_file(out)
    if loaded.errors:
        raise SynthError(f"{out} has {len(loaded.errors)} bad line(s), first {loaded.errors[0]}"
                         f"; fix it (chimein data check {out}) or pick another --out")
    numbers = [int(m.group(1)) for ex in loaded.examples if (m := _ID.match(ex.id))]
    return loaded.examples, max(numbers, default=0) + 1


# -- the run -------------------------------------------------------------------------------
def load_seeds(opts: SynthOptions, echo: Callable[[str], None]) -> list[Example]:
    if opts.mode == "free" or opts.seeds is None:
        return []
    loaded = read_file(opts.seeds)
    if loaded.errors:
        echo(f"warning: {len(loaded.errors)} bad line(s) in {opts.seeds} skipped "
             f"(first {loaded.errors[0]})")
    if not loaded.examples:
        raise SynthError(f"no usable seed conversation in {opts.seeds}: pass --seeds FILE, or "
                         "--mode free to generate from topics alone")
    return loaded.examples


def synthesize(opts: SynthOptions, *, out: Callable[[str], None] = print,
               err: Callable[[str], None] | None = None) -> SynthResult:
    """Generate until OUT holds opts.n conversations (or the run stops). Problems before the
    first request raise SynthError; later ones end the run with `stopped` set."""
    err = err or (lambda s: print(s, file=sys.stderr))
    if not opts.model:
        raise SynthError("no teacher model: pass --model NAME or set model under [openai] in "
                         f"{opts.config_source} (the name the server serves, e.g. vLLM's "
                         "--served-model-name)")
    if opts.n < 1:
        raise SynthError("--n must be at least 1")
    existing, next_no = prepare_out(opts.out, err)
    res = SynthResult(existing=len(existing))
    if existing:
        out(f"{opts.out} already holds {len(existing)} conversation(s): continuing "
            f"(--n {opts.n} is the total wanted)")
    if res.existing >= opts.n:
        out(f"nothing to do: {res.existing} >= --n {opts.n}")
        out(f"check it: chimein data check {opts.out}")
        return res
    seeds = load_seeds(opts, err)
    seen = {normalized(ex.records) for ex in [*existing, *seeds]}
    host = urlsplit(opts.base_url).hostname or ""
    if not _local(host):
        err(f"note: prompts go to {host} (not this machine or a private network)")
    mode = (f"{opts.mode} mode, {len(seeds)} seed conversation(s) from {opts.seeds}"
            if seeds else "free mode")
    out(f"teacher: {opts.model} at {opts.base_url.rstrip('/')} ({mode})")

    rng = random.Random(f"{opts.seed}:{next_no}")  # a resumed run asks different questions
    addressing = Addressing(opts.wake_words)
    teacher = Teacher(opts)
    from tqdm import tqdm

    bar = tqdm(total=opts.n, initial=res.existing, unit="conv", desc="synth", leave=False,
               disable=None if opts.progress else True, file=sys.stderr, dynamic_ncols=True)
    failures = 0
    f = None  # OUT is opened at the first accepted conversation
    try:
        while res.total < opts.n:
            task = make_task(rng, opts, seeds)
            text, finish = teacher.chat(request_body(task, opts, rng))
            try:
                messages, tags, language = check_generation(
                    text, wake_words=opts.wake_words, addressing=addressing)
                if opts.language and language not in _LANGUAGE_OK[opts.language]:
                    raise Rejected("wrong language", language)
                key = normalized(messages)
                if key in seen:
                    raise Rejected("duplicate")
                line = final_line(f"{ID_PREFIX}{next_no:06d}", tags, language, messages)
            except Rejected as r:
                reason = "cut off (max tokens)" if (
                    finish == "length" and r.reason in ("not JSON", "empty answer")) \
                    else r.reason
                res.rejected[reason] += 1
                failures += 1
                bar.set_postfix(accepted=res.accepted, rejected=sum(res.rejected.values()))
                if failures >= opts.max_failures:
                    raise GaveUp(
                        f"the last {failures} generations were all rejected (mostly "
                        f"{res.rejected.most_common(1)[0][0]!r}): is {opts.model!r} a chat "
                        "model that follows instructions? try another model or a lower "
                        "--temperature") from None
                continue
            if f is None:
                opts.out.parent.mkdir(parents=True, exist_ok=True)
                f = open(opts.out, "ab")  # noqa: SIM115 - closed in finally
            f.write(line.encode("utf-8") + b"\n")  # one whole line, then flushed
            f.flush()
            seen.add(key)
            next_no += 1
            failures = 0
            res.accepted += 1
            bar.update(1)
            bar.set_postfix(accepted=res.accepted, rejected=sum(res.rejected.values()))
    except KeyboardInterrupt:
        res.stopped, res.exit_code = "interrupted", 130
    except SynthError as e:
        res.stopped, res.exit_code = str(e), 1 if isinstance(e, GaveUp) else 2
    finally:
        if f is not None:
            f.close()
        bar.close()
        teacher.close()
        res.requests, res.retried = teacher.requests, teacher.retried
    if res.exit_code == 2 and not res.accepted and not res.rejected:
        raise SynthError(res.stopped or "")  # the first request failed: just the error
    out(summary(res, opts))
    if res.stopped:
        err(f"{'stopped' if res.exit_code == 130 else 'error'}: {res.stopped}; everything "
            f"accepted is in {opts.out}: run the same command again to continue")
    return res


def _local(host: str) -> bool:
    """Loopback, a private network, or a bare/.local host name (not a third party)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host in ("localhost", "") or host.endswith(".local") or "." not in host
    return ip.is_loopback or ip.is_private or ip.is_link_local


def summary(res: SynthResult, opts: SynthOptions) -> str:
    rejected = sum(res.rejected.values())
    lines = [f"accepted {res.accepted}, rejected {rejected}; {opts.out} holds {res.total} "
             f"of {opts.n}" + (f" ({res.existing} were there before)" if res.existing else "")]
    if rejected:
        width = max(len(k) for k in res.rejected)
        lines.append("rejected by reason:")
        lines += [f"  {k.ljust(width)}  {v}" for k, v in
                  sorted(res.rejected.items(), key=lambda kv: (-kv[1], kv[0]))]
    lines.append(f"teacher requests: {res.requests}"
                 + (f" ({res.retried} retried after a server error)" if res.retried else ""))
    lines.append(f"check it: chimein data check {opts.out}")
    return "\n".join(lines)


def options(args: Any, settings: Any) -> SynthOptions:
    """SynthOptions from `chimein data synth` flags over the config's [openai] section."""
    import os

    api = settings.openai
    topics = tuple(t.strip() for t in re.split(r"[,，]", args.topics or "") if t.strip())
    if args.temperature is not None and not 0.0 <= args.temperature <= 2.0:
        raise SynthError("--temperature must be between 0 and 2")
    seeds = Path(args.seeds) if args.seeds else STARTER_TRAIN
    return SynthOptions(
        out=Path(args.out), n=args.n, base_url=args.base_url or api.base_url,
        model=args.model or api.model, api_key=os.environ.get(api.api_key_env, ""),
        timeout=args.timeout or api.timeout_seconds,
        temperature=0.9 if args.temperature is None else args.temperature,
        seed=args.seed, language=args.language, topics=topics, mode=args.mode, seeds=seeds,
        max_tokens=args.max_tokens,
        wake_words=tuple(dict.fromkeys([*settings.bot.wake_words, settings.bot.name])),
        progress=not args.quiet,
        config_source=settings.source if settings.source != "(defaults)" else "config.toml")
