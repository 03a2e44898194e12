"""Browser fixtures: Debian's Chromium, headless, driven by Playwright.

Playwright would download a browser build of its own; we point it at /usr/bin/chromium
instead (installed by `scripts/services.sh --with-browser`, which `make test` runs). Pages
are served by pytest-django's `live_server`, so the browser sees the real stack: the same
URLs, middleware and static files as gunicorn serves.

Screenshots go to var/screenshots/ (git-ignored) so a person can look at what a test saw.
"""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("MAILQ_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parent.parent / "var" / "screenshots"
# Without the background-networking flags Chromium keeps trying hosts that this machine (and
# a closed CI network) refuses; as root it needs --no-sandbox.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 375, "height": 740}


@pytest.fixture(scope="session")
def browser() -> Iterator["object"]:
    """One headless Chromium for the whole run."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} not found: run `bash scripts/services.sh --with-browser`")
    # Playwright's sync API keeps an event loop on this thread; Django's ORM refuses to run
    # where a loop is running unless told that this (test) code is not async.
    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@pytest.fixture
def browser_page(browser) -> Iterator["object"]:
    """A fresh page (own cookies) at desktop size; `page.set_viewport_size(PHONE)` for a phone."""
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


def screenshot(page, name: str) -> Path:
    """Save what the page shows now as var/screenshots/<name>.png and return the path."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
