"""The OpenVINO backend on a tiny stateful IR: the same decisions as the transformers engine,
one InferRequest per conversation, crops that keep the numbers exact, the LRU's byte bound."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest

from bot.config import GenerationSettings, ModelSettings
from bot.engine.base import EngineError
from bot.engine.transformers_backend import TransformersEngine
from bot.message import ConversationKey, user
from bot.render import SILENCE
from bot.sessions import Session, SessionStore

pytest.importorskip("optimum.intel")

KEY = ConversationKey("test", "ov")
CHAT = [user("Ann", "hello there, how is the deploy going?"),
        user("Bob", "assistant, what is the HTTP status for too many requests?"),
        user("Cy", "助手，今天天气怎么样？"), user("Dee", "the build failed again on main"),
        user("Eve", "lol that meme is great 😂"),
        user("Fay", "assistant, how many seconds are in three days?")]
GREEDY = GenerationSettings(max_new_tokens=6, temperature=0.0)


@pytest.fixture(scope="module")
def ir_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model exported as `chimein export --openvino --weights fp32` writes it."""
    from training.export import to_openvino

    return to_openvino(tiny_model_dir, tmp_path_factory.mktemp("ov") / "ir", "fp32")


def ov_engine(path: Path, gen: GenerationSettings = GREEDY, **kw):  # type: ignore[no-untyped-def]
    from bot.engine.openvino_backend import OpenVINOEngine

    return OpenVINOEngine.from_settings(ModelSettings(path=str(path), backend="openvino", **kw),
                                        gen)


@pytest.fixture(scope="module")
def engine(ir_dir: Path):  # type: ignore[no-untyped-def]
    return ov_engine(ir_dir)


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-12)  # p_silence is ~1e-8 here


@pytest.mark.slow
def test_openvino_matches_transformers(engine, tiny_lm, tiny_tokenizer) -> None:  # type: ignore[no-untyped-def]
    pt = TransformersEngine(tiny_lm, tiny_tokenizer, generation=GREEDY)
    so, sp = Session(KEY), Session(KEY)
    for i, t in enumerate(CHAT):
        force = i in (1, 5)
        a = engine.decide(so, [t], threshold=0.5, force=force)
        b = pt.decide(sp, [t], threshold=0.5, force=force)
        assert close(a.p_silence, b.p_silence), (i, a, b)
        assert close(a.p_silence, engine.score_silence(so.turns)), i  # the cache is exact
        if a.speak:
            text = engine.respond(so)
            assert text == pt.respond(sp)  # greedy: the same answer
            assert text and SILENCE not in text
    assert so.kv_bytes() > 0 and so.recomputes == 0
    assert so.cache.n == len(so.ids)


def test_a_transformers_folder_is_exported_stateful_in_memory(tiny_model_dir) -> None:  # type: ignore[no-untyped-def]
    eng = ov_engine(tiny_model_dir)
    assert eng.model.conversation().request.query_state()  # the KV cache is state
    assert 0 < eng.decide(Session(KEY), CHAT[:1], threshold=0.5).p_silence < 1


def test_one_request_per_conversation_one_compiled_model(engine) -> None:  # type: ignore[no-untyped-def]
    a, b = Session(ConversationKey("t", "a")), Session(ConversationKey("t", "b"))
    alone = Session(ConversationKey("t", "alone"))
    for t_a, t_b in zip(CHAT[:3], reversed(CHAT[3:]), strict=True):  # interleaved
        engine.decide(a, [t_a], threshold=0.0)
        engine.decide(b, [t_b], threshold=0.0)
    for t in CHAT[:3]:
        last = engine.decide(alone, [t], threshold=0.0)
    assert a.cache.request is not b.cache.request
    assert a.cache.model is b.cache.model is engine.model
    assert close(engine.decide(a, [CHAT[4]], threshold=0.0).p_silence,
                 engine.decide(alone, [CHAT[4]], threshold=0.0).p_silence)
    assert last.fed_tokens < len(alone.ids) and a.recomputes == b.recomputes == 0


def answered(engine) -> tuple[Session, int]:  # type: ignore[no-untyped-def]
    """A session right after an answer, and where the generated tokens begin."""
    s = Session(KEY)
    engine.decide(s, CHAT[:1], threshold=0.0)
    engine.decide(s, [CHAT[1]], threshold=0.0, force=True)
    spoke = s.pending[0]
    assert engine.respond(s)
    return s, spoke.marker_start + len(spoke.response_ids)


