"""Hostile input (issue 13 §4): every mode decodes a line by the same rules, so the same lines
are bad, at the same ``file:line``, and a job that asked to skip bad records never fails."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import millstream as ms
from conftest import canon
from millstream.connectors import SourceContext, dead_letter, files
from millstream.connectors._files_common import MAX_CSV_RECORD_LINES, MAX_JSON_DEPTH, json_depth, too_deep
from millstream.errors import RecordError
from millstream.testing import CollectSink, ManualClock

# every test runs in every execution mode (native, microbatch, batch): see conftest.exec_mode
pytestmark = pytest.mark.usefixtures("exec_mode")


def run_source(src: files.FileSource, *, mode: str | None = None, **run: Any) -> tuple[list[Any], ms.RunResult]:
    flow = ms.Flow("hostile")
    out = CollectSink()
    flow.source(src).sink(out)
    result = flow.run(mode, **run)
    return out.values, result


def nested(depth: int) -> bytes:
    """A JSON object nested ``depth`` levels deep (the object itself is level 1)."""
    return b'{"id": 0, "deep": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


def good(i: int) -> bytes:
    return orjson.dumps({"id": i, "s": f"s{i}"})


# -- 1. depth: what a source accepts, every sink can write ------------------------------------


def test_depth_is_counted_outside_strings() -> None:
    assert json_depth(b"{}") == 1
    assert json_depth(b'{"a": [[], {"b": [1]}]}') == 4
    assert json_depth(b'{"a": "[[[[{{{{\\"", "b": []}') == 2
    assert not too_deep(nested(MAX_JSON_DEPTH))
    assert too_deep(nested(MAX_JSON_DEPTH + 1))
    assert not too_deep(b'{"s": "' + b"[" * 2000 + b'"}')  # brackets in a string are text


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 300, 1023])
def test_too_deep_a_record_is_a_bad_record_and_the_job_writes_the_rest(tmp_path: Path, depth: int) -> None:
    p = tmp_path / "in.jsonl"
    lines = [good(i) for i in range(1, 40)]
    lines.insert(20, nested(depth))  # line 21, in the middle of a chunk
    p.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out.jsonl"
    flow = ms.Flow("deep")
    flow.source(files.read(p, on_error="skip")).sink(files.write(out))
    result = flow.run()
    assert result.total("skipped") == 1
    written = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(r["id"] for r in written) == list(range(1, 40))
    with pytest.raises(RecordError) as err:
        run_source(files.read(p))
    assert f"{p}:21" in str(err.value) and f"nested deeper than {MAX_JSON_DEPTH} levels" in str(err.value)


def test_the_deepest_record_a_source_accepts_a_json_sink_writes(tmp_path: Path) -> None:
    p = tmp_path / "in.jsonl"
    p.write_bytes(good(1) + b"\n" + nested(MAX_JSON_DEPTH) + b"\n" + good(2) + b"\n")
    out = tmp_path / "out.jsonl"
    flow = ms.Flow("deepest")
    flow.source(files.read(p)).sink(files.write(out))
    flow.run()
    written = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    assert len(written) == 3
    assert max(json_depth(orjson.dumps(r)) for r in written) == MAX_JSON_DEPTH


def test_a_deep_record_goes_to_the_dead_letter_sink_with_its_line(tmp_path: Path) -> None:
    p = tmp_path / "in.jsonl"
    p.write_bytes(good(1) + b"\n\n" + nested(600) + b"\n" + good(2) + b"\n")
    dlq = CollectSink()
    values, result = run_source(files.read(p, on_error=dead_letter(dlq), name="in"))
    assert sorted(r["id"] for r in values) == [1, 2]
    assert result.total("dead_lettered") == 1
    assert [(d["source"], d["position"]) for d in dlq.values] == [("in", f"{p}:3")]


def test_where_a_deep_line_falls_does_not_change_the_outcome(tmp_path: Path) -> None:
    # micro-batch reads chunks by polars: whichever lines share the deep line's chunk, it is bad
    for where in (0, 7, 15):
        p = tmp_path / f"in{where}.jsonl"
        lines = [good(i) for i in range(16)]
        lines[where] = nested(400)
        p.write_bytes(b"\n".join(lines) + b"\n")
        for chunk in (1, 4, 100):
            values, result = run_source(files.read(p, on_error="skip"), max_chunk=chunk)
            assert len(values) == 15 and result.total("skipped") == 1, (where, chunk)


# -- 2. lone surrogates: one decoder's rules ---------------------------------------------------


@pytest.mark.parametrize("escape", ["\\ud800", "\\uDBFF", "\\udc00", "\\ude00\\ud83d", "\\ud83dx"])
def test_a_lone_surrogate_escape_is_a_bad_record(tmp_path: Path, escape: str) -> None:
    p = tmp_path / "in.jsonl"
    p.write_text('{"id": 1, "s": "a"}\n{"id": 2, "s": "x' + escape + 'y"}\n{"id": 3, "s": "b"}\n')
    values, result = run_source(files.read(p, on_error="skip"))
    assert sorted(r["id"] for r in values) == [1, 3]
    assert result.total("skipped") == 1
    with pytest.raises(RecordError) as err:
        run_source(files.read(p))
    assert f"{p}:2" in str(err.value)


def test_surrogate_pairs_and_escaped_backslashes_read_as_natively(tmp_path: Path) -> None:
    p = tmp_path / "in.jsonl"
    texts = ["\U0001F600 smile", "\\ud800 is text", "plain", "\x00 nul", "\\\\uDC00"]
    p.write_text("".join(json.dumps({"id": i, "s": t}) + "\n" for i, t in enumerate(texts)))  # ensure_ascii
    values, result = run_source(files.read(p, on_error="skip"))
    assert result.total("skipped") == 0
    assert sorted(values, key=lambda r: r["id"]) == [{"id": i, "s": t} for i, t in enumerate(texts)]


# -- 3. blank lines: not records, counted, in every mode -------------------------------------------


def test_blank_lines_are_counted_not_records_and_do_not_shift_positions(tmp_path: Path) -> None:
    p = tmp_path / "in.jsonl"
    p.write_text('\n{"id": 1}\n   \n\r\n{"id": 2}\nnot json\n\n{"id": 3}\n\t\n')
    dlq = CollectSink()
    values, result = run_source(files.read(p, on_error=dead_letter(dlq)))
    assert sorted(r["id"] for r in values) == [1, 2, 3]
    assert result.total("skipped") == 0 and result.total("dead_lettered") == 1
    assert result.total("blank_lines") == 5
    assert "blank_lines 5" in result.summary()
    assert [d["position"] for d in dlq.values] == [f"{p}:6"]


def test_blank_lines_are_counted_whatever_the_chunks(tmp_path: Path) -> None:
    p = tmp_path / "in.jsonl"
    p.write_bytes(b"".join(good(i) + (b"\n\n" if i % 10 == 0 else b"\n") for i in range(100)))
    for chunk in (7, 1000):
        values, result = run_source(files.read(p), max_chunk=chunk)
        assert len(values) == 100 and result.total("blank_lines") == 10, chunk


def test_blank_csv_lines_are_counted_not_records(tmp_path: Path) -> None:
    p = tmp_path / "in.csv"
    p.write_text("a,b\n\n1,2\n  \n3,4\n\n")
    values, result = run_source(files.read(p, on_error="skip"))
    assert values == [{"a": "1", "b": "2"}, {"a": "3", "b": "4"}]
    assert result.total("skipped") == 0 and result.total("blank_lines") == 3


# -- 4. CSV: a stray quote costs one row, not the rest of the file ------------------------------


def test_an_unterminated_quote_costs_one_row(tmp_path: Path) -> None:
    p = tmp_path / "in.csv"
    p.write_text("a,b\n1,2\n\"3,4\n" + "".join(f"{i},{i}\n" for i in range(99)))
    dlq = CollectSink()
    values, result = run_source(files.read(p, on_error=dead_letter(dlq)))
    assert len(values) == 100 and values[-1] == {"a": "98", "b": "98"}
    assert result.total("dead_lettered") == 1
    [bad] = dlq.values
    assert bad["position"] == f"{p}:3" and bad["raw"] == '"3,4'
    assert "lines 3-" in bad["error"] and "goes on at line 4" in bad["error"]
    with pytest.raises(RecordError) as err:
        run_source(files.read(p))
    assert f"{p}:3" in str(err.value)


def test_a_quote_closed_badly_lines_later_costs_one_row(tmp_path: Path) -> None:
    p = tmp_path / "in.csv"
    p.write_text('a,b\n"x,1\n2,2\n3,"3\n4,4\n')  # the quote of line 2 closes on line 4, then junk
    values, result = run_source(files.read(p, on_error="skip"))
    assert {"a": "2", "b": "2"} in values and {"a": "4", "b": "4"} in values
    assert len(values) + result.total("skipped") == 4


def test_a_quoted_field_may_span_lines_up_to_the_limit(tmp_path: Path) -> None:
    p = tmp_path / "in.csv"
    field = "\n".join(f"l{i}" for i in range(MAX_CSV_RECORD_LINES))
    p.write_text(f'a,b\n1,"two\nlines"\n2,"{field}"\n3,x\n')
    values, result = run_source(files.read(p, on_error="skip"))
    assert [r["a"] for r in values] == ["1", "2", "3"]
    assert values[0]["b"] == "two\nlines" and values[1]["b"] == field
    assert result.total("skipped") == 0


def test_a_record_longer_than_the_limit_is_bad_and_reading_goes_on(tmp_path: Path) -> None:
    p = tmp_path / "in.csv"
    rows = "".join(f"{i},{i}\n" for i in range(MAX_CSV_RECORD_LINES + 5))
    p.write_text(f'a,b\n0,"open\n{rows}9,"close"\n')  # closes too late: the open quote is bad
    dlq = CollectSink()
    values, result = run_source(files.read(p, on_error=dead_letter(dlq)))
    assert [d["position"] for d in dlq.values][:1] == [f"{p}:2"]
    assert f"still open after {MAX_CSV_RECORD_LINES:,} lines" in dlq.values[0]["error"]
    assert {"a": "0", "b": "0"} in values and {"a": "9", "b": "close"} in values
    assert len(values) == MAX_CSV_RECORD_LINES + 6


def test_a_csv_integer_beyond_64_bits_is_a_bad_record_not_a_failed_sink(tmp_path: Path) -> None:
    # csv_types={"n": int} took any Python int; the JSON-lines sink then failed the whole job under
    # on_error="skip" (and blamed another record): the source refuses what JSON lines refuse
    p = tmp_path / "in.csv"
    p.write_bytes(b"c,n\na,1\nb,99999999999999999999999\nc,18446744073709551615\nd,-9223372036854775809\n"
                  b"e,-9223372036854775808\n")
    out = tmp_path / "out.jsonl"
    flow = ms.Flow("big-ints")
    flow.source(files.read(p, csv_types={"n": int}, on_error="skip")).sink(files.write(out))
    result = flow.run()
    assert result.total("skipped") == 2
    assert [orjson.loads(x)["c"] for x in out.read_bytes().splitlines()] == ["a", "c", "e"]
    with pytest.raises(RecordError) as err:
        run_source(files.read(p, csv_types={"n": int}))
    assert f"{p}:3" in str(err.value) and "beyond 64 bits" in str(err.value)


@pytest.mark.streaming("a following source")
def test_a_following_csv_source_does_not_wait_for_a_quote_forever(tmp_path: Path) -> None:
    p = tmp_path / "in.csv"
    rows = "".join(f"{i},{i}\n" for i in range(MAX_CSV_RECORD_LINES + 5))
    p.write_text(f'a,b\n0,"open\n{rows}')
    values, result = run_source(files.read(p, follow=True, max_idle=300, poll_interval=0.01, on_error="skip"))
    assert result.total("skipped") == 1
    assert len(values) == MAX_CSV_RECORD_LINES + 5


# -- micro-batch typing errors name the record's own line ---------------------------------------


def test_a_bad_event_time_names_its_own_line_after_hostile_lines(tmp_path: Path) -> None:
    p = tmp_path / "in.jsonl"
    p.write_bytes(b'{"id": 1, "ts": 1}\n\n' + nested(300) + b'\n{"id": 2, "ts": "x\\ud800"}\n'
                  b'{"id": 3, "ts": 3}\n{"id": 4, "ts": "late"}\n{"id": 5, "ts": 5}\n')
    for policy in ("skip", "fail"):
        flow = ms.Flow("times")
        out = CollectSink()
        flow.source(files.read(p, on_error=policy),
                    watermark=ms.WatermarkStrategy.monotonous(timestamp="ts")).sink(out)
        if policy == "fail":
            with pytest.raises(RecordError) as err:
                flow.run()
            assert f"{p}:3" in str(err.value)  # the first bad line
            continue
        result = flow.run()
        assert sorted(r["id"] for r in out.values) == [1, 3, 5]
        assert result.total("skipped") == 3


def test_positions_of_a_columnar_chunk_are_its_own_lines(tmp_path: Path) -> None:
    p = tmp_path / "in.jsonl"
    p.write_bytes(b"".join(good(i) + b"\n" for i in range(1, 6)))
    reader = files.read(p).open(SourceContext(step="s", clock=ManualClock(), policy="fail"))
    chunk = reader.poll_frame(100) if getattr(reader, "columnar", getattr(reader, "can_poll_frame", False)) \
        else reader.poll(100)
    assert len(chunk) == 5
    assert [reader.position_of(i) for i in range(3)] == [f"{p}:1", f"{p}:2", f"{p}:3"]


# -- 5. fuzz: every non-blank line is good, skipped or dead-lettered; the modes agree ------------

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)
_good_json = st.fixed_dictionaries({"id": st.integers(-2**40, 2**40), "s": _text,
                                    "tags": st.lists(_text, max_size=3)}).map(
    lambda r: json.dumps(r, ensure_ascii=bool(len(r["s"]) % 2)).encode())
_bad_json = st.one_of(
    st.binary(max_size=12).filter(lambda b: b"\n" not in b),       # garbage
    st.sampled_from([b"[1, 2]", b"3", b'"s"', b"null", b"{", b'{"a": NaN}', b'{"a": 1e400}',
                     b'{"s": "\\ud800"}', b'{"s": "\\udfff\\ud800"}', b'{"s": "\xff"}']),
    st.integers(MAX_JSON_DEPTH + 1, 1100).map(nested),
)
_blank = st.sampled_from([b"", b"  ", b"\t", b"\r"])


def _json_line(kind: int, good_line: bytes, bad_line: bytes, blank: bytes) -> bytes:
    return (good_line, bad_line, blank)[kind]


_json_lines = st.lists(st.builds(_json_line, st.sampled_from([0, 0, 0, 1, 2]), _good_json, _bad_json, _blank)
                       | st.integers(1, MAX_JSON_DEPTH).map(nested), min_size=1, max_size=25)


def _norm(rows: list[Any]) -> list[Any]:
    """Rows without null fields: a columnar batch has every field of its lines, null where a line has none."""
    return canon([{k: v for k, v in r.items() if v is not None} for r in rows])


def _check_modes(path: Path, fmt: str, records: int, chunk: int, blank: int, **kw: Any) -> None:
    """Both modes: every non-blank line is good, skipped or dead-lettered, every blank line is
    counted, and the outcomes agree."""
    seen = []
    for mode in ("native", "microbatch"):
        dlq = CollectSink()
        values, result = run_source(files.read(path, format=fmt, on_error=dead_letter(dlq), **kw),
                                    mode=mode, max_chunk=chunk)
        assert len(values) + result.total("skipped") + result.total("dead_lettered") == records, mode
        assert result.total("dead_lettered") == len(dlq.values)
        assert result.total("blank_lines") == blank, mode
        seen.append((_norm(values), sorted((d["position"], d["raw"]) for d in dlq.values)))
    assert seen[0] == seen[1]


_FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])


@_FUZZ
@given(lines=_json_lines, chunk=st.sampled_from([3, 1000]))
def test_fuzz_json_lines(tmp_path: Path, exec_mode: str, lines: list[bytes], chunk: int) -> None:
    if exec_mode != "native":
        pytest.skip("the fuzz test runs the native and micro-batch modes itself")
    p = tmp_path / "fuzz.jsonl"
    p.write_bytes(b"\n".join(lines) + b"\n")
    records = sum(1 for x in lines if x.strip())
    _check_modes(p, "jsonl", records, chunk, len(lines) - records)


_cell = st.text(st.characters(whitelist_categories=("L", "N"), max_codepoint=0x3ff), max_size=4)
_good_csv = st.tuples(st.integers(-999, 999), _cell).map(lambda t: f"{t[0]},{t[1]}".encode())
_bad_csv = st.one_of(
    st.tuples(_cell, _cell, _cell).map(lambda t: ",".join(t).encode()),   # three fields
    _cell.map(lambda c: f"x{c},1".encode()),                              # n not an int
    _cell.map(lambda c: f'"{c},1'.encode()),                              # a quote that never closes
    _cell.map(lambda c: f'"{c}"x,1'.encode()),                            # junk after a closing quote
    st.just(b"\xff\xfe,1"),                                               # not UTF-8
)
_csv_lines = st.lists(st.builds(_json_line, st.sampled_from([0, 0, 0, 1, 2]), _good_csv, _bad_csv, _blank),
                      min_size=1, max_size=25)


@_FUZZ
@given(lines=_csv_lines, chunk=st.sampled_from([3, 1000]))
def test_fuzz_csv(tmp_path: Path, exec_mode: str, lines: list[bytes], chunk: int) -> None:
    if exec_mode != "native":
        pytest.skip("the fuzz test runs the native and micro-batch modes itself")
    # every line is one record: a quote that opens never closes on a later line
    opened = [i for i, x in enumerate(lines) if x.startswith(b'"') and x.count(b'"') == 1]
    if opened:
        lines = [x for i, x in enumerate(lines) if i <= opened[0] or b'"' not in x]
    p = tmp_path / "fuzz.csv"
    p.write_bytes(b"n,c\n" + b"\n".join(lines) + b"\n")
    records = sum(1 for x in lines if x.strip())
    _check_modes(p, "csv", records, chunk, len(lines) - records, csv_types={"n": int})


def test_deeply_nested_chunks_are_decoded_by_rows_not_polars(tmp_path: Path) -> None:
    # polars' cost per line grows steeply with depth (~0.4 s a line at 254 levels): such a chunk
    # takes the row decoder (orjson), which gives the same records
    from millstream.connectors._files_read import _COLUMNAR_MAX_DEPTH, _ndjson_frame

    assert _ndjson_frame([good(1), nested(_COLUMNAR_MAX_DEPTH)]) is not None
    assert _ndjson_frame([good(1), nested(_COLUMNAR_MAX_DEPTH + 1)]) is None
    assert _ndjson_frame([good(1), b'{"s": "' + b"[" * 100 + b'"}']) is not None  # brackets in text
    p = tmp_path / "in.jsonl"
    p.write_bytes(b"".join(nested(MAX_JSON_DEPTH) + b"\n" for _ in range(20)))
    values, result = run_source(files.read(p))
    assert len(values) == 20 and values[0] == orjson.loads(nested(MAX_JSON_DEPTH))


def test_stdin_takes_hostile_lines_by_the_same_rules() -> None:
    import io

    from millstream.connectors import stdio

    data = b"\n".join([good(1), b"", nested(MAX_JSON_DEPTH + 1), b'{"s": "\\ud800"}', nested(MAX_JSON_DEPTH),
                       good(2)]) + b"\n"
    dlq = CollectSink()
    flow = ms.Flow("stdin")
    out = CollectSink()
    flow.source(stdio.read(stream=io.BytesIO(data), on_error=dead_letter(dlq))).sink(out)
    result = flow.run()
    assert len(out.values) == 3 and result.total("dead_lettered") == 2 and result.total("blank_lines") == 1
    assert sorted(d["position"] for d in dlq.values) == ["stdin:3", "stdin:4"]


def test_at_most_once_writes_a_dead_letter_once_across_a_crash(tmp_path: Path) -> None:
    """At-most-once records how far a source read before processing the chunk; a bad record's dead
    letter is written after that record, not before: a crash in between (the failpoint) reads the bad
    record again after the restart, and it must not reach the dead-letter sink twice."""
    from millstream._checkpoint import _failpoints

    p = tmp_path / "in.jsonl"
    lines = [good(i) for i in range(40)]
    lines[25] = b"{not json"
    p.write_bytes(b"\n".join(lines) + b"\n")
    dlq_path = tmp_path / "dlq.jsonl"

    def run() -> list[Any]:
        out = CollectSink()
        flow = ms.Flow("amo-dlq")
        flow.source(files.read(p, on_error=dead_letter(files.write(dlq_path)), name="in")).sink(out)
        flow.run(guarantee="at-most-once", checkpoint_dir=tmp_path / "ck", max_chunk=10)
        return out.values

    _failpoints.arm("source.read=raise#3")  # the third chunk (lines 21-30, with the bad one) is read, not recorded
    try:
        with pytest.raises(_failpoints.FailpointError):
            run()
    finally:
        _failpoints.arm("")
    run()
    letters = [json.loads(line) for line in dlq_path.read_text().splitlines()]
    assert [d["position"] for d in letters] == [f"{p}:26"], letters


# -- every hostile line of the chaos campaign, in every mode and chunk size (issue 13 check) ---------------------


def _every_mode_and_chunk(path: Path, fmt: str, **kw: Any) -> list[tuple[Any, ...]]:
    seen = []
    for mode in ("native", "microbatch", "batch"):
        for chunk in (1, 7, 4096):
            dlq = CollectSink()
            values, result = run_source(files.read(path, format=fmt, on_error=dead_letter(dlq), **kw), mode=mode,
                                        max_chunk=chunk)
            seen.append((_norm(values), sorted((d["position"], d["raw"]) for d in dlq.values),
                         result.total("blank_lines"), len(values) + result.total("dead_lettered")))
    return seen


def test_every_hostile_json_line_is_taken_alike_in_every_mode_and_chunk(tmp_path: Path, exec_mode: str) -> None:
    if exec_mode != "native":
        pytest.skip("runs every mode itself")
    from chaos.campaign import hostile_json_lines

    lines = [x for i, h in enumerate(hostile_json_lines()) for x in (good(i), h)]
    p = tmp_path / "hostile.jsonl"
    p.write_bytes(b"\r\n".join(lines) + b"\r\n")  # CRLF: the same lines
    seen = _every_mode_and_chunk(p, "jsonl")
    assert all(s == seen[0] for s in seen)
    records = sum(1 for x in lines if x.strip(b" \t\r\x0b\x0c"))
    assert seen[0][3] == records and seen[0][2] == len(lines) - records


def test_every_hostile_csv_record_is_taken_alike_in_every_mode_and_chunk(tmp_path: Path, exec_mode: str) -> None:
    if exec_mode != "native":
        pytest.skip("runs every mode itself")
    from chaos.campaign import hostile_csv_lines

    for i, h in enumerate(hostile_csv_lines()):
        p = tmp_path / f"hostile{i}.csv"
        p.write_bytes(b"c,n\n" + b"\n".join([b"a,1", b"b,2", h, b"c,3", b"d,4"]) + b"\n")
        seen = _every_mode_and_chunk(p, "csv", csv_types={"n": int})
        assert all(s == seen[0] for s in seen), h
        assert {"a", "b", "c", "d"} <= {dict(r)["c"] for r in seen[0][0]}, h  # a stray quote costs its line only
