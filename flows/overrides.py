"""`judgeflow overrides list|set|clear`: per-tenant judge sampling overrides by hand.

They live in the control store the sampler reads and the alert actions write:
Redis, shared by every process of the job, found through JUDGEFLOW_REDIS_URL
(or `cache.redis_url`). Without Redis the job keeps its overrides in-process,
where no other command can reach them — these commands then say so.

    judgeflow overrides list  [--json]
    judgeflow overrides set   TENANT (--rate R | --pause) [--ttl 1h] [--reason TEXT]
    judgeflow overrides clear TENANT

The same store remembers judges a fatal error (401, unknown model) disabled, so a
restart does not call the provider again with a bad key (until the judge's
configuration changes):

    judgeflow judges list  [--json]
    judgeflow judges enable NAME
"""

from __future__ import annotations

import argparse
import getpass
import json
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from core.errors import Unavailable
from core.ports import Override
from flows.config import ConfigError, load_settings
from sinks.redis_store import RedisControlStore

_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86_400}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|min|h|d)?$")


def parse_duration(text: str) -> float:
    """`90s`, `15m`, `1h`, `2d` (or plain seconds) -> seconds."""
    m = _DURATION.match(text.strip())
    if m is None or float(m.group(1)) <= 0:
        msg = f"not a duration: {text!r} (e.g. 90s, 15m, 1h, 2d)"
        raise argparse.ArgumentTypeError(msg)
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def _rate(text: str) -> float:
    try:
        rate = float(text)
    except ValueError:
        rate = -1.0
    if not 0.0 <= rate <= 1.0:
        msg = f"--rate must be a share between 0 and 1 (0.01 = 1%), got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return rate


