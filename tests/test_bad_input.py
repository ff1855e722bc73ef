"""No input breaks a conversation (issue 10, items 1-6): crafted input as a new user would send
it, through the real CLI, console, core, tiny model, store and fake Slack server. Each gets a
clear outcome and nothing is lost."""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters.cli import main
from adapters.console import run_console
from adapters.slack import SlackIdentity, translate_event
from bot import config
from bot.engine.fake import ScriptedEngine
from bot.engine.transformers_backend import TransformersEngine
from bot.message import ConversationKey, Deletion, Message, clean_text
from bot.render import strip_markers
from bot.replay import replay_file
from bot.store import Store
from bot.wiring import build_core
from tests.conftest import QueueAdapter
from tests.fakes.fake_slack import FakeSlack
from tests.test_slack_e2e import make_env as slack_env

GEN = config.GenerationSettings(max_new_tokens=8, temperature=0.0, seed=0)
DEEP = "[" * 1000 + "]" * 1000
GOOD = json.dumps([{"role": "user", "name": "ann", "content": "hello there"}])
SORRY = "Sorry, something went wrong"


def tiny(tiny_lm, tiny_tokenizer) -> TransformersEngine:  # type: ignore[no-untyped-def]
    return TransformersEngine(tiny_lm, tiny_tokenizer, generation=GEN, max_context_tokens=1024)


async def lines_of(*lines: str) -> AsyncIterator[str]:
    for line in lines:
        yield line + "\n"


# -- 1. a JSONL line nested 1,000 deep ------------------------------------------------------
async def test_a_deeply_nested_line_is_reported_by_number_and_skipped(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "deep.jsonl"
    f.write_text(f"{GOOD}\n{DEEP}\n{GOOD}\n", encoding="utf-8")
    assert main(["data", "check", str(f)]) == 1  # some lines bad, the rest usable
    err = capsys.readouterr().err
    assert f"error: {f}:2: JSON nested too deeply" in err
    out = io.StringIO()
    rc = await replay_file(config.Settings(), f, as_json=True, out=out,
                           engine=ScriptedEngine())
    assert rc == 0
    assert f"skipped {f}:2: JSON nested too deeply" in capsys.readouterr().err
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["conversation"] for r in rows] == [0, 1]  # lines 1 and 3, both replayed


# -- 2. a lone surrogate escape in content --------------------------------------------------
async def test_a_lone_surrogate_is_replaced_and_the_line_replays(
        tmp_path: Path, tiny_lm, tiny_tokenizer,  # type: ignore[no-untyped-def]
        capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "surrogate.jsonl"
    f.write_text('[{"role": "user", "name": "ann", "content": "x \\ud800 y"}, '
                 '{"role": "user", "name": "b\\udcffob", "content": "assistant, ok?"}]\n',
                 encoding="utf-8")
    assert main(["data", "check", str(f)]) == 0
    err = capsys.readouterr().err
    assert f"warning: {f}:1: message 0: content: invalid Unicode (lone surrogates) " \
           "replaced by U+FFFD" in err
    assert f"{f}:1: message 1: name: invalid Unicode" in err
    out = io.StringIO()
    rc = await replay_file(config.Settings(generation=GEN), f, as_json=True, out=out,
                           engine=tiny(tiny_lm, tiny_tokenizer))
    assert rc == 0
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["name"] for r in rows] == ["ann", "b\ufffdob"] and rows[1]["addressed"]
    assert rows[1]["decision"] == "response" and SORRY not in (rows[1]["text"] or "")


# -- 3. an undecodable byte on the console ---------------------------------------------------
class Pipe(io.StringIO):
    """A stdout that is a pipe: what was written but not flushed is not seen by the reader."""

    def __init__(self) -> None:
        super().__init__()
        self.unflushed = ""

    def write(self, s: str) -> int:
        self.unflushed += s
        return super().write(s)

    def flush(self) -> None:
        self.unflushed = ""


