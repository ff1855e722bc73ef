"""The transformers engine on a tiny local model: one-pass decisions, cache, generation."""

from __future__ import annotations

import math

import pytest

from bot.config import GenerationSettings, ModelSettings
from bot.engine.base import EngineError
from bot.engine.transformers_backend import TransformersEngine
from bot.message import ConversationKey, user
from bot.render import SILENCE, strip_markers, with_silences
from bot.sessions import Session, SessionStore

KEY = ConversationKey("test", "c1")
CHAT = [
    user("Ann", "hello there, how is the deploy going?"),
    user("Bob", "assistant, what is the HTTP status for too many requests?"),
    user("Cy", "助手，今天天气怎么样？"),
    user("Dee", "the build failed again on main"),
    user("Eve", "lol that meme is great 😂"),
    user("Fay", "how many seconds are in three days? nobody knows"),
]


def make_engine(tiny_lm, tiny_tokenizer, **kw):  # type: ignore[no-untyped-def]
    gen = GenerationSettings(max_new_tokens=kw.pop("max_new_tokens", 12), temperature=0.0)
    return TransformersEngine(tiny_lm, tiny_tokenizer, generation=gen, **kw)


def test_cached_and_uncached_decisions_agree(tiny_lm, tiny_tokenizer):  # type: ignore[no-untyped-def]
    eng = make_engine(tiny_lm, tiny_tokenizer)
    s = Session(KEY)
    for i, turn in enumerate(CHAT):
        before = len(s.ids)
        d = eng.decide(s, [turn], threshold=0.5, force=(i in (1, 2)))
        full = eng.score_silence(s.turns)  # recompute from scratch, no cache
        assert math.isclose(d.p_silence, full, rel_tol=1e-4, abs_tol=1e-9), (i, d, full)
        assert 0.0 < d.p_silence < 1.0
        # only the new tokens were fed, not the history
        assert d.fed_tokens == len(s.ids) - before if i == 0 or not s.pending else True
        assert d.fed_tokens < len(s.ids) or i == 0
        if d.speak:
            text = eng.respond(s)
            assert text and SILENCE not in text
    assert s.recomputes == 0


def test_silent_decision_keeps_cache_and_feeds_only_new_tokens(tiny_lm, tiny_tokenizer):  # type: ignore[no-untyped-def]
    eng = make_engine(tiny_lm, tiny_tokenizer)
    s = Session(KEY)
    eng.decide(s, [CHAT[0]], threshold=0.0)  # threshold 0: never speak unprompted
    n1 = len(s.ids)
    d2 = eng.decide(s, [CHAT[3]], threshold=0.0)
    assert not d2.speak
    # the second decision fed: end of the silence turn + the new user turn + header + marker
    assert d2.fed_tokens == len(s.ids) - n1
    assert d2.fed_tokens < len(s.ids) / 2 + 20
    assert s.turns[-1].silent and len(s.turns) == 4


def test_speaking_crops_cache_and_history_stays_consistent(tiny_lm, tiny_tokenizer):  # type: ignore[no-untyped-def]
    eng = make_engine(tiny_lm, tiny_tokenizer)
    s = Session(KEY)
    d = eng.decide(s, [CHAT[1]], threshold=0.5, force=True)
    assert d.speak and d.forced
    text = eng.respond(s)
    assert s.turns[-1].content == text
    assert s.ids == eng.renderer.decision_input(s.turns[:-1]).ids[: len(s.ids)]
    d2 = eng.decide(s, [CHAT[3]], threshold=0.0)
    assert not d2.recomputed and s.recomputes == 0
    assert math.isclose(d2.p_silence, eng.score_silence(s.turns), rel_tol=1e-4)
    with pytest.raises(RuntimeError):
        eng.respond(s)  # no speaking decision pending


def test_markers_never_leak_and_answer_is_never_empty(tiny_lm, tiny_tokenizer):  # type: ignore[no-untyped-def]
    """Force the model to emit markers mid-text and to end its turn at once."""
    eng = make_engine(tiny_lm, tiny_tokenizer, max_new_tokens=40)
    tok = tiny_tokenizer
    eot = eng.renderer.end_of_turn_ids
    script = tok.encode("(silence) Hi (response) there (silence)", add_special_tokens=False)
    seen_eot_blocked: list[bool] = []

    def scripted_sample(logits):  # type: ignore[no-untyped-def]
        # the engine must forbid end of turn until the answer has content
        blocked = all(logits[i] == -math.inf for i in eot)
        seen_eot_blocked.append(blocked)
        if not blocked:
            return eot[0] if not script else script.pop(0)
        return script.pop(0)

    eng.lm._sample = scripted_sample  # the model "wants" markers and an empty answer
    s = Session(KEY)
    eng.decide(s, [CHAT[1]], threshold=0.5, force=True)
    text = eng.respond(s)
    assert text == "Hi there"
    assert strip_markers(text) == text
    assert seen_eot_blocked[0] is True  # at the start, end of turn was suppressed


