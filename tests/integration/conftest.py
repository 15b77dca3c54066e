"""Fixtures of the integration tests (real servers on loopback; see services.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.integration import services


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[services.Broker]:
    """One private tansu broker for the whole session (topics are named per test)."""
    services.need_module("confluent_kafka", "kafka")
    with services.tansu(str(tmp_path_factory.mktemp("tansu"))) as broker:
        yield broker
