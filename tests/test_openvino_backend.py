"""The OpenVINO backend on the tiny model: same decisions as the transformers engine."""

from __future__ import annotations

import math

import pytest

from bot.config import GenerationSettings, ModelSettings
from bot.engine.base import EngineError
from bot.engine.transformers_backend import TransformersEngine
from bot.message import ConversationKey, user
from bot.render import SILENCE
from bot.sessions import Session

pytest.importorskip("optimum.intel")

KEY = ConversationKey("test", "ov")
CHAT = [user("Ann", "hello there, how is the deploy going?"),
        user("Bob", "assistant, what is the HTTP status for too many requests?"),
        user("Cy", "助手，今天天气怎么样？"), user("Dee", "the build failed again on main")]


@pytest.mark.slow
def test_openvino_matches_transformers(tiny_model_dir, tiny_lm, tiny_tokenizer) -> None:  # type: ignore[no-untyped-def]
    from bot.engine.openvino_backend import OpenVINOEngine

    gen = GenerationSettings(max_new_tokens=6, temperature=0.0)
    ov = OpenVINOEngine.from_settings(ModelSettings(path=str(tiny_model_dir),
                                                    backend="openvino"), gen)
    pt = TransformersEngine(tiny_lm, tiny_tokenizer, generation=gen)
    so, sp = Session(KEY), Session(KEY)
    for i, t in enumerate(CHAT):
        a = ov.decide(so, [t], threshold=0.5, force=(i == 1))
        b = pt.decide(sp, [t], threshold=0.5, force=(i == 1))
        assert math.isclose(a.p_silence, b.p_silence, rel_tol=1e-3), (a, b)
        assert math.isclose(a.p_silence, ov.score_silence(so.turns), rel_tol=1e-4)
        if a.speak:
            text = ov.respond(so)
            pt.respond(sp)
            assert text and SILENCE not in text
    assert so.kv_bytes() > 0 and so.recomputes == 0


def test_openvino_refuses_adapters_and_nf4(tiny_model_dir) -> None:  # type: ignore[no-untyped-def]
    from bot.engine.openvino_backend import OpenVINOEngine

    gen = GenerationSettings()
    with pytest.raises(EngineError, match="merge the LoRA adapter"):
        OpenVINOEngine.from_settings(ModelSettings(path=str(tiny_model_dir), adapter="x",
                                                   backend="openvino"), gen)
    with pytest.raises(EngineError, match="does not exist"):
        OpenVINOEngine.from_settings(ModelSettings(path="/no/such/model", backend="openvino"),
                                     gen)