def test_the_answer_stays_cached_and_the_next_decision_reuses_it(engine) -> None:  # type: ignore[no-untyped-def]
    s, header = answered(engine)
    assert len(s.ids) == s.cache.n > header  # the answer's tokens are in the state
    # the marker was masked out, not cut: its slots are holes in the state
    assert s.cache.slots == s.cache.n + len(engine.renderer.decision_input(CHAT[:1]).ids) \
        - engine.renderer.decision_input(CHAT[:1]).marker_start
    ids = list(s.ids)
    # a rendering that extends the answer reuses all of it (the backend's prefill seam)
    assert engine.lm.prefill(s, ids + ids[:2], 1)
    assert s.ids == ids + ids[:1] and s.recomputes == 0 and not s.rebuilt
    # one that diverges inside the answer is cropped there, and that is no recompute
    s, header = answered(engine)
    ids = list(s.ids)
    assert not engine.lm.prefill(s, ids[: header + 1] + [ids[0]], 8)
    assert s.ids == ids[: header + 1] and s.cache.n == header + 1
    assert s.recomputes == 0 and not s.rebuilt
    # through the engine: the next decision after an answer
    s, header = answered(engine)
    nxt = engine.decide(s, [CHAT[2]], threshold=0.0)
    assert not nxt.recomputed and s.recomputes == 0
    assert close(nxt.p_silence, engine.score_silence(s.turns))
    assert nxt.fed_tokens <= len(s.ids) - header  # at least the (response) prefix is reused


@pytest.mark.parametrize("holes_max", [0, 1000])
def test_a_diverged_cache_is_cropped_and_stays_exact(engine, monkeypatch, holes_max) -> None:  # type: ignore[no-untyped-def]
    from bot.engine import openvino_backend

    monkeypatch.setattr(openvino_backend, "HOLES_MAX", holes_max)  # cut vs masked out
    s = Session(KEY)
    for t in CHAT[:3]:
        engine.decide(s, [t], threshold=0.0)
    s.turns[0] = user("Ann", "an edited first message")  # history rewritten under the cache
    d = engine.decide(s, [CHAT[3]], threshold=0.0)
    assert d.recomputed and s.recomputes == 1
    assert close(d.p_silence, engine.score_silence(s.turns))
    assert s.cache.n == len(s.ids) and (s.cache.slots > s.cache.n) == (holes_max > 0)


def test_masked_holes_give_the_numbers_of_a_cut_cache(engine) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    ids = engine.renderer.decision_input(CHAT[:3]).ids
    holed, cut = engine.model.conversation(), engine.model.conversation()
    holed.feed(ids[:20] + ids[:5], 1)
    holed.crop(20)  # five slots masked out
    cut.feed(ids[:20], 1)
    assert (holed.n, holed.slots, cut.slots) == (20, 25, 20)
    a, b = holed.feed(ids[20:], 4), cut.feed(ids[20:], 4)
    assert np.allclose(a, b, atol=1e-5) and holed.nbytes > cut.nbytes
    # tokens fed to the request by someone else (the raw benchmark), adopted, then dropped
    holed.request.infer({"input_ids": np.asarray([ids[:3]]), "attention_mask": np.ones(
        (1, holed.slots + 3), dtype=np.int64), "position_ids": np.arange(
        holed.n, holed.n + 3)[None], "beam_idx": np.zeros(1, dtype=np.int32),
        "logits_to_keep": np.ones(1, dtype=np.int64)}, share_inputs=True)
    holed.adopt(3)
    holed.crop(holed.n - 3)
    c, d = holed.feed(ids[:2], 2), cut.feed(ids[:2], 2)
    assert np.allclose(c, d, atol=1e-5) and holed.slots == cut.slots + 8


def test_logits_only_for_the_rows_asked(engine) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    ids = engine.renderer.decision_input(CHAT[:2]).ids
    one, all_rows = engine.model.conversation(), engine.model.conversation()
    assert "logits_to_keep" in engine.model.names and engine.model.sliced
    last3 = one.feed(ids, 3)
    full = all_rows.feed(ids, len(ids))
    assert last3.shape == (3, full.shape[1]) and full.shape[0] == len(ids)
    assert np.allclose(last3, full[-3:], atol=1e-5)


