"""`make demo`: an offline end-to-end run on a laptop CPU, in a few minutes.

1. trains the tiny model and its tokenizer from scratch on the starter data,
2. evaluates it on the starter validation set against the baselines,
3. replays a validation conversation through the real core, showing every decision and
   p_silence,
4. says how to point `model.path` at a real model.

    python -m training.demo [--output models/tiny-demo] [--epochs N] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from training.data import Example


def _pick_sample(examples: list[Example]) -> Example:
    """A validation conversation that has both answers and silences, short enough to read."""
    from training.data import decision_points

    def score(ex: Example) -> tuple[int, int]:
        pts = decision_points(ex.turns)
        speaks = sum(p.speak for p in pts)
        good = 0 < speaks < len(pts) and len(pts) <= 12
        return (0 if good else 1, abs(len(pts) - 8))

    return min(examples, key=score)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from bot.wiring import quiet_libraries
    from training.data import STARTER_DIR

    quiet_libraries()
    p = argparse.ArgumentParser(prog="python -m training.demo", description=__doc__)
    p.add_argument("--output", default="models/tiny-demo",
                   help="where the demo model goes (default: models/tiny-demo)")
    p.add_argument("--epochs", type=float, default=None, help="override the tiny preset")
    p.add_argument("--quick", action="store_true",
                   help="a much shorter run (smoke test of the demo itself)")
    p.add_argument("--starter", default=str(STARTER_DIR), metavar="DIR",
                   help="folder with train.jsonl and valid.jsonl (default: the starter set)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="CPU threads for torch (default: every core)")
    args = p.parse_args(argv)

    import torch

    from bot import config
    from bot.engine.transformers_backend import TransformersEngine
    from training.data import read_file, write_jsonl
    from training.evaluate import format_table
    from training.finetune import Hyper, TrainError, train

    t_start = time.perf_counter()
    # `make` pins OMP_NUM_THREADS=1 for the test suite; the demo may use every core
    torch.set_num_threads(max(1, args.threads))
    torch.manual_seed(0)
    train_file, valid_file = Path(args.starter) / "train.jsonl", Path(args.starter) / "valid.jsonl"
    for f in (train_file, valid_file):
        if not f.exists():
            print(f"error: {f} is missing: run python -m training.starter.build",
                  file=sys.stderr)
            return 2
    settings = config.Settings()  # the demo ignores config.toml: same result on every machine
    flags = {"from_scratch": "tiny", "epochs": args.epochs}
    if args.quick:
        flags.update(epochs=1.0, max_steps=6, hidden=64, layers=2, vocab_size=1500)
    hp = Hyper.from_settings(settings.training, **flags)
    out = Path(args.output)
    if out.exists() and any(out.iterdir()):
        import shutil

        shutil.rmtree(out)  # the demo's own folder: a re-run replaces it
    print(f"== 1. training a tiny model from scratch on {train_file.name} "
          f"({torch.get_num_threads()} CPU threads) ==", flush=True)
    try:
        result = train(settings, data=[str(train_file)], valid=[str(valid_file)], output=out,
                       hp=hp, device="cpu", progress=True)
    except TrainError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"trained in {result.train_seconds:.0f} s: {result.steps} steps over "
          f"{result.train_examples} conversations ({result.tokens} tokens a pass); validation "
          f"loss {result.eval_loss_before or float('nan'):.3f} -> "
          f"{result.eval_loss or float('nan'):.3f}")

    print(f"\n== 2. speak/silence on {valid_file.name}: the tiny model vs the baselines ==")
    if result.report is not None:
        print(format_table(result.report))

    print("\n== 3. a validation conversation replayed through the real core ==")
    from bot.replay import replay_file

    valid = read_file(valid_file).examples
    sample = _pick_sample(valid)
    gen = config.GenerationSettings(max_new_tokens=40, temperature=0.0, seed=0)
    settings = config.Settings(generation=gen)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    lm = AutoModelForCausalLM.from_pretrained(out).eval()
    engine = TransformersEngine(lm, tok, generation=gen, version=out.name)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sample.jsonl"
        write_jsonl(path, [sample])
        print(f"(conversation {sample.id}; addressed messages are always answered, the "
              f"rest only when p_silence < {settings.policy.threshold})")
        asyncio.run(replay_file(settings, path, engine=engine))

    total = time.perf_counter() - t_start
    print(f"\n== 4. next steps ==\n"
          f"demo finished in {total / 60:.1f} min. The tiny model is a toy trained on "
          f"{result.train_examples} conversations; it is saved in {out}/ (try: chimein "
          f"console --model {out}).\n"
          "For real use, fine-tune a real instruct model and point the bot at it:\n"
          "  chimein train --base Qwen/Qwen2.5-0.5B-Instruct            "
          "(LoRA on the starter data; needs the model downloaded once)\n"
          "  chimein models activate VERSION                             "
          "(then in config.toml: [model] registry_dir = \"models\")\n"
          "or, without a registry, in config.toml:\n"
          "  [model]\n  path = \"Qwen/Qwen2.5-0.5B-Instruct\"   "
          "# a local folder or hub id\n  adapter = \"models/VERSION\"           "
          "# the LoRA adapter from chimein train")
    return 0


if __name__ == "__main__":
    sys.exit(main())
