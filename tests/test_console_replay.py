"""The console adapter and replay, end to end through the real core and the tiny real model."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters.console import parse_console_line, run_console
from bot import config
from bot.engine.fake import ScriptedEngine
from bot.engine.transformers_backend import TransformersEngine
from bot.render import SILENCE
from bot.replay import replay_file
from tests.conftest import ROOT


async def lines_of(*lines: str) -> AsyncIterator[str]:
    for line in lines:
        yield line + "\n"


def tiny_engine(tiny_lm, tiny_tokenizer) -> TransformersEngine:  # type: ignore[no-untyped-def]
    return TransformersEngine(tiny_lm, tiny_tokenizer, version="tiny",
                              generation=config.GenerationSettings(max_new_tokens=8,
                                                                   temperature=0.0))


def test_parse_console_line() -> None:
    assert parse_console_line("alice: hi there", None) == ("alice", "hi there")
    assert parse_console_line("小王：你好", None) == ("小王", "你好")
    assert parse_console_line("just text", "bob") == ("bob", "just text")
    assert parse_console_line("just text", None) is None
    # The first colon names the speaker, even one in a URL: no crash, and a name to /who.
    assert parse_console_line("see http://x.y: ok", None) == ("see http", "//x.y: ok")


async def test_console_multi_user_chat_with_real_model(tiny_lm, tiny_tokenizer) -> None:  # type: ignore[no-untyped-def]
    out = io.StringIO()
    settings = config.parse({"policy": {"threshold": 0.0}})  # never chime in unprompted
    await run_console(settings, lines=lines_of(
        "alice: hi there", "bob: morning! deploy today?", "/who",
        "alice: assistant, what's the HTTP code for rate limiting?", "carol: lol",
        "nonsense without a name is said by carol", "assistant: I am the bot", "/quit",
        "dave: never read"), out=out, engine=tiny_engine(tiny_lm, tiny_tokenizer))
    text = out.getvalue()
    print(text)
    lines = text.splitlines()
    assert "* in this chat: alice (1), bob (1)" in lines
    answers = [ln for ln in lines if ln.startswith("assistant: ")]
    assert len(answers) == 1  # only the addressed message was answered
    assert SILENCE not in text and "(response)" not in answers[0]
    assert len(answers[0]) > len("assistant: ")
    assert "* that name is the bot's; pick another" in lines
    assert "dave" not in text


async def test_console_commands_and_store_absent(tmp_path: Path) -> None:
    out = io.StringIO()
    eng = ScriptedEngine(script=lambda turns: 0.0, answer=lambda t: "(response) sure (silence)")
    await run_console(config.Settings(), lines=lines_of("/help", "ann: x"), out=out, engine=eng)
    assert "* commands: /who, /quit" in out.getvalue()
    assert "assistant: sure" in out.getvalue()


def write_jsonl(path: Path) -> Path:
    rows = [
        json.dumps({"id": "c0", "messages": [
            {"role": "user", "name": "Ann", "content": "hi all"},
            {"role": "user", "name": "Bob", "content": "assistant, what is 2+2?"},
            {"role": "assistant", "content": "4."},
            {"role": "user", "name": "Ann", "content": "thanks"}]}),
        "{not json",
        json.dumps([{"role": "user", "name": "Cy", "content": "助手，你好 \u202e\u200b"},
                    {"role": "assistant", "content": "你好！"}]),
        json.dumps({"messages": []}),
        "",
        json.dumps([{"role": "bot", "content": "x"}]),
    ]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


async def test_replay_json_rows_and_bad_lines(tmp_path, tiny_lm, tiny_tokenizer, capsys) -> None:  # type: ignore[no-untyped-def]
    f = write_jsonl(tmp_path / "chats.jsonl")
    out = io.StringIO()
    rc = await replay_file(config.Settings(), f, as_json=True, out=out,
                           engine=tiny_engine(tiny_lm, tiny_tokenizer))
    assert rc == 0
    rows = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [(r["conversation"], r["turn"], r["name"]) for r in rows] == [
        (0, 0, "Ann"), (0, 1, "Bob"), (0, 2, "Ann"), (1, 0, "Cy")]
    assert set(rows[0]) == {"conversation", "turn", "name", "addressed", "address",
                            "decision", "p_silence", "text", "latency_ms"}
    assert [r["addressed"] for r in rows] == [False, True, False, True]
    # Ann's "thanks" comes after Bob was answered: no follow-up of hers
    assert [r["address"] for r in rows] == [None, "direct", None, "direct"]
    for r in rows:
        assert r["decision"] in ("silence", "response")
        assert (r["text"] is None) == (r["decision"] == "silence")
        assert 0.0 <= r["p_silence"] <= 1.0 and r["latency_ms"] > 0
        if r["addressed"]:
            assert r["decision"] == "response" and r["text"]
    err = capsys.readouterr().err
    assert "chats.jsonl:2: not valid JSON" in err
    assert "chats.jsonl:4: empty conversation" in err
    assert "chats.jsonl:6: message 0: role 'bot' is not one of" in err


async def test_replay_gold_history_uses_the_files_answers(tmp_path, tiny_lm, tiny_tokenizer) -> None:  # type: ignore[no-untyped-def]
    f = write_jsonl(tmp_path / "chats.jsonl")
    eng = tiny_engine(tiny_lm, tiny_tokenizer)
    out = io.StringIO()
    await replay_file(config.Settings(), f, history="gold", out=out, engine=eng, limit=1)
    text = out.getvalue()
    assert "=== conversation 0 (line 1, id c0) ===" in text
    # after gold replay the history holds the file's answer, not the model's
    from bot.render import from_records, with_silences
    # p_silence of the last turn equals a from-scratch score of the gold history
    gold_turns = with_silences(from_records([
        {"role": "user", "name": "Ann", "content": "hi all"},
        {"role": "user", "name": "Bob", "content": "assistant, what is 2+2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "name": "Ann", "content": "thanks"}]))
    expected = eng.score_silence(gold_turns)
    out2 = io.StringIO()
    await replay_file(config.Settings(), f, history="gold", as_json=True, out=out2,
                      engine=tiny_engine(tiny_lm, tiny_tokenizer), limit=1)
    last = json.loads(out2.getvalue().splitlines()[-1])
    assert last["p_silence"] == pytest.approx(expected, rel=1e-3)


def test_replay_cli_subprocess(tmp_path, tiny_model_dir) -> None:  # type: ignore[no-untyped-def]
    f = write_jsonl(tmp_path / "chats.jsonl")
    r = subprocess.run([sys.executable, "-m", "adapters.cli", "replay", str(f), "--model",
                        str(tiny_model_dir), "--json", "--limit", "1"],
                       check=False, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 3
    r = subprocess.run([sys.executable, "-m", "adapters.cli", "replay", str(f), "--model",
                        str(tmp_path / "missing")], check=False, capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    assert r.returncode == 2 and "does not exist" in r.stderr


async def test_gold_replay_has_no_cooldown_live_replay_does(tmp_path: Path) -> None:
    """Six unaddressed turns and a model that chimes in on each: evaluation (gold) reports all
    six of the model's decisions; live replay caps chime-ins like production (3 per window)."""
    conv = [{"role": "user", "name": f"U{i}", "content": f"fact {i} anyone?"} for i in range(6)]
    f = tmp_path / "c.jsonl"
    f.write_text(json.dumps(conv) + "\n", "utf-8")
    counts = {}
    for history in ("gold", "live"):
        out = io.StringIO()
        eng = ScriptedEngine(script=lambda turns: 0.0)
        await replay_file(config.Settings(), f, history=history, as_json=True, out=out,
                          engine=eng)
        rows = [json.loads(line) for line in out.getvalue().splitlines()]
        counts[history] = sum(r["decision"] == "response" for r in rows)
    assert counts == {"gold": 6, "live": 3}