def test_long_inputs_go_in_chunks_with_the_same_numbers(engine, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    from bot.engine import openvino_backend

    ids = engine.renderer.decision_input(CHAT).ids
    whole = engine.model.conversation().feed(ids, 4)
    monkeypatch.setattr(openvino_backend, "CHUNK_TOKENS", 7)
    conv = engine.model.conversation()
    chunked = conv.feed(ids, 4)
    assert conv.n == len(ids) and np.allclose(whole, chunked, atol=1e-5)


def test_state_bytes_count_in_the_lru(engine) -> None:  # type: ignore[no-untyped-def]
    store = SessionStore(max_sessions=10, max_kv_bytes=1)
    first, second = store.get(ConversationKey("t", "1")), store.get(ConversationKey("t", "2"))
    d1 = engine.decide(first, CHAT[:2], threshold=0.0)
    engine.decide(second, CHAT[2:4], threshold=0.0)
    assert first.kv_bytes() == len(first.ids) * engine.model.bytes_per_token > 0
    assert store.total_kv_bytes() == first.kv_bytes() + second.kv_bytes()
    store.enforce_bytes(keep=second.key)
    assert first.cache is None and second.cache is not None  # its InferRequest is gone
    again = engine.decide(first, [CHAT[4]], threshold=0.0)
    assert not again.recomputed and again.fed_tokens == len(first.ids)
    assert close(again.p_silence, engine.score_silence(first.turns))
    assert d1.p_silence > 0


def test_prefill_in_chunks_then_decide(engine) -> None:  # type: ignore[no-untyped-def]
    warm, cold = Session(KEY), Session(KEY)
    for s in (warm, cold):
        engine.observe(s, CHAT[:4])
    steps = 0
    while engine.prefill(warm, [CHAT[4]], 8):
        steps += 1
    assert steps > 1 and len(warm.ids) == warm.cache.n >= 8 * steps
    d = engine.decide(warm, [CHAT[4]], threshold=0.0)
    ref = engine.decide(cold, [CHAT[4]], threshold=0.0)
    d_in = engine.renderer.decision_input(warm.turns[:-1])
    assert d.fed_tokens <= 8 + len(d_in.ids) - d_in.marker_start + 1
    assert d.fed_tokens < ref.fed_tokens and close(d.p_silence, ref.p_silence)
    assert not d.recomputed and not ref.recomputed


def test_sampling_is_seeded_and_never_leaks_markers(ir_dir) -> None:  # type: ignore[no-untyped-def]
    gen = GenerationSettings(max_new_tokens=8, temperature=0.9, top_k=50, top_p=0.9, seed=3)
    answers = []
    for _ in range(2):
        eng = ov_engine(ir_dir, gen)
        s = Session(KEY)
        eng.decide(s, [CHAT[1]], threshold=0.0, force=True)
        answers.append(eng.respond(s))
    assert answers[0] == answers[1] and answers[0] and SILENCE not in answers[0]


@pytest.mark.slow
def test_a_non_stateful_ir_still_serves_with_a_warning(tiny_model_dir, ir_dir, tmp_path,
                                                       caplog) -> None:  # type: ignore[no-untyped-def]
    from training.export import to_openvino

    old = to_openvino(tiny_model_dir, tmp_path / "old", "fp32", stateful=False)
    with caplog.at_level(logging.WARNING, logger="bot.engine.openvino_ir"):
        eng = ov_engine(old)
    assert "non-stateful" in caplog.text
    new = ov_engine(ir_dir)
    a, b = Session(KEY), Session(KEY)
    for t in CHAT[:3]:
        assert close(eng.decide(a, [t], threshold=0.0).p_silence,
                     new.decide(b, [t], threshold=0.0).p_silence)


def test_load_errors_are_one_clear_line(tiny_model_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    gen = GenerationSettings()
    with pytest.raises(EngineError, match="merge the LoRA adapter"):
        ov_engine(tiny_model_dir, gen, adapter="x")
    with pytest.raises(EngineError, match="does not exist"):
        ov_engine(Path("/no/such/model"), gen)
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops
    from transformers import AutoTokenizer

    # an IR without a KV cache (what an export with use_cache=False gives): ids -> logits
    ids, mask = (ops.parameter([-1, -1], ov.Type.i64, name=n) for n in ("input_ids",
                                                                         "attention_mask"))
    for p in (ids, mask):
        p.output(0).get_tensor().set_names({p.get_friendly_name()})
    table = ops.constant(np.zeros((600, 8), dtype=np.float32))
    logits = ops.gather(table, ops.multiply(ids, ops.convert(mask, "i64")), 0)
    logits.output(0).get_tensor().set_names({"logits"})
    ov.save_model(ov.Model([logits], [ids, mask], "nocache"), tmp_path / "nocache" /
                  "openvino_model.xml")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "nocache")
    (tmp_path / "nocache" / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    with pytest.raises(EngineError, match="has no KV cache") as e:
        ov_engine(tmp_path / "nocache", gen)
    assert "\n" not in str(e.value)


def resident_kb(path: Path) -> int:
    """This process's resident KiB of mappings of `path` (Linux's /proc/self/smaps)."""
    kb, inside, target = 0, False, str(path.resolve())
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(" ", 1)[0]
            if "-" in head and not head.endswith(":"):
                inside = line.rstrip().endswith(target)
            elif inside and line.startswith("Rss:"):
                kb += int(line.split()[1])
    return kb


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="reads Linux's /proc")
def test_file_pages_are_handed_back_and_read_again_on_use(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import mmap

    from bot.engine.openvino_ir import release_file_pages

    data = bytes(range(256)) * 16384  # 4 MiB
    (tmp_path / "w.bin").write_bytes(data)
    with open(tmp_path / "w.bin", "rb") as f, \
            mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        assert mapped[:] == data and resident_kb(tmp_path / "w.bin") >= 4096
        assert release_file_pages(tmp_path / "w.bin") >= len(data)
        assert resident_kb(tmp_path / "w.bin") == 0
        assert mapped[:] == data  # read again from the file, unchanged


def test_loading_an_ir_hands_its_weight_pages_back(ir_dir, caplog) -> None:  # type: ignore[no-untyped-def]
    with caplog.at_level(logging.INFO, logger="bot.engine.openvino_backend"):
        eng = ov_engine(ir_dir)
    assert "own copy of the weights" in caplog.text
    s = Session(KEY)  # warmed up and released, it still decides and answers
    assert 0 < eng.decide(s, CHAT[:2], threshold=0.0, force=True).p_silence < 1
    assert eng.respond(s)
