"""Headless Chromium for the dashboard's browser tests: the Debian package ``chromium`` driven by Python
Playwright (``pip install playwright``; never ``playwright install``: the tests use the system browser).

Without Chromium or Playwright the tests are skipped with the reason, unless ``MILLSTREAM_REQUIRE_SERVICES=1``
(CI, ``.ci/run``), where they fail instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from tests.integration.services import unavailable

CHROMIUM = os.environ.get("MILLSTREAM_CHROMIUM", "/usr/bin/chromium")
#: Without these Chromium hangs on a closed network (updates, sync, QUIC probes); never --virtual-time-budget:
#: the page holds an event stream open and never settles.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: Generous: a loaded CI machine is slow, and every wait is for a condition, never a fixed sleep.
TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium for one test module. Not for the session: Playwright's sync API runs an event loop on
    the main thread until it stops, and every later test that calls asyncio.run() (the NATS
    connector, the dashboard's guard test) would fail with "cannot be called from a running event loop"."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("Python Playwright is not installed (pip install playwright; the tests use the system Chromium)")
    if not os.access(CHROMIUM, os.X_OK):
        unavailable(f"Chromium is not installed at {CHROMIUM} (apt-get install -y chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            yield b
        finally:
            b.close()


class PageProblems:
    """What the page complained about: console errors (a content security policy violation is one),
    uncaught exceptions and failed requests."""

    def __init__(self, page: Any) -> None:
        self.items: list[str] = []
        page.on("console", lambda m: self.items.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.items.append(f"page error: {e}"))

    def other_than(self, *allowed: str) -> list[str]:
        return [p for p in self.items if not any(a in p for a in allowed)]


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    ctx.set_default_timeout(TIMEOUT_MS)
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture
def page(context: Any) -> Any:
    p = context.new_page()
    p.problems = PageProblems(p)
    return p
