"""Slack payload -> neutral event, as pure functions over recorded-style payloads
(tests/payloads/slack_*.json are event_callback bodies as Slack delivers them)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from adapters.common import split_text
from adapters.slack import (
    MAX_POST_CHARS,
    SlackIdentity,
    conversation_key,
    display_name,
    render_text,
    slack_escape,
    translate_event,
    user_ids_to_resolve,
)
from bot.message import ConversationKey, Deletion, Edit, Message, Reaction

PAYLOADS = Path(__file__).parent / "payloads"
ME = SlackIdentity("U0BOT", "B0BOT", "assistant")
NAMES = {"U0ANN": "Ann", "U0BOB": "Bob", "U0CY": "Cy Wu"}
GENERAL = ConversationKey("slack", "C0GENERAL")
THREAD = ConversationKey("slack", "C0GENERAL", "1760000101.000200")


def event(name: str) -> dict[str, Any]:
    body = json.loads((PAYLOADS / f"slack_{name}.json").read_text(encoding="utf-8"))
    return body["event"]


def test_channel_message_renders_mentions_links_and_entities() -> None:
    ev = event("message_channel")
    assert user_ids_to_resolve(ev) == {"U0ANN", "U0BOB"}
    msg = translate_event(ev, ME, NAMES)
    assert isinstance(msg, Message)
    assert msg.key == GENERAL and msg.message_id == "1760000100.000100"
    assert msg.author_id == "U0ANN" and msg.author_name == "Ann"
    assert msg.text == ("@Bob can you check #random? see the runbook (https://example.com/runbook)"
                        " & https://example.com/x <3 @here")
    assert not (msg.mentions_bot or msg.is_bot or msg.is_self or msg.is_dm)
    assert msg.ts == pytest.approx(1760000100.0001)


def test_app_mention_sets_mentions_bot_and_names_the_bot() -> None:
    msg = translate_event(event("app_mention"), ME, NAMES)
    assert isinstance(msg, Message) and msg.mentions_bot
    assert msg.text == "@assistant what's the HTTP status for too many requests?"
    assert msg.key == GENERAL  # a top-level message, not a thread


def test_thread_reply_is_its_own_conversation() -> None:
    msg = translate_event(event("thread_reply"), ME, NAMES)
    assert isinstance(msg, Message)
    assert msg.key == THREAD and msg.reply_to == "1760000101.000200"
    assert msg.author_name == "Bob"
    broadcast = translate_event(event("thread_broadcast"), ME, NAMES)
    assert isinstance(broadcast, Message) and broadcast.key == THREAD
    # The parent itself (thread_ts == ts) stays in the channel.
    assert conversation_key("C1", "1.0", "1.0") == ConversationKey("slack", "C1")


def test_dm_is_marked_and_unknown_names_fall_back() -> None:
    msg = translate_event(event("dm"), ME, {})
    assert isinstance(msg, Message) and msg.is_dm
    assert msg.key == ConversationKey("slack", "D0CYDM")
    assert msg.author_name == "U0CY"  # no name resolved: the id, never an empty name


def test_edit_and_deletion_keep_the_thread() -> None:
    edit = translate_event(event("message_changed"), ME, NAMES)
    assert isinstance(edit, Edit)
    assert edit.key == THREAD and edit.message_id == "1760000102.000300"
    assert edit.new_text == "the deploy is <b>done</b> & green" and edit.author_id == "U0ANN"
    # Unfurls and reply-count updates arrive as message_changed with the same text.
    assert translate_event(event("message_unfurled"), ME, NAMES) is None
    deletion = translate_event(event("message_deleted"), ME, NAMES)
    assert deletion == Deletion(THREAD, "1760000102.000300", ts=deletion.ts)  # type: ignore[union-attr]


def test_other_bots_and_own_messages() -> None:
    ci = translate_event(event("bot_message"), ME, NAMES)
    assert isinstance(ci, Message) and ci.is_bot and not ci.is_self
    assert ci.author_name == "CI Bot" and ci.author_id == "B0CIBOT"
    app = translate_event(event("app_bot_user_message"), ME, NAMES)
    assert isinstance(app, Message) and app.is_bot and app.author_name == "Release App"
    assert user_ids_to_resolve(event("app_bot_user_message")) == set()  # no users.info for bots
    own = translate_event(event("own_message"), ME, NAMES)
    assert isinstance(own, Message) and own.is_self and not own.is_bot


def test_reactions_are_feedback_only_on_the_bots_messages() -> None:
    r = translate_event(event("reaction_added"), ME, NAMES)
    assert isinstance(r, Reaction) and r.added
    assert (r.key, r.message_id, r.user_id, r.emoji) == (
        GENERAL, "1760000140.001100", "U0ANN", "thumbsup")
    # The adapter knows which conversation its post belonged to (a thread here).
    r2 = translate_event(event("reaction_added"), ME, NAMES, {"1760000140.001100": THREAD})
    assert isinstance(r2, Reaction) and r2.key == THREAD
    assert translate_event(event("reaction_other"), ME, NAMES) is None


def test_system_subtypes_are_ignored_and_files_are_named() -> None:
    assert translate_event(event("channel_join"), ME, NAMES) is None
    f = translate_event(event("file_share"), ME, NAMES)
    assert isinstance(f, Message) and f.attachments == ("build.log",) and f.text == ""


def test_render_text_edge_cases() -> None:
    text, bot = render_text("<@U0BOT|assistant> hi <@W0ENT> <!subteam^S01|@oncall> "
                            "<mailto:a@b.c|a@b.c> <!date^1700000000^{date}|Nov 14> "
                            "nul:\x00 bell:\x07 tab:\t", NAMES, ME)
    assert bot
    assert text == "@assistant hi @W0ENT @oncall a@b.c Nov 14 nul: bell: tab:\t"
    rtl = "مرحبا \u200b👩\u200d💻 e\u0301 \u202eabc"
    assert render_text(rtl, {}, ME) == (rtl, False)  # nothing but control characters goes


def test_escape_roundtrip_and_display_names() -> None:
    raw = "a < b && c > d <!channel>"
    assert render_text(slack_escape(raw), {}, ME)[0] == raw
    assert display_name({"id": "U1", "name": "cy", "profile": {"display_name": " ",
                                                               "real_name": "Cy Wu"}}) == "Cy Wu"
    assert display_name({"id": "U1", "name": "cy", "profile": {}}) == "cy"


def test_split_long_replies_at_natural_boundaries() -> None:
    para = ("This is a sentence that goes on. " * 40).strip()  # 1,319 chars
    text = "\n\n".join([para] * 8)  # 10,566 chars; three paragraphs would not fit in one post
    parts = split_text(text, MAX_POST_CHARS)
    assert parts == ["\n\n".join([para] * 2)] * 4  # whole paragraphs, never mid-sentence
    # No paragraph breaks: cut after a sentence; no spaces at all: a hard cut that still
    # keeps every character.
    sentences = "Short one. " * 600
    parts = split_text(sentences, 4000)
    assert all(p.endswith("one.") for p in parts) and " ".join(parts) == sentences.strip()
    blob = "x" * 9000
    assert split_text(blob, 4000) == ["x" * 4000, "x" * 4000, "x" * 1000]
    assert split_text("  ", 4000) == [] and split_text("hi", 4000) == ["hi"]


def test_split_measures_escaped_length_and_keeps_emoji_whole() -> None:
    amp = "&" * 1000  # each becomes &amp; (5 chars) when posted
    parts = split_text(amp, 4000, measure=lambda s: len(slack_escape(s)))
    assert [len(p) for p in parts] == [800, 200]
    family = "👩\u200d👩\u200d👧"
    parts = split_text("a" * 3 + family * 3, 7)
    assert "".join(parts) == "a" * 3 + family * 3
    assert all(not p.startswith("\u200d") and not p.endswith("\u200d") for p in parts)
