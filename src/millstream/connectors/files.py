"""Files: JSON lines, CSV, text lines and Parquet; read bounded or followed like ``tail -F``.

>>> import millstream as ms, pathlib, shutil, tempfile
>>> from millstream.connectors import files
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "in.jsonl").write_text('{"n": 1}\\n{"n": 2}\\n')
>>> flow = ms.Flow("tenfold")
>>> flow.source(files.read(d / "in.jsonl")).map(lambda r: {"n": r["n"] * 10}).sink(files.write(d / "out.jsonl"))
>>> _ = flow.run()
>>> (d / "out.jsonl").read_text()
'{"n":10}\\n{"n":20}\\n'

The format comes from the file name (``.jsonl``/``.ndjson``/``.json``, ``.csv``,
``.txt``/``.log``, ``.parquet``; line formats may end in ``.gz``) or from ``format=``.
A malformed line goes to the source's ``on_error`` policy with its file and line
(``events.jsonl:42``); blank lines are ignored. Sources are replayable: their
position is a byte offset and line number per file. ``read(path, splits=N)`` makes
the source N fixed logical splits (a directory's files by name, one JSON-lines or
text file by byte range), so that a job at ``parallelism`` > 1 reads it on several
workers (docs/connectors/files.md).

Sinks and guarantees: ``write("out.jsonl")`` writes one file, made durable at each
checkpoint and continued after a restart (at-least-once: a restart may repeat the
records written since the last checkpoint). ``write("out/", transactional=True)``
writes a directory of part files, one per checkpoint, each renamed into place only
once its checkpoint is complete (exactly-once). Hidden ``.pending`` files hold what
is not committed yet; readers take the files whose names start with neither ``.``
nor ``_``, as ``read("out/")`` and :func:`read_committed` do:

>>> out = d / "out"
>>> flow = ms.Flow("exactly")
>>> flow.source(ms.connectors.memory.read([{"n": 1}, {"n": 2}])).sink(files.write(out, transactional=True))
>>> _ = flow.run()
>>> sorted(p.name for p in out.iterdir())
['part-00000000-0.jsonl']
>>> files.read_committed(out)
[{'n': 1}, {'n': 2}]
>>> shutil.rmtree(d)
"""

from __future__ import annotations

from millstream.connectors._files_common import FORMATS
from millstream.connectors._files_read import FileSource, ReadOptions, read
from millstream.connectors._files_write import FileSink, WriteOptions, write
from millstream.connectors._transactional import read_committed

__all__ = ["FORMATS", "FileSink", "FileSource", "ReadOptions", "WriteOptions", "read", "read_committed", "write"]
