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
>>> shutil.rmtree(d)

The format comes from the file name (``.jsonl``/``.ndjson``/``.json``, ``.csv``,
``.txt``/``.log``, ``.parquet``; line formats may end in ``.gz``) or from ``format=``.
A malformed line goes to the source's ``on_error`` policy with its file and line
(``events.jsonl:42``); blank lines are ignored. Sources are replayable: their
position is a byte offset and line number per file.
"""

from __future__ import annotations

from millstream.connectors._files_common import FORMATS
from millstream.connectors._files_read import FileSource, ReadOptions, read
from millstream.connectors._files_write import FileSink, WriteOptions, write

__all__ = ["FORMATS", "FileSink", "FileSource", "ReadOptions", "WriteOptions", "read", "write"]
