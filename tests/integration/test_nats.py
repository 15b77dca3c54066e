"""NATS JetStream connector against the shared NATS server (127.0.0.1:4222, JetStream on): round trips,
acknowledgement after checkpoints (the consumer's ack floor and unacked count), redelivery after a crash
with exactly-once output, deduplicated publishing, bad records, secrets, threads, a kill test.

Each test creates a stream named for this run and deletes it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.integration import _ack_cases as acks
from tests.integration import services

import millstream as ms
from millstream.errors import ConnectorError, MissingDependencyError, RecordError

URL = "nats://127.0.0.1:4222"


class Js:
    """A small synchronous helper over nats-py for the tests: streams, publishing, consumer info."""

    def __init__(self) -> None:
        self.streams: list[str] = []

    async def _with(self, fn: Any) -> Any:
        import nats

        nc = await nats.connect(URL)
        try:
            return await fn(nc.jetstream())
        finally:
            await nc.close()

    def run(self, fn: Any) -> Any:
        return asyncio.run(self._with(fn))

    def stream(self, prefix: str = "ms_nats", **config: Any) -> str:
        from nats.js.api import StreamConfig

        name = services.unique(prefix)
        self.streams.append(name)

        async def add(js: Any) -> None:
            await js.add_stream(StreamConfig(name=name, subjects=[f"{name}.>"], **config))

        self.run(add)
        return name

    def publish(self, subject: str, payloads: list[Any]) -> None:
        async def pub(js: Any) -> None:
            futs = [await js.publish_async(subject, p if isinstance(p, bytes) else json.dumps(p).encode())
                    for p in payloads]
            await asyncio.gather(*futs)

        self.run(pub)

    def info(self, stream: str) -> Any:
        return self.run(lambda js: js.stream_info(stream))

    def consumer(self, stream: str, durable: str) -> Any:
        return self.run(lambda js: js.consumer_info(stream, durable))

    def messages(self, stream: str) -> int:
        return int(self.info(stream).state.messages)

    def cleanup(self) -> None:
        async def delete(js: Any) -> None:
            for s in self.streams:
                try:
                    await js.delete_stream(s)
                except Exception:  # noqa: BLE001, S110 - already gone
                    pass

        if self.streams:
            self.run(delete)


@pytest.fixture
def js() -> Iterator[Js]:
    services.require("nats")
    services.need_module("nats", "nats")
    helper = Js()
    yield helper
    helper.cleanup()


def _threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("millstream-nats")}


# -- round trips ------------------------------------------------------------------------------------


def test_round_trip(js: Js, exec_mode: str) -> None:
    stream = js.stream()
    records = [{"i": i, "k": f"k{i % 3}"} for i in range(500)]
    flow = ms.Flow("nats-write")
    flow.source(ms.connectors.memory.read(records)).sink(ms.connectors.nats.write(f"{stream}.orders"))
    assert flow.run().ok
    assert js.messages(stream) == 500

    out = ms.connectors.memory.write()
    src = ms.connectors.nats.read(stream, durable="d", bounded=True,
                                  metadata=("subject", "sequence", "timestamp", "headers"))
    flow = ms.Flow("nats-read")
    flow.source(src, watermark=ms.WatermarkStrategy.bounded(0, timestamp="_timestamp")).sink(out)
    assert flow.run().ok
    got = sorted(out.values, key=lambda v: v["_sequence"])
    assert [{"i": v["i"], "k": v["k"]} for v in got] == records
    assert [v["_sequence"] for v in got] == list(range(1, 501))
    assert {v["_subject"] for v in got} == {f"{stream}.orders"}
    assert all(v["_timestamp"] > 1_600_000_000_000 and v["_headers"] == {} for v in got)
    assert src.describe() == f"nats {stream}@127.0.0.1:4222 (durable d), bounded"
    assert not _threads()


def test_subject_filter_text_and_bytes(js: Js) -> None:
    stream = js.stream()
    js.publish(f"{stream}.a", [b"one", b"two"])
    js.publish(f"{stream}.b", [b"three"])
    for fmt, subject, want in (("text", f"{stream}.a", ["one", "two"]), ("bytes", f"{stream}.b", [b"three"])):
        out = ms.connectors.memory.write()
        flow = ms.Flow(fmt)
        flow.source(ms.connectors.nats.read(stream, durable=fmt, subject=subject, bounded=True, format=fmt)).sink(out)
        assert flow.run(mode="native").ok
        assert out.values == want


# -- acknowledgement and redelivery ---------------------------------------------------------------------


def test_redelivery_after_a_crash_is_exactly_once(js: Js, tmp_path: Path) -> None:
    stream = js.stream()
    n = 3000
    js.publish(f"{stream}.x", [{"i": i} for i in range(n)])
    out, ckpt = tmp_path / "out", str(tmp_path / "ckpt")

    def source() -> Any:
        return ms.connectors.nats.read(stream, durable="d", bounded=True, batch=100)

    with pytest.raises(Exception, match="crash"):
        acks.run_exactly_once("nats-eo", source(), out, ckpt, crash_at=1800)
    assert not _threads()
    committed = len(acks.rows(out))
    assert 0 < committed <= 1800
    ci = js.consumer(stream, "d")
    assert ci.ack_floor.stream_seq == committed      # acknowledged: what the checkpoints hold, no more
    assert ci.num_ack_pending == 1900 - committed    # pulled by the crashed run, not acknowledged

    # the restart comes long before ack_wait: the unacked messages are read again at once, in order
    result = acks.run_exactly_once("nats-eo", source(), out, ckpt)
    assert result.ok
    assert result.steps[0].extra["consumer_recreated"] == 1
    assert sorted(v["i"] for v in acks.rows(out)) == list(range(n))
    ci = js.consumer(stream, "d")
    assert ci.ack_floor.stream_seq == n and ci.num_ack_pending == 0


def test_crash_between_commit_and_acknowledge_drops_covered_messages(js: Js, tmp_path: Path) -> None:
    stream = js.stream()
    n = 1000
    js.publish(f"{stream}.x", [{"i": i} for i in range(n)])
    out, ckpt = tmp_path / "out", str(tmp_path / "ckpt")

    def run() -> Any:
        src = ms.connectors.nats.read(stream, durable="d", bounded=True, batch=100)
        return acks.run_exactly_once("nats-eo", src, out, ckpt)

    acks.fail_at_the_third_acknowledge(run)  # checkpoint 3's output is committed, its messages not acknowledged
    assert js.consumer(stream, "d").num_ack_pending > 0
    run()
    assert sorted(v["i"] for v in acks.rows(out)) == list(range(n))
    ci = js.consumer(stream, "d")
    assert ci.ack_floor.stream_seq == n and ci.num_ack_pending == 0


def test_ack_wait_shorter_than_the_checkpoint_interval_redelivers_without_duplicates(js: Js, tmp_path: Path) -> None:
    stream = js.stream()
    js.publish(f"{stream}.x", [{"i": i} for i in range(300)])
    src = ms.connectors.nats.read(stream, durable="d", bounded=True, batch=20, ack_wait=0.3)

    def slow(rec: Any) -> Any:
        time.sleep(0.004)
        return rec

    flow = ms.Flow("slow")
    flow.source(src).map(slow).sink(ms.connectors.files.write(str(tmp_path / "out"), transactional=True))
    result = flow.run(mode="native", guarantee="exactly-once", checkpoint_dir=str(tmp_path / "ckpt"),
                      checkpoint_interval=600_000, max_chunk=20)
    assert result.steps[0].extra["redelivered_dropped"] > 0  # JetStream sent them again while the job ran
    assert sorted(v["i"] for v in acks.rows(tmp_path / "out")) == list(range(300))


def test_nothing_acknowledged_before_a_checkpoint(js: Js, tmp_path: Path) -> None:
    stream = js.stream()
    js.publish(f"{stream}.x", [{"i": i} for i in range(1000)])
    src = ms.connectors.nats.read(stream, durable="d", bounded=True, batch=100)
    acks.crash_before_a_checkpoint(src, ms.connectors.files.write(str(tmp_path / "out"), transactional=True),
                                   "at-least-once", tmp_path / "c1")
    ci = js.consumer(stream, "d")
    assert ci.ack_floor.stream_seq == 0 and ci.num_ack_pending == 600

    # at-most-once acknowledges each chunk as it is read, before it is processed
    src = ms.connectors.nats.read(stream, durable="amo", bounded=True, batch=100)
    acks.crash_before_a_checkpoint(src, ms.connectors.files.write(str(tmp_path / "amo.jsonl")), "at-most-once",
                                   tmp_path / "c2")
    ci = js.consumer(stream, "amo")
    assert ci.ack_floor.stream_seq == 600 and ci.num_ack_pending == 0


@pytest.mark.parametrize("mode", ["native", "microbatch"])
def test_unbounded_read_follows_new_messages(js: Js, mode: str) -> None:
    stream = js.stream()
    src = ms.connectors.nats.read(stream, durable="d", fetch_timeout=0.05)
    seen = acks.read_while_publishing(src, mode, lambda recs: js.publish(f"{stream}.x", recs))
    assert seen == [-1, *range(200)]
    assert not _threads()


def test_broken_connection_reconnects_without_loss_or_duplicates(js: Js, tmp_path: Path) -> None:
    stream = js.stream()
    n = 2000
    js.publish(f"{stream}.x", [{"i": i} for i in range(n)])
    proxy = services.Proxy(0, 4222)

    def cutter(stop: threading.Event) -> None:  # what the server sends next is lost with the connection, 3 times
        while proxy.lost < 3 and not stop.wait(0.3):
            proxy.lose_reply.set()
            while proxy.lose_reply.is_set() and not stop.wait(0.01):
                pass

    src = ms.connectors.nats.read(stream, durable="d", bounded=True, batch=50, servers=f"nats://127.0.0.1:{proxy.port}",
                                  backoff=ms.connectors.Backoff(initial_s=0.02, max_s=0.1, budget_s=20))
    result = acks.run_while_cutting(src, proxy, cutter, tmp_path, pause_s=0.05, chunk=50)
    assert proxy.lost > 0 and result.steps[0].extra["consumer_recreated"] > 0
    assert sorted(v["i"] for v in acks.rows(tmp_path / "out")) == list(range(n))
    assert not _threads()


# -- the sink: deduplication by message id ----------------------------------------------------------------


def test_msg_id_deduplicates_a_replay(js: Js) -> None:
    stream = js.stream()
    records = [{"id": f"order-{i}", "i": i} for i in range(300)]
    sink = ms.connectors.nats.write(f"{stream}.orders", msg_id="id")
    assert sink.delivery == "idempotent"
    for attempt in range(2):  # the second run is a replay: the stream drops every id it has
        flow = ms.Flow("dedup")
        flow.source(ms.connectors.memory.read(records)).sink(sink)
        result = flow.run(mode="native")
        assert result.ok
    assert js.messages(stream) == 300
    plain = ms.connectors.nats.write(f"{stream}.plain")
    assert plain.delivery == "none"
    for _ in range(2):
        flow = ms.Flow("plain")
        flow.source(ms.connectors.memory.read(records)).sink(plain)
        flow.run(mode="native")
    assert js.messages(stream) == 900  # no ids: a replay publishes duplicates
    out = ms.connectors.memory.write()
    flow = ms.Flow("check")
    flow.source(ms.connectors.nats.read(stream, durable="c", subject=f"{stream}.orders", bounded=True,
                                        metadata=("headers",))).sink(out)
    flow.run(mode="native")
    assert [v["_headers"]["Nats-Msg-Id"] for v in out.values] == [r["id"] for r in records]
    assert not _threads()


def test_sink_without_a_stream_fails_clearly(js: Js) -> None:
    subject = services.unique("ms_nowhere")
    flow = ms.Flow("nowhere")
    flow.source(ms.connectors.memory.read([{"i": 1}])).sink(ms.connectors.nats.write(subject))
    with pytest.raises(ConnectorError, match="no JetStream stream takes subject"):
        flow.run(mode="native")
    assert not _threads()


# -- bad records --------------------------------------------------------------------------------------


def _bad_stream(js: Js) -> str:
    stream = js.stream()
    js.publish(f"{stream}.x", [{"i": 0}, b"{not json", {"i": 2}, b"\xff\xfe", {"i": 4}])
    return stream


def test_bad_records_fail_names_the_position(js: Js) -> None:
    stream = _bad_stream(js)
    flow = ms.Flow("bad")
    flow.source(ms.connectors.nats.read(stream, durable="f", bounded=True)).sink(ms.connectors.memory.write())
    with pytest.raises(RecordError) as err:
        flow.run(mode="native")
    assert f"{stream}@2" in str(err.value)
    assert "cannot decode the payload as JSON: JSONDecodeError" in str(err.value)
    assert not _threads()


def test_bad_records_skip_and_dead_letter(js: Js) -> None:
    stream = _bad_stream(js)
    out = ms.connectors.memory.write()
    flow = ms.Flow("skip")
    flow.source(ms.connectors.nats.read(stream, durable="s", bounded=True, on_error="skip")).sink(out)
    assert flow.run(mode="native").steps[0].extra["skipped"] == 2
    assert [v["i"] for v in out.values] == [0, 2, 4]

    dead, out = ms.connectors.memory.write(), ms.connectors.memory.write()
    flow = ms.Flow("dlq")
    flow.source(ms.connectors.nats.read(stream, durable="d", bounded=True,
                                        on_error=ms.connectors.dead_letter(dead))).sink(out)
    flow.run(mode="native")
    assert [v["i"] for v in out.values] == [0, 2, 4]
    assert [d["position"] for d in dead.values] == [f"{stream}@2", f"{stream}@4"]
    assert dead.values[0]["raw"] == "{not json"


# -- options, errors, secrets, threads ------------------------------------------------------------------


def test_options_are_checked_when_declared() -> None:
    services.need_module("nats", "nats")
    with pytest.raises(ms.errors.ConfigError, match="ack_wait"):
        ms.connectors.nats.read("s", durable="d", ack_wait=0)
    with pytest.raises(ms.errors.ConfigError, match="servers"):
        ms.connectors.nats.read("s", durable="d", servers="http://x")
    with pytest.raises(ms.errors.ConfigError, match="metadata"):
        ms.connectors.nats.read("s", durable="d", metadata=("offset",))
    with pytest.raises(ms.errors.ConfigError, match="subject"):
        ms.connectors.nats.write("a.*")


def test_missing_client_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nats", None)
    with pytest.raises(MissingDependencyError, match=r"millstream\[nats\]"):
        ms.connectors.nats.read("s", durable="d")
    with pytest.raises(MissingDependencyError, match=r"millstream\[nats\]"):
        ms.connectors.nats.write("s")


def test_missing_stream_is_fatal_and_names_the_fix(js: Js) -> None:
    flow = ms.Flow("missing")
    flow.source(ms.connectors.nats.read(services.unique("ms_none"), durable="d")).sink(ms.connectors.memory.write())
    with pytest.raises(ConnectorError, match="no stream") as err:
        flow.run(mode="native")
    assert "fix: create the stream" in str(err.value)
    assert not _threads()


def test_password_never_appears(js: Js, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # the shared server has no accounts, so it accepts any credentials: enough to follow them everywhere
    secret = "hunter2-" + os.urandom(4).hex()
    url = f"nats://ms:{secret}@127.0.0.1:4222"
    stream = js.stream()
    js.publish(f"{stream}.x", [{"i": i} for i in range(10)])
    caplog.set_level(logging.DEBUG)
    src = ms.connectors.nats.read(stream, durable="d", bounded=True, servers=url)
    sink = ms.connectors.nats.write(f"{stream}.out", servers=url, msg_id="i")
    flow = ms.Flow("secret")
    flow.source(src).sink(sink)
    result = flow.run(mode="native", guarantee="exactly-once", checkpoint_dir=str(tmp_path / "ckpt"))
    assert result.ok
    texts = [src.describe(), sink.describe(), str(result), caplog.text]
    texts += [p.read_bytes().decode("latin-1") for p in (tmp_path / "ckpt").rglob("*") if p.is_file()]
    port = services.free_port()  # nothing listens: the retry budget runs out, the error names the address
    bad = ms.connectors.nats.read(stream, durable="d", servers=f"nats://ms:{secret}@127.0.0.1:{port}",
                                  backoff=ms.connectors.Backoff(initial_s=0.05, max_s=0.1, budget_s=0.3))
    flow = ms.Flow("down")
    flow.source(bad).sink(ms.connectors.memory.write())
    with pytest.raises(ConnectorError, match="still failing after") as err:
        flow.run(mode="native")
    assert f"127.0.0.1:{port}" in str(err.value)
    texts += [str(err.value), bad.describe(), caplog.text]
    for text in texts:
        assert secret not in text
    assert not _threads()


# -- the conformance kit --------------------------------------------------------------------------------


def test_conformance(js: Js) -> None:
    """Replay from every cut, acknowledgement only when told, bad records, no secret, threads released."""
    secret = "s3cr3t-" + os.urandom(4).hex()
    stream, bad = js.stream(), js.stream()
    rows_ = [{"i": i} for i in range(200)]
    js.publish(f"{stream}.x", rows_)
    js.publish(f"{bad}.x", [*rows_[:50], b"{not json", *rows_[50:]])
    report = ms.testing.check_source(
        lambda: ms.connectors.nats.read(stream, durable="conf", bounded=True, batch=40,
                                        servers=f"nats://ms:{secret}@127.0.0.1:4222"),
        expected=rows_, secrets=[secret],
        make_bad=lambda policy: ms.connectors.nats.read(bad, durable=services.unique("bad"), bounded=True,
                                                        on_error=policy), bad_records=1)
    assert "replay from every cut" in report.checks
    assert not _threads()


@pytest.mark.parametrize("idempotent", [False, True])
def test_sink_conformance(js: Js, idempotent: bool) -> None:
    streams: dict[int, str] = {}

    def make() -> Any:
        stream = js.stream()
        sink = ms.connectors.nats.write(f"{stream}.out", msg_id="i" if idempotent else None)
        streams[id(sink)] = stream
        return sink

    def read_back(sink: Any) -> list[Any]:
        stream = streams[id(sink)]
        out = ms.connectors.memory.write()
        flow = ms.Flow("back")
        flow.source(ms.connectors.nats.read(stream, durable=services.unique("back"), bounded=True)).sink(out)
        flow.run(mode="native")
        return list(out.values)

    report = ms.testing.check_sink(make, read_back, [{"i": i} for i in range(30)],
                                   key=(lambda rec: rec["i"]) if idempotent else None)
    assert "resources released" in report.checks
    assert not _threads()


# -- the docs' example ----------------------------------------------------------------------------------


def test_docs_example(js: Js, tmp_path: Path) -> None:
    stream = js.stream("orders", duplicate_window=120.0)
    js.publish(f"{stream}.new", [{"user": f"u{i % 4}", "amount": i, "ts": 1_000 * i} for i in range(40)])
    # -- as in docs/connectors/nats.md, with this test's stream name
    import millstream as ms

    flow = ms.Flow("order-totals")
    orders = flow.source(
        ms.connectors.nats.read(stream, durable="totals", subject=f"{stream}.new", bounded=True),
        watermark=ms.WatermarkStrategy.bounded(5_000, timestamp="ts"),
    )
    (orders.key_by("user")
           .window(ms.windows.tumbling(10_000))
           .aggregate(total=ms.agg.sum("amount"), n=ms.agg.count())
           .map(lambda w: {**w, "id": f"{w['user']}/{w['window_start']}"})  # a pure function of the result
           .sink(ms.connectors.nats.write(f"{stream}.totals", msg_id="id")))
    flow.run(guarantee="exactly-once", checkpoint_dir=str(tmp_path / "ckpt"))
    # --
    ci = js.consumer(stream, "totals")
    assert ci.ack_floor.stream_seq == 40 and ci.num_ack_pending == 0
    assert js.messages(stream) == 40 + 16


# -- a kill test: JetStream -> keyed window -> transactional files, SIGKILL at random ----------------------


def test_kill_exactly_once(js: Js, tmp_path: Path) -> None:
    stream = js.stream("ms_kill")
    n = 10_000
    js.publish(f"{stream}.e", acks.events(n))  # the runs to be killed sleep >= 4 s in all (20 ms every 50 records)
    source = 'ms.connectors.nats.read(params["stream"], durable=params["durable"], bounded=True, batch=200)'
    acks.kill_exactly_once(tmp_path, acks.windowed_job("nats-kill", source, every=50),
                           ref={"stream": stream, "durable": "ref"}, eo={"stream": stream, "durable": "eo"})
    ci = js.consumer(stream, "eo")
    assert ci.ack_floor.stream_seq == n and ci.num_ack_pending == 0
