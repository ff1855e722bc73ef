"""Merging a LoRA adapter and exporting OpenVINO IR that the openvino backend then serves."""

from __future__ import annotations

import math

import pytest

from adapters.cli import main
from bot.config import GenerationSettings, ModelSettings
from bot.engine.transformers_backend import TransformersEngine
from bot.message import ConversationKey, user
from bot.sessions import Session

KEY = ConversationKey("t", "x")


@pytest.mark.slow
def test_merge_then_openvino_int8_serves_same_decisions(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("optimum.intel")
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from bot.engine.openvino_backend import OpenVINOEngine
    from tests.conftest import CORPUS
    from training.tiny import save_tiny

    base_dir = save_tiny(tmp_path / "base", CORPUS, vocab_size=400, hidden=64, layers=1)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                                LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.fill_(0.3)
    peft_model.save_pretrained(tmp_path / "adapter")

    assert main(["export", "--model", str(base_dir), "--adapter", str(tmp_path / "adapter"),
                 "--output", str(tmp_path / "merged")]) == 0
    assert main(["export", "--model", str(base_dir), "--adapter", str(tmp_path / "adapter"),
                 "--output", str(tmp_path / "ov"), "--openvino", "--weights", "int8"]) == 0
    import json

    import openvino

    ir = openvino.Core().read_model(tmp_path / "ov" / "openvino_model.xml")
    assert ir.get_sinks()  # stateful by default: the KV cache is the model's state
    assert json.loads((tmp_path / "ov" / "export.json").read_text())["stateful"] is True

    gen = GenerationSettings(max_new_tokens=4, temperature=0.0)
    tuned = TransformersEngine.from_settings(
        ModelSettings(path=str(base_dir), adapter=str(tmp_path / "adapter")), gen)
    merged = TransformersEngine.from_settings(ModelSettings(path=str(tmp_path / "merged")), gen)
    ov = OpenVINOEngine.from_settings(ModelSettings(path=str(tmp_path / "ov"),
                                                    backend="openvino"), gen)
    turn = [user("Ann", "assistant, how is the deploy going?")]
    a = tuned.decide(Session(KEY), turn, threshold=0.0).p_silence
    b = merged.decide(Session(KEY), turn, threshold=0.0).p_silence
    c = ov.decide(Session(KEY), turn, threshold=0.0).p_silence
    assert math.isclose(a, b, rel_tol=1e-4)
    assert math.isclose(math.log(a), math.log(c), rel_tol=0.05)  # int8 weights: close, not equal
    assert ov.model.fp32_weights is False and ov.model.kv_precision != "f32"


def test_export_errors(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["export", "--model", str(tmp_path / "none"), "--output",
                 str(tmp_path / "o")]) == 2
    assert "cannot load model" in capsys.readouterr().out
