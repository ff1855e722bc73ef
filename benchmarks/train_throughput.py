"""Training throughput: LoRA on the starter data with packing on and off (and QLoRA).

Prints JSON. Run by hand: `python benchmarks/train_throughput.py [--base MODEL] [--qlora]`.
Compare the ratios within one run, never absolute times across machines.

Every run trains one epoch over the same conversations (rendered by bot.render, loss on the
assistant turns only), so `tokens` is the same real (non-padding) token count each time and
`tokens_per_s` = tokens / training seconds. Without --base a small llama-config model is built
locally (the tests' kind of model, larger); with a real base (a local folder or hub id) on
CUDA this is the number to put next to a GPU: `--device cuda --qlora` adds the 4-bit run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", default=None, help="base model (default: build a small one)")
    p.add_argument("--conversations", type=int, default=64,
                   help="how many starter conversations to train on (default 64)")
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    p.add_argument("--qlora", action="store_true", help="also run with a 4-bit NF4 base")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-seq-len", type=int, default=1024)
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from bot import config
    from training.data import STARTER_DIR, read_file, write_jsonl
    from training.finetune import Hyper, train

    settings = config.Settings()
    examples = read_file(STARTER_DIR / "train.jsonl").examples[: args.conversations]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = root / "train.jsonl"
        write_jsonl(data, examples)
        base = args.base
        if base is None:
            from training.tiny import save_tiny

            texts = [r.get("content") or "" for ex in examples for r in ex.records]
            base = str(save_tiny(root / "base", texts, vocab_size=4000, hidden=args.hidden,
                                 layers=args.layers, heads=8))
        runs = [("lora_packed", {"packing": True}), ("lora_unpacked", {"packing": False})]
        if args.qlora:
            runs.append(("qlora_packed", {"packing": True, "qlora": True}))
        out: dict[str, object] = {
            "base": args.base or f"local llama hidden={args.hidden} layers={args.layers}",
            "device": args.device if args.device != "auto" else
            ("cuda" if torch.cuda.is_available() else "cpu"),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "threads": args.threads, "conversations": len(examples),
            "batch_size": args.batch_size, "max_seq_len": args.max_seq_len,
        }
        for name, flags in runs:
            hp = Hyper.from_settings(settings.training, epochs=1.0, batch_size=args.batch_size,
                                     max_seq_len=args.max_seq_len, eval_steps=10**9, **flags)
            r = train(settings, data=[str(data)], valid=[str(data)], base=base,
                      output=root / name, hp=hp, device=args.device, evaluate_after=False,
                      progress=False)
            out[name] = {"steps": r.steps, "tokens": r.tokens,
                         "seconds": round(r.train_seconds, 2),
                         "tokens_per_s": round(r.tokens / max(r.train_seconds, 1e-9), 1),
                         "final_loss": r.loss_history[-1] if r.loss_history else None}
        packed, unpacked = out["lora_packed"], out["lora_unpacked"]
        assert isinstance(packed, dict) and isinstance(unpacked, dict)
        out["packing_speedup"] = round(packed["tokens_per_s"] / unpacked["tokens_per_s"], 2)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
