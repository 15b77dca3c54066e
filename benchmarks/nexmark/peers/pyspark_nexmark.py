"""Nexmark q0, q1, q2, q3, q5, q7, q8, q11 on PySpark (local[2], batch DataFrame API).

Runs in a separate venv (PySpark is not a millstream dependency; it needs Java 17+)::

    python -m venv /tmp/peers
    /tmp/peers/bin/pip install -r benchmarks/nexmark/peers/requirements.txt
    /tmp/peers/bin/python benchmarks/nexmark/peers/pyspark_nexmark.py \\
        --query q5 --input /tmp/nexmark-1000000.jsonl --out /tmp/q5.jsonl

Prints one JSON line: {"peer", "query", "events", "seconds", "events_per_s", "peak_rss_mb", "rows_out"}.

Spark runs ``local[2]``: two task threads, i.e. **two cores** (the driver pins it to
``0,1``), with ``spark.sql.shuffle.partitions=2`` (the default 200 only adds
scheduling overhead at this size). Its figures are per two cores, not per core.

What is timed: from ``spark.read.json`` (with an explicit schema, so no inference
pass) to the result written: reading and parsing the file in the JVM, planning,
the query, ``DataFrame.write.json`` into a temporary directory, and concatenating
its part files into ``--out``. Not timed: interpreter start-up, imports, starting
the SparkSession and its JVM, counting the input lines. Every run is a cold JVM:
JIT warm-up is inside the timer (one query per process, as for the other peers).

Peak RSS is the Python driver's plus the JVM's (VmHWM of the child processes).

Event time: the batch DataFrame API has no watermark (``withWatermark`` is a no-op
on a batch); the input is bounded and complete, so every window is final.
Windows use Spark's ``window()`` (aligned to the epoch) and ``session_window()``
on ``timestamp_millis(dateTime)``; window bounds are written back as epoch ms.
Structured Streaming is not used.

Plans:

- q0/q1/q2: ``filter`` + ``select`` (q1's price is ``price * 0.908`` as a double).
- q5: ``groupBy(window(ts, 10 s, 2 s), auction).count()``, ``max(num)`` over the
  window partition, keep ``num == max`` (ties included).
- q7: ``max(price)`` over the ``window(ts, 10 s)`` partition, keep ``price == max``.
- q11: ``groupBy(bidder, session_window(ts, 10 s)).count()``; endtime = the session's
  end (last event + 10 s).
- q3: filter persons (OR/ID/CA) and auctions (category 10), inner join on seller = id.
- q8: persons and auctions grouped by (id, ``window(ts, 10 s)``) and joined.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    AUCTION_SKIP,
    count_lines,
    descendants_peak_rss_mb,
    parse_args,
    report,
    self_peak_rss_mb,
)
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import LongType, StringType, StructField, StructType

PEER = "pyspark"
QUERIES = ("q0", "q1", "q2", "q3", "q5", "q7", "q8", "q11")

_LONGS = ("auction", "bidder", "price", "dateTime", "id", "initialBid", "reserve", "expires", "seller", "category")
_STRINGS = ("type", "extra", "name", "emailAddress", "creditCard", "city", "state", "itemName", "description")
SCHEMA = StructType([StructField(c, LongType()) for c in _LONGS] + [StructField(c, StringType()) for c in _STRINGS])


def ms(col):
    return F.unix_millis(col)


def build(query: str, events: DataFrame) -> DataFrame:
    events = events.withColumn("ts", F.timestamp_millis("dateTime"))
    bids = events.where(F.col("type") == "bid")
    if query == "q0":
        return bids.select("auction", "bidder", "price", "dateTime", "extra")
    if query == "q1":
        return bids.select("auction", "bidder", (F.col("price").cast("double") * 0.908).alias("price"), "dateTime",
                           "extra")
    if query == "q2":
        return bids.where(F.col("auction") % AUCTION_SKIP == 0).select("auction", "price")
    if query == "q5":
        counts = bids.groupBy(F.window("ts", "10 seconds", "2 seconds").alias("w"), "auction").agg(
            F.count("*").alias("num"))
        counts = counts.withColumn("maxn", F.max("num").over(Window.partitionBy("w")))
        return counts.where(F.col("num") == F.col("maxn")).select(
            "auction", "num", ms(F.col("w.start")).alias("window_start"), ms(F.col("w.end")).alias("window_end"))
    if query == "q7":
        b = bids.withColumn("w", F.window("ts", "10 seconds"))
        b = b.withColumn("maxprice", F.max("price").over(Window.partitionBy("w")))
        return b.where(F.col("price") == F.col("maxprice")).select(
            "auction", "price", "bidder", "dateTime", "extra", ms(F.col("w.end")).alias("window_end"))
    if query == "q11":
        s = bids.groupBy("bidder", F.session_window("ts", "10 seconds").alias("s")).agg(
            F.count("*").alias("bid_count"))
        return s.select("bidder", "bid_count", ms(F.col("s.start")).alias("starttime"),
                        ms(F.col("s.end")).alias("endtime"))
    if query == "q3":
        persons = events.where((F.col("type") == "person") & F.col("state").isin("OR", "ID", "CA")).select(
            F.col("id").alias("pid"), "name", "city", "state")
        auctions = events.where((F.col("type") == "auction") & (F.col("category") == 10)).select("id", "seller")
        return auctions.join(persons, auctions.seller == persons.pid).select("name", "city", "state", "id")
    if query == "q8":
        p = events.where(F.col("type") == "person").groupBy(
            "id", "name", F.window("ts", "10 seconds").alias("w")).agg(F.count("*").alias("_n")).select(
            "id", "name", "w")
        a = events.where(F.col("type") == "auction").groupBy(
            "seller", F.window("ts", "10 seconds").alias("w")).agg(F.count("*").alias("_n")).select(
            "seller", F.col("w").alias("aw"))
        return p.join(a, (p.id == a.seller) & (p.w == a.aw)).select("id", "name", ms(F.col("w.start")).alias(
            "starttime"))
    raise SystemExit(f"no pyspark plan for {query}")


def main() -> None:
    args = parse_args(PEER, QUERIES)
    n = count_lines(args.input)
    spark = (SparkSession.builder.master("local[2]").appName(f"nexmark-{args.query}")
             .config("spark.sql.shuffle.partitions", "2")
             .config("spark.driver.memory", "4g")
             .config("spark.ui.enabled", "false")
             .config("spark.ui.showConsoleProgress", "false")
             .config("spark.sql.session.timeZone", "UTC")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    tmp = tempfile.mkdtemp(prefix="spark-nexmark-")
    try:
        t = time.perf_counter()
        events = spark.read.schema(SCHEMA).json(args.input)
        result = build(args.query, events)
        result.write.mode("overwrite").option("ignoreNullFields", "false").json(os.path.join(tmp, "out"))
        with open(args.out, "wb") as out:
            for part in sorted(glob.glob(os.path.join(tmp, "out", "part-*"))):
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out)
        seconds = time.perf_counter() - t
        rss = self_peak_rss_mb() + descendants_peak_rss_mb()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = count_lines(args.out)
    version = spark.version
    spark.stop()
    report(PEER, args.query, n, seconds, rows, rss, cores=2, master="local[2]", spark=version)


if __name__ == "__main__":
    main()