def add_overrides_parser(sub: Any) -> None:
    """Register `judgeflow overrides <action>` on the `judgeflow` parser's subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", type=Path, default=None, help="flow config TOML (Redis URL)")
    p = sub.add_parser(
        "overrides",
        help="list, set and clear per-tenant judge sampling overrides (Redis control store)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(required=True, metavar="ACTION")

    ls = actions.add_parser("list", parents=[common], help="overrides in force")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=_cmd_list)

    st = actions.add_parser("set", parents=[common], help="set a tenant's sampling rate for a while")
    st.add_argument("tenant")
    rate = st.add_mutually_exclusive_group(required=True)
    rate.add_argument("--rate", type=_rate, help="share of the tenant's traffic to judge, e.g. 0.01")
    rate.add_argument("--pause", action="store_true", help="judge none of it (rate 0)")
    st.add_argument(
        "--ttl", type=parse_duration, default=3600.0, help="how long, e.g. 30m, 1h, 2d (default 1h)"
    )
    st.add_argument("--reason", default="set by hand", help="shown by `list` and in the job's log")
    st.set_defaults(func=_cmd_set)

    cl = actions.add_parser("clear", parents=[common], help="remove a tenant's override now")
    cl.add_argument("tenant")
    cl.set_defaults(func=_cmd_clear)


def _redis_url(args: argparse.Namespace) -> str:
    url = load_settings(args.config).flow.cache.redis_url
    if not url:
        msg = (
            "overrides live in Redis, and no Redis is configured: set JUDGEFLOW_REDIS_URL "
            "(or cache.redis_url) for the job and for this command. Without Redis, a running job "
            "keeps its overrides in-process, where only its own alert actions can set them."
        )
        raise ConfigError(msg)
    return url


def _where(store_url: str) -> str:
    parts = urlsplit(store_url)
    return f"{parts.hostname}:{parts.port or 6379}"  # never the password


def _run(args: argparse.Namespace, action: Any) -> int:
    url = _redis_url(args)
    store = RedisControlStore(url, refresh_s=0.0)
    try:
        store.ping()  # the store's reads ride out outages quietly; a command should not
        return int(action(store))
    except Unavailable as exc:
        print(
            f"judgeflow: cannot reach Redis at {_where(url)}: {exc.__cause__.__class__.__name__}",
            file=sys.stderr,
        )
        return 1
    finally:
        store.close()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _left(ms: int) -> str:
    s = max(0, ms // 1000)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _shown_rate(rate: float) -> str:
    return "paused" if rate <= 0 else f"{rate:.2%}"


def _cmd_list(args: argparse.Namespace) -> int:
    def action(store: RedisControlStore) -> int:
        now = _now_ms()
        found = sorted(store.active().values(), key=lambda o: o.tenant_id)
        if args.json:
            rows = [
                {
                    "tenant": o.tenant_id,
                    "rate": o.rate,
                    "expires": _iso(o.expires_ms),
                    "expires_ms": o.expires_ms,
                    "set_by": o.set_by,
                    "reason": o.reason,
                }
                for o in found
            ]
            print(json.dumps(rows, indent=2))
            return 0
        if not found:
            print("no overrides in force")
            return 0
        table = [("TENANT", "RATE", "EXPIRES (UTC)", "LEFT", "SET BY", "REASON")]
        table += [
            (
                o.tenant_id,
                _shown_rate(o.rate),
                _iso(o.expires_ms),
                _left(o.expires_ms - now),
                o.set_by,
                o.reason,
            )
            for o in found
        ]
        widths = [max(len(r[i]) for r in table) for i in range(len(table[0]) - 1)]
        for r in table:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1])
        return 0

    return _run(args, action)


def _cmd_set(args: argparse.Namespace) -> int:
    rate = 0.0 if args.pause else args.rate

    def action(store: RedisControlStore) -> int:
        now = _now_ms()
        expires = now + int(args.ttl * 1000)
        store.set(Override(args.tenant, rate, args.reason, f"cli:{_user()}", expires, starts_ms=now))
        left = _left(expires - _now_ms())
        print(f"{args.tenant}: judge sampling {_shown_rate(rate)} until {_iso(expires)} ({left})")
        return 0

    return _run(args, action)


def _cmd_clear(args: argparse.Namespace) -> int:
    def action(store: RedisControlStore) -> int:
        if store.clear(args.tenant):
            print(f"{args.tenant}: override cleared, the configured sampling applies again")
            return 0
        print(f"{args.tenant}: no override in force", file=sys.stderr)
        return 1

    return _run(args, action)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name in some containers
        return "unknown"


def add_judges_parser(sub: Any) -> None:
    """Register `judgeflow judges list|enable` (judges disabled by a fatal error)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", type=Path, default=None, help="flow config TOML (Redis URL)")
    p = sub.add_parser("judges", help="list judges a fatal error disabled, and enable them again")
    actions = p.add_subparsers(required=True, metavar="ACTION")
    ls = actions.add_parser("list", parents=[common], help="disabled judges and why")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=_cmd_judges_list)
    en = actions.add_parser("enable", parents=[common], help="let a disabled judge be called again")
    en.add_argument("name", help="as listed, e.g. openai/gpt-4o-mini")
    en.set_defaults(func=_cmd_judges_enable)


def _cmd_judges_list(args: argparse.Namespace) -> int:
    def action(store: RedisControlStore) -> int:
        judges = sorted(store.disabled_judges().values(), key=lambda r: r.name)
        if args.json:
            print(json.dumps([{"name": r.name, "reason": r.reason, "since": _iso(r.at_ms)} for r in judges]))
        elif not judges:
            print("no judge is disabled")
        for r in [] if args.json else judges:
            print(f"{r.name}  disabled since {_iso(r.at_ms)}: {r.reason}")
        return 0

    return _run(args, action)


def _cmd_judges_enable(args: argparse.Namespace) -> int:
    def action(store: RedisControlStore) -> int:
        if store.enable_judge(args.name):
            print(f"{args.name}: enabled again (running jobs pick it up when they restart)")
            return 0
        print(f"{args.name}: not disabled", file=sys.stderr)
        return 1

    return _run(args, action)
