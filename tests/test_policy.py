"""Addressing, channel modes, thresholds and the chime-in cooldown."""

from __future__ import annotations

import pytest

from bot.config import ChannelPolicy, PolicySettings
from bot.message import ConversationKey, Message
from bot.policy import Addressing, Policy

ADDRESSED = [
    "assistant, what time is it in Tokyo?",
    "Assistant: can you convert 5 miles to km",
    "hey assistant what's the rate-limit status code",
    "ok assistant what's 15% of 80",
    "@assistant help",
    "so… hey assistant, quick question",
    "that's 200 right, assistant?",
    "thanks assistant!",
    "ASSISTANT, summarize this thread",
    "assistant what is k8s",
    "助手，帮我算一下",
    "@助手 今天几号",
    "嘿助手你知道吗",
    "问下助手：这个怎么弄",
    "助手 帮我查下",
    # a new sentence that addresses it, and follow-ups (from the starter data)
    "ok real question. assistant, how do in-text citations differ between MLA and APA?",
    "back to Q3. assistant, how many weeks are in Q3?",
    "grandma and grandpa hit 60 years next year right? assistant what's 60?",
    "assistant and the integral of 1/x?",
    "assistant didn't it win an oscar too?",
]
IN_PASSING = [
    "my assistant manager is out today",
    "Google Assistant keeps waking up during meetings",
    "the assistant professor said the exam is open book",
    "I'm an assistant editor at the paper",
    "the PR assistant bot is broken again",
    "Assistant managers get the parking spots",
    "ask the teaching assistant",
    "Assistant and manager roles are posted on the board",
    "we met the new hire. assistant managers get keys on day one",
    "she was promoted. assistant director now!",
    "手机上的语音助手又乱响",
    "我们新来的助手小刘很靠谱",
    "智能助手这个词太泛了",
    "",
]


@pytest.mark.parametrize("text", ADDRESSED)
def test_wake_word_as_address(text: str) -> None:
    assert Addressing(["assistant", "助手"]).is_addressed(text)


@pytest.mark.parametrize("text", IN_PASSING)
def test_wake_word_in_passing_is_not_an_address(text: str) -> None:
    assert not Addressing(["assistant", "助手"]).is_addressed(text)


def test_platform_mention_always_addresses() -> None:
    assert Addressing(["assistant"]).is_addressed("what do you think", mentions_bot=True)


def test_custom_wake_words_and_huge_text() -> None:
    a = Addressing(["chimey"])
    assert a.is_addressed("chimey, ping")
    assert not a.is_addressed("assistant, ping")
    assert a.is_addressed("x" * 1_000_000 + " thanks, chimey")  # the tail is checked
    assert not a.is_addressed("chimey " + "x" * 1_000_000)


def test_strip_address() -> None:
    a = Addressing(["assistant", "助手"])
    assert a.strip_address("assistant, optin") == "optin"
    assert a.strip_address("hey @assistant: status") == "status"
    assert a.strip_address("助手，forget") == "forget"
    assert a.strip_address("hello") == "hello"


def _key(ch: str = "C1", thread: str | None = None) -> ConversationKey:
    return ConversationKey("slack", ch, thread)


def test_modes_and_thresholds_config_and_runtime() -> None:
    settings = PolicySettings(mode="semi-active", threshold=0.5, dm_mode="always",
                              channels={"slack:C2": ChannelPolicy(mode="mention",
                                                                  threshold=0.8)})
    p = Policy(settings, ["assistant"])
    assert p.mode(_key()) == "semi-active" and p.threshold(_key()) == 0.5
    assert p.mode(_key("C2")) == "mention" and p.threshold(_key("C2")) == 0.8
    assert p.mode(_key("C9"), is_dm=True) == "always"
    p.set_channel(_key("C1", thread="t1"), mode="always", threshold=0.3)
    assert p.mode(_key("C1")) == "always"  # a thread's channel setting covers the channel
    assert p.threshold(_key("C1", "t2")) == 0.3
    with pytest.raises(ValueError):
        p.set_channel(_key(), mode="loud")
    with pytest.raises(ValueError):
        p.set_channel(_key(), threshold=1.5)
    assert p.is_addressed(Message(_key(), "U1", "Ann", "assistant, hi"))


def test_cooldown_caps_chimeins_per_window() -> None:
    now = [1000.0]
    p = Policy(PolicySettings(cooldown_max_chimeins=2, cooldown_window_seconds=60), [],
               clock=lambda: now[0])
    k = _key()
    for _ in range(2):
        assert p.allow_chimein(k)
        p.record_chimein(k)
    assert not p.allow_chimein(k)
    assert p.allow_chimein(_key("C2"))  # per channel
    now[0] += 61
    assert p.allow_chimein(k)


def test_ambiguous_threshold_per_channel_and_follow_ups() -> None:
    settings = PolicySettings(ambiguous_threshold=0.8, follow_up_seconds=60,
                              channels={"slack:C2": ChannelPolicy(ambiguous_threshold=0.95)})
    p = Policy(settings, ["assistant"])
    assert p.ambiguous_threshold(_key()) == 0.8 and p.ambiguous_threshold(_key("C2")) == 0.95
    asked = Message(_key(), "U1", "Ann", "assistant, weather in Paris?", message_id="1.0",
                    ts=100.0)
    assert p.address(asked) == "direct"
    p.note_message(asked)
    p.note_answered(asked, at=101.0)
    later = Message(_key(), "U1", "Ann", "and Berlin?", ts=150.0)
    assert p.address(later) == "follow-up"
    # the answer went into a thread under the question (Slack): a follow-up there counts too
    in_thread = Message(_key(thread="1.0"), "U1", "Ann", "and Rome?", ts=150.0)
    assert p.address(in_thread) == "follow-up"
    assert p.address(Message(_key(), "U2", "Bob", "and Berlin?", ts=150.0)) is None
    assert p.address(Message(_key(), "U1", "Ann", "and Berlin?", ts=200.0)) is None  # too late
    p.note_message(later)
    assert p.address(Message(_key(), "U1", "Ann", "and Oslo?", ts=151.0)) is None  # once
