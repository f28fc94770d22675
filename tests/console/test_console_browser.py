"""The console in a real headless chromium, against a real `isvc up` serving the embedded SmolLM2.

Issue 15's "Done when", as a user does it: apply the seed's first manifest from the Apply page, watch it
become READY on the Services page without reloading, chat with it in the Playground and see the answer
grow token by token, see a bad manifest's field error inline, follow a replica's log, delete the service.
The tests run in file order against one `isvc up` (module scope); the ones that need the service get it
from `served`, which applies it with the CLI only if the Apply page did not.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.console.conftest import CONSOLE, DESKTOP, NS, PHONE, seed
from tests.controlplane.cp_helpers import ControlPlane

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

SERVICE = "llama2-7b-chat"
MODEL = "llama2"
NAV = ("Services", "Apply", "Playground", "Metrics")
BAD = """\
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: bad-one, namespace: kserve-test}
spec:
  predictor:
    minReplicas: -1
    model:
      modelFormat: {name: huggingface}
      storageUri: pvc://global-shared/models
"""
Shoot = Callable[["Page", str], None]


def expect(target):  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect as pw_expect

    return pw_expect(target)


def nav_link(page: Page, name: str) -> Locator:
    return page.get_by_role("navigation").get_by_role("link", name=name, exact=True)


def open_view(page: Page, name: str) -> None:
    """Open the console's home, then follow the nav link `name` (as a user does)."""
    page.goto(CONSOLE)
    nav_link(page, name).click()
    page.wait_for_load_state()
    expect(page).to_have_title(re.compile(r"^isvc console"))


def service_row(page: Page, name: str = SERVICE) -> Locator:
    return page.locator("#services tr").filter(has=page.get_by_text(name, exact=True))


def ready_cell(row: Locator, value: str) -> Locator:
    return row.get_by_role("cell", name=value, exact=True)


@pytest.fixture(scope="module")
def served(console: ControlPlane) -> ControlPlane:
    """The seed's first manifest READY (the Apply-page test normally did it; else the CLI applies it)."""
    if console.store().service(NS, SERVICE) is None:
        assert console.apply(seed(1)) == 0
    console.wait_ready(SERVICE, NS, timeout_s=180)
    return console


def test_the_browser_reaches_the_gateway(page: Page, console: ControlPlane) -> None:
    """The infrastructure itself: Debian's chromium, driven by Playwright, talks to the `isvc up` gateway."""
    response = page.goto("/_isvc/healthz")
    assert response is not None and response.status == 200
    assert page.evaluate("() => navigator.userAgent").startswith("Mozilla/5.0")


def test_every_page_has_the_title_and_the_nav(page: Page, js_errors: list[str]) -> None:
    page.goto(CONSOLE)
    expect(page).to_have_title(re.compile(r"^isvc console"))
    for name in NAV:
        nav_link(page, name).click()
        page.wait_for_load_state()
        expect(page).to_have_title(re.compile(r"^isvc console"))
        for other in NAV:
            expect(nav_link(page, other)).to_be_visible()
    expect(page.locator("#services")).to_have_count(0)  # the last page was Metrics, not Services
    nav_link(page, "Services").click()
    expect(page.locator("#services")).to_be_visible()
    # `/` leads to the console when no service's Host matches
    page.goto("/")
    expect(page).to_have_title(re.compile(r"^isvc console"))
    assert not js_errors


def test_keyboard_reaches_the_nav_links_and_send(page: Page, js_errors: list[str]) -> None:
    open_view(page, "Playground")
    page.locator("body").focus()
    reached: set[str] = set()
    for _ in range(60):
        page.keyboard.press("Tab")
        focused = page.evaluate(
            "() => { const e = document.activeElement;"
            " return e ? (e.tagName + ':' + (e.innerText || e.value || e.getAttribute('aria-label') || '')).trim() : '' }"
        )
        reached.add(focused)
    wanted = {f"A:{name}" for name in NAV} | {"BUTTON:Send"}
    assert wanted <= reached, f"not reached with Tab: {sorted(wanted - reached)}; reached: {sorted(reached)}"
    assert not js_errors


