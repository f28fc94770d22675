"""Chat templates rendered off the event loop, in a sandbox that bounds work as well as access.

A template is code: the model's comes from its folder, a request's (vLLM's ``chat_template``
field, refused unless ``--trust-request-chat-template``) from any client. jinja's sandbox keeps
a template away from Python internals, as transformers renders it, but not from spending CPU or
memory: ``range(12000)`` nested twice is 144M steps, ``"x" * 1000000000`` a gigabyte. Here each
render has a budget, and going over it fails that request alone with a 400 naming the limit:

- every executed template line counts against ``max_steps`` and the deadline (a line tracer on
  the rendering thread; a thread cannot be killed, so the template stops itself);
- operators and calls that build big values in one C call (``*``, ``**``, ``%``, ``center``,
  ``ljust``, ``indent``, ...) are refused when the value would pass ``max_chars``, and the
  template's variables are checked after every line, so doubling a string in a loop stops too;
- the output is streamed and cut at ``max_chars``.

Renders and tokenization run on a small pool of threads: the event loop never waits on them.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from types import FrameType
from typing import Any, TypeVar

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from isvc.errors import InvalidRequest, IsvcError

T = TypeVar("T")

_TEMPLATE_FILE = "<template>"  # the filename jinja compiles templates from strings under
_WIDTH = re.compile(r"\d{7,}")  # a format width or precision of a million or more

# NOTE: one small pool for the process: rendering and tokenizing are short, and bounded,
# so two threads keep the loop free without letting a burst of renders take every core.
_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="isvc-preprocess")


INLINE_ENCODE_CHARS = 4096
"""Texts up to this size are tokenized on the loop: well under a millisecond, less than a thread hop."""


async def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking preprocessing step (render, tokenize) on the pool."""
    return await asyncio.get_running_loop().run_in_executor(_POOL, fn, *args)


