"""The console's live tables for a keyboard and screen-reader user, in a real headless chromium.

A live update changes only what changed: the link a keyboard user is on keeps the focus, an open namespace
select is left alone, and a short status line (not the whole table) says what changed. Scrolling tables can be
reached with the keyboard, and a replica's Logs link is on screen at phone width. Fake predictors (stdlib, start
in ~50 ms) stand in for models: these tests are about the page, not the model.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.console.conftest import CONSOLE, NS, PHONE
from tests.controlplane.cp_helpers import ControlPlane, fake_container
from tests.controlplane.cp_helpers import start as start_up
from tests.controlplane.cp_helpers import stop as stop_up

if TYPE_CHECKING:
    from playwright.sync_api import Page

SERVICE = "llama2-7b-chat"  # the seed's name, so the replicas table is as wide as the real one's


def expect(target):  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect as pw_expect

    return pw_expect(target)


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """An open (loopback) console with the seed's service name served by a fake predictor (overrides conftest's)."""
    cp = start_up(tmp_path_factory.mktemp("a11y"))
    try:
        assert cp.apply(fake_container(SERVICE, ns=NS)) == 0
        cp.wait_ready(SERVICE, NS)
        yield cp
    finally:
        stop_up(cp)


def mark_focus(page: Page, mark: str) -> None:
    page.evaluate("mark => { document.activeElement.__mark = mark }", mark)


def focused_mark(page: Page) -> str | None:
    return page.evaluate("() => document.activeElement ? document.activeElement.__mark || null : null")  # type: ignore[no-any-return]


def test_a_services_update_keeps_the_focused_link_and_says_what_changed(
    page: Page, console: ControlPlane, js_errors: list[str]
) -> None:
    page.goto(CONSOLE)
    row = page.locator(f'#services tr[data-service="{NS}/{SERVICE}"]')
    expect(row.get_by_role("cell", name="True", exact=True)).to_be_visible()
    status = page.get_by_role("status")
    link = row.get_by_role("link", name=SERVICE, exact=True)
    link.focus()
    mark_focus(page, "the service's link")

    assert console.apply(fake_container("second", "--ready-after", "1", ns=NS)) == 0
    expect(page.locator(f'#services tr[data-service="{NS}/second"]')).to_have_count(1, timeout=15_000)
    assert focused_mark(page) == "the service's link", "the live update took the focus off the link"
    expect(status).to_contain_text("second", timeout=15_000)
    expect(status).to_contain_text("second is now READY", timeout=15_000)
    assert focused_mark(page) == "the service's link"
    # the live region is the status line, not the table (which a screen reader would read out again whole)
    assert page.locator("#services-live").get_attribute("aria-live") is None
    assert not js_errors


def test_the_namespace_select_is_rebuilt_only_when_the_namespaces_change(
    page: Page, console: ControlPlane, js_errors: list[str]
) -> None:
    page.goto(CONSOLE)
    select = page.get_by_label("Namespace", exact=True)
    expect(select.locator("option")).to_have_count(2)  # All namespaces, kserve-test
    expect(page.locator(f'#services tr[data-service="{NS}/second"]')).to_have_count(1)
    # an update that leaves the namespaces as they were leaves the select's options alone (an open one stays open)
    page.evaluate("() => { for (const o of document.getElementById('ns-filter').options) o.__kept = true }")
    assert console.apply(fake_container("third", ns=NS)) == 0
    expect(page.locator(f'#services tr[data-service="{NS}/third"]')).to_have_count(1, timeout=15_000)
    assert page.evaluate("() => [...document.getElementById('ns-filter').options].every(o => o.__kept)"), (
        "the namespace select was rebuilt though its namespaces did not change"
    )
    # a new namespace is offered; the choice holds
    select.select_option(NS)
    assert console.apply(fake_container("elsewhere", ns="other-team")) == 0
    expect(select.locator("option", has_text="other-team")).to_have_count(1, timeout=15_000)
    expect(select).to_have_value(NS)
    expect(page.locator('#services tr[data-service="other-team/elsewhere"]')).to_be_hidden()
    expect(page.locator(f'#services tr[data-service="{NS}/{SERVICE}"]')).to_be_visible()
    assert not js_errors


def test_a_replica_update_keeps_the_focused_logs_link(page: Page, console: ControlPlane, js_errors: list[str]) -> None:
    page.goto(f"{CONSOLE}/services/{NS}/{SERVICE}")
    (replica,) = console.replicas(SERVICE, NS)
    replicas = page.locator("#replicas")
    expect(replicas).to_contain_text(str(replica.pid))
    page.get_by_role("link", name="Logs", exact=True).focus()
    mark_focus(page, "Logs")
    os.kill(replica.pid or 0, signal.SIGKILL)  # the controller restarts it: a new pid, one restart
    new_pid = console.wait(
        lambda: next((r.pid for r in console.replicas(SERVICE, NS) if r.pid and r.pid != replica.pid), None),
        30,
        "the restarted replica",
    )
    expect(replicas).to_contain_text(str(new_pid), timeout=15_000)
    assert focused_mark(page) == "Logs", "the replica table's update took the focus off the Logs link"
    assert page.locator("#service-live").get_attribute("aria-live") is None
    assert not js_errors


def test_scrolling_tables_are_reachable_by_keyboard(page: Page, console: ControlPlane, js_errors: list[str]) -> None:
    """WCAG's scrollable-region rule: a box that scrolls sideways is focusable and named, so arrow keys scroll it."""
    page.set_viewport_size(PHONE)
    for path, names in (
        ("/", ["InferenceServices"]),
        (f"/services/{NS}/{SERVICE}", ["Revisions", "Replicas", "Conditions", "Events"]),
    ):
        page.goto(CONSOLE + path)
        boxes = page.locator(".table-wrap")
        expect(boxes).to_have_count(len(names))
        for name in names:
            expect(page.get_by_role("region", name=name, exact=True)).to_have_attribute("tabindex", "0")
        page.locator("body").focus()
        reached = set()
        for _ in range(40):
            page.keyboard.press("Tab")
            reached.add(page.evaluate("() => document.activeElement.getAttribute('aria-label')"))
        assert set(names) <= reached, f"{path}: not reached with Tab: {set(names) - reached}"
    assert not js_errors


def test_the_logs_link_is_on_screen_at_phone_width(page: Page, console: ControlPlane, js_errors: list[str]) -> None:
    page.set_viewport_size(PHONE)
    page.goto(f"{CONSOLE}/services/{NS}/{SERVICE}")
    logs = page.get_by_role("link", name="Logs", exact=True)
    expect(logs).to_be_visible()
    box = logs.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], box
    widths = page.evaluate("() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert widths[0] <= widths[1], f"the service page at {PHONE['width']}px scrolls sideways: {widths}"
    assert not js_errors
