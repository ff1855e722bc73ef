"""chimein: a self-hosted assistant for group chats (Slack, Discord, the console).

The command line is a driving adapter, the outermost ring. Subcommands owned by other modules are added by explicit calls below (no plugin registry):
`training.cli.add_commands` (train, eval, retrain, models, data check / synth),
`training.export.add_commands` (export) and `adapters.data_cli.add_data_commands` (data export,
stats, forget). Heavy imports happen inside the command functions, so `chimein --help` and
`chimein config check` are instant.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from typing import Any

from adapters import data_cli
from bot import config as config_mod
from bot.errors import ChimeinError
from bot.wiring import quiet_libraries
from training import cli as training_cli
from training import export

log = logging.getLogger("chimein")


def _settings(args: argparse.Namespace, **model_overrides: Any) -> config_mod.Settings:
    settings = config_mod.load(args.config)
    model = {k: v for k, v in model_overrides.items() if v is not None}
    if model:
        settings = config_mod.overrides(settings, model=model)
    return settings


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    quiet_libraries()


# -- config check -----------------------------------------------------------------------
def cmd_config_check(args: argparse.Namespace) -> int:
    path = args.file or args.config
    try:
        settings = config_mod.load(path)
    except config_mod.ConfigError as e:
        print(str(e), file=sys.stderr)
        return 2
    print(f"# resolved settings from {settings.source}")
    print(json.dumps(config_mod.to_dict(settings), indent=2, ensure_ascii=False, default=list))
    missing = []
    if settings.slack.enabled:
        need = ["SLACK_BOT_TOKEN"] + (["SLACK_APP_TOKEN"] if settings.slack.mode == "socket"
                                      else ["SLACK_SIGNING_SECRET"])
        missing += [v for v in need if not settings.secret(v)]
    if settings.discord.enabled and not settings.secret("DISCORD_TOKEN"):
        missing.append("DISCORD_TOKEN")
    for v in missing:
        print(f"warning: environment variable {v} is not set (needed by an enabled adapter)",
              file=sys.stderr)
    print("config ok" + (" (with missing secrets)" if missing else ""), file=sys.stderr)
    return 0


# -- console ----------------------------------------------------------------------------
def cmd_console(args: argparse.Namespace) -> int:
    from adapters.console import run_console

    settings = _settings(args, path=args.model, adapter=args.adapter)
    return asyncio.run(run_console(settings, store_path=args.store))


# -- replay -----------------------------------------------------------------------------
def cmd_replay(args: argparse.Namespace) -> int:
    from bot.replay import replay_file

    settings = _settings(args, path=args.model, adapter=args.adapter)
    if args.threshold is not None:
        settings = config_mod.overrides(settings, policy={"threshold": args.threshold})
    return asyncio.run(replay_file(settings, args.file, as_json=args.json, history=args.history,
                                   limit=args.limit))


# -- run --------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from adapters.run import run_all

    settings = _settings(args, path=args.model, adapter=args.adapter)
    return asyncio.run(run_all(settings))


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chimein", description=__doc__.split("\n")[0])
    p.add_argument("--config", default=None,
                   help="config file (default: $CHIMEIN_CONFIG or ./config.toml)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def model_flags(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--model", default=None, help="model folder or hub id (model.path)")
        sp.add_argument("--adapter", default=None, help="LoRA adapter folder (model.adapter)")

    sp = sub.add_parser("console", help="a group chat in the terminal (type 'alice: hi')")
    model_flags(sp)
    sp.add_argument("--store", default=None,
                    help="SQLite file for consent/logging commands (default: none, nothing "
                         "is stored)")
    sp.set_defaults(func=cmd_console)

    sp = sub.add_parser("replay", help="run a JSONL conversation file through the bot")
    sp.add_argument("file")
    model_flags(sp)
    sp.add_argument("--json", action="store_true", help="one JSON object per user turn")
    sp.add_argument("--history", choices=("live", "gold"), default="live",
                    help="live: the bot's own decisions join the history (as in production); "
                         "gold: the file's assistant turns do (for evaluation)")
    sp.add_argument("--threshold", type=float, default=None, help="override policy.threshold")
    sp.add_argument("--limit", type=int, default=None, help="only the first N conversations")
    sp.set_defaults(func=cmd_replay)

    sp = sub.add_parser("run", help="start every adapter enabled in the config")
    model_flags(sp)
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("config", help="configuration tools")
    csub = sp.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    cp = csub.add_parser("check", help="validate a config file and print resolved settings")
    cp.add_argument("file", nargs="?", default=None)
    cp.set_defaults(func=cmd_config_check)

    dp = sub.add_parser("data", help="datasets and the message store")
    dsub = dp.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    # The other command groups, joined explicitly (their heavy imports stay inside them).
    data_cli.add_data_commands(dsub)
    training_cli.add_data_commands(dsub)
    training_cli.add_commands(sub)
    export.add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = make_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except config_mod.ConfigError as e:
        print(str(e), file=sys.stderr)  # every problem, one a line
        return 2
    except ChimeinError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130

if __name__ == "__main__":
    sys.exit(main())
