"""Merge a LoRA adapter into its base model, and export to OpenVINO IR (int8/int4 weights).

    chimein export --model BASE [--adapter DIR] --output DIR [--openvino] [--weights int8]

The OpenVINO export is stateful (the KV cache lives inside the model as variables, with
OpenVINO's fused attention over it): the `openvino` backend keeps one InferRequest per
conversation and crops a conversation's cache by trimming its state. Older non-stateful IRs
are still served (converted at load, with a warning), but slower.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from bot.engine.base import hub_offline
from bot.errors import ChimeinError

log = logging.getLogger(__name__)

WEIGHTS = ("fp32", "int8", "int4")


class ExportError(ChimeinError, RuntimeError):
    pass


def merge(model_path: str, adapter: str | None, out: Path) -> Path:
    """A plain transformers folder with the adapter's weights merged in (fp32)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local_only = hub_offline()
    p = Path(model_path).expanduser()
    if (model_path.startswith((".", "/", "~")) or p.exists()) and not p.exists():
        raise ExportError(f"cannot load model {model_path!r}: no such folder")
    # a trained adapter folder carries its tokenizer; otherwise the base model's is used
    tok_source = adapter if adapter and (Path(adapter) / "tokenizer_config.json").exists() \
        else model_path
    try:
        tok = AutoTokenizer.from_pretrained(tok_source, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32,
                                                     local_files_only=local_only)
    except (OSError, ValueError) as e:
        raise ExportError(f"cannot load model {model_path!r}: {e}".split("\n")[0]) from e
    if adapter:
        from peft import PeftModel

        if not Path(adapter).exists():
            raise ExportError(f"adapter {adapter!r} does not exist")
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def to_openvino(merged: Path, out: Path, weights: str = "int8", *, stateful: bool = True) -> Path:
    """OpenVINO IR of a merged model in `out`; `stateful=False` writes the old explicit-cache
    form (kept for tests of the backend's support of older exports)."""
    try:
        from optimum.intel import OVModelForCausalLM, OVWeightQuantizationConfig
    except ImportError as e:
        raise ExportError("OpenVINO export needs optimum-intel: pip install "
                          "'chimein[openvino]'") from e
    from transformers import AutoTokenizer

    qconf: Any = None
    if weights == "int8":
        qconf = OVWeightQuantizationConfig(bits=8)
    elif weights == "int4":
        # group_size -1 (per channel) works for any width; 128-wide groups need wide layers
        qconf = OVWeightQuantizationConfig(bits=4, sym=True, group_size=-1, ratio=1.0)
    kwargs: dict[str, Any] = {"export": True, "stateful": stateful, "use_cache": True,
                              "compile": False}
    if qconf is not None:
        kwargs["quantization_config"] = qconf
    else:
        kwargs["load_in_8bit"] = False
    ov = OVModelForCausalLM.from_pretrained(str(merged), **kwargs)
    out.mkdir(parents=True, exist_ok=True)
    ov.save_pretrained(out)
    AutoTokenizer.from_pretrained(str(merged)).save_pretrained(out)
    return out


def cmd_export(args: argparse.Namespace) -> int:
    from bot import config as config_mod

    settings = config_mod.load(args.config)
    model = args.model or settings.model.path
    adapter = args.adapter if args.adapter is not None else (settings.model.adapter or None)
    if not model:
        print("error: give --model (or set model.path)")
        return 2
    out = Path(args.output)
    t0 = time.perf_counter()
    try:
        if args.openvino:
            tmp = out.with_name(out.name + ".merged-tmp")
            merged = merge(model, adapter, tmp)
            to_openvino(merged, out, args.weights)
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            merge(model, adapter, out)
    except ExportError as e:
        print(f"error: {e}")
        return 2
    meta = {"base_model": model, "adapter": adapter, "openvino": args.openvino,
            "weights": args.weights if args.openvino else "fp32",
            "stateful": bool(args.openvino), "time": time.time()}
    (out / "export.json").write_text(json.dumps(meta, indent=2))
    kind = f"OpenVINO IR ({args.weights} weights)" if args.openvino else "merged model"
    print(f"wrote {kind} to {out} in {time.perf_counter() - t0:.1f} s")
    backend = "openvino" if args.openvino else "transformers"
    print(f"use it with: [model] backend = \"{backend}\", path = \"{out}\"")
    return 0


def add_commands(sub: Any) -> None:
    sp = sub.add_parser("export", help="merge a LoRA adapter; export to OpenVINO IR")
    sp.add_argument("--model", default=None, help="base model folder or hub id")
    sp.add_argument("--adapter", default=None, help="LoRA adapter folder to merge")
    sp.add_argument("--output", required=True, help="output folder")
    sp.add_argument("--openvino", action="store_true", help="export OpenVINO IR")
    sp.add_argument("--weights", choices=WEIGHTS, default="int8",
                    help="OpenVINO weight compression (default int8)")
    sp.set_defaults(func=cmd_export)