def test_only_markers_gives_fallback_not_empty(tiny_lm, tiny_tokenizer):  # type: ignore[no-untyped-def]
    marker = tiny_tokenizer.encode("(silence)", add_special_tokens=False)
    eng = make_engine(tiny_lm, tiny_tokenizer, max_new_tokens=2 * len(marker) + 2,
                      fallback_answer="Sorry.")
    calls: list[int] = []

    def markers_forever(logits):  # type: ignore[no-untyped-def]
        calls.append(1)
        return marker[(len(calls) - 1) % len(marker)]

    eng.lm._sample = markers_forever  # "(silence)(silence)(s" then cut by max_new_tokens
    s = Session(KEY)
    eng.decide(s, [CHAT[1]], threshold=0.5, force=True)
    assert eng.respond(s) == "Sorry."
    assert s.turns[-1].content == "Sorry."


def test_context_overflow_trims_in_chunks_not_every_message(tiny_lm, tiny_tokenizer):  # type: ignore[no-untyped-def]
    eng = make_engine(tiny_lm, tiny_tokenizer, max_context_tokens=256, trim_to=0.5,
                      max_new_tokens=16)
    s = Session(KEY)
    for i in range(40):
        d = eng.decide(s, [user("Ann", f"message number {i} about the deploy")], threshold=0.0)
        assert len(s.ids) <= 256 - 16
        assert not d.speak
    assert 1 <= s.trims <= 10, s.trims  # a chunk is dropped now and then, not every message
    # after a trim the state is still exact
    d = eng.decide(s, [user("Bob", "ok")], threshold=0.0)
    assert math.isclose(eng.score_silence(s.turns), d.p_silence, rel_tol=1e-4)


def test_huge_message_alone_is_cut_to_fit(tiny_lm, tiny_tokenizer):  # type: ignore[no-untyped-def]
    eng = make_engine(tiny_lm, tiny_tokenizer, max_context_tokens=256, max_new_tokens=16)
    s = Session(KEY)
    d = eng.decide(s, [user("Ann", "ü\u034f\u202e 助手 " * 3000)], threshold=0.0)
    assert 0 <= d.p_silence <= 1 and len(s.ids) <= 256


def test_diverged_cache_is_recomputed_not_trusted(tiny_lm, tiny_tokenizer):  # type: ignore[no-untyped-def]
    eng = make_engine(tiny_lm, tiny_tokenizer)
    s = Session(KEY)
    eng.decide(s, [CHAT[0]], threshold=0.0)
    s.turns[-1] = s.turns[-1].__class__("assistant", "gold answer", "assistant")  # history edit
    d = eng.decide(s, [CHAT[3]], threshold=0.0)
    assert d.recomputed and s.recomputes == 1
    assert math.isclose(d.p_silence, eng.score_silence(s.turns), rel_tol=1e-4)


def test_coalesced_turns_get_silences_between_them(tiny_lm, tiny_tokenizer):  # type: ignore[no-untyped-def]
    eng = make_engine(tiny_lm, tiny_tokenizer)
    s = Session(KEY)
    d = eng.decide(s, CHAT[:3], threshold=0.0)
    assert [t.role for t in s.turns] == ["user", "assistant"] * 3
    assert s.turns == with_silences(CHAT[:3])
    # the burst was decided on the same shape as the history (and training): silences between
    assert math.isclose(d.p_silence, eng.score_silence(CHAT[:3]), rel_tol=1e-4)
    # so the cache is a prefix of the next rendering: only the new message is fed
    d2 = eng.decide(s, [CHAT[3]], threshold=0.0)
    assert not d2.recomputed and d2.fed_tokens < 40


@pytest.mark.parametrize("style", ["llama2", "mistral"])
def test_burst_under_templates_that_demand_alternation(style, tiny_model_dir, tiny_lm):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    from tests.templates import STYLES

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = STYLES[style][0]
    eng = make_engine(tiny_lm, tok)
    s = Session(KEY)
    eng.decide(s, [CHAT[0]], threshold=0.0)
    d = eng.decide(s, CHAT[3:6], threshold=0.0)  # a burst of three; raised before the fix
    assert math.isclose(d.p_silence, eng.score_silence(s.turns), rel_tol=1e-4)


def test_overflow_leaves_room_for_the_answer_and_trims_rarely(tiny_lm, tiny_tokenizer):  # type: ignore[no-untyped-def]
    """The trim target is a share of the room left after max_new_tokens, so after a trim the
    history fits with room to spare (not a rebuild on almost every message)."""
    eng = make_engine(tiny_lm, tiny_tokenizer, max_context_tokens=512, trim_to=0.6,
                      max_new_tokens=200)
    s = Session(KEY)
    for i in range(60):
        eng.decide(s, [user("Ann", f"message number {i} about the deploy")], threshold=0.0)
        assert len(s.ids) <= 512 - 200
    assert 1 <= s.trims <= 15, s.trims


