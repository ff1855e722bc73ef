"""The model registry's format, as the runtime reads it.

A registry is a folder of versions (`<registry>/<version>/` with a model or a LoRA adapter, its
tokenizer and `metadata.json`) and one `active` file naming the active version, written
atomically by `training.registry`. This module only reads it, so the bot never imports the
training code: `read_active` resolves the pointer and `resolve_settings` turns it into model
settings (used by `bot.engine.load_engine`). Following the pointer while the bot runs is
`adapters.registry_watch.RegistryWatcher`'s job.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.errors import ChimeinError

if TYPE_CHECKING:
    from bot.config import Settings

log = logging.getLogger(__name__)

ACTIVE_FILE = "active"
METADATA_FILE = "metadata.json"


class RegistryError(ChimeinError, ValueError):
    """The registry folder or its active pointer is unusable; the message says why."""


@dataclass(frozen=True)
class ActiveModel:
    """What the active pointer resolves to: `path` (+ `adapter` for a LoRA version)."""

    version: str
    dir: Path
    path: str
    adapter: str = ""


def _valid_name(version: str) -> bool:
    return bool(version) and version not in (".", "..") and "/" not in version \
        and "\\" not in version and not version.startswith(".")


def adapter_base(folder: Path, meta: dict[str, Any]) -> str:
    """The base model of a LoRA adapter folder: metadata.json's, else adapter_config.json's
    `base_model_name_or_path`; "" when neither says."""
    base = str(meta.get("base_model") or "")
    if not base:
        try:
            cfg = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
            base = str(cfg.get("base_model_name_or_path") or "")
        except (OSError, ValueError):
            base = ""
    return base


def resolve_version(registry_dir: str | Path, version: str) -> ActiveModel:
    """A version folder -> the model path and adapter to load."""
    root = Path(registry_dir)
    if not _valid_name(version):
        raise RegistryError(f"{version!r} is not a version name")
    vdir = root / version
    if not vdir.is_dir():
        raise RegistryError(f"{root}: version {version!r} does not exist")
    meta: dict[str, Any] = {}
    meta_file = vdir / METADATA_FILE
    if meta_file.exists():
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise RegistryError(f"{meta_file}: unreadable metadata ({e})") from None
        if not isinstance(meta, dict):
            raise RegistryError(f"{meta_file}: metadata must be a JSON object")
    if (vdir / "adapter_config.json").exists():
        base = adapter_base(vdir, meta)
        if not base:
            raise RegistryError(f"{vdir}: a LoRA adapter without a base model in "
                                f"{METADATA_FILE} or adapter_config.json")
        return ActiveModel(version, vdir, base, str(vdir))
    if (vdir / "config.json").exists():
        return ActiveModel(version, vdir, str(vdir))
    raise RegistryError(f"{vdir}: neither a model (config.json) nor a LoRA adapter "
                        "(adapter_config.json)")


def read_active(registry_dir: str | Path) -> ActiveModel | None:
    """The active version of a registry, or None when nothing is active yet."""
    root = Path(registry_dir)
    if not root.exists():
        raise RegistryError(f"model.registry_dir {str(root)!r} does not exist")
    pointer = root / ACTIVE_FILE
    try:
        version = pointer.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise RegistryError(f"{pointer}: cannot read ({e})") from None
    if not version:
        return None
    return resolve_version(root, version)


def resolve_settings(settings: Settings, version: str | None = None
                     ) -> tuple[Settings, str | None]:
    """Settings whose model.path/adapter point at the registry's active version.

    With no active version the settings are returned unchanged (model.path is used), unless
    model.path is empty too, which is an error that says what to do.
    """
    from bot.engine.base import EngineError

    try:
        active = read_active(settings.model.registry_dir)
    except RegistryError as e:
        raise EngineError(str(e)) from None
    if active is None:
        if not settings.model.path:
            raise EngineError(f"model.registry_dir {settings.model.registry_dir!r} has no "
                              "active version yet and model.path is empty: train one "
                              "(`chimein train` / `chimein retrain`) and `chimein models "
                              "activate VERSION`, or set model.path")
        return settings, version
    model = dataclasses.replace(settings.model, path=active.path, adapter=active.adapter)
    return dataclasses.replace(settings, model=model), version or active.version
