"""The strict JSON check of a request body: UTF-8, one document, bounded nesting, no lone surrogates.

Cheap in the common case: ``json.loads`` (C) does the parsing; the walk after it goes level by
level with C-level iteration (depth), and looks at strings only when the text holds a
``\\uD800``-``\\uDFFF`` escape, the one way a lone surrogate gets into a valid UTF-8 body. The
field path of a failure is built by a second walk, only once a failure is known. ``check_json`` runs bodies over
``OFF_LOOP_BYTES`` on a worker thread, so a large body does not stall the event loop (health
checks, live streams) while it is checked.

NOTE: the app parses the body once more (FastAPI reads bytes, not a parsed document); that second
``json.loads`` costs tens of milliseconds per MiB, the walk it follows was what cost seconds.
"""

from __future__ import annotations

import asyncio
import json
import re
from itertools import chain, compress, repeat
from operator import is_
from typing import Any

OFF_LOOP_BYTES = 64 << 10
"""Bodies larger than this are parsed and checked on a worker thread."""

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


class BadJson(ValueError):
    """A request body that is not a JSON document isvc will accept; ``param`` names the field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def parse_json(raw: bytes, max_depth: int = 128) -> Any:
    """Parse a request body strictly: UTF-8, one document, bounded nesting, UTF-8-encodable strings."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadJson(f"the request body is not valid UTF-8 (byte {exc.start})") from exc
    try:
        doc = json.loads(text)
    except RecursionError as exc:
        raise BadJson(f"the request body nests deeper than {max_depth} levels") from exc
    except ValueError as exc:
        raise BadJson(f"the request body is not valid JSON: {exc}") from exc
    _check_tree(doc, max_depth, strings=_SURROGATE_ESCAPE.search(text) is not None)
    return doc


async def check_json(raw: bytes, max_depth: int = 128) -> Any:
    """``parse_json``, on a worker thread for a body over ``OFF_LOOP_BYTES``."""
    if len(raw) > OFF_LOOP_BYTES:
        return await asyncio.to_thread(parse_json, raw, max_depth)
    return parse_json(raw, max_depth)


def _check_tree(doc: Any, max_depth: int, *, strings: bool) -> None:
    """Nesting beyond ``max_depth`` and (with ``strings``) lone surrogates.

    Walks the tree one level at a time with C-level iteration (``map``, ``compress``, ``chain``):
    no Python code runs per element, so millions of numbers cost milliseconds, and deep
    documents cost no recursion.
    """
    level: list[Any] = [doc]
    for depth in range(max_depth + 1):
        types = list(map(type, level))
        kinds = set(types)
        dicts: list[dict[str, Any]] = list(compress(level, map(is_, types, repeat(dict)))) if dict in kinds else []
        lists: list[list[Any]] = list(compress(level, map(is_, types, repeat(list)))) if list in kinds else []
        if strings:
            texts = chain(compress(level, map(is_, types, repeat(str))), chain.from_iterable(dicts))  # keys too
            # json.loads joins escaped pairs, so any surrogate left in a string is a lone one.
            if _SURROGATE.search("".join(texts)):
                raise _locate_surrogate(doc)
        if not dicts and not lists:
            return
        if depth == max_depth:
            raise BadJson(f"the request body nests deeper than {max_depth} levels")
        level = list(chain(chain.from_iterable(map(dict.values, dicts)), chain.from_iterable(lists)))


def _locate_surrogate(doc: Any) -> BadJson:
    """The error naming the field that holds a lone surrogate (only called once one is known to exist)."""
    stack: list[tuple[Any, str]] = [(doc, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, str) and (bad := _SURROGATE.search(node)):
            return _surrogate_error(path, bad)
        if isinstance(node, dict):
            for key, value in node.items():
                child = f"{path}.{key}" if path else key
                if bad := _SURROGATE.search(key):
                    return _surrogate_error(child, bad)
                stack.append((value, child))
        elif isinstance(node, list):
            stack.extend((value, f"{path}[{i}]") for i, value in enumerate(node))
    raise AssertionError("no lone surrogate in the document")


def _surrogate_error(path: str, bad: re.Match[str]) -> BadJson:
    shown = path.encode("utf-8", "backslashreplace").decode()  # the path may hold the surrogate itself
    return BadJson(
        f"{shown or 'the request body'} holds a lone UTF-16 surrogate (\\u{ord(bad.group()):04x} at character "
        f"{bad.start()}), which is not text; send valid Unicode",
        param=shown or None,
    )
