"""LoRA / QLoRA fine-tuning with peft + trl on ids and masks from `bot.render`.

Every conversation is rendered by `bot.render.Renderer.encode` (the renderer the bot serves
with) into `input_ids` and an `assistant_masks` column that is 1 exactly on assistant turns
(`(silence)` or `(response) text`, with their end-of-turn token). trl's `SFTTrainer`, called as
it is, takes such a pre-tokenized dataset, turns the mask into labels (-100 elsewhere, so the
loss is on assistant turns only), and packs conversations with best-fit decreasing into
padding-free rows whose position ids restart at every conversation; with no attention mask
and the KV cache off, transformers derives a block-diagonal causal mask from those position
ids, so no conversation attends to another (`tests/test_packing.py` checks the logits).

Precision: fp32 on CPU (this CPU runs bf16 ~70x slower), bf16 on CUDA that supports it, else
fp16 autocast. `--from-scratch tiny` trains a small tokenizer and model from the data alone
(full training, no LoRA) for offline demos and tests.

Why one module of ~600 lines: it is one pipeline read top to bottom (data, encoding, trainer,
model, save, evaluation of the result), the shape of trl's own `scripts/sft.py`; split, the
sequence would be scattered over files that are never used apart.
"""

from __future__ import annotations

import logging
import math
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bot.engine.base import hub_offline
from bot.errors import ChimeinError
from training.data import Example, Loaded, read_files, sha256_file, split

log = logging.getLogger(__name__)


class TrainError(ChimeinError, RuntimeError):
    """Training cannot start or finish; the message says what to change."""


# Hyperparameters of `--from-scratch tiny`: a model that learns the task's surface in minutes
# on two CPU cores. Flags given explicitly still win.
TINY: dict[str, Any] = {
    "vocab_size": 4000, "hidden": 128, "layers": 4, "heads": 4,
    "learning_rate": 2e-3, "epochs": 8.0, "batch_size": 4, "max_seq_len": 1024,
    "warmup_ratio": 0.05, "lr_scheduler": "constant_with_warmup",
}


@dataclass
class Hyper:
    """Everything that shapes a run; recorded in metadata.json."""

    lora_r: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    learning_rate: float = 2e-4
    max_grad_norm: float = 0.3
    warmup_ratio: float = 0.03
    lr_scheduler: str = "constant_with_warmup"
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 4
    grad_accum: int = 1
    max_seq_len: int = 2048
    packing: bool = True
    gradient_checkpointing: bool = False
    seed: int = 42
    eval_steps: int | None = None  # None: about four evaluations (and checkpoints) a run
    logging_steps: int | None = None  # None: about 25 loss readings a run, at most every 10
    qlora: bool = False
    from_scratch: str | None = None
    vocab_size: int = TINY["vocab_size"]  # from-scratch only
    hidden: int = TINY["hidden"]
    layers: int = TINY["layers"]
    heads: int = TINY["heads"]

    @classmethod
    def from_settings(cls, training: Any, **flags: Any) -> Hyper:
        """defaults < config [training] < flags (None = not given); the tiny preset sits
        between the config and the flags for `--from-scratch tiny`."""
        h = cls()
        for name in ("lora_r", "lora_alpha", "lora_dropout", "learning_rate", "max_grad_norm",
                     "warmup_ratio", "lr_scheduler", "epochs", "batch_size", "grad_accum",
                     "max_seq_len", "packing", "gradient_checkpointing", "seed"):
            setattr(h, name, getattr(training, name))
        if flags.get("from_scratch") == "tiny":
            for k, v in TINY.items():
                setattr(h, k, v)
        for k, v in flags.items():
            if v is not None:
                if not hasattr(h, k):
                    raise TypeError(f"unknown hyperparameter {k}")
                setattr(h, k, v)
        return h


