"""A model of Qwen2.5-0.5B's shape with random weights, built here, and its OpenVINO exports.

Nothing is downloaded: a byte-level BPE is trained on a few lines of chat (training.tiny) and a
llama-config model is sized like the 0.5B (hidden 896, 24 layers, 14 heads / 2 KV heads,
intermediate 4864, a 32k vocabulary, tied embeddings). Random weights are fine for time and
memory. The exports go through `training.export.to_openvino`, the code `chimein export
--openvino` runs, so the benchmark times the IR users get.

    python benchmarks/qwen_shape.py --out /tmp/qwen-shape    # builds what is missing
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHAPE = {"hidden": 896, "layers": 24, "heads": 14, "kv_heads": 2, "intermediate": 4864,
         "vocab": 32000}

_CORPUS = [f"{n}: {t} ({i})" for i in range(300) for n, t in (
    ("Ann", "did the deploy finish? the flaky test again, 今天第三次了"),
    ("Bob", "not yet, CI is slow today; who owns the staging cluster?"),
    ("Cy", "I'll look after lunch, ping me when it's green"),
    ("Dee", "assistant, what is the HTTP status for too many requests?"))]


def build_hf(out: Path, max_positions: int = 32768) -> Path:
    """The transformers folder (tokenizer + fp32 weights) in `out`, unless already there."""
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from training.tiny import build_tokenizer

    tok = build_tokenizer(_CORPUS, vocab_size=4000)
    torch.manual_seed(0)
    config = LlamaConfig(  # type: ignore[call-arg]
        vocab_size=SHAPE["vocab"], hidden_size=SHAPE["hidden"],
        intermediate_size=SHAPE["intermediate"], num_hidden_layers=SHAPE["layers"],
        num_attention_heads=SHAPE["heads"], num_key_value_heads=SHAPE["kv_heads"],
        max_position_embeddings=max_positions, rope_theta=1e6, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def build_ir(hf: Path, out: Path, weights: str, *, stateful: bool = True) -> Path:
    """`hf` exported to OpenVINO IR with `weights` in `out`, unless already there."""
    if (out / "openvino_model.xml").exists():
        return out
    from training.export import to_openvino

    return to_openvino(hf, out, weights, stateful=stateful)


def build_all(root: Path, weights: tuple[str, ...] = ("fp32", "int8", "int4")) -> dict[str, Path]:
    hf = build_hf(root / "hf")
    return {"hf": hf, **{w: build_ir(hf, root / f"ov-{w}", w) for w in weights}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder for the model and its exports")
    p.add_argument("--weights", nargs="*", default=["fp32", "int8", "int4"])
    args = p.parse_args(argv)
    for name, path in build_all(Path(args.out), tuple(args.weights)).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