def test_phone_width_has_no_horizontal_scroll(page: Page, js_errors: list[str]) -> None:
    page.set_viewport_size(PHONE)
    for name in NAV:
        open_view(page, name)
        widths = page.evaluate("() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        assert widths[0] <= widths[1], f"{name} at {PHONE['width']}px scrolls sideways: {widths}"
    assert not js_errors


def test_apply_the_seed_manifest_from_the_page_and_watch_it_become_ready(
    page: Page, console: ControlPlane, js_errors: list[str], shoot: Shoot
) -> None:
    open_view(page, "Apply")
    page.get_by_label("Manifest", exact=True).fill(seed(1))
    page.get_by_role("button", name="Dry run", exact=True).click()
    # the result names the service; no field error (an alert region may be there, empty)
    expect(page.get_by_role("status").filter(has_text=SERVICE)).to_have_count(1)
    assert [t.strip() for t in page.get_by_role("alert").all_text_contents()] in ([], [""])
    assert console.store().service(NS, SERVICE) is None, "a dry run must not create the service"
    shoot(page, "apply")

    page.get_by_role("button", name="Apply", exact=True).click()
    console.wait(lambda: console.store().service(NS, SERVICE), 15, "the applied service in the store")

    open_view(page, "Services")
    row = service_row(page)
    expect(row).to_have_count(1)
    page.evaluate("() => { window.__sameDocument = true }")
    # SmolLM2 loads for several seconds: READY is False/Unknown first, then True without a reload
    expect(ready_cell(row, "True")).to_be_visible(timeout=180_000)
    assert page.evaluate("() => window.__sameDocument === true"), "the page reloaded instead of updating live"
    expect(row).to_contain_text(NS)
    shoot(page, "services")
    assert not js_errors


def test_a_bad_manifest_shows_its_field_error_inline(
    page: Page, console: ControlPlane, js_errors: list[str], shoot: Shoot
) -> None:
    open_view(page, "Apply")
    page.get_by_label("Manifest", exact=True).fill(BAD)
    for button in ("Dry run", "Apply"):
        page.get_by_role("button", name=button, exact=True).click()
        alert = page.get_by_role("alert")
        expect(alert).to_contain_text("spec.predictor.minReplicas")
        expect(alert).to_contain_text("cannot be less than 0")
    assert console.store().service(NS, "bad-one") is None
    page.get_by_role("alert").scroll_into_view_if_needed()  # the screenshot shows the error
    shoot(page, "apply-error")
    assert not js_errors


def test_chat_in_the_playground_streams_tokens(
    page: Page, served: ControlPlane, js_errors: list[str], shoot: Shoot
) -> None:
    open_view(page, "Playground")
    select = page.get_by_label("Service", exact=True)
    options = select.locator("option").evaluate_all("os => os.map(o => [o.value, o.textContent])")
    value = next((v for v, text in options if SERVICE in v or SERVICE in text), None)
    assert value is not None, f"{SERVICE} is not offered: {options}"
    select.select_option(value)
    page.get_by_label("Message", exact=True).fill("What is the capital of France?")
    # every change of the answer's text, with its time, as the page makes it
    page.evaluate(
        """() => {
        const answer = document.getElementById('answer');
        window.__answerLengths = [];
        new MutationObserver(() => window.__answerLengths.push([performance.now(), answer.textContent.length]))
            .observe(answer, {childList: true, subtree: true, characterData: true});
    }"""
    )
    page.get_by_role("button", name="Send", exact=True).click()
    answer = page.locator("#answer")
    expect(answer).not_to_have_text("", timeout=60_000)
    last, stable_since = -1, time.monotonic()
    while time.monotonic() - stable_since < 2.0:  # done when the text has not changed for 2 s
        length = len(answer.text_content() or "")
        if length != last:
            last, stable_since = length, time.monotonic()
        time.sleep(0.1)
    lengths = [n for _, n in page.evaluate("() => window.__answerLengths")]
    growing = sorted({n for n in lengths if n > 0})
    assert len(growing) >= 3, f"the answer did not stream in (text lengths seen: {lengths})"
    assert lengths[-1] == max(lengths) == last
    assert (answer.text_content() or "").strip()
    # the stats line: time to the first token, tokens, tokens/s and the revision that answered (x-isvc-revision)
    (revision,) = {r.revision for r in served.replicas(SERVICE, NS)}
    stats = page.locator("#stats")
    for shown in (r"TTFT\D{0,5}\d+(\.\d+)?\s*ms", r"\b\d+ tokens\b(?!/s)", r"\d+(\.\d+)? tokens/s",
                  rf"revision\W{{0,3}}{re.escape(revision)}\b"):  # fmt: skip
        expect(stats).to_have_text(re.compile(shown))
    shoot(page, "playground")
    assert not js_errors


def test_metrics_page_charts_the_service(page: Page, served: ControlPlane, js_errors: list[str], shoot: Shoot) -> None:
    # some load before the page is open, once a scrape has seen the replica (every 2 s; `served` may have just
    # made it ready): the gateway samples whether the page is open or not
    time.sleep(3)
    r = httpx.post(
        f"{served.url}/openai/v1/completions",
        headers={"Host": f"{SERVICE}.{NS}.example.com"},
        json={"model": MODEL, "prompt": "Once upon a time", "max_tokens": 48},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    time.sleep(4.5)  # two scrapes after it
    open_view(page, "Metrics")
    main = page.locator("main")
    expect(main).to_contain_text(SERVICE)
    expect(main).to_contain_text("TTFT p50")
    # the history is drawn from the first poll: more points than a page that sampled only while open could have
    running = page.get_by_role("img", name=re.compile(r"^running requests"))
    expect(running).to_be_visible(timeout=3_000)
    drawn = running.locator("polyline").evaluate_all(
        "ps => ps.reduce((n, p) => n + p.getAttribute('points').trim().split(/\\s+/).length, 0)"
    )
    assert drawn >= 4, f"{drawn} points in the running-requests chart right after the page opened"
    expect(page.get_by_role("img", name=re.compile(r"^tokens\/s"))).to_be_visible()
    # TTFT p50 and p95 over time, each a line, from the requests' first tokens (within the last minute)
    ttft = page.get_by_role("img", name=re.compile(r"^TTFT p50 and p95"))
    expect(ttft).to_be_visible()
    lines = ttft.locator("polyline").evaluate_all(
        "ps => ps.map(p => [p.getAttribute('class'), p.getAttribute('points').trim().split(/\\s+/).length])"
    )
    assert {"p50", "p95"} <= {cls for cls, n in lines if n >= 2}, lines
    expect(main).to_contain_text("over the last")  # the quantiles' window, not the predictor's lifetime
    shoot(page, "metrics")
    # a service sampled once (as one that has just become ready is) has nothing to join: "no data yet", no line
    real = httpx.get(f"{served.url}{CONSOLE}/api/metrics", timeout=10).json()
    once = {name: {**m, "points": m["points"][-1:]} for name, m in real.items()}
    page.route("**/api/metrics", lambda route: route.fulfill(json=once))
    section = page.locator("#metrics section").filter(has=page.get_by_role("heading", name=f"{NS}/{SERVICE}"))
    expect(section.get_by_text("no data yet")).to_have_count(4)
    expect(section.get_by_role("img")).to_have_count(0)
    assert not js_errors


def test_service_detail_links_a_log_that_follows_live(
    page: Page, served: ControlPlane, js_errors: list[str], shoot: Shoot
) -> None:
    open_view(page, "Services")
    service_row(page).get_by_role("link", name=SERVICE, exact=True).click()
    page.wait_for_load_state()
    expect(page).to_have_title(re.compile(r"^isvc console"))
    expect(page.locator("main")).to_contain_text(MODEL)  # the model name to send
    shoot(page, "service")
    page.set_viewport_size(PHONE)  # wide tables scroll inside their box, not the page
    widths = page.evaluate("() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert widths[0] <= widths[1], f"the service page at {PHONE['width']}px scrolls sideways: {widths}"
    page.set_viewport_size(DESKTOP)

    page.get_by_role("link", name="Logs", exact=True).first.click()
    log = page.locator("#log")
    # the storage initializer's lines come first in a replica's log, then the model server's
    expect(log).to_contain_text("storage-initializer: fetching pvc://global-shared/models", timeout=15_000)
    expect(log).to_contain_text(f"as '{MODEL}'")
    page.evaluate("() => { window.__sameDocument = true }")
    # a request through the gateway adds a line to the predictor's log; the page shows it without a reload
    # (earlier tests' requests are in the tail already: count the access lines, not their presence)
    access = re.compile(r"POST /(openai/)?v1/completions 200")
    shown = len(access.findall(log.inner_text()))
    r = httpx.post(
        f"{served.url}/openai/v1/completions",
        headers={"Host": f"{SERVICE}.{NS}.example.com"},
        json={"model": MODEL, "prompt": "Hello from the log test", "max_tokens": 2},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 15
    while len(access.findall(log.inner_text())) <= shown:
        assert time.monotonic() < deadline, "the new request's access line never reached the followed log"
        page.wait_for_timeout(200)
    assert page.evaluate("() => window.__sameDocument === true"), "the log page reloaded instead of following"
    shoot(page, "logs")
    assert not js_errors


def test_delete_asks_for_confirmation(page: Page, served: ControlPlane, js_errors: list[str]) -> None:
    open_view(page, "Services")
    service_row(page).get_by_role("link", name=SERVICE, exact=True).click()
    page.wait_for_load_state()
    page.get_by_role("button", name="Delete", exact=True).click()
    assert served.store().service(NS, SERVICE) is not None, "Delete alone must not delete: it asks to confirm"
    page.get_by_role("button", name="Confirm delete", exact=True).click()
    served.wait(lambda: served.store().service(NS, SERVICE) is None, 30, "the service to be deleted")
    open_view(page, "Services")
    expect(service_row(page)).to_have_count(0, timeout=15_000)
    assert not js_errors
