"""The browser tests' fixtures: Debian's Chromium driven by Playwright (one per test module), a
real gateway (uvicorn in a thread) per test, and a page of it that fails its test on an uncaught
error, a Content-Security-Policy violation or a JavaScript dialog. Registered for every test
module by tests/conftest.py."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Dialog, Page, ViewportSize, sync_playwright

from monitor.keys import Keys
from tests.browser import CHROMIUM, CHROMIUM_ARGS, LiveGateway
from tests.conftest import free_port

VIEWPORT: ViewportSize = {"width": 1280, "height": 800}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():  # .ci/run installs it and sets REQUIRE_BROWSER
        message = f"no Chromium at {CHROMIUM} (apt install chromium)"
        if os.environ.get("REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def gateway(redis_url: str, keys: Keys) -> Iterator[LiveGateway]:
    gw = LiveGateway(redis_url, keys.prefix, free_port())
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture
def dialogs() -> list[str]:
    """Every JavaScript dialog (alert, confirm, prompt) the page opened: there must be none."""
    return []


def new_page(browser: Browser, base_url: str, dialogs: list[str], errors: list[str],
             color_scheme: str = "light") -> Page:
    context = browser.new_context(viewport=VIEWPORT, base_url=base_url, accept_downloads=True,
                                  color_scheme=color_scheme)  # type: ignore[arg-type]
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base_url)
    page = context.new_page()
    page.set_default_timeout(10_000)

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.on("pageerror", lambda error: errors.append(str(error)))
    # Whatever the page does must pass its Content-Security-Policy.
    page.on("console", lambda message: errors.append(message.text)
            if "Content Security Policy" in message.text else None)
    return page


@pytest.fixture
def page(browser: Browser, gateway: LiveGateway, dialogs: list[str]) -> Iterator[Page]:
    """A page of the gateway; no uncaught error, CSP violation or dialog by its end."""
    errors: list[str] = []
    page = new_page(browser, gateway.url, dialogs, errors)
    yield page
    page.context.close()
    assert errors == [], f"uncaught errors in the page: {errors}"
    assert dialogs == [], f"the page opened dialogs: {dialogs}"
