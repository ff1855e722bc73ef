"""`chimein train | eval | retrain | models | data check`: the training command group.

`adapters.cli` adds these by explicit calls (`add_commands(sub)`, `add_data_commands(data_sub)`).
Each command is `func(args) -> int`; settings come from `bot.config.load(args.config)`, so the
order is defaults < config file < flags. Heavy libraries are imported inside the functions:
`chimein --help` stays instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _settings(args: argparse.Namespace) -> Any:
    from bot import config

    return config.load(getattr(args, "config", None))


def registry_dir(settings: Any, flag: str | None = None) -> Path:
    """--registry, else model.registry_dir (what the bot follows), else training.output_dir."""
    return Path(flag or settings.model.registry_dir or settings.training.output_dir)


def _err(text: str) -> int:
    print(f"error: {text}", file=sys.stderr)
    return 2


# -- data check ----------------------------------------------------------------------------------
def cmd_data_check(args: argparse.Namespace) -> int:
    """Validate JSONL files; print every problem with its line number, then the stats.

    Exit 0: all lines good; 1: some lines bad (they are skipped by training); 2: nothing usable.
    """
    from training.data import format_stats, read_files, stats

    loaded = read_files(args.files)
    for e in loaded.errors:
        print(f"error: {e}", file=sys.stderr)
    for w in loaded.warnings:
        print(f"warning: {w}", file=sys.stderr)
    renderer = None
    settings = _settings(args)
    tokenizer = args.tokenizer or settings.model.path  # the model the bot serves, if set
    if tokenizer:
        from transformers import AutoTokenizer

        from bot.render import Renderer

        try:
            tok = AutoTokenizer.from_pretrained(tokenizer)
        except (OSError, ValueError) as e:
            return _err(f"cannot load tokenizer {tokenizer!r}: {str(e).splitlines()[0]}")
        renderer = Renderer(tok)
    wake = list(settings.bot.wake_words) + [settings.bot.name]
    s = stats(loaded.examples, renderer=renderer, wake_words=wake)
    if args.json:
        out = s.as_dict()
        out.update(errors=loaded.errors, warnings=loaded.warnings)
        print(json.dumps(out, ensure_ascii=False, indent=2))
    else:
        print(format_stats(s))
        print(f"{len(loaded.errors)} bad line(s) skipped, {len(loaded.warnings)} warning(s)")
    if not loaded.examples:
        return 2
    return 1 if loaded.errors else 0


# -- data synth ----------------------------------------------------------------------------------
def cmd_data_synth(args: argparse.Namespace) -> int:
    """Synthetic conversations from a teacher model on an OpenAI-compatible server.

    Exit 0: OUT holds --n conversations; 1: the teacher's answers kept being rejected;
    2: a setup or server error; 130: interrupted (what was accepted is kept).
    """
    from training.synth import SynthError, options, synthesize

    try:
        result = synthesize(options(args, _settings(args)))
    except SynthError as e:
        return _err(str(e))
    return result.exit_code


# -- train ---------------------------------------------------------------------------------------
def _hyper_flags(sp: argparse.ArgumentParser) -> None:
    g = sp.add_argument_group("hyperparameters (default: the config's [training] section)")
    g.add_argument("--lora-r", type=int, default=None)
    g.add_argument("--lora-alpha", type=int, default=None)
    g.add_argument("--lora-dropout", type=float, default=None)
    g.add_argument("--lr", "--learning-rate", dest="learning_rate", type=float, default=None)
    g.add_argument("--max-grad-norm", type=float, default=None)
    g.add_argument("--warmup-ratio", type=float, default=None)
    g.add_argument("--scheduler", dest="lr_scheduler", default=None,
                   help="learning-rate schedule (default constant_with_warmup)")
    g.add_argument("--epochs", type=float, default=None)
    g.add_argument("--max-steps", type=int, default=None, help="stop after N optimizer steps")
    g.add_argument("--batch-size", type=int, default=None)
    g.add_argument("--grad-accum", type=int, default=None)
    g.add_argument("--max-seq-len", type=int, default=None)
    g.add_argument("--packing", dest="packing", action="store_true", default=None,
                   help="pack several conversations per row (default on)")
    g.add_argument("--no-packing", dest="packing", action="store_false")
    g.add_argument("--gradient-checkpointing", dest="gradient_checkpointing",
                   action="store_true", default=None)
    g.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing",
                   action="store_false")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--eval-steps", type=int, default=None,
                   help="evaluate (and checkpoint) every N steps (default: about four times a run)")
    g.add_argument("--logging-steps", type=int, default=None)
    g.add_argument("--qlora", action="store_true", default=None,
                   help="4-bit NF4 base weights through bitsandbytes (CUDA or x86 CPU)")
    g.add_argument("--from-scratch", choices=("tiny",), default=None,
                   help="train a small tokenizer + model from the data alone (offline demos)")


HYPER_FLAGS = ("lora_r", "lora_alpha", "lora_dropout", "learning_rate", "max_grad_norm",
               "warmup_ratio", "lr_scheduler", "epochs", "max_steps", "batch_size", "grad_accum",
               "max_seq_len", "packing", "gradient_checkpointing", "seed", "eval_steps",
               "logging_steps", "qlora", "from_scratch")


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    """The hyperparameters given on the command line (None: not given)."""
    return {n: getattr(args, n, None) for n in HYPER_FLAGS}


def _hyper(args: argparse.Namespace, settings: Any) -> Any:
    from training.finetune import Hyper

    return Hyper.from_settings(settings.training, **_flags(args))


def cmd_train(args: argparse.Namespace) -> int:
    from training.data import STARTER_DIR
    from training.finetune import TrainError, summary, train
    from training.registry import RegistryError, new_version_dir

    settings = _settings(args)
    if args.base and args.from_scratch:
        return _err("--base and --from-scratch exclude each other: a from-scratch model has "
                    "no base")
    base = args.base or settings.training.base_model or None
    hp = _hyper(args, settings)
    starter_train, starter_valid = STARTER_DIR / "train.jsonl", STARTER_DIR / "valid.jsonl"
    data = args.data or ([str(starter_train)] if starter_train.exists() else [])
    valid = args.valid if args.valid is not None else (
        [str(starter_valid)] if not args.data and starter_valid.exists() else [])
    try:
        if args.output:
            out = Path(args.output)
            if out.exists() and any(out.iterdir()) and not args.resume and not args.force:
                return _err(f"{out} is not empty: pick another --output, add --force to "
                            "train into it anyway, or --resume an interrupted run")
        else:
            out = new_version_dir(registry_dir(settings, args.registry),
                                  "tiny" if hp.from_scratch else None)
        result = train(settings, data=data, valid=valid, output=out, base=base, hp=hp,
                       device=args.device, resume=args.resume or False,
                       keep_checkpoints=args.keep_checkpoints,
                       evaluate_after=not args.no_eval, progress=not args.quiet)
    except (TrainError, RegistryError) as e:
        return _err(str(e))
    print(summary(result))
    if result.report is not None:
        from training.evaluate import format_table

        print(format_table(result.report))
    use = (f"--model {result.output}" if result.kind == "full" else
           f"--model {result.metadata['base_model']} --adapter {result.output}")
    print(f"try it: chimein console {use}\nmake it the active version: chimein models "
          f"activate {result.output.name}"
          + (f" --registry {result.output.parent}" if args.output else ""))
    return 0


# -- eval ----------------------------------------------------------------------------------------
def _resolve_model(args: argparse.Namespace, settings: Any) -> str | None:
    if args.model:
        return str(args.model)
    if settings.model.registry_dir:
        from training.registry import read_active

        active = read_active(settings.model.registry_dir)
        if active is not None:
            return str(active.dir)
    return settings.model.path or None


def _eval_addresses(args: argparse.Namespace, wake_words: Any) -> int:
    """`chimein eval --addresses [FILE ...]`: the address rule alone, per category."""
    from training.address_eval import PUBLIC_SET, evaluate, read_set, table

    rows = []
    for f in args.addresses or [str(PUBLIC_SET)]:
        p = Path(f)
        if not p.is_file():
            return _err(f"no such file: {p}")
        got, errors = read_set(p)
        for e in errors:
            print(f"skipped {e}", file=sys.stderr)
        rows += got
    if not rows:
        return _err("no labelled message to evaluate")
    result = evaluate(rows, wake_words)
    print(json.dumps(result, ensure_ascii=False, indent=2) if args.json else table(result))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from bot import config
    from bot.engine.base import EngineError
    from training.data import STARTER_DIR, read_files
    from training.evaluate import evaluate, format_table, load_engines, plot_pr
    from training.registry import RegistryError

    settings = _settings(args)
    if args.addresses is not None:
        return _eval_addresses(args, settings.bot.wake_words)
    if args.device:
        settings = config.overrides(settings, model={"device": args.device})
    model = _resolve_model(args, settings)
    if not model:
        return _err("no model: pass --model DIR (a registry version, a model folder or a hub "
                    "id) or set model.path / model.registry_dir in the config")
    files = args.data or [str(STARTER_DIR / "valid.jsonl")]
    loaded = read_files(files)
    for e in loaded.errors:
        print(f"skipped {e}", file=sys.stderr)
    examples = loaded.examples[: args.limit] if args.limit else loaded.examples
    if not examples:
        return _err(f"no valid conversation in {', '.join(files)}")
    threshold = args.threshold if args.threshold is not None else settings.policy.threshold
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        engine, base_engine, ctx, version = load_engines(
            settings, model, adapter=args.adapter or "", base=args.base,
            with_base=not args.no_base)
    except (EngineError, RegistryError) as e:
        return _err(str(e))
    wake = list(settings.bot.wake_words) + [settings.bot.name]
    report = evaluate(engine, examples, threshold=threshold, wake_words=wake,
                      model_name=version, base_engine=base_engine, base_context=ctx,
                      data=files, progress=not args.json and not args.quiet)
    if args.plot:
        path = plot_pr(report, args.plot)
        print(f"precision-recall plot: {path}", file=sys.stderr)
    if args.json:
        print(json.dumps(report.as_json(), ensure_ascii=False, indent=2))
    else:
        print(format_table(report))
    return 0


# -- models --------------------------------------------------------------------------------------
def cmd_models_list(args: argparse.Namespace) -> int:
    from training.registry import RegistryError, list_versions

    settings = _settings(args)
    root = registry_dir(settings, args.registry)
    try:
        versions = list_versions(root)
    except RegistryError as e:
        return _err(str(e))
    if args.json:
        print(json.dumps([{"version": v.name, "active": v.active, "dir": str(v.dir),
                           **{k: v.metadata.get(k) for k in ("kind", "base_model", "created")},
                           "metrics": _metric_summary(v.metadata)} for v in versions],
                         ensure_ascii=False, indent=2))
        return 0
    if not versions:
        print(f"no model versions in {root} (train one: chimein train ... or chimein retrain)")
        return 0
    rows = [["", "version", "kind", "created", "bal.acc", "F1", "missed-addr", "base"]]
    for v in versions:
        m = _metric_summary(v.metadata)
        rows.append(["*" if v.active else "", v.name, str(v.metadata.get("kind", "?")),
                     str(v.metadata.get("created", "?")), _fmt(m.get("balanced_accuracy")),
                     _fmt(m.get("f1")), _fmt(m.get("missed_address_rate")),
                     str(v.metadata.get("base_model") or "-")])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    print(f"registry {root}; * = active")
    return 0


def _metric_summary(meta: dict[str, Any]) -> dict[str, Any]:
    m = meta.get("metrics") or {}
    return {k: m.get(k) for k in ("balanced_accuracy", "f1", "missed_address_rate",
                                  "false_interjection_rate")}


def _fmt(x: Any) -> str:
    return "-" if x is None else f"{x:.3f}"


def cmd_models_activate(args: argparse.Namespace) -> int:
    from training.registry import RegistryError, activate

    settings = _settings(args)
    root = registry_dir(settings, args.registry)
    try:
        previous = activate(root, args.version)
    except RegistryError as e:
        return _err(str(e))
    print(f"active version: {args.version} (was {previous or 'none'}) in {root}")
    if not settings.model.registry_dir:
        print(f"note: the bot follows a registry only when model.registry_dir is set "
              f"(registry_dir = \"{root}\")", file=sys.stderr)
    return 0


# -- retrain -------------------------------------------------------------------------------------
def cmd_retrain(args: argparse.Namespace) -> int:
    from training.data import STARTER_DIR
    from training.retrain import RetrainError, retrain

    settings = _settings(args)
    try:
        outcome = retrain(settings, registry=registry_dir(settings, args.registry),
                          exported=args.data or [], from_store=args.data_from_store,
                          base=args.base, flags=_flags(args), device=args.device,
                          starter=not args.no_starter, promote=not args.no_promote,
                          starter_dir=Path(args.starter) if args.starter else STARTER_DIR,
                          progress=not args.quiet and not args.json)
    except RetrainError as e:
        _write_outcome(args.outcome, {"error": str(e)})
        return _err(str(e))
    verdict = outcome.table.rsplit("\n", 1)[-1]  # "PROMOTED: ..." / "NOT PROMOTED: ..."
    _write_outcome(args.outcome, {**outcome.as_json(), "verdict": verdict})
    if args.json:
        print(json.dumps(outcome.as_json(), ensure_ascii=False, indent=2))
    else:
        print(outcome.table)
    return 0 if outcome.promoted or args.no_promote else 3


def _write_outcome(path: str | None, obj: dict[str, Any]) -> None:
    """`--outcome FILE`: how the retrain ended, as JSON, for the bot that started it."""
    if path:
        Path(path).write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")


# -- wiring --------------------------------------------------------------------------------------
def add_commands(sub: Any) -> None:
    """Top-level subcommands: train, eval, retrain, models."""
    sp = sub.add_parser("train", help="fine-tune a model (LoRA/QLoRA, or a tiny one from "
                                      "scratch) on JSONL conversations")
    sp.add_argument("--base", default=None, help="base model folder or hub id "
                                                 "(default: training.base_model)")
    sp.add_argument("--data", nargs="+", default=None, metavar="FILE",
                    help="training JSONL files (default: the starter train set)")
    sp.add_argument("--valid", nargs="+", default=None, metavar="FILE",
                    help="validation JSONL files (default: the starter valid set with the "
                         "starter data, else 10%% of --data)")
    sp.add_argument("--output", default=None, metavar="DIR",
                    help="where the model goes (default: a new version folder in the "
                         "registry, training.output_dir)")
    sp.add_argument("--registry", default=None, metavar="DIR",
                    help="registry folder for the default --output")
    sp.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    sp.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                    help="resume an interrupted run in --output (the latest checkpoint, or "
                         "the one named)")
    sp.add_argument("--keep-checkpoints", action="store_true",
                    help="keep OUTPUT/checkpoints after a successful run")
    sp.add_argument("--force", action="store_true", help="train into a non-empty --output")
    sp.add_argument("--no-eval", action="store_true",
                    help="skip the speak/silence evaluation after training")
    sp.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    _hyper_flags(sp)
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("eval", help="speak/silence metrics of a model against baselines")
    sp.add_argument("--model", default=None, metavar="DIR",
                    help="registry version, model folder or hub id (default: the active "
                         "version of model.registry_dir, else model.path)")
    sp.add_argument("--adapter", default=None, help="a LoRA adapter on top of --model")
    sp.add_argument("--data", nargs="+", default=None, metavar="FILE",
                    help="JSONL conversations (default: the starter valid set)")
    sp.add_argument("--threshold", type=float, default=None,
                    help="speak when p_silence < threshold (default: policy.threshold)")
    sp.add_argument("--base", default=None,
                    help="base model for the prompted baseline (default: from metadata)")
    sp.add_argument("--no-base", action="store_true", help="skip the prompted-base baseline")
    sp.add_argument("--limit", type=int, default=None, help="only the first N conversations")
    sp.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"))
    sp.add_argument("--json", action="store_true", help="print one JSON object")
    sp.add_argument("--plot", default=None, metavar="OUT.png",
                    help="write a precision-recall plot")
    sp.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    sp.add_argument("--addresses", nargs="*", default=None, metavar="FILE",
                    help="instead: precision/recall of the address rule per category on "
                         "labelled messages (default: tests/data/address/messages.jsonl); "
                         "no model needed")
    sp.set_defaults(func=cmd_eval)

    sp = sub.add_parser("retrain", help="export consented conversations, mix with the starter "
                                        "data, train, evaluate, promote if not worse")
    sp.add_argument("--no-store", dest="data_from_store", action="store_false",
                    help="do not export consented conversations from the store (store.path); "
                         "by default they are exported and mixed in")
    sp.add_argument("--data-from-store", dest="data_from_store", action="store_true",
                    default=True, help=argparse.SUPPRESS)  # the default; kept for scripts
    sp.add_argument("--data", nargs="+", default=None, metavar="FILE",
                    help="already exported JSONL conversations to mix in")
    sp.add_argument("--no-starter", action="store_true", help="do not mix in the starter data")
    sp.add_argument("--starter", default=None, metavar="DIR",
                    help="a folder with train.jsonl and valid.jsonl to use as the starter data "
                         "(default: the bundled starter set)")
    sp.add_argument("--base", default=None, help="base model (default: training.base_model, "
                                                 "else the active version's base)")
    sp.add_argument("--registry", default=None, metavar="DIR")
    sp.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    sp.add_argument("--no-promote", action="store_true",
                    help="evaluate and compare, but leave the active version as it is")
    sp.add_argument("--json", action="store_true", help="print one JSON object")
    sp.add_argument("--outcome", default=None, metavar="FILE",
                    help="also write how it ended as JSON to FILE (a running bot reads it)")
    sp.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    _hyper_flags(sp)
    sp.set_defaults(func=cmd_retrain)

    sp = sub.add_parser("models", help="list model versions, activate one (roll back)")
    msub = sp.add_subparsers(dest="models_command", required=True, metavar="SUBCOMMAND")
    lp = msub.add_parser("list", help="versions in the registry, * = active")
    lp.add_argument("--registry", default=None, metavar="DIR")
    lp.add_argument("--json", action="store_true")
    lp.set_defaults(func=cmd_models_list)
    ap = msub.add_parser("activate", help="make VERSION the active one (the bot follows)")
    ap.add_argument("version")
    ap.add_argument("--registry", default=None, metavar="DIR")
    ap.set_defaults(func=cmd_models_activate)


def add_data_commands(data_sub: Any) -> None:
    """`chimein data check FILE...` and `chimein data synth`."""
    sp = data_sub.add_parser("check", help="validate JSONL conversations (line numbers for "
                                           "every problem) and print stats")
    sp.add_argument("files", nargs="+", metavar="FILE")
    sp.add_argument("--tokenizer", default=None, metavar="MODEL",
                    help="count tokens with this model's tokenizer (default: model.path, if set)")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_data_check)

    sp = data_sub.add_parser("synth", help="synthetic conversations from a teacher model on "
                                           "your own OpenAI-compatible server (vLLM, llama.cpp, "
                                           "Ollama)")
    sp.add_argument("--out", required=True, metavar="OUT.jsonl",
                    help="appended to; an existing file counts toward --n (resume)")
    sp.add_argument("--n", type=int, required=True, help="conversations wanted in OUT in all")
    sp.add_argument("--mode", choices=("seed", "free", "mix"), default="seed",
                    help="seed: show 1-2 seed conversations per request (default); free: "
                         "topics and the behaviour spec only; mix: either, at random")
    sp.add_argument("--seeds", default=None, metavar="FILE.jsonl",
                    help="seed conversations (default: the starter train set)")
    sp.add_argument("--topics", default=None, metavar="A,B,C",
                    help="comma-separated domains/topics (default: the starter's domains)")
    sp.add_argument("--language", choices=("en", "zh", "mixed"), default=None,
                    help="only this language (default: en/zh/mixed like the starter data)")
    sp.add_argument("--base-url", default=None, metavar="URL",
                    help="the server's API root (default: [openai] base_url)")
    sp.add_argument("--model", default=None, metavar="NAME",
                    help="the served teacher model (default: [openai] model)")
    sp.add_argument("--temperature", type=float, default=None, help="default 0.9")
    sp.add_argument("--max-tokens", type=int, default=3072, help="per generation")
    sp.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                    help="per request (default: [openai] timeout_seconds)")
    sp.add_argument("--seed", type=int, default=0,
                    help="samples the seeds, topics and behaviours (default 0)")
    sp.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    sp.set_defaults(func=cmd_data_synth)
