"""The public address set (tests/data/address): the rule finds every direct address, rarely
takes a noun for one, and follow-ups are judged by the core in context."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from bot.config import PolicySettings
from bot.core import Core, DecisionRecord
from bot.engine.fake import ScriptedEngine
from bot.message import ConversationKey, Message
from bot.policy import Policy
from training.address_eval import PUBLIC_SET, evaluate, read_set, table

DATA = Path(__file__).parent / "data" / "address"
WAKE = ("assistant", "助手")


def test_every_direct_address_is_found_and_nouns_rarely_are() -> None:
    rows, errors = read_set(PUBLIC_SET)
    assert errors == [] and len(rows) >= 300
    assert {r.lang for r in rows} == {"en", "zh", "mixed"}
    result = evaluate(rows, WAKE)["all"]
    assert result["missed_direct"] == []
    assert result["not_taken_as_direct"] <= 0.02, result["false_direct"]


def test_eval_reports_bad_lines_and_prints_the_table(tmp_path: Path) -> None:
    f = tmp_path / "set.jsonl"
    f.write_text('{"text": "assistant, hi", "label": "direct", "category": "start", '
                 '"lang": "en"}\n' + "[" * 1000 + "\n" + '{"text": 3, "label": "x"}\n'
                 '{"text": "my assistant manager", "label": "not", "category": "noun", '
                 '"lang": "en"}\n', encoding="utf-8")
    rows, errors = read_set(f)
    assert [r.line for r in rows] == [1, 4]
    assert [e.split(":")[1] for e in errors] == ["2", "3"]
    out = table(evaluate(rows, WAKE))
    assert "| start | 1 | direct 1 | 1 / 0 / 0 | 1.000 | 1.000 |" in out
    assert "| noun | 1 | not 1 | 0 / 0 / 1 | - | - |" in out


class _Collect:
    platform = "test"

    def __init__(self) -> None:
        self.sent: list[Any] = []

    async def send(self, reply: Any) -> str:
        self.sent.append(reply)
        return f"bot{len(self.sent)}"

    def typing(self, key: ConversationKey) -> Any:
        import contextlib
        return contextlib.nullcontext()


def _followups() -> list[dict[str, Any]]:
    with (DATA / "followups.jsonl").open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.mark.parametrize("case", _followups(), ids=lambda c: c["id"])
async def test_followups_in_context(case: dict[str, Any]) -> None:
    """Each case through the real core: the bot's lines are its own answers (to an address)
    or notices; the last message's decision record says whether it was a follow-up."""
    speaks = [False]  # the engine answers exactly where the case shows the bot answering
    core = Core(ScriptedEngine(lambda turns: 0.0 if speaks[0] else 0.99),
                Policy(PolicySettings(follow_up_seconds=300), WAKE))
    adapter = _Collect()
    core.add_adapter(adapter)
    records: list[DecisionRecord] = []
    core.listeners.append(records.append)
    key = ConversationKey("test", "c")
    t = time.time()
    answered = False
    async with core:
        for i, m in enumerate(case["messages"]):
            t += m.get("gap_s", 5)
            if m["name"] == "assistant":
                if not answered:  # not an answer: a reminder or digest it posted
                    await core.announce(key, m["text"])
                continue
            nxt = case["messages"][i + 1] if i + 1 < len(case["messages"]) else None
            speaks[0] = answered = nxt is not None and nxt["name"] == "assistant"
            await core.handle(Message(key, m["name"], m["name"], m["text"],
                                      message_id=f"m{i}", ts=t))
            await core.flush()
    assert records[-1].messages[-1].text == case["messages"][-1]["text"]
    expect = "follow-up" if case["expect"] == "follow-up" else None
    assert records[-1].address == expect, case["note"]
