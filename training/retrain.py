"""`chimein retrain`: consented conversations + starter data -> a new version, promoted only if
it is not worse than the active one on the same validation sets.

1. Export consented conversations (from the store at store.path unless --no-store, and any
   already exported JSONL files given with --data) into a temporary folder; split 10% off for validation, stratified by language. The copies are
   deleted afterwards: only their hashes and counts go into metadata.json, so `forget` in the
   store is not undone by a stray copy in the models folder.
2. Train a new version on starter train + exported train. The store's export is then marked
   used: `forget` stops editing it (it is in a model now; the next retrain retires that model).
3. Evaluate the new version and the active one on starter valid + exported valid.
4. Gate: balanced accuracy not below the active one's by more than training.promote_margin,
   missed-address rate not higher. Promote (atomically switch `active`) only if it passes;
   print the comparison table either way.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.errors import ChimeinError
from training.data import STARTER_DIR, Example, read_files, sha256_file, split, write_jsonl

log = logging.getLogger(__name__)


class RetrainError(ChimeinError, RuntimeError):
    """Retraining cannot run; the message says what to change."""


@dataclass
class Outcome:
    version: str
    promoted: bool
    reasons: list[str]
    new_metrics: dict[str, Any]
    active_version: str | None
    active_metrics: dict[str, Any] | None
    table: str
    exported: int
    data: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"version": self.version, "promoted": self.promoted, "gate": self.reasons,
                "new": self.new_metrics, "active_version": self.active_version,
                "active": self.active_metrics, "exported_conversations": self.exported,
                "data": self.data}


def export_from_store(settings: Any, out: Path) -> int:
    """Consented conversations from the store into `out` (JSONL); returns how many."""
    import asyncio

    import bot.store

    return asyncio.run(bot.store.export_jsonl(settings, out))


def mark_export_used(settings: Any, path: Path) -> int:
    """Tell the store that an export went into training (see `Store.mark_export_used`)."""
    import asyncio

    from bot.store import Store

    async def _run() -> int:
        async with Store.from_settings(settings.store) as store:
            return await store.mark_export_used(path)

    return asyncio.run(_run())


def _load(paths: Sequence[str | Path]) -> list[Example]:
    loaded = read_files(paths)
    for e in loaded.errors:
        print(f"skipped {e}", file=sys.stderr)
    return loaded.examples


def retrain(settings: Any, *, registry: Path, exported: Sequence[str] = (),
            from_store: bool = False, base: str | None = None, hp: Any = None,
            flags: dict[str, Any] | None = None, device: str = "auto", starter: bool = True,
            promote: bool = True, starter_dir: Path = STARTER_DIR, progress: bool = True
            ) -> Outcome:
    """`hp`: the hyperparameters as they are; or `flags`: the ones given on the command line
    (None = not given), over the config's [training] section, and, when the active version
    is a from-scratch model, over its recipe (the tiny preset and its size)."""
    from training import registry as reg
    from training.evaluate import evaluate, format_table, load_engines
    from training.finetune import Hyper, TrainError, train

    given = {k: v for k, v in (flags or {}).items() if v is not None}
    hp = hp or Hyper.from_settings(settings.training, **given)
    try:
        active_name = reg.active(registry)
    except reg.RegistryError as e:
        raise RetrainError(str(e)) from None
    active_meta = reg.read_metadata(registry / active_name) if active_name else {}
    if not base and not hp.from_scratch:
        base = settings.training.base_model or None
        if not base and active_meta:
            if active_meta.get("from_scratch"):
                # the same recipe as the active model (the preset's learning rate, epochs and
                # its size), not LoRA's defaults; flags given explicitly still win
                recorded = active_meta.get("hyperparameters") or {}
                size = {k: recorded[k] for k in ("vocab_size", "hidden", "layers", "heads")
                        if recorded.get(k)}
                hp = Hyper.from_settings(settings.training, **{
                    **size, **given, "from_scratch": active_meta["from_scratch"]})
            else:
                base = active_meta.get("base_model") or None
        if not base and not hp.from_scratch:
            raise RetrainError("no base model: set training.base_model in the config or pass "
                               "--base MODEL (or --from-scratch tiny)")

    with tempfile.TemporaryDirectory(prefix="chimein-retrain-") as tmp:
        tmpdir = Path(tmp)
        sources: list[str | Path] = list(exported)
        dump: Path | None = None
        if from_store and not Path(settings.store.path).exists():
            print(f"no message store at {settings.store.path} yet: nothing logged to export "
                  "(training on the other data only)", file=sys.stderr)
        elif from_store:
            dump = tmpdir / "store-export.jsonl"
            n = export_from_store(settings, dump)
            print(f"exported {n} consented conversation(s) from the store", file=sys.stderr)
            sources.append(dump)
        new_examples = _load(sources) if sources else []
        if not new_examples and not starter:
            raise RetrainError("nothing to train on: no exported conversations and "
                               "--no-starter")
        ex_train, ex_valid = split(new_examples, 0.1, hp.seed)
        train_files: list[str] = []
        valid_files: list[str] = []
        if starter:
            for f, dest in ((starter_dir / "train.jsonl", train_files),
                            (starter_dir / "valid.jsonl", valid_files)):
                if not f.exists():
                    raise RetrainError(f"the starter data {f} is missing (the bundled set is "
                                       "built by python -m training.starter.build)")
                dest.append(str(f))
        if ex_train:
            write_jsonl(tmpdir / "exported-train.jsonl", ex_train)
            train_files.append(str(tmpdir / "exported-train.jsonl"))
        if ex_valid:
            write_jsonl(tmpdir / "exported-valid.jsonl", ex_valid)
            valid_files.append(str(tmpdir / "exported-valid.jsonl"))
        data_record = {
            "exported": [{"path": str(p), "sha256": sha256_file(p)} for p in sources
                         if Path(p).exists()],
            "exported_train": len(ex_train), "exported_valid": len(ex_valid),
            "starter": starter,
        }
        out = reg.new_version_dir(registry, "retrain")
        try:
            result = train(settings, data=train_files, valid=valid_files, output=out,
                           base=base, hp=hp, device=device, evaluate_after=False,
                           progress=progress)
        except TrainError as e:
            raise RetrainError(str(e)) from e
        if dump is not None:  # now in a model: `forget` can no longer edit it, retraining can
            mark_export_used(settings, dump)
        valid_examples = _load(valid_files)
        data_record["train_seconds"] = round(result.train_seconds, 2)

    if not valid_examples:
        raise RetrainError("no validation conversations to compare on")
    wake = list(settings.bot.wake_words) + [settings.bot.name]
    threshold = settings.policy.threshold
    engine, base_engine, ctx, _ = load_engines(settings, str(out))
    new_report = evaluate(engine, valid_examples, threshold=threshold, wake_words=wake,
                          model_name=out.name, base_engine=base_engine, base_context=ctx,
                          data=["validation sets"], progress=progress)
    engine.close()
    active_report = None
    if active_name:
        a_engine, _, _, _ = load_engines(settings, str(registry / active_name),
                                         with_base=False)
        active_report = evaluate(a_engine, valid_examples, threshold=threshold,
                                 wake_words=wake, model_name=active_name, progress=progress)
        a_engine.close()
    new_metrics = new_report.as_json()
    active_metrics = active_report.as_json() if active_report else None
    verdict = reg.gate(new_metrics, active_metrics, settings.training.promote_margin)
    promoted = verdict.promote and promote
    if promoted:
        reg.activate(registry, out.name)
    reg.update_metadata(out, metrics=new_metrics, retrain=data_record,
                        gate={"passed": verdict.promote, "reasons": verdict.reasons,
                              "compared_with": active_name, "promoted": promoted})
    extra = {}
    if active_report is not None:
        extra = {f"active: {active_name}": active_report.main}
    table = format_table(new_report, extra, model_label=f"new: {out.name}")
    verdict_line = ("PROMOTED: " + out.name + " is now active" if promoted else
                    f"NOT PROMOTED: {out.name} stays inactive"
                    + ("" if verdict.promote else " (the gate refused it)"))
    table += "\n" + "\n".join(f"gate: {r}" for r in verdict.reasons) + "\n" + verdict_line
    return Outcome(out.name, promoted, verdict.reasons, new_metrics, active_name,
                   active_metrics, table, len(new_examples), data_record)
