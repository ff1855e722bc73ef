"""Versioned model folders, the promotion gate, and the `active` pointer the bot follows.

```
models/
  active                      one line: the active version (replaced atomically)
  20250301-142233/            a version: adapter (or full model) + tokenizer + metadata.json
  tiny-demo/
```
`metadata.json` records the base model, the data files and their sha256, the hyperparameters,
the metrics on the validation set and when it was made. The running bot reads the pointer
through `bot.registry` (no training imports there) and switches when it changes.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bot.registry import (
    ACTIVE_FILE,
    METADATA_FILE,
    RegistryError,
    adapter_base,
    read_active,
    resolve_version,
)

log = logging.getLogger(__name__)

__all__ = [
    "ACTIVE_FILE",
    "METADATA_FILE",
    "GateResult",
    "RegistryError",
    "Version",
    "activate",
    "active",
    "describe_model",
    "gate",
    "list_versions",
    "new_version_dir",
    "read_active",
    "read_metadata",
    "resolve_version",
    "write_metadata",
]


@dataclass(frozen=True)
class Version:
    name: str
    dir: Path
    metadata: dict[str, Any]
    active: bool = False


@dataclass(frozen=True)
class GateResult:
    """The promotion decision and every reason behind it."""

    promote: bool
    reasons: list[str] = field(default_factory=list)


def _write_atomic(path: Path, text: str) -> None:
    """Write via a temp file in the same folder and rename: readers see old or new, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def new_version_dir(root: str | Path, label: str | None = None) -> Path:
    """Create and return a fresh version folder: `<UTC time>[-label]`, never an existing one."""
    base = Path(root)
    base.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    name = f"{stamp}-{label}" if label else stamp
    for i in range(1000):
        cand = base / (name if i == 0 else f"{name}-{i + 1}")
        try:
            cand.mkdir()
            return cand
        except FileExistsError:
            continue
    raise RegistryError(f"{base}: cannot find a free version name for {name}")


def write_metadata(version_dir: str | Path, metadata: dict[str, Any]) -> Path:
    path = Path(version_dir) / METADATA_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, json.dumps(metadata, indent=2, ensure_ascii=False, default=str) + "\n")
    return path


def read_metadata(version_dir: str | Path) -> dict[str, Any]:
    path = Path(version_dir) / METADATA_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise RegistryError(f"{path}: unreadable metadata ({e})") from None
    return data if isinstance(data, dict) else {}


def update_metadata(version_dir: str | Path, **fields: Any) -> dict[str, Any]:
    meta = read_metadata(version_dir)
    meta.update(fields)
    write_metadata(version_dir, meta)
    return meta


def active(root: str | Path) -> str | None:
    """The active version's name (None when nothing is active or the folder is missing)."""
    if not Path(root).exists():
        return None
    got = read_active(root)
    return None if got is None else got.version


def list_versions(root: str | Path) -> list[Version]:
    """Every version folder (one with a model or adapter), oldest first."""
    base = Path(root)
    if not base.exists():
        return []
    try:
        current = active(base)
    except RegistryError:
        current = None
    out = []
    for d in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not ((d / "config.json").exists() or (d / "adapter_config.json").exists()):
            continue
        try:
            meta = read_metadata(d)
        except RegistryError as e:
            meta = {"error": str(e)}
        out.append(Version(d.name, d, meta, d.name == current))
    out.sort(key=lambda v: (str(v.metadata.get("created", "")), v.name))
    return out


def activate(root: str | Path, version: str) -> str | None:
    """Point `active` at `version` atomically; returns the previously active version."""
    base = Path(root)
    resolve_version(base, version)  # raises RegistryError when the folder is not a model
    try:
        previous = active(base)
    except RegistryError:
        previous = None
    _write_atomic(base / ACTIVE_FILE, version + "\n")
    update_metadata(base / version, activated=_now())
    log.info("active model version: %s (was %s)", version, previous)
    return previous


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def gate(new: dict[str, Any], current: dict[str, Any] | None, margin: float) -> GateResult:
    """Promote only if balanced accuracy is not below the current one's by more than `margin`
    and the missed-address rate is not higher. With nothing active, any model passes."""
    if not current:
        return GateResult(True, ["no active version to compare with"])
    reasons = []
    ok = True
    nb, cb = new.get("balanced_accuracy"), current.get("balanced_accuracy")
    if nb is None or cb is None:
        ok = False
        reasons.append("balanced accuracy missing: cannot compare")
    elif nb < cb - margin:
        ok = False
        reasons.append(f"balanced accuracy {nb:.4f} is below the active {cb:.4f} by more than "
                       f"the margin {margin:g}")
    else:
        reasons.append(f"balanced accuracy {nb:.4f} vs active {cb:.4f} (margin {margin:g}): ok")
    nm, cm = new.get("missed_address_rate"), current.get("missed_address_rate")
    if nm is None and cm is None:
        reasons.append("no addressed turns in the validation data")
    elif nm is None or cm is None:
        ok = False
        reasons.append("missed-address rate missing: cannot compare")
    elif nm > cm + 1e-12:
        ok = False
        reasons.append(f"missed-address rate {nm:.4f} is higher than the active {cm:.4f}")
    else:
        reasons.append(f"missed-address rate {nm:.4f} vs active {cm:.4f}: ok")
    return GateResult(ok, reasons)


@dataclass(frozen=True)
class ModelRef:
    """How to load something the user named with --model."""

    path: str  # model folder or hub id
    adapter: str  # LoRA adapter folder, or ""
    version: str  # a name for tables and decision records
    base: str  # the base model, for the prompted-base baseline ("" if unknown)
    metadata: dict[str, Any]


def describe_model(name: str) -> ModelRef:
    """A registry version folder, a model folder, an adapter folder or a hub id -> ModelRef."""
    p = Path(name).expanduser()
    if p.is_dir():
        meta = read_metadata(p)
        if (p / "adapter_config.json").exists():
            base = adapter_base(p, meta)
            if not base:
                raise RegistryError(f"{p}: a LoRA adapter whose base model is unknown; pass "
                                    "--base MODEL")
            return ModelRef(base, str(p), p.name, base, meta)
        base = str(meta.get("baseline_model") or meta.get("base_model") or "")
        if base and (p / base).is_dir():
            base = str(p / base)  # a path inside the version folder (the from-scratch init)
        elif base and not Path(base).exists() and base.startswith((".", "/", "~")):
            base = ""
        return ModelRef(str(p), "", p.name, base, meta)
    return ModelRef(name, "", name.rstrip("/").split("/")[-1], name, {})
