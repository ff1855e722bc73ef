"""Discord gateway payload -> neutral event: recorded-style payloads (tests/payloads/discord_*)
go through discord.py's own gateway parsers, and the resulting objects through the adapter's
pure translation functions."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import discord
import pytest

from adapters.common import split_text, utf16_len
from adapters.discord import (
    MAX_POST_UNITS,
    DiscordIdentity,
    conversation_key,
    render_content,
    translate_message,
)
from bot.message import ConversationKey, Message

PAYLOADS = Path(__file__).parent / "payloads"
BOT = 1100000000000000001
GENERAL, THREAD, DM = "1100000000000000200", "1100000000000000300", "1100000000000000400"
BOT_ROLE, MODS = 1100000000000000500, 1100000000000000501
ME = DiscordIdentity(BOT, "assistant")


def payload(name: str) -> dict[str, Any]:
    return json.loads((PAYLOADS / f"discord_{name}.json").read_text(encoding="utf-8"))


class Parsed:
    """A discord.py connection state that has seen READY and GUILD_CREATE."""

    def __init__(self) -> None:
        intents = discord.Intents.default()
        intents.message_content = True
        self.client = discord.Client(intents=intents)
        self.state = self.client._connection
        self.events: list[tuple[str, tuple[Any, ...]]] = []
        self.state.dispatch = lambda event, *args: self.events.append((event, args))

    def feed(self, event: str, data: dict[str, Any]) -> None:
        self.state.parsers[event](data)

    def message(self, name: str) -> discord.Message:
        self.feed("MESSAGE_CREATE", payload(name))
        event, args = self.events[-1]
        assert event == "message"
        return args[0]


@pytest.fixture
async def parsed() -> AsyncIterator[Parsed]:
    p = Parsed()
    p.feed("READY", payload("ready"))
    p.feed("GUILD_CREATE", payload("guild_create"))
    yield p
    task = p.state._ready_task
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def translated(parsed: Parsed, name: str) -> Message:
    msg = translate_message(parsed.message(name), ME)
    assert msg is not None
    return msg


async def test_mention_of_the_bot_user(parsed: Parsed) -> None:
    m = translated(parsed, "message_mention_user")
    assert m.key == ConversationKey("discord", GENERAL) and m.message_id == "1240000000000000001"
    assert m.mentions_bot and m.text == "@assistant what's the status code for too many requests?"
    assert m.author_id == "1100000000000000601" and m.author_name == "Ann"
    assert not (m.is_bot or m.is_self or m.is_dm)


async def test_mention_of_the_bots_managed_role(parsed: Parsed) -> None:
    m = translated(parsed, "message_mention_role")
    assert m.mentions_bot and m.text == "@assistant ping"


async def test_markup_renders_names_and_mods_role_does_not_address(parsed: Parsed) -> None:
    m = translated(parsed, "message_markup")
    assert not m.mentions_bot
    assert m.text == ("@Bobby Tables see #random and #release checklist, @mods :party: :wave: "
                      "at 2024-05-01 12:00 UTC, run /deploy done")  # NUL dropped


async def test_thread_message_is_its_own_conversation(parsed: Parsed) -> None:
    m = translated(parsed, "message_thread")
    assert m.key == ConversationKey("discord", GENERAL, THREAD)
    assert m.attachments == ("log.txt",) and m.author_name == "Bobby Tables"  # guild nickname


async def test_dm(parsed: Parsed) -> None:
    m = translated(parsed, "message_dm")
    assert m.is_dm and m.key == ConversationKey("discord", DM) and not m.mentions_bot


async def test_reply_to_the_bot_is_addressed(parsed: Parsed) -> None:
    m = translated(parsed, "message_reply_to_bot")
    assert m.mentions_bot and m.reply_to == "1240000000000000010" and m.text == "and 503?"


async def test_other_bot_own_message_and_system_messages(parsed: Parsed) -> None:
    other = translated(parsed, "message_other_bot")
    assert other.is_bot and not other.is_self and other.author_name == "Other Bot"
    own = translated(parsed, "message_own")
    assert own.is_self and not own.is_bot
    assert translate_message(parsed.message("message_join"), ME) is None  # "Bob joined"


async def test_edit_payload_through_the_raw_event(parsed: Parsed) -> None:
    parsed.feed("MESSAGE_UPDATE", payload("message_update"))
    event, (raw,) = parsed.events[-1]
    assert event == "raw_message_edit"
    m = translate_message(raw.message, ME)
    assert m is not None and raw.message.edited_at is not None
    assert m.text == "@assistant what's the status code for rate limits?"


def test_render_content_without_a_guild() -> None:
    text, bot = render_content(f"<@{BOT}> hi <@123> <#456> <@&{BOT_ROLE}> <t:99999999999999999>",
                               ME, bot_role_ids={BOT_ROLE})
    assert bot and text == "@assistant hi @unknown-user #unknown-channel @assistant " \
                           "<t:99999999999999999>"
    odd = "مرحبا \u200b👩\u200d💻 e\u0301 \u202eabc"
    assert render_content(odd, ME) == (odd, False)
    assert conversation_key(discord.Object(id=5)) == ConversationKey("discord", "5")


def test_split_counts_utf16_like_discord() -> None:
    emoji = "😀" * 1500  # 3,000 UTF-16 units
    parts = split_text(emoji, MAX_POST_UNITS, measure=utf16_len)
    assert [utf16_len(p) for p in parts] == [1990, 1010] and "".join(parts) == emoji
    text = ("Short sentence here. " * 300).strip()
    parts = split_text(text, MAX_POST_UNITS, measure=utf16_len)
    assert all(utf16_len(p) <= MAX_POST_UNITS and p.endswith(".") for p in parts)
    assert " ".join(parts) == text
