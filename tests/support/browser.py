"""A real headless browser for page tests: Debian's chromium driven by Playwright, with a fresh profile.

Playwright's own browser download is never used (`executable_path` points at the system's chromium). Every
console error, uncaught exception, failed request (but one the page cancelled itself) and HTTP error answer of
the page is collected in `problems`, so a test can assert that the page ran clean.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright

from tests.support.daemon import REPO

ARTIFACTS = REPO / "test-artifacts"  # screenshots of the page for people to look at (docs/*.png)

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class Browser:
    page: Page
    problems: list[str] = field(default_factory=list)


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("no chromium on PATH: install Debian's chromium package (scripts/setup --test does)")
    return path


@contextmanager
def chromium(profile: Path, width: int = 1400, height: int = 1100) -> Iterator[Browser]:
    """A headless chromium page; `profile` must be a new, empty folder."""
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=chromium_path(),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": width, "height": height},
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            browser = Browser(page)
            page.on(
                "console",
                lambda message: (
                    browser.problems.append(f"console {message.type}: {message.text}")
                    if message.type in ("error", "assert")
                    else None
                ),
            )
            page.on("pageerror", lambda error: browser.problems.append(f"uncaught: {error}"))
            # a request the page itself cancels, as a reload does with the favicon still loading, is no fault
            page.on(
                "requestfailed",
                lambda request: (
                    browser.problems.append(f"failed ({request.failure}): {request.url}")
                    if request.failure != "net::ERR_ABORTED"
                    else None
                ),
            )
            page.on(
                "response",
                lambda response: (
                    browser.problems.append(f"HTTP {response.status}: {response.url}")
                    if response.status >= 400
                    else None
                ),
            )
            yield browser
        finally:
            context.close()