@dataclass
class TrainResult:
    output: Path
    kind: str  # "lora", "qlora" or "full"
    train_seconds: float
    steps: int
    train_examples: int
    valid_examples: int
    tokens: int
    loss_history: list[float]
    eval_loss_before: float | None
    eval_loss: float | None
    metadata: dict[str, Any] = field(default_factory=dict)
    report: Any = None  # training.evaluate.Report when the decision eval ran


# -- devices and precision ------------------------------------------------------------------------
def resolve_device(device: str) -> str:
    """The engine's `resolve_device` (auto -> cuda if available), with the errors in terms of
    the `--device` flag; only auto, cpu and cuda are accepted."""
    from bot.engine.base import EngineError
    from bot.engine.transformers_backend import resolve_device as engine_resolve_device

    if device not in ("auto", "cpu", "cuda"):
        raise TrainError(f"unknown device {device!r}: use auto, cpu or cuda")
    try:
        return engine_resolve_device(device)
    except EngineError:
        raise TrainError("--device cuda, but no CUDA device is available here "
                         "(torch.cuda.is_available() is False): use --device cpu or auto"
                         ) from None


def precision(device: str) -> tuple[Any, bool, bool]:
    """(weight dtype, bf16 autocast, fp16 autocast) for a device.

    trl's SFTConfig defaults to bf16; on this CPU bf16 is ~70x slower than fp32, so it is set
    explicitly: fp32 on CPU, bf16 only on CUDA that does it natively, fp16 autocast otherwise.
    """
    import torch

    if device == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return torch.bfloat16, True, False
        return torch.float32, False, True
    return torch.float32, False, False


# -- data ---------------------------------------------------------------------------------------
def load_data(train_files: Sequence[str], valid_files: Sequence[str], valid_fraction: float,
              seed: int) -> tuple[list[Example], list[Example], Loaded]:
    """Train and validation examples; bad lines are reported (by the caller) and skipped."""
    if not train_files:
        raise TrainError("no training data: pass --data FILE (JSONL conversations)")
    loaded = read_files(train_files)
    if not loaded.examples:
        raise TrainError(f"no valid conversation in {', '.join(map(str, train_files))}"
                         + (f" ({len(loaded.errors)} bad line(s))" if loaded.errors else ""))
    if valid_files:
        vl = read_files(valid_files)
        loaded.errors += vl.errors
        loaded.warnings += vl.warnings
        return loaded.examples, vl.examples, loaded
    train, valid = split(loaded.examples, valid_fraction, seed)
    return train, valid, loaded


def encode(examples: Sequence[Example], renderer: Any, max_len: int
           ) -> tuple[list[dict[str, list[int]]], int]:
    """Rows of `input_ids` + `assistant_masks` for trl; also how many were cut at max_len.

    Conversations longer than max_len are cut by trl (keep the start); conversations whose
    kept part holds no assistant token are dropped here since they carry no loss.
    """
    rows = []
    long = 0
    for ex in examples:
        enc = renderer.encode(ex.turns)
        if len(enc.ids) > max_len:
            long += 1
        if not any(enc.mask[:max_len]):
            log.info("%s:%d: no assistant token within %d tokens: skipped", ex.source, ex.line,
                     max_len)
            continue
        rows.append({"input_ids": list(enc.ids), "assistant_masks": list(enc.mask)})
    return rows, long


def tokenizer_texts(examples: Sequence[Example]) -> list[str]:
    """What the from-scratch tokenizer learns from: every turn as the model will see it."""
    from bot.render import assistant_text, user_text

    out = []
    for ex in examples:
        for t in ex.turns:
            if t.role == "user":
                out.append(user_text(t))
            elif t.role == "assistant":
                out.append(assistant_text(t))
            elif t.content:
                out.append(t.content)
    return out


# -- the trainer ------------------------------------------------------------------------------
def planned_steps(hp: Hyper, rows: Sequence[dict[str, list[int]]]) -> int:
    """Optimizer steps a run will take (packing fills rows almost completely with bfd)."""
    if hp.max_steps > 0:
        return hp.max_steps
    if hp.packing:
        tokens = sum(min(len(r["input_ids"]), hp.max_seq_len) for r in rows)
        seqs = math.ceil(tokens / hp.max_seq_len)
    else:
        seqs = len(rows)
    per_epoch = math.ceil(math.ceil(seqs / hp.batch_size) / hp.grad_accum)
    return max(1, math.ceil(per_epoch * hp.epochs))


