"""Fixtures for the console's browser tests: a real `isvc up` per module and Playwright pages in Debian's chromium.

Playwright comes from PyPI (the dev extra); its own browser download does not work here, so it launches the
Debian `chromium` binary by path. Without chromium the tests skip naming the package; under
ISVC_REQUIRE_SYSTEM_DEPS=1 (CI, which installs it) they fail instead.

Screenshots: `shoot(page, name)` writes `docs/console/<name>.png` (1280x800) and `<name>-phone.png` (390 wide)
only when ISVC_CONSOLE_SCREENSHOTS=1, so an ordinary run never rewrites the docs' images:

    ISVC_CONSOLE_SCREENSHOTS=1 .venv/bin/python -m pytest -q tests/console
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import need_binary
from tests.controlplane.cp_helpers import NS, ControlPlane, seed
from tests.controlplane.cp_helpers import start as start_up
from tests.controlplane.cp_helpers import stop as stop_up

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

__all__ = ["CONSOLE", "DESKTOP", "NS", "PHONE", "seed"]  # NS and seed: tests/controlplane's, for the test modules
CONSOLE = "/_isvc/console"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "console"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
SCREENSHOTS_ENV = "ISVC_CONSOLE_SCREENSHOTS"


@pytest.fixture(scope="session")
def chromium_path() -> str:
    return need_binary("chromium")


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> Iterator[ControlPlane]:
    """One real `isvc up` per test module, on 127.0.0.1 (loopback: no admin key needed), with
    `pvc://global-shared/models` holding the embedded SmolLM2 under the seed's folder name and --cpu-fallback,
    so the seed's first manifest runs as written."""
    tmp = tmp_path_factory.mktemp("console")
    models = tmp / "pvc" / "global-shared" / "models"
    models.mkdir(parents=True)
    (models / "Llama-2-7b-chat-hf").symlink_to(smollm2_dir, target_is_directory=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ISVC_PVC_ROOT", str(tmp / "pvc"))
        cp = start_up(tmp, "--cpu-fallback")
        try:
            yield cp
        finally:
            stop_up(cp)


@pytest.fixture(scope="module")
def browser(chromium_path: str) -> Iterator[Browser]:
    """Headless Debian chromium driven by Playwright's sync API (module scope: ~1 s to launch)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def js_errors() -> list[str]:
    """Uncaught JavaScript errors of the test's pages (a test asserts it stays empty)."""
    return []


@pytest.fixture
def page(browser: Browser, console: ControlPlane, js_errors: list[str]) -> Iterator[Page]:
    """A fresh 1280x800 page whose relative URLs resolve against the gateway."""
    context = browser.new_context(viewport=DESKTOP, base_url=console.url)
    context.set_default_timeout(15_000)
    page = context.new_page()
    page.on("pageerror", lambda exc: js_errors.append(str(exc)))
    try:
        yield page
    finally:
        context.close()


def screenshots_enabled() -> bool:
    return os.environ.get(SCREENSHOTS_ENV) == "1"


@pytest.fixture
def shoot() -> Callable[[Page, str], None]:
    """shoot(page, name): docs/console/<name>.png at 1280x800 and <name>-phone.png at 390 wide, when enabled."""

    def take(page: Page, name: str) -> None:
        if not screenshots_enabled():
            return
        DOCS.mkdir(parents=True, exist_ok=True)
        size = page.viewport_size or DESKTOP
        try:
            page.set_viewport_size(DESKTOP)
            page.screenshot(path=str(DOCS / f"{name}.png"))
            page.set_viewport_size(PHONE)
            page.screenshot(path=str(DOCS / f"{name}-phone.png"), full_page=True)
        finally:
            page.set_viewport_size(size)

    return take