async def encode_all(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Tokenize prompts without holding the event loop for more than a short text's worth."""
    encode = lambda: [list(tokenizer.encode(t)) for t in texts]
    if sum(len(t) for t in texts) <= INLINE_ENCODE_CHARS:
        return encode()
    return await off_loop(encode)


class TemplateLimitExceeded(InvalidRequest):
    code = "chat_template_limit_exceeded"


@dataclass(frozen=True, slots=True)
class RenderLimits:
    max_chars: int
    """Longest rendered prompt, and longest string or list a template may build."""
    timeout_s: float = 2.0
    max_steps: int = 200_000
    """Template lines executed per render; a chat of a few hundred messages takes a few thousand."""


@dataclass(slots=True)
class _Budget:
    limits: RenderLimits
    deadline: float
    param: str
    steps: int = 0

    def step(self) -> None:
        self.steps += 1
        if self.steps > self.limits.max_steps:
            raise TemplateLimitExceeded(
                f"the chat template ran more than {self.limits.max_steps} steps (the template step limit)",
                param=self.param,
            )
        if self.steps % 64 == 0 and time.monotonic() > self.deadline:
            raise TemplateLimitExceeded(
                f"the chat template ran longer than {self.limits.timeout_s:g} s (the template time limit)",
                param=self.param,
            )

    def check_len(self, n: int) -> None:
        if n > self.limits.max_chars:
            raise TemplateLimitExceeded(
                f"the chat template made a value of {n} characters or items; the limit is "
                f"{self.limits.max_chars} (the prompt size limit: a few times the context)",
                param=self.param,
            )

    def check_value(self, value: Any) -> None:
        if isinstance(value, str | bytes | list | tuple | dict):
            self.check_len(len(value))
        elif isinstance(value, int) and not isinstance(value, bool):
            self.check_len(value.bit_length() // 4)  # about its hex digits


_local = threading.local()


def _budget() -> _Budget:
    budget: _Budget | None = getattr(_local, "budget", None)
    if budget is None:  # compiled elsewhere and rendered without render(): refuse rather than run unbounded
        raise TemplateLimitExceeded("chat templates render only through isvc's bounded renderer")
    return budget


def _check_sizes(args: tuple[Any, ...], kwargs: dict[str, Any], budget: _Budget, *, ints: bool = True) -> None:
    """Refuse sizes past the limit before a C call allocates them: ``center(10**9)``, ``'%1000000000s'``."""
    for value in (*args, *kwargs.values()):
        if ints and isinstance(value, int) and not isinstance(value, bool):
            budget.check_len(abs(value))
        elif isinstance(value, str) and ("%" in value or "{" in value) and (width := _WIDTH.search(value)):
            budget.check_len(int(width.group()))


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        budget = _budget()
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int):
                    budget.check_len(len(seq) * max(times, 0))
        elif operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0:
            budget.check_len(left.bit_length() * right // 4)
        elif operator == "%" and isinstance(left, str):
            _check_sizes((left,), {}, budget)
        result = super().call_binop(context, operator, left, right)
        budget.check_value(result)
        return result

    def getattr(self, obj: Any, attribute: str) -> Any:
        value = super().getattr(obj, attribute)
        _budget().check_value(value)  # a namespace attribute doubled in a loop stops here
        return value

    def getitem(self, obj: Any, argument: Any) -> Any:
        value = super().getitem(obj, argument)
        _budget().check_value(value)
        return value

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.step()
        _check_sizes(args, kwargs, budget)
        owner = getattr(getattr(__obj, "__wrapped__", __obj), "__self__", None)
        if isinstance(owner, str) and getattr(__obj, "__name__", "") in ("format", "format_map"):
            _check_sizes((owner,), {}, budget)
        result = super().call(__context, __obj, *args, **kwargs)
        budget.check_value(result)
        return result


def _bounded_filter(fn: Callable[..., Any]) -> Callable[..., Any]:
    def bounded(*args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.step()
        _check_sizes(args[:1], {}, budget, ints=False)  # the filtered value: a format string, not a size
        _check_sizes(args[1:], kwargs, budget)
        result = fn(*args, **kwargs)
        budget.check_value(result)
        return result

    for marker in ("jinja_pass_arg",):  # keep pass_context/pass_environment markers
        if hasattr(fn, marker):
            setattr(bounded, marker, getattr(fn, marker))
    return bounded


def _bounded_range(*args: int) -> Iterator[int]:
    budget = _budget()
    r = range(*args)
    budget.check_len(len(r))
    for i in r:
        budget.step()
        yield i


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` (training templates mark assistant text); renders its body."""

    tags = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Callable[[], str]) -> str:
        return caller()


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _Namespace(jinja2.utils.Namespace):
    """jinja's namespace without underscore attributes (as transformers does)."""

    def __setitem__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"templates cannot set underscore attributes ({name!r})")
        super().__setitem__(name, value)


def _environment() -> _BoundedEnvironment:
    # The globals and filters chat templates expect from transformers' renderer.
    env = _BoundedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.filters = {name: _bounded_filter(fn) for name, fn in env.filters.items()}
    env.globals.pop("lipsum", None)  # n paragraphs of filler text: nothing a chat needs
    env.globals.update(
        range=_bounded_range,
        raise_exception=_raise_exception,
        strftime_now=_strftime_now,
        namespace=_Namespace,
    )
    return env


_ENV = _environment()


MAX_TEMPLATE_CHARS = 256 * 1024
"""Longest template source; the largest chat templates on the Hub (tool calling) are ~20 KB."""


def _compile(source: str) -> jinja2.Template:
    if len(source) > MAX_TEMPLATE_CHARS:
        raise TemplateLimitExceeded(
            f"the chat template has {len(source)} characters; the limit is {MAX_TEMPLATE_CHARS} (the template size limit)",
            param="chat_template",
        )
    return _compile_cached(source) if len(source) <= 64 * 1024 else _ENV.from_string(source)


@lru_cache(maxsize=16)
def _compile_cached(source: str) -> jinja2.Template:
    return _ENV.from_string(source)


def _tracer(budget: _Budget) -> Callable[[FrameType, str, Any], Any]:
    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            budget.step()
            for value in frame.f_locals.values():
                budget.check_value(value)
        return local

    def global_(frame: FrameType, event: str, arg: Any) -> Any:
        return local if frame.f_code.co_filename == _TEMPLATE_FILE else None

    return global_


def render(source: str, variables: dict[str, Any], limits: RenderLimits, param: str = "chat_template") -> str:
    """Render a chat template within ``limits`` (blocking: call it through :func:`off_loop`).

    Raises TemplateLimitExceeded past a limit, InvalidRequest when the template fails; both
    name ``param`` (the request's template, or the messages the model's template rejected).
    """
    budget = _Budget(limits, time.monotonic() + limits.timeout_s, param)
    _local.budget = budget
    previous = sys.gettrace()
    try:
        template = _compile(source)
        sys.settrace(_tracer(budget))
        out: list[str] = []
        size = 0
        for piece in template.generate(**variables):
            size += len(piece)
            budget.check_len(size)
            out.append(piece)
        return "".join(out)
    except IsvcError:
        raise
    except Exception as exc:  # a template is code from a model folder or a client: its failure is the request's
        raise InvalidRequest(f"the chat template failed: {type(exc).__name__}: {exc}", param=param) from exc
    finally:
        sys.settrace(previous)
        _local.budget = None