def sft_config(hp: Hyper, output_dir: str | Path, device: str, *, has_eval: bool,
               save: bool = True, progress: bool = True, steps: int | None = None,
               varlen: bool = False) -> Any:
    """trl's SFTConfig with every default that matters here set explicitly.

    Evaluation and checkpoints come every `hp.eval_steps` steps, by default about four times a
    run (`steps` planned): per epoch would be every step on a small dataset.

    Padding-free packing flattens a whole batch into one row. Varlen attention kernels (flash
    attention) run each conversation on its own; the others (sdpa, eager: all of CPU) build a
    mask over the whole row, quadratic in batch x max_seq_len. Without `varlen` the batch is
    therefore fed one packed row at a time and the effective batch kept by accumulation.
    """
    from trl import SFTConfig

    _dtype, bf16, fp16 = precision(device)
    every = hp.eval_steps or (max(1, math.ceil(steps / 4)) if steps else None)
    logging = hp.logging_steps or (max(1, min(10, math.ceil(steps / 25))) if steps else 10)
    micro, accum = hp.batch_size, hp.grad_accum
    if hp.packing and not varlen:
        micro, accum = 1, hp.batch_size * hp.grad_accum
    strategy = "steps" if every else "epoch"
    steps_kw: dict[str, Any] = {"eval_steps": every, "save_steps": every} if every else {}
    return SFTConfig(
        output_dir=str(output_dir),
        bf16=bf16, fp16=fp16,
        use_cpu=device == "cpu",
        gradient_checkpointing=hp.gradient_checkpointing,
        learning_rate=hp.learning_rate,
        lr_scheduler_type=hp.lr_scheduler,
        warmup_steps=min(hp.warmup_ratio, 0.999),  # a float below 1 is a ratio of the steps
        max_grad_norm=hp.max_grad_norm,
        num_train_epochs=hp.epochs,
        max_steps=hp.max_steps,
        per_device_train_batch_size=micro,
        per_device_eval_batch_size=micro,
        gradient_accumulation_steps=accum,
        max_length=hp.max_seq_len,
        packing=hp.packing,
        packing_strategy="bfd",  # padding-free rows, position ids restart per conversation
        padding_free=hp.packing,
        eval_strategy=strategy if has_eval else "no",
        save_strategy=strategy if save else "no",
        save_total_limit=2,
        logging_steps=logging,
        logging_first_step=True,
        report_to="none",
        seed=hp.seed,
        data_seed=hp.seed,
        disable_tqdm=not progress,
        dataloader_num_workers=0,
        # everything in the dataset is already the trainer's input: no text column, no template
        assistant_only_loss=False,
        completion_only_loss=False,
        **steps_kw,
    )


def loss_bar_callback() -> Any:
    """A tqdm bar over optimizer steps whose postfix shows the latest train and eval loss."""
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    class LossBar(TrainerCallback):  # a callback, not a trainer subclass
        bar: Any = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="train",
                            unit="step", dynamic_ncols=True, file=sys.stderr)
            self.post: dict[str, str] = {}

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None,
                   **kw: Any) -> None:
            if self.bar is None or not logs:
                return
            if "loss" in logs:
                self.post["loss"] = f"{float(logs['loss']):.4f}"
            if "eval_loss" in logs:
                self.post["eval"] = f"{float(logs['eval_loss']):.4f}"
            self.bar.set_postfix(self.post, refresh=True)

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return LossBar()


