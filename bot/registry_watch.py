"""Follow a model registry: which version is active, and switching to it without a restart.

A registry is a folder of versions (`<registry>/<version>/` with a model or a LoRA adapter, its
tokenizer and `metadata.json`) and one `active` file naming the active version, written
atomically by `training.registry`. This module only reads it, so the bot never imports the
training code: `read_active` resolves the pointer, `resolve_settings` turns it into model
settings (used by `bot.engine.load_engine`), and `RegistryWatcher` polls the pointer and, when
it changes (or when an admin says `reload`), loads the new engine on a worker thread and hands
it to `Core.swap_engine`, which switches between two decisions without dropping queued messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from bot.config import Settings
    from bot.core import Core
    from bot.engine.base import Engine

log = logging.getLogger(__name__)

ACTIVE_FILE = "active"
METADATA_FILE = "metadata.json"


class RegistryError(ValueError):
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


def _default_loader(settings: Settings) -> Engine:
    from bot.engine import load_engine

    return load_engine(settings)


class RegistryWatcher:
    """Polls `model.registry_dir` and swaps the core's engine when the active version changes.

    `reload()` is what the admin `reload` command calls: it reloads even when the pointer has
    not changed (a re-exported model in place). Loading runs on a worker thread, never on the
    event loop; a failed load is logged and the old model keeps serving.
    """

    def __init__(self, core: Core, settings: Settings, *, poll_seconds: float | None = None,
                 loader: Callable[[Settings], Engine] | None = None):
        self.core = core
        self.settings = settings
        self.registry_dir = settings.model.registry_dir
        self.poll_seconds = poll_seconds if poll_seconds is not None \
            else settings.model.registry_poll_seconds
        self.loader = loader or _default_loader
        self.current: str | None = getattr(core.engine, "version", None)
        self.swaps = 0
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def active_version(self) -> str | None:
        if not self.registry_dir:
            return None
        active = read_active(self.registry_dir)
        return None if active is None else active.version

    async def check(self) -> bool:
        """Swap if the active version differs from the one serving; True if it swapped."""
        try:
            version = await asyncio.to_thread(self.active_version)
        except RegistryError as e:
            self._error(f"registry unreadable: {e}")
            return False
        if version is None or version == self.current:
            return False
        return await self._load_and_swap(version)

    async def reload(self) -> str:
        """Load the configured model again (the active version when following a registry) and
        swap it in. Returns a line for the admin; never raises on a bad model."""
        ok = await self._load_and_swap(None)
        if ok:
            return f"reloaded: now serving {self.current}"
        return f"reload failed, still serving {self.current}: {self.last_error}"

    async def _load_and_swap(self, wanted: str | None) -> bool:
        async with self._lock:
            if wanted is not None and wanted == self.current:
                return False
            try:
                engine = await asyncio.to_thread(self.loader, self.settings)
            except Exception as e:  # noqa: BLE001 - any load failure leaves the old model
                self._error(f"loading {wanted or 'the model'} failed: {e}")
                return False
            await self.core.swap_engine(engine)
            self.current = engine.version
            self.swaps += 1
            self.last_error = None
            log.info("now serving model version %s", self.current)
            return True

    def _error(self, text: str) -> None:
        if text != self.last_error:
            log.warning("%s", text)
        self.last_error = text

    async def run(self) -> None:
        """Poll forever (cancel the task to stop)."""
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:  # the watcher must outlive any one bad poll
                log.exception("registry poll failed")

    def start(self) -> asyncio.Task[None]:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name="chimein:registry-watch")
        return self._task

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def __aenter__(self) -> Self:
        if self.registry_dir:
            self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
