"""`chimein data export | stats | forget`: the message store from the command line.

    chimein data export OUT.jsonl        consented conversations, PII scrubbed, for training
    chimein data stats [--json]          what is stored, per channel and per user
    chimein data forget --user ID        delete everything of one user (ID: platform:user_id)

The store is the file at `store.path` in the config (`--config`). These commands may run while
the bot runs: the store is in WAL mode and waits for the bot's writer instead of failing.

`forget` exits 0 only when the user's data is gone from the tables AND from the file's bytes
(the WAL checkpointed and truncated); 3 when it is gone from the tables but another program
holds the file in a read for longer than `--wait` (the removal from disk then finishes as soon
as the file is free: in a running bot within a minute, else in the next chimein that opens
the store); 1 when an export file could not be cleaned; 2 on an error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from bot import config as config_mod

FORGET_WAIT_S = 30.0
EXIT_PENDING = 3  # forgotten in the tables; the file's bytes follow when it is free


def add_data_commands(data_sub: Any) -> None:
    """Add `export`, `stats` and `forget` under `chimein data` (explicit wiring in adapters.cli)."""
    sp = data_sub.add_parser("export", help="export consented conversations from the store "
                                            "(JSONL, PII scrubbed)")
    sp.add_argument("out", metavar="OUT.jsonl", help="file to write (replaced atomically)")
    _store_flag(sp)
    sp.set_defaults(func=cmd_export)

    sp = data_sub.add_parser("stats", help="what the store holds, per channel and user")
    sp.add_argument("--json", action="store_true", help="print JSON instead of tables")
    _store_flag(sp)
    sp.set_defaults(func=cmd_stats)

    sp = data_sub.add_parser("forget", help="delete everything the store holds of one user "
                                            "(admins)")
    sp.add_argument("--user", required=True, metavar="ID",
                    help="platform:user_id (e.g. slack:U012ABC); a bare id matches every "
                         "platform")
    sp.add_argument("--wait", type=float, default=FORGET_WAIT_S, metavar="SECONDS",
                    help="how long to keep trying to remove the data from the file's bytes "
                         "while another program reads the store (default: %(default)g)")
    _store_flag(sp)
    sp.set_defaults(func=cmd_forget)


def _store_flag(sp: Any) -> None:
    sp.add_argument("--store", default=None, metavar="FILE",
                    help="the SQLite store (default: store.path from the config), e.g. the "
                         "file given to `chimein console --store`")


def _load(args: Any) -> config_mod.Settings:
    """The config, with --store in place of store.path when given."""
    settings = config_mod.load(args.config)
    if getattr(args, "store", None):
        settings = config_mod.overrides(settings, store={"path": args.store})
    return settings


def _store_path(settings: config_mod.Settings) -> Path | None:
    path = Path(settings.store.path)
    if not path.exists():
        print(f"no store at {path}: nothing has been logged yet (set store.path in the "
              "config, and have an admin turn logging on in a channel)", file=sys.stderr)
        return None
    return path


def cmd_export(args: argparse.Namespace) -> int:
    settings = _load(args)
    if _store_path(settings) is None:
        return 1
    from bot.store import ExportStats, StoreError, export_jsonl

    t0 = time.perf_counter()
    stats = ExportStats()
    try:
        n = asyncio.run(export_jsonl(settings, args.out, stats=stats))
    except StoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot write {args.out}: {e}", file=sys.stderr)
        return 2
    notes = []
    if stats.skipped_slack > 0:
        notes.append(f"{stats.skipped_slack} Slack conversation(s) left out: "
                     "training.allow_slack_data is off")
    if stats.cut_messages > 0:
        notes.append(f"{stats.cut_messages} message(s) longer than runtime.max_message_chars "
                     f"({settings.runtime.max_message_chars}) cut as the model sees them")
    print(f"exported {n} conversation segment(s) to {args.out} in "
          f"{time.perf_counter() - t0:.1f}s" + "".join(f" ({x})" for x in notes),
          file=sys.stderr)
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    settings = _load(args)
    if _store_path(settings) is None:
        return 1
    from bot.store import Store, StoreError

    async def run() -> dict[str, Any]:
        async with Store.from_settings(settings.store) as store:
            return await store.stats()

    try:
        stats = asyncio.run(run())
    except StoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(stats, indent=2, ensure_ascii=False))
        return 0
    print(format_stats(stats))
    return 0


def _day(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d", time.localtime(ts))


def format_stats(stats: dict[str, Any]) -> str:
    """The stats as plain-text tables."""
    t = stats["totals"]
    lines = [(f"store {stats['path']} (schema v{stats['schema']}): {t['messages']} message(s), "
              f"{t['bot_turns']} bot turn(s), {t['decisions']} decision(s), {t['reactions']} "
              f"reaction(s), {t['opted_in_users']} opted-in user(s)"), "",
             (f"{'channel':<32} {'logging':<7} {'mode':<11} {'msgs':>7} {'users':>5} "
              f"{'bot':>5} {'gaps':>6} {'decided':>7} {'spoke':>6}  first       last")]
    for c in stats["channels"]:
        lines.append(f"{c['channel'][:32]:<32} {'on' if c['logging'] else 'off':<7} "
                     f"{c['mode'] or '-':<11} {c['messages']:>7} {c['users']:>5} "
                     f"{c['bot_turns']:>5} {c['gaps']:>6} {c['decisions']:>7} {c['spoke']:>6}  "
                     f"{_day(c['first']):<11} {_day(c['last'])}")
    lines += ["", f"{'user':<32} {'name':<20} {'consent':<8} {'msgs':>7}  first       last"]
    for u in stats["users"]:
        consent = {True: "in", False: "out", None: "-"}[u["opted_in"]]
        lines.append(f"{u['user'][:32]:<32} {(u['name'] or '-')[:20]:<20} {consent:<8} "
                     f"{u['messages']:>7}  {_day(u['first']):<11} {_day(u['last'])}")
    if stats["model_versions"]:
        lines += ["", "model versions: " + ", ".join(
            f"{v['version']} ({v['decisions']} decisions)" for v in stats["model_versions"])]
    return "\n".join(lines)


def cmd_forget(args: argparse.Namespace) -> int:
    settings = _load(args)
    if _store_path(settings) is None:
        return 1
    from bot.store import Store, StoreError

    user = args.user.strip()
    platform: str | None = None
    if ":" in user:
        platform, user = user.split(":", 1)
    if not user:
        print("error: --user needs an id, e.g. slack:U012ABC", file=sys.stderr)
        return 2

    async def run() -> Any:
        async with Store.from_settings(settings.store) as store:
            return await store.forget(user, platform, wait=max(args.wait, 0.0))

    try:
        r = asyncio.run(run())
    except StoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    who = f"{platform}:{user}" if platform else f"{user} (every platform)"
    done = "forgot" if r.on_disk else "forgot in the tables (NOT yet on disk, see below)"
    print(f"{done} {who}: {r.messages} message(s), {r.bot_turns} bot answer(s) to them, "
          f"{r.reactions} reaction(s), consent record {'removed' if r.consent_removed else 'none'}"
          f", {r.export_segments} conversation(s) removed from {len(r.export_files)} export "
          "file(s) not yet used for training")
    for err in r.export_errors:
        print(f"warning: export file not cleaned: {err}", file=sys.stderr)
    if not r.on_disk:
        print(f"pending: removed from every table of {settings.store.path}, but NOT yet from the "
              f"file's bytes: another program has been reading the store for the last "
              f"{args.wait:g}s (an export, a sqlite3 shell, another chimein), so the old pages "
              "stay until it lets go. chimein finishes it as soon as the file is free: a "
              "running bot within a minute, otherwise the next chimein command that opens the "
              "store (e.g. `chimein data stats`).", file=sys.stderr)
        return EXIT_PENDING
    return 1 if r.export_errors else 0
