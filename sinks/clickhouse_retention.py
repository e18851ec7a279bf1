"""Retention: a TTL per table (and per window size in `cost_windows`) from the `[retention]` config,
written as ClickHouse prints it so the job can compare what is set with what should be and change only
what differs (`judgeflow retention apply`)."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from sinks.clickhouse_tables import TABLES

logger = logging.getLogger(__name__)
WINDOWED_TABLE = "cost_windows"  # several window sizes in one table: a TTL per size
WRITTEN = "inserted_at"  # every table has it (schema.sql): when the server wrote the row
_TTL = re.compile(r" TTL (.+?)(?: SETTINGS .*)?$")


def ttl_clauses(days: Mapping[str, int], *, window_days: Mapping[int, int]) -> dict[str, str]:
    """The TTL clause of every table ('' = rows are kept), written as ClickHouse prints it.

    Args:
        days: table -> days to keep its rows after they were written; 0 keeps them.
            Every table but `cost_windows` must be named.
        window_days: `cost_windows` window size in seconds -> days to keep rows of that
            size; 0 (or a size not named) keeps them.
    """
    one_ttl = set(TABLES) - {WINDOWED_TABLE}
    if set(days) != one_ttl:
        msg = (
            f"retention days: missing {sorted(one_ttl - set(days))}, unexpected "
            f"{sorted(set(days) - one_ttl)} (cost_windows goes by window size)"
        )
        raise ValueError(msg)
    clauses = {}
    for name in TABLES:
        if name == WINDOWED_TABLE:
            rules = [
                f"{WRITTEN} + toIntervalDay({d}) WHERE window_s = {size}"
                for size, d in sorted(window_days.items())
                if d > 0
            ]
            clauses[name] = ", ".join(rules)
        else:
            d = days[name]
            clauses[name] = f"{WRITTEN} + toIntervalDay({d})" if d > 0 else ""
    return clauses


def current_ttls(client: Any, database: str) -> dict[str, str]:
    """Table -> its TTL clause as the server prints it ('' = none), for the judgeflow tables."""
    rows = client.query(
        "SELECT name, engine_full FROM system.tables WHERE database = {db:String}",
        parameters={"db": database},
    ).result_rows
    found = {name: _TTL.search(engine) for name, engine in rows if name in TABLES}
    return {name: m.group(1) if m else "" for name, m in found.items()}


def apply_ttls(client: Any, database: str, clauses: Mapping[str, str]) -> list[str]:
    """Give each table its TTL clause (`ttl_clauses`), altering only the tables whose TTL
    differs, so a restart with the same config changes nothing. Returns the tables altered.

    ClickHouse then rewrites the TTL information of the table's existing parts (a mutation,
    in the background on a server); expired rows go at the next merge or `OPTIMIZE ... FINAL`.
    """
    have = current_ttls(client, database)
    changed = []
    for table, want in clauses.items():
        if table not in have:
            msg = f"retention: table {database}.{table} does not exist (run `judgeflow init-db` first)"
            raise ValueError(msg)
        if have[table] == want:
            continue
        action = f"MODIFY TTL {want}" if want else "REMOVE TTL"
        client.command(f"ALTER TABLE `{database}`.`{table}` {action}", use_database=False)
        logger.info("retention of %s.%s: %s (was %s)", database, table, want or "kept", have[table] or "kept")
        changed.append(table)
    return changed
