"""Redis Streams connector against the shared Redis (127.0.0.1:6379): round trips, positions,
acknowledgement after checkpoints (the group's pending entries list), bad records, secrets, a kill test.

Each test uses streams and groups named for this run and deletes its keys.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.integration import _ack_cases as acks
from tests.integration import services

import millstream as ms
from millstream.errors import ConnectorError, MissingDependencyError, RecordError


@pytest.fixture
def r() -> Iterator[Any]:
    services.require("redis")
    services.need_module("redis", "redis")
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379)
    keys: list[str] = []
    client.made = keys  # type: ignore[attr-defined]
    yield client
    if keys:
        client.delete(*keys)
    client.close()


def new_stream(r: Any, prefix: str = "ms_redis") -> str:
    name = services.unique(prefix)
    r.made.append(name)
    return name


def fill(r: Any, stream: str, records: list[Any], field: str = "data") -> list[str]:
    pipe = r.pipeline(transaction=False)
    for rec in records:
        pipe.xadd(stream, {field: rec if isinstance(rec, bytes) else json.dumps(rec)})
    return [i.decode() for i in pipe.execute()]


def pending(r: Any, stream: str, group: str) -> int:
    return int(r.xpending(stream, group)["pending"])


# -- round trips ------------------------------------------------------------------------------------


def test_round_trip(r: Any, exec_mode: str) -> None:
    stream = new_stream(r)
    records = [{"i": i, "k": f"k{i % 3}"} for i in range(500)]
    flow = ms.Flow("redis-write")
    flow.source(ms.connectors.memory.read(records)).sink(ms.connectors.redis.write(stream, maxlen=10_000))
    assert flow.run().ok
    assert r.xlen(stream) == 500

    out = ms.connectors.memory.write()
    src = ms.connectors.redis.read(stream, group="g", start="0", bounded=True, metadata=("stream", "id", "timestamp"))
    flow = ms.Flow("redis-read")
    flow.source(src, watermark=ms.WatermarkStrategy.bounded(0, timestamp="_timestamp")).sink(out)
    assert flow.run().ok
    got = sorted(out.values, key=lambda v: v["i"])
    assert [{"i": v["i"], "k": v["k"]} for v in got] == records
    assert {v["_stream"] for v in got} == {stream}
    assert all(v["_timestamp"] == int(v["_id"].split("-")[0]) for v in got)
    assert src.describe() == f"redis {stream}@127.0.0.1:6379/0 (group g), bounded"


def test_several_streams_are_splits(r: Any) -> None:
    a, b = new_stream(r), new_stream(r)
    fill(r, a, [{"s": "a", "i": i} for i in range(300)])
    fill(r, b, [{"s": "b", "i": i} for i in range(5)])
    out = ms.connectors.memory.write()
    flow = ms.Flow("two")
    flow.source(ms.connectors.redis.read([a, b], group="g", start="0", bounded=True, count=50)).sink(out)
    assert flow.run(mode="native").ok
    assert Counter(v["s"] for v in out.values) == {"a": 300, "b": 5}
    assert pending(r, a, "g") == 0  # no checkpoints: each chunk acknowledged once processed


def test_text_bytes_and_field_maps(r: Any) -> None:
    stream = new_stream(r)
    r.xadd(stream, {"data": b"hello", "user": b"7"})
    for fmt, want in (("text", "hello"), ("bytes", b"hello")):
        out = ms.connectors.memory.write()
        flow = ms.Flow(fmt)
        flow.source(ms.connectors.redis.read(stream, group=fmt, start="0", bounded=True, format=fmt)).sink(out)
        flow.run(mode="native")
        assert out.values == [want]
    out = ms.connectors.memory.write()
    flow = ms.Flow("fields")
    flow.source(ms.connectors.redis.read(stream, group="f", start="0", bounded=True, field=None)).sink(out)
    flow.run(mode="native")
    assert out.values == [{"data": "hello", "user": "7"}]


# -- positions and acknowledgement --------------------------------------------------------------------


def test_pending_entries_read_again_and_xack_only_after_checkpoint(r: Any, tmp_path: Path) -> None:
    stream = new_stream(r)
    n = 3000
    fill(r, stream, [{"i": i} for i in range(n)])
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"

    def source() -> Any:
        return ms.connectors.redis.read(stream, group="g", start="0", bounded=True, count=100)

    with pytest.raises(Exception, match="crash"):
        acks.run_exactly_once("redis-eo", source(), out, ckpt, crash_at=1800)
    committed = len(acks.rows(out))
    assert 0 < committed <= 1800
    # read in chunks of 100 up to the one holding record 1801; acknowledged: what the checkpoints hold
    assert pending(r, stream, "g") == 1900 - committed

    result = acks.run_exactly_once("redis-eo", source(), out, ckpt)
    assert result.ok
    got = [v["i"] for v in acks.rows(out)]
    assert sorted(got) == list(range(n))  # exactly once
    assert pending(r, stream, "g") == 0    # all acknowledged by the final checkpoint


def test_crash_between_commit_and_acknowledge_drops_covered_entries(r: Any, tmp_path: Path) -> None:
    stream = new_stream(r)
    n = 1000
    fill(r, stream, [{"i": i} for i in range(n)])
    out, ckpt = tmp_path / "out", str(tmp_path / "ckpt")

    def run() -> Any:
        src = ms.connectors.redis.read(stream, group="g", start="0", bounded=True, count=100)
        return acks.run_exactly_once("redis-eo", src, out, ckpt)

    acks.fail_at_the_third_acknowledge(run)  # the output of checkpoint 3 is committed, its entries not XACKed
    assert pending(r, stream, "g") > 0
    result = run()
    assert result.steps[0].extra["redelivered_dropped"] > 0  # read again, and the checkpoint had them
    assert sorted(v["i"] for v in acks.rows(out)) == list(range(n))
    assert pending(r, stream, "g") == 0


def test_nothing_acknowledged_before_a_checkpoint(r: Any, tmp_path: Path) -> None:
    stream = new_stream(r)
    fill(r, stream, [{"i": i} for i in range(1000)])
    src = ms.connectors.redis.read(stream, group="g", start="0", bounded=True, count=100)
    acks.crash_before_a_checkpoint(src, ms.connectors.files.write(str(tmp_path / "out"), transactional=True),
                                   "at-least-once", tmp_path / "c1")
    assert pending(r, stream, "g") >= 500  # read, no checkpoint completed: nothing XACKed

    # at-most-once acknowledges each chunk as it is read, before it is processed
    stream2 = new_stream(r)
    fill(r, stream2, [{"i": i} for i in range(1000)])
    src = ms.connectors.redis.read(stream2, group="g", start="0", bounded=True, count=100)
    acks.crash_before_a_checkpoint(src, ms.connectors.files.write(str(tmp_path / "amo.jsonl")), "at-most-once",
                                   tmp_path / "c2")
    assert pending(r, stream2, "g") == 0


def test_renamed_consumer_takes_over_the_pending_entries(r: Any, tmp_path: Path) -> None:
    stream = new_stream(r)
    n = 1500
    fill(r, stream, [{"i": i} for i in range(n)])
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    src = ms.connectors.redis.read(stream, group="g", consumer="a", start="0", bounded=True, count=100)
    with pytest.raises(Exception, match="crash"):
        acks.run_exactly_once("redis-eo", src, out, ckpt, crash_at=900)
    assert pending(r, stream, "g") > 0
    src = ms.connectors.redis.read(stream, group="g", consumer="b", start="0", bounded=True, count=100)
    assert acks.run_exactly_once("redis-eo", src, out, ckpt).ok
    assert sorted(v["i"] for v in acks.rows(out)) == list(range(n))
    assert pending(r, stream, "g") == 0


@pytest.mark.parametrize("mode", ["native", "microbatch"])
def test_unbounded_read_follows_new_entries(r: Any, tmp_path: Path, mode: str) -> None:
    stream = new_stream(r)
    src = ms.connectors.redis.read(stream, group="g", start="0", block=20)
    assert acks.read_while_publishing(src, mode, lambda recs: fill(r, stream, recs)) == [-1, *range(200)]


# -- connections that break ------------------------------------------------------------------------


def test_broken_connections_are_retried_without_loss_or_duplicates(r: Any, tmp_path: Path) -> None:
    stream = new_stream(r)
    n = 3000
    fill(r, stream, [{"i": i} for i in range(n)])
    proxy = services.Proxy(0, 6379)

    def cutter(stop: threading.Event) -> None:  # every 150 ms the next reply is lost with its connection
        while not stop.wait(0.15):
            proxy.lose_reply.set()

    src = ms.connectors.redis.read(stream, group="g", start="0", bounded=True, count=50,
                                   url=f"redis://127.0.0.1:{proxy.port}/0",
                                   backoff=ms.connectors.Backoff(initial_s=0.01, max_s=0.02, budget_s=20))
    result = acks.run_while_cutting(src, proxy, cutter, tmp_path, pause_s=0.01, chunk=50)
    assert proxy.lost > 0 and result.steps[0].extra["retries"] > 0
    assert sorted(v["i"] for v in acks.rows(tmp_path / "out")) == list(range(n))
    assert pending(r, stream, "g") == 0


# -- bad records --------------------------------------------------------------------------------------


def _bad_stream(r: Any) -> tuple[str, list[str]]:
    stream = new_stream(r)
    ids = fill(r, stream, [{"i": 0}, b"{not json", {"i": 2}])
    ids.append(r.xadd(stream, {"other": b"x"}).decode())
    ids += fill(r, stream, [{"i": 4}])
    return stream, ids


def test_bad_records_fail_names_the_position(r: Any) -> None:
    stream, ids = _bad_stream(r)
    flow = ms.Flow("bad")
    flow.source(ms.connectors.redis.read(stream, group="g", start="0", bounded=True)).sink(ms.connectors.memory.write())
    with pytest.raises(RecordError) as err:
        flow.run(mode="native")
    assert f"{stream}@{ids[1]}" in str(err.value)
    assert "not JSON" in str(err.value) or "JSON" in str(err.value)


def test_bad_records_skip_and_dead_letter(r: Any) -> None:
    stream, ids = _bad_stream(r)
    out = ms.connectors.memory.write()
    flow = ms.Flow("skip")
    flow.source(ms.connectors.redis.read(stream, group="s", start="0", bounded=True, on_error="skip")).sink(out)
    result = flow.run(mode="native")
    assert [v["i"] for v in out.values] == [0, 2, 4]
    assert result.steps[0].extra["skipped"] == 2

    dead = ms.connectors.memory.write()
    out = ms.connectors.memory.write()
    flow = ms.Flow("dlq")
    flow.source(ms.connectors.redis.read(stream, group="d", start="0", bounded=True,
                                         on_error=ms.connectors.dead_letter(dead))).sink(out)
    flow.run(mode="native")
    assert [v["i"] for v in out.values] == [0, 2, 4]
    assert [d["position"] for d in dead.values] == [f"{stream}@{ids[1]}", f"{stream}@{ids[3]}"]
    assert dead.values[0]["raw"] == "{not json"
    assert "no field 'data'" in dead.values[1]["error"]

    # with metadata, a payload that is not an object is a bad record too
    s2 = new_stream(r)
    fill(r, s2, [[1, 2], {"i": 1}])
    out = ms.connectors.memory.write()
    flow = ms.Flow("meta")
    flow.source(ms.connectors.redis.read(s2, group="m", start="0", bounded=True, metadata=("id",),
                                         on_error="skip")).sink(out)
    assert flow.run(mode="native").steps[0].extra["skipped"] == 1
    assert [v["i"] for v in out.values] == [1]


# -- the sink -----------------------------------------------------------------------------------------


def test_sink_with_id_field_skips_rewrites(r: Any) -> None:
    stream = new_stream(r)
    records = [{"eid": f"{1000 + i}-0", "i": i} for i in range(100)]
    sink = ms.connectors.redis.write(stream, id_field="eid")
    assert sink.delivery == "idempotent"
    assert ms.connectors.redis.write(stream).delivery == "none"
    for _ in range(2):  # the second run is a replay: every entry is there already
        flow = ms.Flow("ids")
        flow.source(ms.connectors.memory.read(records)).sink(sink)
        assert flow.run(mode="native").ok
    assert r.xlen(stream) == 100
    # an id below the top that was never written is an error, not a silent drop
    flow = ms.Flow("bad-ids")
    flow.source(ms.connectors.memory.read([{"eid": "999-0", "i": -1}])).sink(sink)
    with pytest.raises(ConnectorError, match="ids must grow"):
        flow.run(mode="native")


def test_sink_maxlen(r: Any) -> None:
    stream = new_stream(r)
    flow = ms.Flow("capped")
    flow.source(ms.connectors.memory.read([{"i": i} for i in range(300)])).sink(
        ms.connectors.redis.write(stream, maxlen=50, approximate=False, batch=64))
    flow.run(mode="native")
    assert r.xlen(stream) == 50


# -- options, errors and secrets ------------------------------------------------------------------------


def test_options_are_checked_when_declared() -> None:
    services.need_module("redis", "redis")
    with pytest.raises(ms.errors.ConfigError, match="start"):
        ms.connectors.redis.read("s", group="g", start="latest")
    with pytest.raises(ms.errors.ConfigError, match="url"):
        ms.connectors.redis.read("s", group="g", url="http://x")
    with pytest.raises(ms.errors.ConfigError, match="metadata"):
        ms.connectors.redis.read("s", group="g", metadata=("offset",))
    with pytest.raises(ms.errors.ConfigError, match="maxlen"):
        ms.connectors.redis.write("s", maxlen=0)


def test_missing_client_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(MissingDependencyError, match=r"millstream\[redis\]"):
        ms.connectors.redis.read("s", group="g")
    with pytest.raises(MissingDependencyError, match=r"millstream\[redis\]"):
        ms.connectors.redis.write("s")


def test_password_never_appears(r: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret = "hunter2-" + os.urandom(4).hex()
    user = services.unique("ms_user")
    r.execute_command("ACL", "SETUSER", user, "on", f">{secret}", "~*", "&*", "+@all")
    try:
        stream = new_stream(r)
        fill(r, stream, [{"i": i} for i in range(10)])
        url = f"redis://{user}:{secret}@127.0.0.1:6379/0"
        caplog.set_level(logging.DEBUG)
        src = ms.connectors.redis.read(stream, group="g", start="0", bounded=True, url=url)
        sink = ms.connectors.redis.write(stream + "_out", url=url)
        r.made.append(stream + "_out")
        flow = ms.Flow("secret")
        flow.source(src).sink(sink)
        result = flow.run(mode="native", guarantee="at-least-once", checkpoint_dir=str(tmp_path / "ckpt"))
        assert result.ok and r.xlen(stream + "_out") == 10
        texts = [src.describe(), sink.describe(), flow.explain() if hasattr(flow, "explain") else "", str(result),
                 caplog.text]
        texts += [p.read_bytes().decode("latin-1") for p in (tmp_path / "ckpt").rglob("*") if p.is_file()]
        # a wrong password: a fatal error naming the connector and the address, never the password
        bad = ms.connectors.redis.read(stream, group="g", url=f"redis://{user}:{secret}x@127.0.0.1:6379/0",
                                       bounded=True)
        flow = ms.Flow("wrong")
        flow.source(bad).sink(ms.connectors.memory.write())
        with pytest.raises(ConnectorError) as err:
            flow.run(mode="native")
        texts.append(str(err.value))
        assert "authentication failed" in str(err.value) and "127.0.0.1:6379" in str(err.value)
        for text in texts:
            assert secret not in text
    finally:
        r.execute_command("ACL", "DELUSER", user)


def test_unreachable_redis_is_retried_then_fails() -> None:
    services.need_module("redis", "redis")
    port = services.free_port()
    src = ms.connectors.redis.read("s", group="g", url=f"redis://127.0.0.1:{port}/0",
                                   backoff=ms.connectors.Backoff(initial_s=0.05, max_s=0.1, budget_s=0.3))
    flow = ms.Flow("down")
    flow.source(src).sink(ms.connectors.memory.write())
    with pytest.raises(ConnectorError, match="still failing after"):
        flow.run(mode="native")


# -- the conformance kit --------------------------------------------------------------------------------


def test_conformance(r: Any) -> None:
    """Splits, replay from every cut, acknowledgement only when told, bad records, no secret, resources."""
    secret = "s3cr3t-" + os.urandom(4).hex()
    user = services.unique("ms_user")
    r.execute_command("ACL", "SETUSER", user, "on", f">{secret}", "~*", "&*", "+@all")
    try:
        a, b, bad = new_stream(r), new_stream(r), new_stream(r)
        rows_ = [{"i": i} for i in range(200)]
        fill(r, a, rows_[:150])
        fill(r, b, rows_[150:])
        fill(r, bad, [*rows_[:50], b"{not json", *rows_[50:]])
        url = f"redis://{user}:{secret}@127.0.0.1:6379/0"
        report = ms.testing.check_source(
            lambda: ms.connectors.redis.read([a, b], group="conf", start="0", bounded=True, url=url, count=40),
            expected=rows_, secrets=[secret],
            make_bad=lambda policy: ms.connectors.redis.read(bad, group=services.unique("bad"), start="0",
                                                             bounded=True, on_error=policy), bad_records=1)
        assert "replay from every cut" in report.checks and report.splits == {a, b}
    finally:
        r.execute_command("ACL", "DELUSER", user)


@pytest.mark.parametrize("idempotent", [False, True])
def test_sink_conformance(r: Any, idempotent: bool) -> None:
    def make() -> Any:
        return ms.connectors.redis.write(new_stream(r), id_field="eid" if idempotent else None)

    def read_back(sink: Any) -> list[Any]:
        return [json.loads(f[b"data"]) for _, f in r.xrange(sink.options.stream)]

    records = [{"eid": f"{100 + i}-0", "i": i} for i in range(30)]
    report = ms.testing.check_sink(make, read_back, records, key=(lambda rec: rec["eid"]) if idempotent else None)
    assert "resources released" in report.checks


# -- the docs' example ------------------------------------------------------------------------------------


def test_docs_example(r: Any, tmp_path: Path) -> None:
    stream = new_stream(r, "orders")
    r.made.append(stream + "_totals")
    fill(r, stream, [{"user": f"u{i % 4}", "amount": i, "ts": 1_000 * i} for i in range(40)])
    # -- as in docs/connectors/redis.md, with this test's stream names
    import millstream as ms

    flow = ms.Flow("order-totals")
    orders = flow.source(
        ms.connectors.redis.read(stream, group="totals", start="0", bounded=True, metadata=("id",)),
        watermark=ms.WatermarkStrategy.bounded(5_000, timestamp="ts"),
    )
    (orders.key_by("user")
           .window(ms.windows.tumbling(10_000))
           .aggregate(total=ms.agg.sum("amount"), n=ms.agg.count())
           .sink(ms.connectors.redis.write(stream + "_totals", maxlen=100_000)))
    flow.run(guarantee="at-least-once", checkpoint_dir=str(tmp_path / "ckpt"))
    # --
    assert r.xlen(stream + "_totals") == 16
    assert pending(r, stream, "totals") == 0


# -- a kill test: Redis Streams -> keyed window -> transactional files, SIGKILL at random -----------------


def test_kill_exactly_once(r: Any, tmp_path: Path) -> None:
    stream = new_stream(r, "ms_kill")
    n = 20_000
    fill(r, stream, acks.events(n))  # the runs to be killed sleep >= 4 s in all (20 ms every 100 records)
    source = 'ms.connectors.redis.read(params["stream"], group=params["group"], start="0", bounded=True, count=200)'
    acks.kill_exactly_once(tmp_path, acks.windowed_job("redis-kill", source, every=100),
                           ref={"stream": stream, "group": "ref"}, eo={"stream": stream, "group": "eo"})
    assert pending(r, stream, "eo") == 0
