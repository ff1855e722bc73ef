"""The privacy memory on its own, without SQLite: what counts as a quote, what a bot turn must
not repeat, and how the memory stays bounded per conversation and in total without ever
forgetting something the model may still hold."""

from __future__ import annotations

import ast
import logging

import pytest

from bot.message import ConversationKey
from bot.store.privacy import (
    FINGERPRINT_CHARS,
    QUOTE_CHARS,
    QUOTE_MIN_CHARS,
    PrivacyMemory,
    QuoteIndex,
    fingerprint,
    quotes,
)
from tests.conftest import ROOT

CH = ConversationKey("test", "general")
THREAD = ConversationKey("test", "general", "t1")
OTHER = ConversationKey("test", "random")

SECRET = "my home address is 12 Elm Street"


def text(i: int, n: int = 20) -> str:
    """A distinct text of exactly `n` letters and digits (its fingerprint's length)."""
    return f"{i:06d}".translate(str.maketrans("0123456789", "abcdefghij")).ljust(n, "z")[:n]


# -- quotes ------------------------------------------------------------------------------------
def test_a_quote_is_a_shared_run_of_letters_and_digits_whatever_the_case_or_spacing() -> None:
    assert quotes("Sure! Cy said: MY HOME address is 12, Elm-Street.", [SECRET])
    assert not quotes("Cy lives somewhere near the park.", [SECRET])
    run = "abcdefghijkl"  # QUOTE_CHARS letters in common, nothing else
    assert len(run) == QUOTE_CHARS
    assert quotes(f"xx {run} yy", [f"zz {run} ww"])
    assert not quotes(f"xx {run[:-1]} yy", [f"zz {run[:-1]}0 ww"])


def test_a_short_text_counts_only_whole_and_only_from_quote_min_chars() -> None:
    assert quotes("the code is: 4242ab, ok", ["4242ab"])  # shorter than a run: whole
    assert not quotes("4242a", ["4242a"])  # under QUOTE_MIN_CHARS: never a quote
    assert len(fingerprint("4242a")) < QUOTE_MIN_CHARS
    assert quotes("今天天气很好啊，对吧", ["今天天气很好啊"])  # any script's letters


def test_the_fingerprint_keeps_letters_and_digits_casefolded_and_bounded() -> None:
    assert fingerprint("Straße, No_1!") == "strasseno1"
    assert len(fingerprint("x" * (FINGERPRINT_CHARS + 100))) == FINGERPRINT_CHARS


def test_a_quote_index_answers_as_quotes_does() -> None:
    others = [SECRET, "4242ab", "hi"]
    index = QuoteIndex()
    for other in others:
        index.add(other)
    for answer in ("address is 12 elm street", "code 4242ab", "hi there", "nothing here"):
        assert index.repeated_in(answer) == quotes(answer, others)


# -- what a bot turn must not repeat -----------------------------------------------------------
def test_a_bot_turn_that_repeats_an_unkept_text_of_its_conversation_is_withheld() -> None:
    memory = PrivacyMemory()
    memory.remember(CH, SECRET)
    assert memory.unkept_texts(CH) == [fingerprint(SECRET)]
    assert memory.must_withhold(CH, "Cy: My home address is 12 Elm Street!")
    assert not memory.must_withhold(CH, "I cannot say where Cy lives.")
    assert not memory.must_withhold(OTHER, "my home address is 12 Elm Street")  # elsewhere


def test_a_thread_is_checked_against_its_channel_but_not_the_other_way() -> None:
    memory = PrivacyMemory()
    memory.remember(CH, SECRET)  # a thread's context may start with its channel's message
    assert memory.must_withhold(THREAD, "address is 12 Elm Street")
    memory2 = PrivacyMemory()
    memory2.remember(THREAD, SECRET)
    assert memory2.must_withhold(THREAD, "address is 12 Elm Street")
    assert not memory2.must_withhold(CH, "address is 12 Elm Street")


def test_an_empty_thread_is_the_channel() -> None:
    memory = PrivacyMemory()
    memory.remember(ConversationKey("test", "general", ""), SECRET)
    assert memory.unkept_texts(CH) == [fingerprint(SECRET)]
    assert memory.chars(CH) == len(fingerprint(SECRET))


