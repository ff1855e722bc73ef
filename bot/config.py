"""config.toml + environment -> validated, typed settings.

Parsed and validated once at start-up. Every component receives only its own section (a frozen
dataclass). An error names the key, the bad value and what is allowed; all errors are reported
together so a broken file is fixed in one go. Secrets come from the environment only.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from bot.errors import ChimeinError

DEFAULT_CONFIG = "config.toml"

# Secrets: read from the environment, never from a file in the repo.
SECRET_VARS = ("SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET", "DISCORD_TOKEN")


class ConfigError(ChimeinError, ValueError):
    """One or more problems in the configuration; `errors` lists each one."""

    def __init__(self, errors: list[str], source: str = DEFAULT_CONFIG):
        self.errors = errors
        self.source = source
        super().__init__(f"{source}: " + "; ".join(errors))

    def __str__(self) -> str:
        lines = [f"{len(self.errors)} problem(s) in {self.source}:"]
        lines += [f"  - {e}" for e in self.errors]
        return "\n".join(lines)


def _opt(default: Any = dataclasses.MISSING, *, choices: tuple[Any, ...] | None = None,
         lo: float | None = None, hi: float | None = None, factory: Any = None) -> Any:
    meta = {"choices": choices, "lo": lo, "hi": hi}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class BotSettings:
    name: str = "assistant"
    wake_words: tuple[str, ...] = _opt(factory=lambda: ("assistant", "助手"))
    admins: tuple[str, ...] = ()
    system_prompt: str = ""
    # Text posted instead when an addressed answer comes out empty after markers are stripped.
    fallback_answer: str = "Sorry, I don't have a good answer to that."


@dataclass(frozen=True)
class ModelSettings:
    backend: str = _opt("transformers", choices=("transformers", "openvino", "openai"))
    path: str = ""  # local folder or hub id
    adapter: str = ""  # optional LoRA adapter folder (peft)
    device: str = _opt("auto", choices=("auto", "cpu", "cuda"))
    quantize: str = _opt("none", choices=("none", "nf4"))
    max_context_tokens: int = _opt(2048, lo=64, hi=1_000_000)
    # When the context overflows, drop oldest turns until the history fits in this fraction.
    trim_to: float = _opt(0.45, lo=0.1, hi=0.95)
    registry_dir: str = ""  # if set, load the active version from this registry and follow it
    registry_poll_seconds: float = _opt(10.0, lo=0.5, hi=86400)


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = _opt(200, lo=1, hi=8192)
    temperature: float = _opt(0.7, lo=0.0, hi=5.0)
    top_p: float = _opt(0.9, lo=0.0, hi=1.0)
    top_k: int = _opt(50, lo=0, hi=100_000)
    seed: int | None = None
    # Show answers as they are written (Slack threads, Discord, the console); off: post each
    # answer whole when it is done. Partial text is updated at most every stream_interval_ms.
    stream: bool = True
    stream_interval_ms: int = _opt(1000, lo=50, hi=60_000)


@dataclass(frozen=True)
class OpenAISettings:
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = ""
    api_key_env: str = "OPENAI_API_KEY"
    timeout_seconds: float = _opt(60.0, lo=1, hi=3600)
    # Requests in flight at once (different conversations are decided concurrently), and
    # retries with exponential backoff on 429 / 5xx / connection errors.
    max_concurrency: int = _opt(16, lo=1, hi=1024)
    max_retries: int = _opt(3, lo=0, hi=20)


@dataclass(frozen=True)
class ChannelPolicy:
    mode: str | None = _opt(None, choices=(None, "mention", "semi-active", "always"))
    threshold: float | None = _opt(None, lo=0.0, hi=1.0)
    ambiguous_threshold: float | None = _opt(None, lo=0.0, hi=1.0)


@dataclass(frozen=True)
class PolicySettings:
    mode: str = _opt("semi-active", choices=("mention", "semi-active", "always"))
    threshold: float = _opt(0.5, lo=0.0, hi=1.0)
    dm_mode: str = _opt("always", choices=("mention", "semi-active", "always"))
    cooldown_max_chimeins: int = _opt(3, lo=0, hi=10_000)
    cooldown_window_seconds: float = _opt(600.0, lo=0, hi=86400 * 7)
    # Messages that may be addressed ("ambiguous") and a person's next message right after an
    # answer to them ("follow-up") are decided by the model with this more lenient threshold.
    ambiguous_threshold: float = _opt(0.8, lo=0.0, hi=1.0)
    follow_up_seconds: float = _opt(300.0, lo=0, hi=86400)
    # In one burst (messages that arrived while the model was busy), answer at most this many
    # addresses, and at most this many per person; beyond that the bot says once that it is
    # catching up and who should ask again.
    max_answers_per_batch: int = _opt(8, lo=1, hi=1000)
    max_answers_per_user: int = _opt(3, lo=1, hi=1000)
    channels: dict[str, ChannelPolicy] = _opt(factory=dict)  # noqa: RUF009 - a field()


@dataclass(frozen=True)
class RuntimeSettings:
    max_sessions: int = _opt(256, lo=1, hi=1_000_000)
    max_kv_megabytes: float = _opt(2048.0, lo=1, hi=1_000_000)
    max_message_chars: int = _opt(8000, lo=100, hi=1_000_000)
    queue_size: int = _opt(1000, lo=1, hi=1_000_000)
    # A conversation whose cache must be rebuilt (overflow, eviction, a new thread) is fed in
    # chunks of this many tokens; other conversations' decisions run between chunks.
    recompute_chunk_tokens: int = _opt(256, lo=16, hi=1_000_000)


@dataclass(frozen=True)
class StoreSettings:
    path: str = "data/chimein.sqlite3"
    retention_days: int = _opt(0, lo=0, hi=36500)  # 0 keeps messages until forgotten
    idle_gap_minutes: float = _opt(60.0, lo=1, hi=525600)
    default_logging: bool = False  # channels start with logging off until an admin enables it


@dataclass(frozen=True)
class SlackSettings:
    enabled: bool = False
    mode: str = _opt("socket", choices=("socket", "http"))
    api_base_url: str = "https://slack.com/api/"
    http_host: str = "0.0.0.0"
    http_port: int = _opt(3000, lo=1, hi=65535)
    http_path: str = "/slack/events"
    reply_in_thread: bool = True


@dataclass(frozen=True)
class DiscordSettings:
    enabled: bool = False
    api_base_url: str = ""  # empty: discord.py's default
    gateway_url: str = ""  # empty: ask the API for the gateway
    slash_commands: bool = False


@dataclass(frozen=True)
class TrainingSettings:
    base_model: str = ""
    output_dir: str = "models"
    lora_r: int = _opt(64, lo=1, hi=4096)
    lora_alpha: int = _opt(16, lo=1, hi=8192)
    lora_dropout: float = _opt(0.1, lo=0.0, hi=0.9)
    learning_rate: float = _opt(2e-4, lo=0.0, hi=1.0)
    max_grad_norm: float = _opt(0.3, lo=0.0, hi=1000.0)
    warmup_ratio: float = _opt(0.03, lo=0.0, hi=1.0)
    lr_scheduler: str = "constant_with_warmup"
    epochs: float = _opt(1.0, lo=0.0, hi=1000.0)
    batch_size: int = _opt(4, lo=1, hi=4096)
    grad_accum: int = _opt(1, lo=1, hi=4096)
    max_seq_len: int = _opt(2048, lo=16, hi=1_000_000)
    packing: bool = True
    gradient_checkpointing: bool = False
    seed: int = 42
    allow_slack_data: bool = False  # Slack's API terms restrict training on API data
    promote_margin: float = _opt(0.02, lo=0.0, hi=1.0)


@dataclass(frozen=True)
class Settings:
    bot: BotSettings = field(default_factory=BotSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    openai: OpenAISettings = field(default_factory=OpenAISettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    slack: SlackSettings = field(default_factory=SlackSettings)
    discord: DiscordSettings = field(default_factory=DiscordSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    source: str = field(default="(defaults)", compare=False)

    def secret(self, name: str) -> str | None:
        """A secret from the environment (never from the file)."""
        value = os.environ.get(name, "").strip()
        return value or None

    def require_secret(self, name: str, what: str, instead: str = "") -> str:
        """The secret, or a ConfigError naming the variable; `instead`: the config change
        that makes it unnecessary (default: disabling `what`)."""
        value = self.secret(name)
        if value is None:
            alt = instead or f"disable {what} in the config"
            raise ConfigError([(f"{what} needs the environment variable {name}; set it "
                                f"(export {name}=...) or {alt}")], self.source)
        return value


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is tuple:
        return f"list of {_type_name(get_args(tp)[0])}"
    if origin is dict:
        return "table"
    args = [a for a in get_args(tp) if a is not type(None)]
    if args:
        return " or ".join(_type_name(a) for a in args) + " (or omit)"
    return {str: "string", int: "integer", float: "number", bool: "true/false"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp: Any, key: str, errors: list[str]) -> Any:
    origin = get_origin(tp)
    args = get_args(tp)
    if origin is tuple:
        if not isinstance(value, list):
            errors.append(f"{key} = {value!r} is not allowed: expected a list of "
                          f"{_type_name(args[0])}s, e.g. [{value!r}]")
            return None
        return tuple(_coerce(v, args[0], f"{key}[{i}]", errors) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            errors.append(f"{key} = {value!r} is not allowed: expected a table")
            return None
        return {k: _build(args[1], v, f"{key}.{k}", errors) for k, v in value.items()}
    if args and type(None) in args:  # Optional[X]
        inner = next(a for a in args if a is not type(None))
        return _coerce(value, inner, key, errors)
    if tp is bool:
        if not isinstance(value, bool):
            errors.append(f"{key} = {value!r} is not allowed: expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append(f"{key} = {value!r} is not allowed: expected an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            errors.append(f"{key} = {value!r} is not allowed: expected a number")
            return value
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            errors.append(f"{key} = {value!r} is not allowed: expected a string")
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key, errors)
    return value


def _build(cls: Any, data: Any, prefix: str, errors: list[str]) -> Any:
    if not isinstance(data, dict):
        errors.append(f"[{prefix}] must be a table, got {data!r}")
        return cls()
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else key
        if key not in fields:
            hint = difflib.get_close_matches(key, list(fields), n=1)
            extra = f" (did you mean '{hint[0]}'?)" if hint else ""
            errors.append(f"unknown key {full}{extra}; allowed: {', '.join(sorted(fields))}")
            continue
        f = fields[key]
        n_err = len(errors)
        coerced = _coerce(value, hints[key], full, errors)
        if len(errors) > n_err:
            continue
        meta = f.metadata
        if meta.get("choices") is not None and coerced not in meta["choices"]:
            allowed = ", ".join(repr(c) for c in meta["choices"] if c is not None)
            errors.append(f"{full} = {value!r} is not allowed; allowed: {allowed}")
            continue
        if isinstance(coerced, (int, float)) and not isinstance(coerced, bool):
            lo, hi = meta.get("lo"), meta.get("hi")
            if (lo is not None and coerced < lo) or (hi is not None and coerced > hi):
                errors.append(f"{full} = {value!r} is out of range; allowed: {lo} to {hi}")
                continue
        kwargs[key] = coerced
    return cls(**kwargs)


def parse(data: dict[str, Any], source: str = "(inline)") -> Settings:
    """Validate a parsed TOML document into Settings, or raise ConfigError listing every error."""
    errors: list[str] = []
    settings = _build(Settings, data, "", errors)
    errors += _cross_checks(settings)
    if errors:
        raise ConfigError(errors, source)
    return dataclasses.replace(settings, source=source)


def _cross_checks(s: Settings) -> list[str]:
    errors = []
    if s.model.backend == "openai" and not s.openai.model:
        errors.append("openai.model must name the served model when model.backend = 'openai'")
    if s.model.quantize == "nf4" and s.model.backend != "transformers":
        errors.append("model.quantize = 'nf4' works only with model.backend = 'transformers' "
                      "(OpenVINO quantizes at export time: `chimein export --weights int4`)")
    room = s.model.max_context_tokens - s.generation.max_new_tokens
    if room < 64:
        errors.append(f"model.max_context_tokens = {s.model.max_context_tokens} leaves {room} "
                      f"tokens of history next to generation.max_new_tokens = "
                      f"{s.generation.max_new_tokens}; allowed: at least 64 (raise the first or "
                      "lower the second)")
    for ch in s.policy.channels:  # an empty wake_words is fine: then only mentions address
        if ":" not in ch:
            errors.append(f"policy.channels.{ch}: channel keys look like 'slack:C123' or "
                          f"'discord:123456' (platform:channel)")
    return errors


def load(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read and validate a config file (default: $CHIMEIN_CONFIG or ./config.toml).

    A missing default file gives the defaults; a missing file that was asked for is an error.
    """
    explicit = path is not None or "CHIMEIN_CONFIG" in os.environ
    p = Path(path or os.environ.get("CHIMEIN_CONFIG", DEFAULT_CONFIG))
    if not p.exists():
        if explicit:
            raise ConfigError([(f"config file not found: {p} (copy config.toml from the repo "
                                "or pass --config PATH)")], str(p))
        return Settings()
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"not valid TOML: {e}"], str(p)) from None
    except UnicodeDecodeError as e:
        raise ConfigError([f"not UTF-8 text: {e}"], str(p)) from None
    return parse(data, str(p))


def overrides(settings: Settings, **sections: dict[str, Any]) -> Settings:
    """A copy with some keys replaced (command-line flags), validated the same way."""
    merged = dataclasses.asdict(settings)
    merged.pop("source", None)
    for name, values in sections.items():
        merged[name].update({k: v for k, v in values.items() if v is not None})
    # asdict turned tuples into tuples and nested dataclasses into dicts: make TOML-shaped again
    def _plain(o: Any) -> Any:
        if isinstance(o, tuple):
            return [_plain(x) for x in o]
        if isinstance(o, dict):
            return {k: _plain(v) for k, v in o.items() if v is not None}
        return o
    return parse(_plain(merged), settings.source)


def to_dict(settings: Settings) -> dict[str, Any]:
    d = dataclasses.asdict(settings)
    d.pop("source", None)
    return d