def build_trainer(model: Any, tokenizer: Any, train_rows: list[dict[str, list[int]]],
                  valid_rows: list[dict[str, list[int]]], hp: Hyper, work_dir: str | Path,
                  device: str, *, lora: bool, save: bool = True, progress: bool = True) -> Any:
    """SFTTrainer on pre-tokenized rows (LoRA when `lora`), with the loss bar."""
    from datasets import Dataset
    from transformers import PrinterCallback, ProgressCallback
    from trl import SFTTrainer

    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=hp.lora_r, lora_alpha=hp.lora_alpha,
                                 lora_dropout=hp.lora_dropout, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    attn = str(getattr(getattr(model, "config", None), "_attn_implementation", "") or "")
    varlen = attn.startswith(("flash_attention", "kernels-")) or "flash" in attn
    args = sft_config(hp, work_dir, device, has_eval=bool(valid_rows), save=save,
                      progress=progress, steps=planned_steps(hp, train_rows), varlen=varlen)
    trainer = SFTTrainer(
        model=model, args=args, processing_class=tokenizer,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(valid_rows) if valid_rows else None,
        peft_config=peft_config,
    )
    # trainer's own bar and log printer give way to one bar with the loss in it (or silence)
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    if progress:
        trainer.add_callback(loss_bar_callback())
    if hp.qlora and device == "cpu":
        # trl casts QLoRA adapter weights to bf16 (the paper's recipe for GPUs); on this CPU
        # bf16 is ~70x slower, so they go back to fp32 before the optimizer is created.
        trained: Any = trainer.model
        for p in trained.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    return trainer


def _quiet_libraries() -> None:
    import datasets
    import transformers

    # only the training bar: dataset preparation and shard writing bars are noise here
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    # "mtime may not be reliable on this filesystem": checkpoint rotation chatter, harmless
    logging.getLogger("transformers.trainer_utils").setLevel(logging.ERROR)


