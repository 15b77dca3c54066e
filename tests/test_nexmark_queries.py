"""The Nexmark queries checked against DuckDB SQL over the same events, in every execution mode.

The oracle is independent of millstream's engine: it loads the generator's
events (made in columns by ``*_batch``) into DuckDB and evaluates each query as
a batch SQL statement, windows enumerated by integer division. Append-only
results are compared as multisets; q4 (updating) as its final table.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import orjson
import pytest

import millstream as ms
from millstream import nexmark
from millstream._cli import main
from millstream._run import MODES
from millstream.nexmark import NexmarkConfig

duckdb = pytest.importorskip("duckdb")

# 50k events at 1,000 events/s of event time: 50 s, so five 10 s windows, 29 hops of q5, many sessions.
IN_ORDER = NexmarkConfig(events=50_000, rate=1_000)
# events permuted inside groups of 2,500 (up to 2.5 s out of order: inside the 4 s bound, so nothing is late)
OUT_OF_ORDER = NexmarkConfig(events=50_000, rate=1_000, out_of_order_group_size=2_500)
# a faster event-time rate: short auctions, more events per window, q4's bounded interval join
DENSE = NexmarkConfig(events=50_000, rate=2_500)

CONFIGS = {"in-order": IN_ORDER, "out-of-order": OUT_OF_ORDER, "dense": DENSE}

W, HOP = 10_000, 2_000

SQL = {
    "q0": 'SELECT auction, bidder, price, "dateTime", extra FROM bid',
    "q1": 'SELECT auction, bidder, CAST(0.908 * price AS DOUBLE) AS price, "dateTime", extra FROM bid',
    "q2": "SELECT auction, price FROM bid WHERE auction % 123 = 0",
    "q3": """
        SELECT P.name, P.city, P.state, A.id FROM auction A JOIN person P ON A.seller = P.id
        WHERE A.category = 10 AND P.state IN ('OR', 'ID', 'CA')""",
    "q4": """
        SELECT category, AVG(final) AS avg FROM (
            SELECT A.id, A.category, MAX(B.price) AS final FROM auction A JOIN bid B
            ON A.id = B.auction AND B."dateTime" BETWEEN A."dateTime" AND A.expires
            GROUP BY A.id, A.category)
        GROUP BY category""",
    "q5": f"""
        WITH hops AS (
            SELECT auction, ("dateTime" // {HOP} - k) * {HOP} AS ws FROM bid, range({W // HOP}) r(k)),
        counts AS (SELECT auction, ws, count(*) AS num FROM hops GROUP BY auction, ws),
        maxima AS (SELECT ws, max(num) AS maxn FROM counts GROUP BY ws)
        SELECT c.auction, c.num, c.ws AS window_start, c.ws + {W} AS window_end
        FROM counts c JOIN maxima m ON c.ws = m.ws AND c.num >= m.maxn""",
    "q7": f"""
        WITH b AS (SELECT *, "dateTime" // {W} * {W} AS ws FROM bid),
        maxima AS (SELECT ws, max(price) AS maxprice FROM b GROUP BY ws)
        SELECT b.auction, b.price, b.bidder, b."dateTime", b.extra, b.ws + {W} AS window_end
        FROM b JOIN maxima m ON b.ws = m.ws AND b.price = m.maxprice""",
    "q8": f"""
        WITH p AS (SELECT DISTINCT id, name, "dateTime" // {W} * {W} AS ws FROM person),
        a AS (SELECT DISTINCT seller, "dateTime" // {W} * {W} AS ws FROM auction)
        SELECT p.id, p.name, p.ws AS starttime FROM p JOIN a ON p.id = a.seller AND p.ws = a.ws""",
    "q11": f"""
        WITH b AS (SELECT bidder, "dateTime",
                   CASE WHEN "dateTime" - lag("dateTime") OVER w >= {W} THEN 1 ELSE 0 END AS new
                   FROM bid WINDOW w AS (PARTITION BY bidder ORDER BY "dateTime")),
        s AS (SELECT bidder, "dateTime", sum(new) OVER (PARTITION BY bidder ORDER BY "dateTime"
                     ROWS UNBOUNDED PRECEDING) AS session FROM b)
        SELECT bidder, count(*) AS bid_count, min("dateTime") AS starttime, max("dateTime") + {W} AS endtime
        FROM s GROUP BY bidder, session""",
}

_oracle_cache: dict[tuple[NexmarkConfig, str], list[dict[str, Any]]] = {}


def _database(config: NexmarkConfig) -> Any:
    count = config.events
    assert count is not None
    # the events the source emits are exactly the ids 0 .. count - 1 (permuted in groups)
    assert sorted(config.event_id(k) for k in range(count)) == list(range(count))
    con = duckdb.connect()
    for view, make in (("person", nexmark.persons_batch), ("auction", nexmark.auctions_batch),
                       ("bid", nexmark.bids_batch)):
        con.register(view, make(0, count, config))
    return con


def oracle(config_name: str, q: str) -> list[dict[str, Any]]:
    return oracle_for(CONFIGS[config_name], q)


def oracle_for(config: NexmarkConfig, q: str) -> list[dict[str, Any]]:
    """DuckDB's answer to query ``q`` over the events of ``config`` (every query's computed at once)."""
    key = (config, q)
    if key not in _oracle_cache:
        con = _database(config)
        for name, sql in SQL.items():
            rel = con.sql(sql)
            _oracle_cache[(config, name)] = [dict(zip(rel.columns, row, strict=True)) for row in rel.fetchall()]
        con.close()
    return _oracle_cache[key]


def canon(rows: list[dict[str, Any]]) -> Counter[tuple[Any, ...]]:
    """Rows as a multiset of (column, value) tuples; floats to 9 significant digits."""
    def value(v: Any) -> Any:
        if isinstance(v, float):
            return float(f"{v:.9g}") if math.isfinite(v) else v
        return v
    return Counter(tuple((k, value(v)) for k, v in sorted(r.items())) for r in rows)


def final_table(rows: list[dict[str, Any]], key: tuple[str, ...]) -> list[dict[str, Any]]:
    last: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in rows:
        last[tuple(r[k] for k in key)] = r
    return list(last.values())


def run_query(q: str, config: NexmarkConfig, mode: str) -> list[dict[str, Any]]:
    out = ms.testing.CollectSink()
    result = nexmark.build(q, nexmark.read(config), out).run(mode=mode)
    assert result.ok
    assert result.total("late") == 0
    return list(out.values)


def check(q: str, got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    for row in got:
        assert tuple(row) == nexmark.COLUMNS[q], row
    if q in nexmark.UPDATING:
        got = final_table(got, nexmark.UPDATING[q])
    g, w = canon(got), canon(want)
    if g != w:
        missing = list((w - g).elements())[:5]
        extra = list((g - w).elements())[:5]
        pytest.fail(f"{q}: {sum(g.values())} rows, oracle {sum(w.values())}; "
                    f"missing e.g. {missing}; unexpected e.g. {extra}")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("config_name", list(CONFIGS))
@pytest.mark.parametrize("q", list(nexmark.QUERIES))
def test_query_matches_duckdb(q: str, config_name: str, mode: str) -> None:
    want = oracle(config_name, q)
    got = run_query(q, CONFIGS[config_name], mode)
    check(q, got, want)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("q", list(nexmark.QUERIES))
def test_cli_matches_duckdb(q: str, mode: str, tmp_path: Any) -> None:
    """``millstream nexmark run`` writes the same rows (q4: its final table) as JSON lines."""
    out = tmp_path / "out.jsonl"
    cfg = OUT_OF_ORDER
    assert main(["nexmark", "run", "--query", q, "--mode", mode, "--events", str(cfg.events), "--event-rate",
                 str(cfg.rate), "--out-of-order", str(cfg.out_of_order_group_size), "--out", str(out), "-q"]) == 0
    got = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    if q in nexmark.UPDATING:  # already the final table
        assert len(got) == len(nexmark.collapse(got, nexmark.UPDATING[q]))
    check(q, got, oracle("out-of-order", q))


@pytest.mark.parametrize("q", list(nexmark.QUERIES))
def test_oracle_is_not_trivial(q: str) -> None:
    """Each query has results to compare (else a broken oracle and a broken query would agree)."""
    for name in CONFIGS:
        assert len(oracle(name, q)) >= 2, (q, name)


def test_q5_has_a_tie_and_many_windows() -> None:
    rows = oracle("in-order", "q5")
    per_window = Counter(r["window_start"] for r in rows)
    assert len(per_window) >= 10
    assert max(per_window.values()) >= 2  # ties: several auctions at the maximum


def test_q4_regular_and_interval_joins_agree() -> None:
    """Without the generator's config q4 joins with a regular join; with it, a bounded interval join."""
    out = ms.testing.CollectSink()
    flow = ms.Flow("q4-regular")
    events = flow.source(ms.connectors.memory.read(
        [nexmark.event(k, IN_ORDER) for k in range(8_000)]), watermark=nexmark.WATERMARK)
    nexmark.query("q4", events).sink(out)
    flow.run()
    regular = final_table(out.values, ("category",))
    interval = final_table(run_query("q4", NexmarkConfig(events=8_000, rate=1_000), "native"), ("category",))
    assert canon(regular) == canon(interval)
    assert len(regular) == 5


def test_max_auction_ms_bounds_every_auction() -> None:
    for config in CONFIGS.values():
        table = nexmark.auctions_batch(0, 20_000, config)
        longest = max(e - d for e, d in zip(table["expires"].to_pylist(), table["dateTime"].to_pylist(),
                                            strict=True))
        assert longest <= nexmark.max_auction_ms(config) < 2 * longest + 10


def test_unknown_query_and_missing_event_time() -> None:
    with pytest.raises(ms.errors.ConfigError, match="unknown Nexmark query 'q6'"):
        nexmark.build("q6", nexmark.read(IN_ORDER), ms.testing.CollectSink())
    flow = ms.Flow("no-time")
    events = flow.source(nexmark.read(IN_ORDER))
    with pytest.raises(ms.errors.ConfigError, match="needs event time"):
        nexmark.query("q5", events)