async def test_console_takes_an_undecodable_byte_from_stdin(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """`printf '\\xffeve: hi\\n' | chimein console --store s.sqlite3`: the byte becomes U+FFFD
    in the name and the text, the message is stored, and /who is seen at once (item 6)."""
    stdin = io.TextIOWrapper(io.BytesIO(b"\xffeve: hi \xfe there\n/help\n/who\n"),
                             encoding="utf-8")
    monkeypatch.setattr("sys.stdin", stdin)
    store = tmp_path / "s.sqlite3"
    settings = config.parse({"store": {"default_logging": True}})
    async with Store(store) as s:  # eve opted in, so the store keeps her message (and name)
        await s.set_consent("console", "\ufffdeve", True)
    out = Pipe()
    assert await run_console(settings, str(store), out=out, engine=ScriptedEngine()) == 0
    assert "* in this chat: \ufffdeve (1)\n" in out.getvalue()
    assert out.unflushed == ""
    con = sqlite3.connect(store)
    assert con.execute("SELECT author_id, author_name, text FROM messages").fetchall() == [
        ("\ufffdeve", "\ufffdeve", "hi \ufffd there")]
    con.close()


async def test_console_lines_read_with_surrogateescape_are_cleaned(tmp_path: Path) -> None:
    """What Python's own stdin makes of that byte in a C/POSIX locale: a lone surrogate. It
    used to reach SQLite and end the console with UnicodeEncodeError."""
    out = Pipe()
    store = tmp_path / "s.sqlite3"
    settings = config.parse({"store": {"default_logging": True}})
    rc = await run_console(settings, str(store), lines=lines_of("\udcffeve: hi", "/who"),
                           out=out, engine=ScriptedEngine())
    assert rc == 0 and "* in this chat: \ufffdeve (1)" in out.getvalue()
    assert out.unflushed == ""


# -- 4. one bad message must not break later answers ----------------------------------------
async def test_mention_mode_keeps_answering_after_an_undecodable_byte(
        tiny_lm, tiny_tokenizer) -> None:  # type: ignore[no-untyped-def]
    """Mention mode only observes unaddressed messages; a lone surrogate used to sit in the
    session and make the tokenizer fail every later render: 3 of 3 answers were apologies."""
    settings = config.Settings(generation=GEN, policy=config.PolicySettings(mode="mention"))
    core = build_core(settings, engine=tiny(tiny_lm, tiny_tokenizer))
    adapter = QueueAdapter("test")
    core.add_adapter(adapter)
    key = ConversationKey("test", "general")
    undecodable = b"\xffhi there \x00\x1b[1m".decode("utf-8", "surrogateescape")
    async with core:
        await core.handle(Message(key, "eve", "eve", undecodable, message_id="1"))
        await core.flush()
        for i in range(3):
            await core.handle(Message(key, "bob", "bob", f"assistant, question {i}?",
                                      message_id=f"q{i}"))
            await core.flush()
    answers = [r.text for r in adapter.sent]
    assert len(answers) == 3 and not any(a.startswith(SORRY) for a in answers), answers
    assert core.errors == 0
    # ... and a platform message is made clean the same way (the Slack adapter here).
    ev = translate_event({"type": "message", "channel": "C1", "user": "U1", "ts": "1.0",
                          "text": "x \ud800 \x00\x1b[1m y\r\n"},
                         SlackIdentity("U0BOT"), {"U1": "\udcffeve"})
    assert isinstance(ev, Message)
    assert (ev.author_name, ev.text) == ("\ufffdeve", "x \ufffd  y\n")


@pytest.mark.parametrize(("raw", "clean"), [
    ("\x1b[31mERROR\x1b[0m: build failed", "ERROR: build failed"),  # a coloured log line
    ("\x1b[38;5;196mX\x1b[m and \x9b1mY", "X and Y"),  # 256 colours; the 8-bit CSI
    ("\x1b]0;a title\x07after", "after"),  # a terminal title
    ("\x1b]8;;https://x.y\x1b\\link\x1b]8;;\x1b\\ done", "link done"),  # a hyperlink
    ("\x1b]no terminator, all kept", "no terminator, all kept"),  # the text stays
    ("a lone \x1b and [31m typed by hand", "a lone  and [31m typed by hand"),
])
def test_terminal_escapes_are_removed_whole(raw: str, clean: str) -> None:
    """A message pasted from a coloured terminal keeps its text and loses the whole escape
    sequence, not just its ESC (which left "[31m" behind)."""
    assert clean_text(raw) == clean


# -- 5. Slack payloads of an unexpected shape -----------------------------------------------
ODD_SLACK = [
    {"type": "message", "subtype": "message_deleted", "channel": "C0GENERAL",
     "deleted_ts": "1760000100.000100", "previous_message": "gone"},
    {"type": "message", "subtype": "message_changed", "channel": "C0GENERAL",
     "message": {"ts": "1760000100.000100", "text": "new"}, "previous_message": ["old"]},
    {"type": "message", "subtype": "message_changed", "channel": "C0GENERAL",
     "message": "not an object"},
    {"type": "reaction_added", "user": "U0ANN", "reaction": "+1", "item": "C0GENERAL"},
    {"type": "message", "channel": 42, "user": "U0ANN", "text": "hi", "ts": "1.0"},
]


def test_odd_slack_payloads_translate_without_raising() -> None:
    me = SlackIdentity("U0BOT", "B0BOT")
    deleted, changed, not_object, reaction, numeric = (translate_event(e, me)
                                                       for e in ODD_SLACK)
    assert deleted == Deletion(ConversationKey("slack", "C0GENERAL"), "1760000100.000100",
                               ts=deleted.ts)  # type: ignore[union-attr]
    assert changed is not None and changed.new_text == "new"  # type: ignore[union-attr]
    assert not_object is None and reaction is None and numeric is None


async def test_odd_slack_payloads_are_acknowledged() -> None:
    """Over Socket Mode with the real bolt app: each envelope is acknowledged (it used to stay
    unacknowledged after an AttributeError, and Slack would redeliver it), and a normal
    message after them is answered."""
    async with FakeSlack() as fake:
        core, adapter, env = await slack_env(fake)
        async with core, adapter:
            await fake.wait_connected()
            for ev in ODD_SLACK:
                await fake.wait_acked(await fake.send_event(ev))
            await fake.user_says("C0GENERAL", "U0ANN", "assistant, still there?")
            posts = await fake.wait_posts(1)
            assert posts[0]["text"] == "echo: assistant, still there?"
            await env.settle()
        assert core.errors == 0
        assert [d.message_id for d in env.store.deletions] == ["1760000100.000100"]


# -- 6. a bare carriage return in an answer -------------------------------------------------
async def test_answers_never_carry_a_bare_carriage_return(tmp_path: Path) -> None:
    assert strip_markers("(response) one\rtwo\r\nthree\x00") == "one\ntwo\nthree"
    engine = ScriptedEngine(script=lambda turns: 0.0,
                            answer=lambda turns: "(response) line one\rline two\r\n")
    settings = config.Settings()
    async with Store(tmp_path / "s.sqlite3", default_logging=True) as store:
        await store.set_consent("test", "ann", True)
        core = build_core(settings, engine=engine, store=store)
        adapter = QueueAdapter("test")
        core.add_adapter(adapter)
        async with core:
            await core.handle(Message(ConversationKey("test", "c"), "ann", "Ann",
                                      "assistant, two lines?", message_id="1"))
            await asyncio.wait_for(core.flush(), 5)
    assert [r.text for r in adapter.sent] == ["line one\nline two"]
    con = sqlite3.connect(tmp_path / "s.sqlite3")
    assert con.execute("SELECT text FROM messages WHERE role = 'assistant'").fetchall() == [
        ("line one\nline two",)]
    con.close()


async def test_console_output_is_flushed_for_a_pipe() -> None:
    """`chimein console | tee log`: /who (and every other line of the console's own) is seen
    when it is written, not when the next answer happens to flush."""
    for command in ("/who", "/nonsense", "no name yet", "assistant: hi"):
        out = Pipe()
        await run_console(config.Settings(), lines=lines_of(command), out=out,
                          engine=ScriptedEngine())
        assert out.getvalue().splitlines()[-1].startswith("* ")
        assert out.unflushed == "", command
