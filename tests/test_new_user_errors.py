"""Issue 10 §6: errors a new user hit get a clear message, early."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import millstream as ms
from millstream.errors import CheckpointError, ConfigError, StepError
from millstream.testing import CollectSink, TestSource

pytestmark = pytest.mark.usefixtures("exec_mode")


def test_an_output_folder_that_cannot_be_created_is_named_before_any_input_is_read(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    read = []
    flow = ms.Flow("out")
    sink = ms.connectors.files.write(blocker / "out" / "o.jsonl")
    flow.source(TestSource([{"x": 1}])).inspect(read.append).sink(sink)
    with pytest.raises(ConfigError, match=r"cannot be created.*is a file, not a folder") as err:
        flow.run()
    assert "fix:" in str(err.value)
    assert read == []


def test_a_transactional_output_folder_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    flow = ms.Flow("out")
    flow.source(TestSource([{"x": 1}])).sink(ms.connectors.files.write(blocker / "dir", transactional=True))
    with pytest.raises(ConfigError, match="cannot be created"):
        flow.run()


def test_a_checkpoint_folder_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    flow = ms.Flow("ck")
    flow.source(TestSource([{"x": 1}])).sink(CollectSink())
    with pytest.raises(CheckpointError, match=r"the checkpoint directory .* cannot be created"):
        flow.run(guarantee="at-least-once", checkpoint_dir=blocker / "ck")


def test_a_misspelt_field_names_the_close_ones() -> None:
    flow = ms.Flow("typo")
    flow.source(TestSource([{"amount": 1, "ts": 1}])).with_columns(y=ms.col("amout") * 2).sink(CollectSink())
    with pytest.raises(StepError, match=r"did you mean 'amount'\?"):
        flow.run()


@pytest.mark.parametrize(("times", "warned"), [
    ([1_733_570_000, 1_733_570_001], True),            # seconds since the epoch, read as ms: January 1970
    ([1_733_570_000_000, 1_733_570_001_000], False),  # milliseconds: fine
    ([1, 5, 1_000], False),                           # small test times: fine
])
def test_timestamps_that_look_like_seconds_are_warned_about(caplog: pytest.LogCaptureFixture, times: list[int],
                                                            warned: bool) -> None:
    flow = ms.Flow("units")
    (flow.source(ms.connectors.memory.read([{"ts": t} for t in times]),
                 watermark=ms.WatermarkStrategy.bounded(0, timestamp="ts")).sink(CollectSink()))
    with caplog.at_level(logging.WARNING, logger="millstream"):
        flow.run()
    hits = [r for r in caplog.records if "unit='s'" in r.getMessage()]
    assert len(hits) == (1 if warned else 0)
