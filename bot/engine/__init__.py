"""Engine protocol and backends. Heavy libraries (torch, transformers, peft, openvino) are
imported lazily inside the backend modules, never at import time of `bot`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.engine.base import Decision, Engine, EngineError

if TYPE_CHECKING:
    from bot.config import Settings

__all__ = ["Decision", "Engine", "EngineError", "load_engine"]


def load_engine(settings: Settings, version: str | None = None) -> Engine:
    """Build the engine named by `model.backend` from validated settings."""
    if settings.model.registry_dir:  # follow a model registry: load its active version
        from bot.registry import resolve_settings

        settings, version = resolve_settings(settings, version)
    backend = settings.model.backend
    if backend == "transformers":
        from bot.engine.transformers_backend import TransformersEngine

        return TransformersEngine.from_settings(
            settings.model, settings.generation, system_prompt=settings.bot.system_prompt,
            fallback_answer=settings.bot.fallback_answer, version=version)
    if backend == "openvino":
        from bot.engine.openvino_backend import OpenVINOEngine

        return OpenVINOEngine.from_settings(
            settings.model, settings.generation, system_prompt=settings.bot.system_prompt,
            fallback_answer=settings.bot.fallback_answer, version=version)
    if backend == "openai":
        from bot.engine.openai_backend import OpenAIEngine

        return OpenAIEngine.from_settings(
            settings.model, settings.openai, settings.generation,
            system_prompt=settings.bot.system_prompt,
            fallback_answer=settings.bot.fallback_answer)
    raise EngineError(f"model.backend = {backend!r} is not available in this version of "
                      "chimein yet; use backend = 'transformers'")