def test_a_cut_message_joins_the_history_cut(tiny_lm, tiny_tokenizer):  # type: ignore[no-untyped-def]
    eng = make_engine(tiny_lm, tiny_tokenizer, max_context_tokens=256, max_new_tokens=16)
    s = Session(KEY)
    eng.decide(s, [user("Ann", "the deploy log says " * 2000)], threshold=0.0)
    kept = s.turns[-2].content or ""
    assert kept.endswith("[cut]") and len(kept) < 2000
    trims = s.trims
    d = eng.decide(s, [user("Bob", "ok")], threshold=0.0)  # no second overflow on it
    assert s.trims == trims and not d.recomputed


def test_session_store_bounds(tiny_lm, tiny_tokenizer):  # type: ignore[no-untyped-def]
    eng = make_engine(tiny_lm, tiny_tokenizer)
    store = SessionStore(max_sessions=3, max_kv_bytes=10**9)
    for i in range(5):
        eng.decide(store.get(ConversationKey("t", str(i))), [CHAT[0]], threshold=0.0)
    assert len(store) == 3 and ConversationKey("t", "0") not in store
    one = store.peek(ConversationKey("t", "4")).kv_bytes()
    assert one > 0
    store.max_kv_bytes = int(one * 1.5)
    freed = store.enforce_bytes(keep=ConversationKey("t", "4"))
    assert freed >= one and store.total_kv_bytes() <= store.max_kv_bytes
    assert store.peek(ConversationKey("t", "4")).cache is not None
    dropped = store.peek(ConversationKey("t", "2"))
    assert dropped.cache is None and dropped.turns  # history kept, only KV dropped


def test_load_errors_are_clear(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    gen = GenerationSettings()
    with pytest.raises(EngineError, match="model.path is empty"):
        TransformersEngine.from_settings(ModelSettings(path=""), gen)
    with pytest.raises(EngineError, match="does not exist"):
        TransformersEngine.from_settings(ModelSettings(path=str(tmp_path / "nope")), gen)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EngineError, match="no config.json"):
        TransformersEngine.from_settings(ModelSettings(path=str(tmp_path / "empty")), gen)
    # a hub id, offline (the tests run with HF_HUB_OFFLINE=1)
    with pytest.raises(EngineError, match="HF_HUB_OFFLINE=1 forbids downloading"):
        TransformersEngine.from_settings(ModelSettings(path="nobody/no-such-model"), gen)
    # "models/nope" where ./models exists is a local typo, not a hub id
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    with pytest.raises(EngineError, match="'models/nope' does not exist"):
        TransformersEngine.from_settings(ModelSettings(path="models/nope"), gen)
    # an OpenVINO export is not a transformers model
    ov = tmp_path / "ov"
    ov.mkdir()
    (ov / "config.json").write_text("{}")
    (ov / "openvino_model.xml").write_text("<net/>")
    with pytest.raises(EngineError, match='OpenVINO export: serve it with model.backend'):
        TransformersEngine.from_settings(ModelSettings(path=str(ov)), gen)


def test_cuda_requested_without_cuda_is_a_clear_error(tiny_model_dir) -> None:  # type: ignore[no-untyped-def]
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(EngineError, match="no CUDA device"):
        TransformersEngine.from_settings(ModelSettings(path=str(tiny_model_dir), device="cuda"),
                                         GenerationSettings())


def test_nf4_weights_load_and_decide_on_cpu(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("bitsandbytes")
    from tests.conftest import CORPUS
    from training.tiny import save_tiny

    # bitsandbytes quantizes in blocks of 64 inputs: the layers must be at least that wide
    path = save_tiny(tmp_path / "m", CORPUS, vocab_size=400, hidden=64, layers=1, heads=4)
    eng = TransformersEngine.from_settings(
        ModelSettings(path=str(path), quantize="nf4", device="cpu"),
        GenerationSettings(max_new_tokens=4, temperature=0.0))
    assert "Linear4bit" in type(eng.model.model.layers[0].mlp.down_proj).__name__
    s = Session(KEY)
    d = eng.decide(s, [CHAT[1]], threshold=0.5, force=True)
    assert 0 < d.p_silence < 1
    assert eng.respond(s)


def test_lora_adapter_is_applied(tiny_model_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj",
                                                                                   "v_proj"]))
    with torch.no_grad():  # make the adapter do something measurable
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.fill_(0.5)
    peft_model.save_pretrained(tmp_path / "adapter")
    gen = GenerationSettings(max_new_tokens=4, temperature=0.0)
    plain = TransformersEngine.from_settings(ModelSettings(path=str(tiny_model_dir)), gen)
    tuned = TransformersEngine.from_settings(
        ModelSettings(path=str(tiny_model_dir), adapter=str(tmp_path / "adapter")), gen)
    assert type(tuned.model).__name__.startswith("PeftModel")
    a = plain.decide(Session(KEY), [CHAT[0]], threshold=0.0).p_silence
    b = tuned.decide(Session(KEY), [CHAT[0]], threshold=0.0).p_silence
    assert a != pytest.approx(b, rel=1e-3)
    with pytest.raises(EngineError, match="adapter"):
        TransformersEngine.from_settings(
            ModelSettings(path=str(tiny_model_dir), adapter=str(tmp_path / "none")), gen)
