"""JSON-lines decoders side by side: the same blocks of a file (100,000 lines each, as the micro-batch
reader hands them over) decoded into a polars DataFrame typed with the schema ``_jsondecode`` learns,
each candidate in its own fresh process, rounds interleaved. Time is the process's CPU time over the
decodes; memory is its peak RSS, which includes the blocks held (~200 MB for 1 M Nexmark events) and
the libraries, and the growth of that peak from the point where the blocks are read and polars is
imported (so a candidate's own library and working memory).

    POLARS_MAX_THREADS=1 taskset -c 0 python benchmarks/json_decoders.py FILE [--lines N] [--repeat R]
        [--only a,b,...]

Candidates (decode only: no proof that the frame is what the row decoder would have made, except
``millstream``, which is the whole columnar decoder of the reader, proof included):

- ``polars``: ``pl.read_ndjson(block, schema=...)``
- ``pyarrow``: ``pyarrow.json.read_json`` (explicit schema, unexpected fields an error, one thread,
  one block) then ``pl.from_arrow``
- ``msgspec``: ``msgspec.json.Decoder(Row).decode_lines`` into one Struct (every field optional),
  columns by ``zip(*map(astuple, rows))`` then ``pl.Series`` per column
- ``msgspec-tagged``: a tagged union of one Struct per ``type``, columns per kind, rows put back
  in file order by a gather
- ``msgspec-parse``: ``decode_lines`` into the Struct alone, no columns (a bound, not a decoder)
- ``orjson``: ``orjson.loads`` of the block made one array, columns by ``[r.get(c) ...]``
- ``duckdb``: ``read_json`` (yyjson) with the columns given, one thread, ``.pl()``; the block goes
  through a file in ``/dev/shm`` (DuckDB reads a Python file object only through fsspec)
- ``millstream``: ``ColumnarJSON.frame_block`` (the decoder the reader uses)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

CHUNK = 100_000


def _blocks(path: str, limit: int) -> list[tuple[bytes, int]]:
    out = []
    with open(path, "rb") as fh:
        lines: list[bytes] = []
        for i, line in enumerate(fh):
            if i >= limit:
                break
            lines.append(line)
            if len(lines) == CHUNK:
                out.append((b"".join(lines), len(lines)))
                lines = []
        if lines:
            out.append((b"".join(lines), len(lines)))
    return out


def _schema(blocks: list[tuple[bytes, int]]) -> dict[str, str]:
    from millstream.connectors._jsondecode import ColumnarJSON

    dec = ColumnarJSON()
    dec._learn_sample(*blocks[0])
    assert dec.schema is not None
    return dec.schema


def _candidate(name: str, schema: dict[str, str]) -> Any:
    import polars as pl

    pl_types = {"int": pl.Int64, "str": pl.String, "bool": pl.Boolean}
    pl_schema = {c: pl_types[t] for c, t in schema.items()}
    if name == "polars":
        return lambda block, n: pl.read_ndjson(block, schema=pl_schema)
    if name == "pyarrow":
        import io

        import pyarrow as pa
        import pyarrow.json as pj

        pa_types = {"int": pa.int64(), "str": pa.string(), "bool": pa.bool_()}
        parse = pj.ParseOptions(explicit_schema=pa.schema([(c, pa_types[t]) for c, t in schema.items()]),
                                unexpected_field_behavior="error")

        def dec(block: bytes, n: int) -> Any:
            opts = pj.ReadOptions(use_threads=False, block_size=len(block) + 1)
            return pl.from_arrow(pj.read_json(io.BytesIO(block), read_options=opts, parse_options=parse))
        return dec
    if name == "msgspec":
        import msgspec

        py = {"int": int, "str": str, "bool": bool}
        row = msgspec.defstruct("Row", [(c, py[t], None) for c, t in schema.items()], forbid_unknown_fields=True)
        decoder = msgspec.json.Decoder(row)
        astuple = msgspec.structs.astuple
        names = list(schema)

        def dec(block: bytes, n: int) -> Any:
            rows = decoder.decode_lines(block)
            cols = list(zip(*map(astuple, rows), strict=True))
            return pl.DataFrame([pl.Series(c, v, dtype=pl_schema[c], strict=True)
                                 for c, v in zip(names, cols, strict=True)])
        return dec
    if name == "msgspec-parse":
        import msgspec

        py = {"int": int, "str": str, "bool": bool}
        row = msgspec.defstruct("Row", [(c, py[t], None) for c, t in schema.items()], forbid_unknown_fields=True)
        decoder = msgspec.json.Decoder(row)

        class _Height:
            def __init__(self, n: int) -> None:
                self.height = n

        return lambda block, n: _Height(len(decoder.decode_lines(block)))
    if name == "duckdb":
        import duckdb

        con = duckdb.connect()
        con.execute("SET threads=1")
        types = {"int": "BIGINT", "str": "VARCHAR", "bool": "BOOLEAN"}
        columns = "{" + ", ".join(f"'{c}': '{types[t]}'" for c, t in schema.items()) + "}"
        tmp = f"/dev/shm/json_decoders_{os.getpid()}.jsonl"

        def dec(block: bytes, n: int) -> Any:
            with open(tmp, "wb") as fh:
                fh.write(block)
            try:
                return con.sql(f"select * from read_json('{tmp}', format='newline_delimited', "
                               f"columns={columns})").pl()
            finally:
                os.unlink(tmp)
        return dec
    if name == "msgspec-tagged":
        import msgspec
        import numpy as np

        py = {"int": int, "str": str, "bool": bool}
        kinds = {"person": ["id", "name", "emailAddress", "creditCard", "city", "state", "dateTime", "extra"],
                 "auction": ["id", "itemName", "description", "initialBid", "reserve", "dateTime", "expires",
                             "seller", "category", "extra"],
                 "bid": ["auction", "bidder", "price", "dateTime", "extra"]}
        structs = []
        for k, fields in kinds.items():
            structs.append(msgspec.defstruct(k, [(c, py[schema[c]]) for c in fields], tag_field="type", tag=k,
                                             forbid_unknown_fields=True))
        decoder = msgspec.json.Decoder(structs[0] | structs[1] | structs[2])  # type: ignore[operator]
        astuple = msgspec.structs.astuple

        def dec(block: bytes, n: int) -> Any:
            rows = decoder.decode_lines(block)
            types = np.fromiter((kinds_index[type(r)] for r in rows), dtype=np.int8, count=len(rows))
            parts = []
            for i, (k, fields) in enumerate(kinds.items()):
                sel = np.flatnonzero(types == i)
                if not len(sel):
                    continue
                these = [rows[j] for j in sel]
                cols = list(zip(*map(astuple, these), strict=True))
                df = pl.DataFrame([pl.Series(c, v, dtype=pl_schema[c]) for c, v in zip(fields, cols, strict=True)])
                parts.append(df.with_columns(pl.lit(k).alias("type"), pl.Series("_i", sel)))
            return pl.concat(parts, how="diagonal").sort("_i").drop("_i").select(list(schema))
        kinds_index = {s: i for i, s in enumerate(structs)}
        return dec
    if name == "orjson":
        import orjson

        names = list(schema)

        def dec(block: bytes, n: int) -> Any:
            recs = orjson.loads(b"[" + block[:-1].replace(b"\n", b",") + b"]")
            return pl.DataFrame([pl.Series(c, [r.get(c) for r in recs], dtype=pl_schema[c], strict=True)
                                 for c in names])
        return dec
    if name == "millstream":
        from millstream.connectors._jsondecode import ColumnarJSON

        d = ColumnarJSON()

        def dec(block: bytes, n: int) -> Any:
            df = d.frame_block(block, n)
            assert df is not None, "the columnar decoder refused a chunk"
            return df
        return dec
    raise SystemExit(f"unknown candidate {name}")


def _one(args: argparse.Namespace) -> None:
    blocks = _blocks(args.file, args.lines)
    schema = _schema(blocks)  # imports polars and millstream
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # the blocks held, polars loaded
    dec = _candidate(args.one, schema)
    dec(*blocks[0])  # warm up (imports, first allocations)
    n = sum(k for _, k in blocks)
    t0 = time.process_time()
    rows = 0
    for block, k in blocks:
        rows += dec(block, k).height
    cpu = time.process_time() - t0
    assert rows == n, (rows, n)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"name": args.one, "records": n, "cpu_s": cpu, "per_s": n / cpu,
                      "peak_mb": peak / 1024, "growth_mb": (peak - base) / 1024}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("file")
    p.add_argument("--lines", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--only", default="polars,pyarrow,msgspec,msgspec-tagged,msgspec-parse,orjson,duckdb,millstream")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        _one(args)
        return
    names = args.only.split(",")
    results: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for r in range(args.repeat):
        for name in names:
            out = subprocess.run([sys.executable, __file__, args.file, "--lines", str(args.lines), "--one", name],
                                 capture_output=True, text=True, env=os.environ)
            if out.returncode:
                print(f"{name}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
                continue
            res = json.loads(out.stdout.strip().splitlines()[-1])
            results[name].append(res)
            print(f"round {r + 1} {name:15s} {res['per_s'] / 1e6:6.3f} M/s  cpu {res['cpu_s']:.3f}s  "
                  f"peak {res['peak_mb']:.0f} MB (+{res['growth_mb']:.0f} over blocks + polars)", flush=True)
    ref = results.get("polars") or results[names[0]]
    best_ref = min(x["cpu_s"] for x in ref) if ref else float("nan")
    print("\nbest of rounds (CPU s per run; ratio to polars):")
    for name, rs in results.items():
        if rs:
            best = min(x["cpu_s"] for x in rs)
            print(f"  {name:15s} {rs[0]['records'] / best / 1e6:6.3f} M/s  cpu {best:.3f}s  "
                  f"x{best_ref / best:.2f}  peak {max(x['peak_mb'] for x in rs):.0f} MB "
                  f"(+{max(x['growth_mb'] for x in rs):.0f})")


if __name__ == "__main__":
    main()
