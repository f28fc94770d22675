"""The Playground on encoder services, in a real headless chromium against a real `isvc up`.

An embedding service (the real all-MiniLM-L6-v2) offers only Embeddings, and a sentence classifier (a tiny
random BERT with named labels) only Classify; each answers through the gateway as a client's request would.
Both are applied from manifests whose folders sit on the test's PVC, as the seed's are.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from isvc.console import playground
from isvc.models.catalog import ensure_model
from tests.console.conftest import CONSOLE, NS
from tests.controlplane.cp_helpers import ControlPlane
from tests.encoder_fixtures import SENTIMENT_LABELS, tiny_classifier_dir  # noqa: F401 (a fixture)

if TYPE_CHECKING:
    from playwright.sync_api import Page

T = TypeVar("T")
MANIFEST = """\
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {{name: {name}, namespace: kserve-test}}
spec:
  predictor:
    model:
      modelFormat: {{name: huggingface}}
      args: [--model_name={model}, --model_dir=/mnt/models/{folder}]
      storageUri: pvc://global-shared/models
"""


def expect(target):  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect as pw_expect

    return pw_expect(target)


@pytest.fixture(scope="module")
def encoders(console: ControlPlane, tiny_classifier_dir: Path) -> ControlPlane:  # noqa: F811
    """`minilm` (text_embedding) and `sentiment` (sequence_classification) READY in the test namespace."""
    models = console.tmp / "pvc" / "global-shared" / "models"
    (models / "all-MiniLM-L6-v2").symlink_to(ensure_model("all-MiniLM-L6-v2", quiet=True), target_is_directory=True)
    (models / "tiny-sentiment").symlink_to(tiny_classifier_dir, target_is_directory=True)
    assert console.apply(MANIFEST.format(name="minilm", model="minilm", folder="all-MiniLM-L6-v2")) == 0
    assert console.apply(MANIFEST.format(name="sentiment", model="sentiment", folder="tiny-sentiment")) == 0
    console.wait_ready("minilm", NS, timeout_s=120)
    console.wait_ready("sentiment", NS, timeout_s=120)
    return console


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """``coro`` run to its end on a thread of its own: Playwright's sync API keeps an event loop running here."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def open_playground(page: Page, service: str) -> None:
    page.goto(f"{CONSOLE}/playground")
    page.get_by_label("Service").select_option(f"{NS}/{service}")


def mode_options(page: Page) -> list[str]:
    return page.locator("#mode option").all_inner_texts()


def test_an_embedding_service_offers_embeddings_and_shows_similarities(
    page: Page, encoders: ControlPlane, js_errors: list[str], shoot: Callable[[Page, str], None]
) -> None:
    open_playground(page, "minilm")
    assert mode_options(page) == ["Embeddings", "Rerank"]
    expect(page.get_by_label("System prompt")).to_be_hidden()  # a chat field has no meaning here
    texts = ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply today."]
    page.get_by_label("Texts (one per line)").fill("\n".join(texts))
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#stats")).to_contain_text("revision minilm-predictor-")
    rows = page.locator("#embeddings tbody tr")
    expect(rows).to_have_count(3)
    assert rows.first.locator("td").nth(2).inner_text() == "384"  # all-MiniLM-L6-v2's width
    assert float(rows.first.locator("td").nth(3).inner_text()) == pytest.approx(1.0, abs=1e-3)  # it normalizes
    sim = page.locator("#similarity tbody tr")
    expect(sim).to_have_count(3)
    first = [float(x) for x in sim.first.locator("td").all_inner_texts()]
    assert first[0] == pytest.approx(1.0, abs=1e-3)
    assert first[1] > first[2] + 0.3, first  # the real model: guitar is nearer guitar than the stock market
    shoot(page, "playground-embeddings")
    assert js_errors == []


def test_an_embedding_service_reranks_documents_by_meaning(
    page: Page, encoders: ControlPlane, js_errors: list[str]
) -> None:
    open_playground(page, "minilm")
    page.get_by_label("Mode").select_option(label="Rerank")
    page.get_by_label("Query", exact=True).fill("Who is playing music?")
    documents = ["The stock market fell sharply today.", "A man is playing a guitar.", "It rained all week."]
    page.get_by_label("Documents (one per line)").fill("\n".join(documents))
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#stats")).to_contain_text("revision minilm-predictor-")
    rows = page.locator("#ranking tbody tr")
    expect(rows).to_have_count(3)
    assert rows.first.locator("td").nth(1).inner_text() == "A man is playing a guitar."  # the real model's ranking
    assert js_errors == []


def test_a_classifier_offers_classify_with_label_names(
    page: Page,
    encoders: ControlPlane,
    tiny_classifier_dir: Path,  # noqa: F811
    js_errors: list[str],
    shoot: Callable[[Page, str], None],
) -> None:
    from transformers import pipeline

    texts = ["The movie was great.", "Hello world, how are you today?"]
    expected = [x["label"] for x in pipeline("text-classification", model=str(tiny_classifier_dir))(texts)]
    open_playground(page, "sentiment")
    assert mode_options(page) == ["Classify", "Rerank"]
    page.get_by_label("Texts (one per line)").fill("\n".join(texts))
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#stats")).to_contain_text("revision sentiment-predictor-")
    rows = page.locator("#classes tbody tr")
    expect(rows).to_have_count(2)
    labels = [rows.nth(i).locator("td").nth(1).inner_text() for i in range(2)]
    assert labels == expected and set(labels) <= set(SENTIMENT_LABELS.values())
    shoot(page, "playground-classify")
    assert js_errors == []


def test_the_service_list_names_the_task_and_an_encoder_error_shows_its_message(
    page: Page, encoders: ControlPlane, js_errors: list[str]
) -> None:
    open_playground(page, "minilm")
    options = page.locator("#service option").all_inner_texts()
    assert any(re.search(r"minilm \(minilm, text_embedding\)", o) for o in options), options
    page.get_by_label("Texts (one per line)").fill("x " * 600)  # longer than MiniLM reads (256 tokens)
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#stats")).to_contain_text(re.compile(r"HTTP 400: .*256"))
    assert js_errors == []


def test_a_service_whose_plan_cannot_tell_its_task_is_asked_through_its_predictor(encoders: ControlPlane) -> None:
    """A remote storageUri leaves the task to the started server: the console reads it from V2 metadata."""
    minilm = next(t for t in playground.targets(encoders.store()) if t.name == "minilm")
    assert minilm.task == "text_embedding" and minilm.endpoint  # the PVC folder's modules.json tells it
    unknown = playground.Target(minilm.namespace, minilm.name, minilm.model, True, None, minilm.endpoint)
    [asked] = run_async(playground.with_served_tasks([unknown]))
    assert asked.task == "text_embedding" and asked.modes == ("embeddings", "rerank")
    gone = playground.Target(minilm.namespace, minilm.name, minilm.model, True, None, "http://127.0.0.1:9")
    [still_unknown] = run_async(playground.with_served_tasks([gone]))
    assert still_unknown.task is None and still_unknown.modes == ("chat", "completions")


def test_a_custom_containers_odd_task_metadata_leaves_chat_and_completions() -> None:
    """A custom container's V2 metadata may say anything: a task that is no string is no task, not a 500."""

    class OddMetadata(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"name": "m", "parameters": {"task": ["text_embedding"]}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), OddMetadata)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        [odd] = run_async(playground.with_served_tasks([playground.Target("ns", "custom", "m", True, None, endpoint)]))
        assert odd.task is None and odd.modes == ("chat", "completions")
    finally:
        server.shutdown()
        server.server_close()