def load_base(base: str, device: str, qlora: bool) -> tuple[Any, Any]:
    """(model, tokenizer) for LoRA training; 4-bit NF4 weights with `qlora`."""

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype, _bf16, _fp16 = precision(device)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if qlora:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as e:
            raise TrainError("--qlora needs bitsandbytes: pip install 'chimein[gpu]'") from e
        from transformers import BitsAndBytesConfig

        compute = dtype if device == "cuda" and dtype != torch.float32 else torch.float32
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute,
            bnb_4bit_use_double_quant=True)
        kwargs["device_map"] = {"": 0} if device == "cuda" else {"": "cpu"}
    local = hub_offline()
    try:
        tok = AutoTokenizer.from_pretrained(base, local_files_only=local)
        model: Any = AutoModelForCausalLM.from_pretrained(base, local_files_only=local,
                                                          **kwargs)
    except OSError as e:
        hint = ""
        if not Path(base).expanduser().exists():
            hint = (" (HF_HUB_OFFLINE=1 forbids downloading it: download it once without it)"
                    if local else " (no such local folder, and the hub could not provide it: "
                    "check the name and the network, or download it where there is one)")
        raise TrainError(f"cannot load base model {base!r}: {str(e).splitlines()[0]}{hint}"
                         ) from e
    except (ValueError, RuntimeError) as e:
        if qlora:
            raise TrainError(f"4-bit NF4 loading failed on {device}: {e} (bitsandbytes needs "
                             "CUDA or an x86 CPU, and hidden sizes that are multiples of 64)"
                             ) from e
        raise TrainError(f"cannot load base model {base!r}: {e}") from e
    if qlora:
        from peft import prepare_model_for_kbit_training

        if device == "cpu":
            # bitsandbytes repacks 4-bit weights for its fast CPU inference kernel the first
            # time a layer runs in eval mode, and never back: a later backward pass then goes
            # through a kernel without autograd and earlier layers silently get no gradient
            # (the evaluation before training triggers it). Keep the differentiable layout.
            for module in model.modules():
                if hasattr(module, "support_avx512bf16_for_cpu"):
                    setattr(module, "support_avx512bf16_for_cpu", False)  # noqa: B010

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=False)  # the flag decides, via SFTConfig
    elif device == "cuda":
        model.to("cuda")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def build_tiny(train: Sequence[Example], hp: Hyper, out_dir: Path) -> tuple[Any, Any]:
    """Tokenizer + small model from the training conversations alone; the untrained model is
    kept in `out_dir/init` as the "base" of the prompted-base baseline."""
    from training.tiny import build_model, build_tokenizer

    tok = build_tokenizer(tokenizer_texts(train), vocab_size=hp.vocab_size)
    model = build_model(tok, hidden=hp.hidden, layers=hp.layers, heads=hp.heads,
                        max_positions=max(hp.max_seq_len, 2048), seed=hp.seed)
    init = out_dir / "init"
    init.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(init)
    model.save_pretrained(init)
    return model, tok


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in ("chimein", "torch", "transformers", "peft", "trl"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def _files(paths: Sequence[str], examples: Sequence[Example]) -> list[dict[str, Any]]:
    counts: dict[str, int] = {}
    for ex in examples:
        counts[ex.source] = counts.get(ex.source, 0) + 1
    return [{"path": str(Path(p)), "sha256": sha256_file(p) if Path(p).exists() else None,
             "conversations": counts.get(str(Path(p)), 0)} for p in paths]


def train(settings: Any, *, data: Sequence[str], output: str | Path, base: str | None = None,
          valid: Sequence[str] = (), valid_fraction: float = 0.1, hp: Hyper | None = None,
          device: str = "auto", resume: bool | str = False, keep_checkpoints: bool = False,
          evaluate_after: bool = True, progress: bool = True) -> TrainResult:
    """Train one model into `output` (a registry version folder or any folder).

    Writes the adapter (LoRA) or the model (from scratch), the tokenizer and metadata.json;
    with `evaluate_after`, the speak/silence metrics on the validation split go there too.
    """
    from transformers import set_seed

    from bot.render import Renderer

    hp = hp or Hyper.from_settings(settings.training)
    if hp.from_scratch not in (None, "tiny"):
        raise TrainError(f"--from-scratch {hp.from_scratch!r}: only 'tiny' exists")
    if hp.from_scratch is None and not base:
        raise TrainError("no base model: pass --base MODEL (a local folder or hub id), set "
                         "training.base_model in the config, or use --from-scratch tiny")
    if hp.from_scratch and hp.qlora:
        raise TrainError("--qlora quantizes a pretrained base; it does not apply to "
                         "--from-scratch")
    dev = resolve_device(device)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "checkpoints"
    _quiet_libraries()
    set_seed(hp.seed)
    train_ex, valid_ex, loaded = load_data(data, valid, valid_fraction, hp.seed)
    for err in loaded.errors:
        print(f"skipped {err}", file=sys.stderr)

    if hp.from_scratch:
        model, tok = build_tiny(train_ex, hp, out)
        kind, lora = "full", False
        base_rec: str | None = None
    else:
        base_rec = str(Path(str(base)).resolve()) if Path(str(base)).exists() else str(base)
        model, tok = load_base(base_rec, dev, hp.qlora)
        kind, lora = ("qlora" if hp.qlora else "lora"), True
    renderer = Renderer(tok, settings.bot.system_prompt)
    train_rows, long_train = encode(train_ex, renderer, hp.max_seq_len)
    valid_rows, _ = encode(valid_ex, renderer, hp.max_seq_len)
    if not train_rows:
        raise TrainError("no conversation has an assistant token to learn from")
    if long_train:
        log.warning("%d training conversation(s) are longer than max_seq_len %d and are cut",
                    long_train, hp.max_seq_len)
    tokens = sum(len(r["input_ids"]) for r in train_rows)
    print(f"training {kind} on {dev}: {len(train_rows)} conversations ({tokens} tokens), "
          f"{len(valid_rows)} for validation", file=sys.stderr)

    trainer = build_trainer(model, tok, train_rows, valid_rows, hp, work, dev, lora=lora,
                            save=True, progress=progress)
    eval_before = None
    if valid_rows and not resume:
        eval_before = float(trainer.evaluate()["eval_loss"])
    t0 = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=resume or None)
    except ValueError as e:
        if resume and "checkpoint" in str(e).lower():
            raise TrainError(f"cannot resume: {e} (checkpoints live in {work})") from e
        raise
    seconds = time.perf_counter() - t0
    eval_loss = float(trainer.evaluate()["eval_loss"]) if valid_rows else None
    history = [float(h["loss"]) for h in trainer.state.log_history if "loss" in h]

    trainer.save_model(str(out))
    tok.save_pretrained(str(out))
    if not keep_checkpoints:
        shutil.rmtree(work, ignore_errors=True)

    meta: dict[str, Any] = {
        "version": out.name,
        "kind": kind,
        "base_model": base_rec,
        "baseline_model": "init" if hp.from_scratch else base_rec,
        "from_scratch": hp.from_scratch,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "data": {"train": _files(list(data), train_ex),
                 "valid": _files(list(valid), valid_ex) if valid else
                 {"split_from_train": valid_fraction, "conversations": len(valid_ex)}},
        "hyperparameters": asdict(hp),
        "system_prompt": settings.bot.system_prompt,
        "device": dev,
        "train_seconds": round(seconds, 2),
        "train_tokens": tokens,
        "steps": trainer.state.global_step,
        "train_loss": history[-1] if history else None,
        "eval_loss_before": eval_before,
        "eval_loss": eval_loss,
        "software": _versions(),
    }
    report = None
    if evaluate_after and valid_ex:
        report = evaluate_in_memory(settings, trainer.model, tok, valid_ex, out, lora=lora,
                                    progress=progress)
        meta["metrics"] = report.as_json()
    from training.registry import write_metadata

    write_metadata(out, meta)
    return TrainResult(out, kind, seconds, trainer.state.global_step, len(train_rows),
                       len(valid_rows), tokens, history, eval_before, eval_loss, meta, report)