def test_texts_too_short_to_quote_are_not_remembered() -> None:
    memory = PrivacyMemory()
    memory.remember(CH, "ok!")
    memory.remember(CH, "  ...  ")
    assert memory.unkept_texts(CH) == [] and memory.chars() == 0
    memory.remember(CH, 123456789)  # whatever it is, as text
    assert memory.unkept_texts(CH) == ["123456789"]


# -- bounds: never forgotten silently -------------------------------------------------------
def test_past_its_bound_a_conversation_overflows_and_every_bot_turn_there_is_withheld(
        caplog: pytest.LogCaptureFixture) -> None:
    memory = PrivacyMemory(conversation_chars=50)
    memory.remember(OTHER, text(99))
    with caplog.at_level(logging.INFO, logger="bot.store"):
        for i in range(3):  # 3 x 20: the third would pass 50
            memory.remember(CH, text(i))
    assert "withheld until chimein restarts" in caplog.text
    assert memory.unkept_texts(CH) is None  # not known any more: withhold
    assert memory.must_withhold(CH, "an answer about something else entirely")
    assert memory.must_withhold(THREAD, "and so is every thread of that channel")
    assert memory.chars(CH) == 0 and memory.chars() == 20  # its texts are freed...
    memory.remember(CH, text(7))
    assert memory.chars(CH) == 0  # ... and nothing more is kept for it
    assert memory.unkept_texts(OTHER) == [text(99)]  # the others are unaffected
    assert not memory.must_withhold(OTHER, "an answer about something else entirely")


def test_past_the_total_bound_the_least_recently_active_conversation_overflows() -> None:
    memory = PrivacyMemory(total_chars=60)
    a, b, c = (ConversationKey("test", name) for name in "abc")
    memory.remember(a, text(1))
    memory.remember(b, text(2))
    memory.remember(a, text(3))  # a is now the more recently active
    assert memory.chars() == 60
    memory.remember(c, text(4))  # 80 > 60: b goes
    assert memory.unkept_texts(b) is None
    assert memory.unkept_texts(a) == [text(1), text(3)]
    assert memory.unkept_texts(c) == [text(4)]
    assert memory.chars() == 60 <= memory.total_chars


def test_past_max_overflowed_the_memory_loses_track_and_withholds_every_bot_turn(
        caplog: pytest.LogCaptureFixture) -> None:
    memory = PrivacyMemory(conversation_chars=10, max_overflowed=2)
    memory.remember(OTHER, "short text")  # exactly 9 letters: kept
    with caplog.at_level(logging.WARNING, logger="bot.store"):
        for name in ("a", "b", "c"):  # each overflows at once; the third is one too many
            memory.remember(ConversationKey("test", name), text(1, 11))
    assert caplog.text.count("too many conversations") == 1
    for key in (CH, OTHER, ConversationKey("test", "new")):
        assert memory.unkept_texts(key) is None
        assert memory.must_withhold(key, "anything at all")
    assert memory.chars() == 0  # bounded: everything is freed...
    memory.remember(CH, SECRET)
    assert memory.chars() == 0  # ... and stays so until the process restarts
    assert PrivacyMemory().unkept_texts(CH) == []  # a restart starts afresh, as the model does


def test_within_the_bounds_nothing_is_forgotten() -> None:
    memory = PrivacyMemory(conversation_chars=1_000, total_chars=10_000)
    keys = [ConversationKey("test", f"c{i}") for i in range(10)]
    for round_ in range(5):
        for n, key in enumerate(keys):
            memory.remember(key, text(round_ * 100 + n))
    for n, key in enumerate(keys):
        assert memory.unkept_texts(key) == [text(r * 100 + n) for r in range(5)]
    assert memory.chars() == 10 * 5 * 20


def test_the_privacy_memory_is_pure() -> None:
    """No SQLite, no asyncio, no I/O: it can be reasoned about (and tested) on its own."""
    tree = ast.parse((ROOT / "bot" / "store" / "privacy.py").read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    assert imported <= {"__future__", "logging", "re", "collections", "collections.abc",
                        "dataclasses", "bot.message"}, imported
