"""JSON lines in micro-batch mode go from the file to the columnar decoder as the raw blocks read (never
split into lines and joined again): the blocks must be exactly the file's bytes, the positions
(line numbers, byte offsets for a resume) exact, and a bad line must still name its file:line as
native mode names it, whatever the block size, the chunk size and where the lines fall."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from millstream.connectors import SourceContext, _files_read, files
from millstream.connectors._files_read import _LineCursor
from millstream.testing import ManualClock

pytest.importorskip("polars")


def _ctx(letters: list[dict[str, Any]]) -> SourceContext:
    return SourceContext(step="s", clock=ManualClock(), policy="dead_letter", dead_letter_write=letters.append)


def _read(path: Path, *, frames: bool, chunk: int, block: int, position: Any = None
          ) -> tuple[list[Any], list[dict[str, Any]], list[Any]]:
    """(records, dead letters, (the reader's position, records so far) after each poll)."""
    letters: list[dict[str, Any]] = []
    reader: Any = files.read(path, format="jsonl", block_size=block).open(_ctx(letters))
    if position is not None:
        reader.restore(position)
    out: list[Any] = []
    positions: list[Any] = []
    try:
        while (got := (reader.poll_frame(chunk) if frames else reader.poll(chunk))) is not None:
            out += got if isinstance(got, list) else got.to_dicts()
            positions.append((reader.snapshot(), len(out)))
    finally:
        reader.close()
    return out, letters, positions


def _clean(rows: list[Any]) -> list[Any]:
    return [{k: v for k, v in r.items() if v is not None} for r in rows]


@pytest.mark.parametrize("seed", range(6))
def test_take_block_gives_the_files_bytes_with_exact_lines_and_offsets(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    lines = [json.dumps({"i": i, "s": "x" * rng.randint(0, 300)}).encode() for i in range(rng.randint(1, 400))]
    data = b"\n".join(lines) + (b"\n" if rng.random() < 0.5 else b"")  # maybe an unterminated last line
    path = tmp_path / "f.jsonl"
    path.write_bytes(data)
    cur = _LineCursor("f.jsonl", str(path), 0, 0, block=rng.choice([1024, 1500, 4096, 1 << 20]), whole=True)
    cur.raw_mode = True
    got, line = b"", 0
    try:
        while cur.ensure(n := rng.randint(1, 60)):
            if rng.random() < 0.2:  # lines taken split, then raw again: the order stays
                split, first = cur.take(rng.randint(1, 5))
                got += b"".join(s + b"\n" for s in split)
                assert first == line + 1
                line += len(split)
                continue
            block, k, first = cur.take_block(n)
            assert first == line + 1 and 0 < k <= n and block.count(b"\n") == k and block.endswith(b"\n")
            line += k
            got += block
            # the cursor's position is the start of the next line (the end of the file at most)
            assert cur.line == line
            assert cur.offset == min(len(got), len(data))
    finally:
        cur.close()
    assert line == len(lines)
    assert got == b"\n".join(lines) + b"\n"


def _messy_file(path: Path, rng: random.Random) -> None:
    out = []
    for i in range(3_000):
        r = rng.random()
        if r < 0.01:
            out.append(b"{not json")
        elif r < 0.015:
            out.append(b"")  # blank
        elif r < 0.02:
            out.append(b"[1, 2]")  # not an object
        elif r < 0.025:
            out.append(json.dumps({"i": i, "s": "crlf"}).encode() + b"\r")
        else:
            out.append(json.dumps({"i": i, "s": "é" * rng.randint(0, 40), "b": i % 2 == 0}, separators=(",", ":"),
                                  ensure_ascii=False).encode())
    path.write_bytes(b"\xef\xbb\xbf" + b"\n".join(out))  # a BOM, no newline at the end


@pytest.mark.parametrize("seed", range(3))
def test_bad_lines_name_the_same_file_line_as_native_mode(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    path = tmp_path / "messy.jsonl"
    _messy_file(path, rng)
    block, chunk = rng.choice([1024, 3000, 1 << 20]), rng.choice([7, 100, 1000, 100_000])
    native, native_letters, _ = _read(path, frames=False, chunk=chunk, block=block)
    columnar, letters, positions = _read(path, frames=True, chunk=chunk, block=block)
    assert _clean(columnar) == native
    assert [(d["position"], d["raw"]) for d in letters] == [(d["position"], d["raw"]) for d in native_letters]
    assert len(letters) > 10 and all(d["position"].startswith(f"{path}:") for d in letters)
    # a resume from a position gives the records after it, and the bad lines after it at the same lines
    for position, done in positions[::max(1, len(positions) // 4)]:
        rest, rest_letters, _ = _read(path, frames=True, chunk=chunk, block=block, position=position)
        assert _clean(rest) == native[done:]
        assert {d["position"] for d in rest_letters} <= {d["position"] for d in letters}


def test_good_chunks_are_never_split_into_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "good.jsonl"
    path.write_bytes(b"".join(json.dumps({"i": i, "s": f"v{i}"}, separators=(",", ":")).encode() + b"\n"
                               for i in range(20_000)))
    split: list[int] = []
    real = _files_read._split_block
    monkeypatch.setattr(_files_read, "_split_block", lambda b: split.append(1) or real(b))
    monkeypatch.setattr(_LineCursor, "_append", lambda self, parts: pytest.fail("lines were split"))
    rows, letters, _ = _read(path, frames=True, chunk=5_000, block=1 << 16)
    assert [r["i"] for r in rows] == list(range(20_000)) and not letters
    assert not split
