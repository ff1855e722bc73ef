"""`chimein data export | stats | forget` on a real store file."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest

from adapters.cli import main
from bot.engine.fake import ScriptedEngine
from bot.message import ConversationKey, Message
from bot.store import SCHEMA_VERSION, Store

K = ConversationKey("discord", "42")


@pytest.fixture
async def filled(tmp_path: Path) -> Path:
    """A config whose store holds a short consented conversation (and one Slack one)."""
    db = tmp_path / "data" / "store.sqlite3"
    async with Store(db) as store:
        await store.set_channel_logging("discord", "42", True)
        await store.set_channel_logging("slack", "C1", True)
        for user in ("7", "8"):
            await store.set_consent("discord", user, True)
        await store.set_consent("slack", "U1", True)
        await store.record_message(Message(K, "7", "Ann", "my mail is ann@example.com",
                                           message_id="1", ts=100.0))
        await store.record_message(Message(K, "8", "Bob", "assistant, 2+2?", message_id="2",
                                           ts=110.0))
        await store.record_bot_turn(K, "4", message_id="3", in_reply_to="2", p_silence=0.2,
                                    model_version="v1", latency_ms=12.0)
        await store.record_message(Message(ConversationKey("slack", "C1"), "U1", "Cy",
                                           "from slack", message_id="1.0", ts=120.0))
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[store]\npath = "{db}"\n', encoding="utf-8")
    return cfg


def test_data_export_writes_consented_scrubbed_jsonl(filled: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out" / "export.jsonl"
    assert main(["--config", str(filled), "data", "export", str(out)]) == 0
    err = capsys.readouterr().err
    assert "exported 1 conversation segment(s)" in err and "allow_slack_data is off" in err
    [line] = out.read_text(encoding="utf-8").splitlines()
    conv = json.loads(line)
    assert conv["messages"] == [
        {"role": "user", "name": "Ann", "content": "my mail is <EMAIL_1>"},
        {"role": "user", "name": "Bob", "content": "assistant, 2+2?"},
        {"role": "assistant", "content": "4"}]
    # The training side's checker accepts the file as it is.
    assert main(["data", "check", str(out)]) == 0


def test_data_stats_tables_and_json(filled: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(filled), "data", "stats"]) == 0
    text = capsys.readouterr().out
    assert "3 message(s), 1 bot turn(s)" in text
    assert "discord:42" in text and "discord:7" in text and "Ann" in text
    assert main(["--config", str(filled), "data", "stats", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert {c["channel"]: c["messages"] for c in stats["channels"]} == {"discord:42": 2,
                                                                        "slack:C1": 1}


def test_data_forget_removes_the_user(filled: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "export.jsonl"
    assert main(["--config", str(filled), "data", "export", str(out)]) == 0
    assert main(["--config", str(filled), "data", "forget", "--user", "discord:7"]) == 0
    said = capsys.readouterr().out
    assert "forgot discord:7: 1 message(s)" in said
    assert "1 conversation(s) removed from 1 export file(s)" in said
    assert "ann@example.com" not in out.read_text() and "EMAIL" not in out.read_text()
    assert main(["--config", str(filled), "data", "stats", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert [u["user"] for u in stats["users"]] == ["discord:8", "slack:U1"]


def test_missing_store_is_a_clear_message(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[store]\npath = "{tmp_path / "nothing.sqlite3"}"\n')
    for args in (["data", "export", str(tmp_path / "x.jsonl")], ["data", "stats"],
                 ["data", "forget", "--user", "slack:U1"]):
        assert main(["--config", str(cfg), *args]) == 1
        assert "no store at" in capsys.readouterr().err
    assert not (tmp_path / "nothing.sqlite3").exists()  # looking did not create it


def _discord_only_store(tmp_path: Path, text: str) -> Path:
    async def fill(db: Path) -> None:
        async with Store(db) as store:
            await store.set_channel_logging("discord", "42", True)
            await store.set_consent("discord", "7", True)
            await store.record_message(Message(K, "7", "Ann", text, message_id="1", ts=100.0))

    db = tmp_path / "store.sqlite3"
    asyncio.run(fill(db))
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[store]\npath = "{db}"\n', encoding="utf-8")
    return cfg


def test_data_export_says_what_it_left_out_or_cut_only_when_it_did(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _discord_only_store(tmp_path, "hello " + "x" * 9000 + " tail-of-a-long-message")
    out = tmp_path / "export.jsonl"
    assert main(["--config", str(cfg), "data", "export", str(out)]) == 0
    err = capsys.readouterr().err
    assert "Slack" not in err  # no Slack conversation was left out
    assert "1 message(s) longer than runtime.max_message_chars (8000) cut" in err
    [conv] = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert conv["messages"][0]["content"].endswith(" …[truncated]")


def test_a_store_from_a_newer_chimein_is_an_error_not_a_traceback(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    newer = tmp_path / "newer.sqlite3"
    con = sqlite3.connect(newer)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[store]\npath = "{newer}"\n', encoding="utf-8")

    async def scripted(settings: object) -> ScriptedEngine:
        return ScriptedEngine()

    monkeypatch.setattr("adapters.console.load_engine_async", scripted)
    assert main(["--config", str(cfg), "console", "--store", str(newer)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "newer chimein" in err and "Traceback" not in err
    assert main(["--config", str(cfg), "data", "stats"]) == 2
    assert "newer chimein" in capsys.readouterr().err


def test_store_flag_points_the_data_commands_at_any_file(
        filled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--store FILE` (e.g. the console's) instead of store.path: no config needed."""
    db = tmp_path / "data" / "store.sqlite3"
    empty = tmp_path / "empty.toml"
    empty.write_text("", encoding="utf-8")
    assert main(["--config", str(empty), "data", "stats", "--json", "--store", str(db)]) == 0
    assert str(db) in capsys.readouterr().out
    out = tmp_path / "x.jsonl"
    assert main(["--config", str(empty), "data", "export", str(out), "--store", str(db)]) == 0
    assert "ann" not in out.read_text() and out.read_text().count("\n") == 1
    assert main(["--config", str(empty), "data", "stats", "--store",
                 str(tmp_path / "nope.sqlite3")]) == 1
    assert "no store at" in capsys.readouterr().err
