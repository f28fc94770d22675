"""The console's admin key in the browser: `isvc up --admin-key` locks it (even on loopback), a wrong key
is refused inline, a namespace API key is no admin key, the right one opens the console for 12 hours, and
Sign out locks it again."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

from tests.console.conftest import CONSOLE
from tests.controlplane.cp_helpers import ControlPlane
from tests.controlplane.cp_helpers import start as start_up
from tests.controlplane.cp_helpers import stop as stop_up

if TYPE_CHECKING:
    from playwright.sync_api import Page

ADMIN_KEY = "console-admin-key-for-tests"
NS_KEY = "namespace-key-for-tests"


def expect(target):  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect as pw_expect

    return pw_expect(target)


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A locked console (no service needed), overriding conftest's SmolLM2 one for this module."""
    cp = start_up(tmp_path_factory.mktemp("locked"), "--admin-key", ADMIN_KEY, "--api-key", f"default={NS_KEY}")
    try:
        yield cp
    finally:
        stop_up(cp)


def sign_in(page: Page, key: str) -> None:
    page.get_by_label("Admin key", exact=True).fill(key)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_load_state()


def test_the_console_asks_for_the_admin_key(
    page: Page, js_errors: list[str], shoot: Callable[[Page, str], None]
) -> None:
    page.goto(CONSOLE)
    expect(page).to_have_title(re.compile(r"^isvc console"))
    expect(page.locator("#services")).to_have_count(0)
    shoot(page, "login")
    for wrong in ("not-the-key", NS_KEY):  # a namespace's API key never grants the console
        sign_in(page, wrong)
        expect(page.get_by_role("alert")).to_contain_text("not the admin key")
        expect(page.locator("#services")).to_have_count(0)
    sign_in(page, ADMIN_KEY)
    expect(page.locator("#services")).to_be_visible()
    page.get_by_role("navigation").get_by_role("link", name="Apply", exact=True).click()
    expect(page.get_by_label("Manifest", exact=True)).to_be_visible()  # the key holds across pages
    assert not js_errors


def test_a_sign_in_lasts_12_hours_and_sign_out_locks_the_console_again(page: Page, js_errors: list[str]) -> None:
    page.goto(CONSOLE)
    expect(page.get_by_role("button", name="Sign out", exact=True)).to_have_count(0)  # nothing to sign out of yet
    sign_in(page, ADMIN_KEY)
    expect(page.locator("#services")).to_be_visible()
    (cookie,) = [c for c in page.context.cookies() if c["name"] == "isvc_admin"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == CONSOLE, cookie
    assert not cookie["secure"], cookie  # plain http here: a Secure cookie would never come back
    assert 12 * 3600 - 60 < cookie["expires"] - time.time() <= 12 * 3600, cookie
    page.get_by_role("banner").get_by_role("button", name="Sign out", exact=True).click()
    page.wait_for_load_state()
    expect(page.get_by_label("Admin key", exact=True)).to_be_visible()
    assert [c for c in page.context.cookies() if c["name"] == "isvc_admin"] == []
    page.goto(CONSOLE)
    expect(page.locator("#services")).to_have_count(0)
    expect(page.get_by_label("Admin key", exact=True)).to_be_visible()
    assert not js_errors


def test_a_live_view_whose_sign_in_ran_out_goes_to_the_sign_in_page(page: Page, js_errors: list[str]) -> None:
    """When the cookie runs out (or another tab signs out), a page that updates itself says so by going to the
    sign-in page, instead of showing old numbers forever."""
    page.goto(CONSOLE)
    sign_in(page, ADMIN_KEY)
    page.get_by_role("navigation").get_by_role("link", name="Metrics", exact=True).click()
    expect(page.get_by_role("heading", name="Metrics", exact=True)).to_be_visible()
    page.context.clear_cookies()  # what the browser does when the 12 hours are up
    expect(page.get_by_label("Admin key", exact=True)).to_be_visible(timeout=10_000)  # the next poll, within 2 s
    assert page.url.endswith(f"{CONSOLE}/login"), page.url
    assert not js_errors
