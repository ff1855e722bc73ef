"""Packing keeps conversations apart: a packed forward equals each conversation run alone.

The batch comes from the trainer that `chimein train` builds (trl's best-fit-decreasing packing
and padding-free collator); position ids restart at every conversation and, with no attention
mask and the KV cache off, transformers masks attention block-diagonally. With the cache on,
the packed-sequence detection is skipped and attention leaks across conversations: the test
shows that too, so a change that turns the cache back on during training is caught.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import torch

from bot.config import Settings
from bot.render import Renderer
from training.data import read_file
from training.finetune import Hyper, build_trainer, encode

CONVS = [
    [{"role": "user", "name": "Ann", "content": "the deploy is stuck on step 3"},
     {"role": "user", "name": "Bob", "content": "assistant, what does HTTP 429 mean?"},
     {"role": "assistant", "content": "Too Many Requests."}],
    [{"role": "user", "name": "Cy", "content": "今天下午开会吗？"},
     {"role": "user", "name": "Dee", "content": "开，三点"}],
    [{"role": "user", "name": "Eve", "content": "how many seconds are in three days?"},
     {"role": "assistant", "content": "259200 seconds."},
     {"role": "user", "name": "Fay", "content": "nice, thanks"}],
    [{"role": "user", "name": "Gus", "content": "lol that meme"}],
]


def test_packed_forward_equals_each_conversation_alone(tmp_path: Path, tiny_model_dir: Path,
                                                       tiny_tokenizer) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM

    f = tmp_path / "c.jsonl"
    f.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in CONVS), "utf-8")
    rows, _ = encode(read_file(f).examples, Renderer(tiny_tokenizer), 512)
    assert len(rows) == 4  # a silent conversation still trains its (silence) turns
    hp = Hyper.from_settings(Settings().training, batch_size=4, max_seq_len=512,
                             lora_r=4, lora_alpha=8)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    trainer = build_trainer(model, tiny_tokenizer, rows, [], hp, tmp_path / "w", "cpu",
                            lora=True, save=False, progress=False)
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch
    starts = batch["cu_seq_lens_q"].tolist()
    assert len(starts) - 1 == len(rows)  # every conversation in one padding-free row
    pos = batch["position_ids"][0]
    assert all(int(pos[s]) == 0 for s in starts[:-1])  # positions restart per conversation

    m = trainer.model.eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        packed = m(**inputs, use_cache=False).logits[0]
        leaky = m(**inputs, use_cache=True).logits[0]
        worst = leak = 0.0
        for s, e in itertools.pairwise(starts):
            alone = m(input_ids=batch["input_ids"][:, s:e], use_cache=False).logits[0]
            worst = max(worst, float((alone - packed[s:e]).abs().max()))
            leak = max(leak, float((alone - leaky[s:e]).abs().max()))
    assert worst < 1e-5, worst
    assert leak > 1e-3  # with the KV cache on, attention crosses conversations

    # the same holds for what the trainer computes the loss on: its compute_loss turns the
    # cache off, and labels are only on assistant tokens of their own conversation
    labels = batch["labels"][0]
    for s in starts[:-1]:
        assert int(labels[s]) == -100
