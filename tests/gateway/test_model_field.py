"""ModelScanner: the top-level ``model`` of a JSON body fed in arbitrary chunks."""

from __future__ import annotations

import json

import pytest

from isvc.gateway.model_field import ModelScanner, NoModel


def scan(body: bytes, chunk: int) -> str:
    scanner = ModelScanner()
    for i in range(0, len(body), chunk):
        if scanner.feed(body[i : i + chunk]) is not None:
            break
    return scanner.finish()


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 1 << 20])
def test_finds_the_top_level_model_wherever_it_is_in_any_chunking(chunk: int) -> None:
    body = {
        "messages": [{"role": "user", "content": 'say "model": "decoy" \\ \u00e9 \U0001f600'}],
        "nested": {"model": "inner"},
        "n": 12.5e3,
        "stream": True,
        "model": 'm"1\\',
    }
    assert scan(json.dumps(body).encode(), chunk) == 'm"1\\'
    assert scan(json.dumps(body, ensure_ascii=False).encode(), chunk) == 'm"1\\'
    assert scan(b'{"mod\\u0065l" : "escaped-key"}', chunk) == "escaped-key"


@pytest.mark.parametrize(
    "body", [b"[1, 2]", b'"model"', b'{"a": 1}', b'{"model": 3}', b'{"model": "cut', b"", b"{", b"not json"]
)
def test_a_body_without_a_string_model_says_so(body: bytes) -> None:
    with pytest.raises(NoModel):
        scan(body, 3)


@pytest.mark.parametrize(
    "body",
    [
        b'{"\\q": "x", "model": "m"}',  # a bad escape in a key
        b'{"\\u12": 1, "model": "m"}',  # a cut \\u escape in a key whose value is no string
        b'{"a\tb": "x", "model": "m"}',  # a raw tab in a key
        b'{"\xff": "x", "model": "m"}',  # invalid UTF-8 in a key
        b'{"model": "m\x01"}',  # a raw control character in the model
        b'{"model": "\\x41"}',  # a bad escape in the model
    ],
)
def test_a_key_or_model_that_is_no_json_string_says_so(body: bytes) -> None:
    with pytest.raises(NoModel, match="not a valid JSON string"):
        scan(body, 4)


def test_depth_costs_no_recursion() -> None:
    body = b'{"a": ' + b"[" * 200_000 + b"]" * 200_000 + b', "model": "deep"}'
    assert scan(body, 65536) == "deep"


def test_stops_reading_once_the_model_is_found() -> None:
    scanner = ModelScanner()
    assert scanner.feed(b'{"model": "early", "prompt": "') == "early"
    assert len(scanner.buf) < 40
