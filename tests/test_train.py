"""Fine-tuning on tiny local models: LoRA smoke test, assistant-only loss, from scratch, resume,
QLoRA on CPU, precision settings and the `chimein train` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adapters.cli import main as chimein
from bot.config import Settings
from bot.render import Renderer, assistant_text, with_silences
from training.data import read_file
from training.finetune import (
    Hyper,
    TrainError,
    build_trainer,
    encode,
    precision,
    resolve_device,
    sft_config,
    train,
)

CONVS = [
    {"id": "t1", "tags": ["en"], "messages": [
        {"role": "user", "name": "Ann", "content": "hello there, how is the deploy going?"},
        {"role": "user", "name": "Bob", "content": "assistant, what is HTTP 429?"},
        {"role": "assistant", "content": "Too Many Requests."},
        {"role": "user", "name": "Ann", "content": "thanks"}]},
    {"id": "t2", "tags": ["zh"], "messages": [
        {"role": "user", "name": "Cy", "content": "助手，今天天气怎么样？"},
        {"role": "assistant", "content": "我看不到天气预报。"},
        {"role": "user", "name": "Gus", "content": "这个PR能merge吗"}]},
    {"id": "t3", "tags": ["en"], "messages": [
        {"role": "user", "name": "Fay", "content": "how many seconds are in three days?"},
        {"role": "assistant", "content": "259200 seconds."},
        {"role": "user", "name": "Eve", "content": "lol that meme is great"}]},
    {"id": "t4", "tags": ["en"], "messages": [
        {"role": "user", "name": "Dee", "content": "the build failed again on main"},
        {"role": "user", "name": "Hal", "content": "I'll look at CI"}]},
]


def data_file(tmp_path: Path, convs: list = CONVS, name: str = "train.jsonl") -> Path:  # type: ignore[type-arg]
    f = tmp_path / name
    f.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in convs), "utf-8")
    return f


def lora_state(model) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def test_only_assistant_tokens_carry_loss(tmp_path: Path, tiny_model_dir: Path,
                                          tiny_tokenizer) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM

    exs = read_file(data_file(tmp_path)).examples
    rows, _ = encode(exs, Renderer(tiny_tokenizer), 512)
    hp = Hyper.from_settings(Settings().training, packing=False, lora_r=4)
    trainer = build_trainer(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                            tiny_tokenizer, rows, [], hp, tmp_path / "w", "cpu", lora=True,
                            save=False, progress=False)
    by_len = {len(r["input_ids"]): r for r in trainer.train_dataset}
    for ex in exs:
        ids = Renderer(tiny_tokenizer).encode(ex.turns).ids
        labels = by_len[len(ids)]["labels"]
        runs, cur = [], []
        for tok, lab in zip(ids, labels):
            if lab != -100:
                assert lab == tok
                cur.append(tok)
            elif cur:
                runs.append(cur)
                cur = []
        if cur:
            runs.append(cur)
        decoded = [tiny_tokenizer.decode(r) for r in runs]
        expected = [assistant_text(t) + "<|im_end|>\n" for t in with_silences(ex.turns)
                    if t.role == "assistant"]
        assert decoded == expected  # the markers, the answers and end of turn: nothing else


def test_lora_smoke_parameters_change_and_loss_falls(tmp_path: Path,
                                                     tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    exs = read_file(data_file(tmp_path)).examples
    rows, _ = encode(exs, Renderer(tok), 512)
    hp = Hyper.from_settings(Settings().training, learning_rate=1e-2, max_steps=24,
                             batch_size=4, logging_steps=1, warmup_ratio=0.0)
    assert (hp.lora_r, hp.lora_alpha, hp.lora_dropout, hp.max_grad_norm) == (64, 16, 0.1, 0.3)
    trainer = build_trainer(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tok, rows,
                            rows, hp, tmp_path / "w", "cpu", lora=True, save=False,
                            progress=False)
    assert trainer.args.bf16 is False and trainer.args.lr_scheduler_type == \
        "constant_with_warmup"
    before = lora_state(trainer.model)
    loss0 = trainer.evaluate()["eval_loss"]
    trainer.train()
    loss1 = trainer.evaluate()["eval_loss"]
    after = lora_state(trainer.model)
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert len(changed) == len(before) > 0  # every LoRA matrix moved
    base = [p for n, p in trainer.model.named_parameters() if "lora_" not in n]
    assert not any(p.requires_grad for p in base)
    assert loss1 < loss0 - 0.2, (loss0, loss1)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < losses[0]


def test_train_writes_adapter_metadata_and_resumes(tmp_path: Path,
                                                   tiny_model_dir: Path) -> None:
    settings = Settings()
    f = data_file(tmp_path)
    hp = Hyper.from_settings(settings.training, max_steps=4, eval_steps=2, batch_size=2,
                             lora_r=4, learning_rate=5e-3, packing=False)
    out = tmp_path / "v1"
    res = train(settings, data=[str(f)], valid=[str(f)], output=out, base=str(tiny_model_dir),
                hp=hp, device="cpu", keep_checkpoints=True, evaluate_after=True,
                progress=False)
    assert res.kind == "lora" and res.steps == 4
    assert (out / "adapter_config.json").exists() and (out / "adapter_model.safetensors").exists()
    assert (out / "tokenizer.json").exists()
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["base_model"] == str(tiny_model_dir.resolve())
    assert meta["data"]["train"][0]["sha256"] and meta["hyperparameters"]["lora_r"] == 4
    assert meta["metrics"]["user_turns"] == 9 and "balanced_accuracy" in meta["metrics"]
    assert (out / "checkpoints" / "checkpoint-4").exists()
    # resume: the run continues from step 4 instead of starting again
    hp.max_steps = 6
    res2 = train(settings, data=[str(f)], valid=[str(f)], output=out,
                 base=str(tiny_model_dir), hp=hp, device="cpu", resume=True,
                 evaluate_after=False, progress=False)
    assert res2.steps == 6 and res2.eval_loss_before is None
    assert not (out / "checkpoints").exists()
    with pytest.raises(TrainError, match="cannot resume"):
        train(settings, data=[str(f)], output=tmp_path / "v2", base=str(tiny_model_dir),
              hp=hp, device="cpu", resume=True, evaluate_after=False, progress=False)


def test_train_command_from_scratch_tiny(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    f = data_file(tmp_path)
    out = tmp_path / "tiny"
    code = chimein(["train", "--from-scratch", "tiny", "--data", str(f), "--valid", str(f),
                    "--output", str(out), "--max-steps", "3", "--quiet", "--device", "cpu"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "saved full model" in printed and "baseline: always silent" in printed
    assert (out / "config.json").exists() and (out / "init" / "config.json").exists()
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["kind"] == "full" and meta["from_scratch"] == "tiny"
    assert meta["hyperparameters"]["learning_rate"] == 2e-3  # the tiny preset
    assert meta["metrics"]["baselines"]["prompted_base"]["user_turns"] == 9
    # a non-empty output is not overwritten by accident
    assert chimein(["train", "--from-scratch", "tiny", "--data", str(f), "--output",
                    str(out), "--max-steps", "1", "--quiet"]) == 2


def test_qlora_trains_on_cpu(tmp_path: Path) -> None:
    from training.tiny import save_tiny

    texts = [m["content"] for c in CONVS for m in c["messages"]] * 20
    base = save_tiny(tmp_path / "base64", texts, vocab_size=400, hidden=64, layers=2, heads=4)
    f = data_file(tmp_path)
    hp = Hyper.from_settings(Settings().training, qlora=True, max_steps=2, lora_r=4,
                             batch_size=2)
    # with a validation set the model runs in eval mode before training (the evaluation
    # before), which must not leave the 4-bit layers in a layout without gradients
    res = train(Settings(), data=[str(f)], valid=[str(f)], output=tmp_path / "q",
                base=str(base), hp=hp, device="cpu", evaluate_after=False, progress=False)
    assert res.kind == "qlora" and res.eval_loss_before is not None
    assert json.loads((tmp_path / "q" / "metadata.json").read_text())["kind"] == "qlora"
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "q" / "adapter_model.safetensors")
    lora_b = {k: v for k, v in weights.items() if "lora_B" in k}
    assert len(lora_b) == 14  # 7 linear layers x 2 blocks
    # B starts at zero: every one moved, so gradients reached the first block through the
    # second block's 4-bit weights
    assert all(float(v.abs().sum()) > 0 for v in lora_b.values())


def test_qlora_gradients_survive_an_evaluation_on_cpu(tmp_path: Path) -> None:
    """bitsandbytes repacks 4-bit weights for CPU inference on the first eval-mode forward; the
    repacked kernel has no autograd, so training after an evaluation would silently lose the
    gradient through the base weights. load_base keeps the differentiable layout."""
    from peft import LoraConfig, get_peft_model

    from training.finetune import load_base
    from training.tiny import save_tiny

    texts = [m["content"] for c in CONVS for m in c["messages"]] * 20
    base = save_tiny(tmp_path / "base64", texts, vocab_size=400, hidden=64, layers=2, heads=4)
    model, _tok = load_base(str(base), "cpu", qlora=True)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                             init_lora_weights=False, task_type="CAUSAL_LM"))
    x = torch.arange(3, 40)[None]

    def grads() -> dict[str, torch.Tensor]:
        model.train()
        model.zero_grad()
        model(input_ids=x, labels=x, use_cache=False).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    before = grads()
    model.eval()
    with torch.no_grad():
        model(input_ids=x, use_cache=False)
    after = grads()
    assert before.keys() == after.keys() and len(before) == 28
    for n in before:
        assert torch.allclose(before[n], after[n], atol=1e-6), n


def test_precision_and_devices() -> None:
    dtype, bf16, fp16 = precision("cpu")
    assert dtype == torch.float32 and not bf16 and not fp16
    cfg = sft_config(Hyper(), "/tmp/x", "cpu", has_eval=True, save=False)
    assert cfg.bf16 is False and cfg.fp16 is False and cfg.gradient_checkpointing is False
    assert cfg.packing and cfg.packing_strategy == "bfd" and cfg.padding_free
    assert (cfg.learning_rate, cfg.max_grad_norm, cfg.lr_scheduler_type) == \
        (2e-4, 0.3, "constant_with_warmup")
    if not torch.cuda.is_available():
        with pytest.raises(TrainError, match="no CUDA device"):
            resolve_device("cuda")


def test_flags_override_config_override_defaults() -> None:
    from bot import config

    s = config.parse({"training": {"lora_r": 8, "learning_rate": 1e-3}})
    h = Hyper.from_settings(s.training, learning_rate=5e-4)
    assert (h.lora_r, h.learning_rate, h.lora_alpha) == (8, 5e-4, 16)
    t = Hyper.from_settings(s.training, from_scratch="tiny", epochs=2.0)
    assert t.learning_rate == 2e-3 and t.epochs == 2.0 and t.hidden == 128


def test_train_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = data_file(tmp_path)
    assert chimein(["train", "--data", str(f), "--output", str(tmp_path / "o")]) == 2
    assert "no base model" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text("nope\n")
    assert chimein(["train", "--from-scratch", "tiny", "--data", str(bad), "--output",
                    str(tmp_path / "o2")]) == 2
    assert "no valid conversation" in capsys.readouterr().err


def test_gradient_checkpointing_trains_and_the_seed_repeats_a_run(tmp_path: Path,
                                                                  tiny_model_dir: Path) -> None:
    """With gradient checkpointing the LoRA still learns; two runs with one seed give the same
    loss history to the last digit (dropout, data order and LoRA init all seeded)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    exs = read_file(data_file(tmp_path)).examples
    rows, _ = encode(exs, Renderer(tok), 512)

    def run(name: str, checkpointing: bool) -> list[float]:
        hp = Hyper.from_settings(Settings().training, learning_rate=1e-2, max_steps=8,
                                 batch_size=4, logging_steps=1, warmup_ratio=0.0, seed=7,
                                 gradient_checkpointing=checkpointing)
        set_seed(hp.seed)
        trainer = build_trainer(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tok,
                                rows, rows, hp, tmp_path / name, "cpu", lora=True, save=False,
                                progress=False)
        assert trainer.args.gradient_checkpointing is checkpointing
        before = lora_state(trainer.model)
        trainer.train()
        after = lora_state(trainer.model)
        assert any(not torch.equal(before[n], after[n]) for n in before)
        return [h["loss"] for h in trainer.state.log_history if "loss" in h]

    ckpt = run("ckpt", True)
    assert ckpt[-1] < ckpt[0]
    assert run("a", False) == run("b", False)
