"""Real chat (Gitter, tests/data/external, see its SOURCE.md) through the whole bot: the core,
the tiny transformers engine and a real SQLite store. Messy input straight from a live
platform: CRLF, multi-line pastes, NUL and ANSI escape bytes, a 47,000-character log."""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
from pathlib import Path

from bot import config
from bot.core import DecisionRecord
from bot.engine.transformers_backend import TransformersEngine
from bot.message import ConversationKey, Message, clean_text
from bot.render import RESPONSE, SILENCE, strip_markers
from bot.replay import replay_file
from bot.store import Store
from bot.wiring import build_core

DATA = Path(__file__).resolve().parent / "data" / "external" / "gitter-livechat"


def load_gitter(path: Path, limit: int) -> list[tuple[float, str, str]]:
    from tests.test_store_throughput import bench

    return bench().load_gitter(path, limit)  # type: ignore[no-any-return]
GEN = config.GenerationSettings(max_new_tokens=8, temperature=0.0, seed=0)


def engine(tiny_lm, tiny_tokenizer) -> TransformersEngine:  # type: ignore[no-untyped-def]
    return TransformersEngine(tiny_lm, tiny_tokenizer, generation=GEN, max_context_tokens=1024)


async def test_replay_of_a_real_support_room(tmp_path: Path, tiny_lm, tiny_tokenizer) -> None:  # type: ignore[no-untyped-def]
    records = load_gitter(DATA / "gitter_gitter_first3000.txt", 300)
    convs = [[{"role": "user", "name": nick, "content": text} for _, nick, text in
              records[i:i + 30]] for i in range(0, len(records), 30)]
    f = tmp_path / "gitter.jsonl"
    f.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in convs), "utf-8")
    out = io.StringIO()
    # threshold 0.9: the untrained tiny model speaks often, so answers are exercised too
    settings = config.Settings(generation=GEN, policy=config.PolicySettings(threshold=0.9))
    rc = await replay_file(settings, f, as_json=True, out=out,
                           engine=engine(tiny_lm, tiny_tokenizer))
    assert rc == 0
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(rows) == 300  # every real message got a decision
    assert {r["conversation"] for r in rows} == set(range(10))
    spoken = [r["text"] for r in rows if r["decision"] == "response"]
    assert spoken
    for text in spoken:  # whatever the model made of it: no marker, never empty
        assert text and strip_markers(text) == text
        assert SILENCE not in text and RESPONSE not in text


async def test_nul_escape_and_huge_pastes_are_stored_and_decided(tmp_path: Path, tiny_lm,  # type: ignore[no-untyped-def]
                                                                 tiny_tokenizer) -> None:
    records = []
    for name in ("appium_appium_lines3301-3340_nul.txt", "appium_appium_lines8311-8325_esc.txt",
                 "appium_appium_lines15821-16110_long.txt"):
        records += load_gitter(DATA / name, 10_000)
    texts = [t for _, _, t in records]
    assert any("\x00" in t for t in texts) and any("\x1b" in t for t in texts)
    assert max(len(t) for t in texts) > 40_000
    key = ConversationKey("gitter", "appium/appium")
    settings = config.Settings(generation=GEN)
    async with Store(tmp_path / "s.sqlite3") as store:
        await store.set_channel_logging(key.platform, key.channel, True)
        for nick in {n for _, n, _ in records}:
            await store.set_consent(key.platform, nick, True)
        core = build_core(settings, engine=engine(tiny_lm, tiny_tokenizer), store=store)
        decided: list[DecisionRecord] = []
        core.listeners.append(decided.append)
        async with core:
            for i, (ts, nick, text) in enumerate(records):
                await core.handle(Message(key, nick, nick, text, message_id=f"a{i}", ts=ts))
                await core.flush()  # one decision a message, as a quiet channel would
            await asyncio.wait_for(core.flush(), 60)
        assert core.errors == 0
        assert sum(len(r.messages) for r in decided) == len(records)
    con = sqlite3.connect(tmp_path / "s.sqlite3")
    stored = dict(con.execute("SELECT platform_message_id, text FROM messages "
                              "WHERE role = 'user'").fetchall())
    con.close()
    # every message kept, none dropped: the 47k paste whole, and everything but the control
    # characters no Message holds (bot.message.clean_text: NUL, ESC; CRLF is a newline)
    assert stored == {f"a{i}": clean_text(t) for i, (_, _, t) in enumerate(records)}
    assert max(len(t) for t in stored.values()) > 40_000