def evaluate_in_memory(settings: Any, model: Any, tok: Any, valid: Sequence[Example],
                       out: Path, *, lora: bool, progress: bool = False) -> Any:
    """The decision metrics of a just-trained model (and its baselines) without reloading."""
    from bot.engine.transformers_backend import TransformersEngine, load_model
    from training.evaluate import baseline_system_prompt, evaluate

    model.eval()
    common = {"generation": settings.generation,
                  "max_context_tokens": settings.model.max_context_tokens,
                  "trim_to": settings.model.trim_to, "device": str(next(model.parameters()).device)}
    engine = TransformersEngine(model, tok, system_prompt=settings.bot.system_prompt,
                                version=out.name, **common)
    prompt = baseline_system_prompt(settings.bot.name, settings.bot.wake_words)
    if lora:
        base_engine = TransformersEngine(model, tok, system_prompt=prompt, version="base",
                                         **common)
        ctx = model.disable_adapter()
    else:
        import dataclasses

        blm, btok, _ = load_model(dataclasses.replace(
            settings.model, path=str(out / "init"), adapter="", registry_dir="",
            device="cpu" if common["device"] == "cpu" else "cuda"))
        base_engine = TransformersEngine(blm, btok, system_prompt=prompt, version="base",
                                         **common)
        ctx = None
    wake = list(settings.bot.wake_words) + [settings.bot.name]
    return evaluate(engine, valid, threshold=settings.policy.threshold, wake_words=wake,
                    model_name=out.name, base_engine=base_engine, base_context=ctx,
                    data=["validation split"], progress=progress)


def summary(result: TrainResult) -> str:
    lines = [(f"saved {result.kind} model to {result.output} ({result.steps} steps, "
             f"{result.train_seconds:.1f} s, {result.tokens} tokens)")]
    if result.loss_history:
        lines.append(f"train loss {result.loss_history[0]:.4f} -> {result.loss_history[-1]:.4f}")
    if result.eval_loss is not None:
        before = (f"{result.eval_loss_before:.4f} -> " if result.eval_loss_before is not None
                  else "")
        lines.append(f"validation loss {before}{result.eval_loss:.4f}")
    return "\n".join(lines)
