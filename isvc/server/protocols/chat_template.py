"""Chat templates rendered in a sandbox that bounds work and memory as well as access.

A template is code: the model's comes from its folder, a request's (vLLM's ``chat_template``
field, refused unless ``--trust-request-chat-template``) from any client. jinja's sandbox keeps
a template away from Python internals, as transformers renders it, but not from spending CPU or
memory: ``range(12000)`` nested twice is 144M steps, ``"x" * 1000000000`` a gigabyte. Here each
render has a budget, and going over it fails that request alone with a 400 naming the limit:

- every executed template line counts against ``max_steps`` and the deadline (a line tracer on
  the rendering thread: the template stops itself);
- no value may be longer than ``max_chars`` *as text*: a list counts the text ``str()`` would
  write for it, so ``[x] * 1000`` is as big as what it prints. Operations that build text from
  several values (``~``, ``+``, ``*``, ``%``, ``join``, ``replace``, ``indent``, ``format``,
  ``wordwrap``, ``tojson``, ``center``, ...) are refused from their inputs' sizes *before* the
  value is built; the rest can only grow their input by a small constant factor (case mapping,
  escaping) and are checked after. The template's variables are checked after every line, so
  growing a value in a loop stops too;
- the output is streamed and cut at ``max_chars``.

The model's template renders in the server process (see ``preprocess.off_loop``); a request's
template renders in a child process with a memory limit and a deadline that kills it
(``template_sandbox``), so a construct these checks do not foresee still fails only its request.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from types import FrameType
from typing import Any

import jinja2
import jinja2.ext
from jinja2.compiler import CodeGenerator, Frame, optimizeconst
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import _PassArg

from isvc.errors import InvalidRequest, IsvcError

_TEMPLATE_FILE = "<template>"  # the filename jinja compiles templates from strings under
_WIDTH = re.compile(r"\d{7,}")  # a format width or precision of a million or more
_NUMBER = re.compile(r"\d+")
_MAX_NESTING = 256
"""Deepest value a template may hold (request JSON nests at most --max_json_depth, 128 by default)."""


_CONTAINERS = frozenset({list, tuple, dict})
_FIXED_SIZES: dict[type, int] = {type(None): 24, bool: 24, float: 24}
"""Types whose text is short whatever the value: learned as they are met (none is a str, int or container)."""


class TemplateLimitExceeded(InvalidRequest):
    code = "chat_template_limit_exceeded"


@dataclass(frozen=True, slots=True)
class RenderLimits:
    max_chars: int
    """Longest rendered prompt, and longest text any value of the template may stand for."""
    timeout_s: float = 2.0
    max_steps: int = 200_000
    """Template lines executed per render; a chat of a few hundred messages takes a few thousand."""
    max_memory_mb: int = 512
    """Address space a request's template may add to its sandbox process (the model's renders in-process)."""


@dataclass(slots=True)
class _Budget:
    limits: RenderLimits
    deadline: float
    param: str
    steps: int = 0
    _sizes: dict[int, tuple[Any, int, int]] = field(default_factory=dict)
    """id -> (container, its len when measured, its text size): containers are measured once."""
    _cached_chars: int = 0

    def step(self) -> None:
        self.steps += 1
        if self.steps > self.limits.max_steps:
            raise TemplateLimitExceeded(
                f"the chat template ran more than {self.limits.max_steps} steps (the template step limit)",
                param=self.param,
            )
        if self.steps % 64 == 0 and time.monotonic() > self.deadline:
            raise self.timed_out()

    def timed_out(self) -> TemplateLimitExceeded:
        return TemplateLimitExceeded(
            f"the chat template ran longer than {self.limits.timeout_s:g} s (the template time limit)",
            param=self.param,
        )

    def check_len(self, n: int) -> None:
        if n > self.limits.max_chars:
            raise TemplateLimitExceeded(
                f"the chat template would build a value of {n} characters or more; the limit is "
                f"{self.limits.max_chars} (the prompt size limit: a few times the context)",
                param=self.param,
            )

    def check_value(self, value: Any) -> None:
        self.check_len(self.size(value))

    def sizes(self, values: Iterable[Any]) -> list[int]:
        """Each value's size, checked: an oversized input is refused before it is used."""
        out = [self.size(v) for v in values]
        self.check_len(max(out, default=0))
        return out

    def size(self, value: Any, depth: int = 0) -> int:
        """About ``len(str(value))``: what the value costs once it becomes text.

        Containers count their items' text (a shared item once per reference, as ``str()``
        writes it) plus quotes and separators. A walk stops once past ``max_chars``, so the
        answer is exact below the limit and only "too big" above it.
        """
        kind = type(value)
        if kind is str:  # the common cases first, by exact type: this runs for every local on every line
            return len(value)
        if kind in _CONTAINERS:
            return self._container(value, depth)
        fixed = _FIXED_SIZES.get(kind)
        if fixed is not None:
            return fixed
        if isinstance(value, str):
            return len(value)
        if value is None or isinstance(value, bool | float):
            return 24
        if isinstance(value, int):
            return value.bit_length() * 30103 // 100_000 + 2  # decimal digits and a sign
        if isinstance(value, bytes | bytearray):
            return 4 * len(value) + 3  # repr: at most \xNN per byte
        if isinstance(value, _Namespace):  # mutable: measured every time (its values are cached)
            return 12 + self._walk(object.__getattribute__(value, "_Namespace__attrs").items(), depth, pairs=True)
        if isinstance(value, list | tuple | dict | set | frozenset):
            return self._container(value, depth)
        _FIXED_SIZES[kind] = 64  # loop, macro, undefined, context...: a short fixed repr
        return 64

    def _container(self, value: Any, depth: int) -> int:
        key, n = id(value), len(value)
        hit = self._sizes.get(key)
        if hit is not None and hit[0] is value and hit[1] == n:
            return hit[2]
        if hit is not None and hit[0] is value and isinstance(value, list) and n > hit[1]:
            total = hit[2] + self._walk(value[hit[1] :], depth)  # jinja's output buffers only ever grow
        elif isinstance(value, dict):
            total = 2 + self._walk(value.items(), depth, pairs=True)
        else:
            total = 2 + self._walk(value, depth)
        self._remember(value, n, total)
        return total

    def _walk(self, items: Iterable[Any], depth: int, *, pairs: bool = False) -> int:
        if depth > _MAX_NESTING:
            raise TemplateLimitExceeded(
                f"the chat template nests values more than {_MAX_NESTING} deep (the template nesting limit)",
                param=self.param,
            )
        total, cap = 0, self.limits.max_chars
        for item in items:
            if pairs:
                total += self.size(item[0], depth + 1) + self.size(item[1], depth + 1) + 4  # 'k': v,
            else:
                total += self.size(item, depth + 1) + 4  # quotes, comma and space
            if total > cap:
                break
        return total

    def _remember(self, value: Any, n: int, total: int) -> None:
        old = self._sizes.pop(id(value), None)
        if old is not None:
            self._cached_chars -= old[2]
        if total > self.limits.max_chars or n < 8:  # small ones are cheap to walk again (their items are cached)
            return
        self._sizes[id(value)] = (value, n, total)
        self._cached_chars += total
        # The cache keeps what it measured alive: hold that to a few times the limit, oldest out first.
        while self._cached_chars > 4 * self.limits.max_chars:
            _, _, dropped = self._sizes.pop(next(iter(self._sizes)))
            self._cached_chars -= dropped

    def materialize(self, iterable: Any) -> Any:
        """A one-shot iterator (a ``map``, a ``range``) as a list, measured as it is drawn."""
        if not isinstance(iterable, Iterator):
            return iterable
        out, total = [], 2
        for item in iterable:
            total += self.size(item) + 4
            self.check_len(total)
            out.append(item)
        return out


_local = threading.local()


def _budget() -> _Budget:
    budget: _Budget | None = getattr(_local, "budget", None)
    if budget is None:  # compiled elsewhere and rendered without render(): refuse rather than run unbounded
        raise TemplateLimitExceeded("chat templates render only through isvc's bounded renderer")
    return budget


# -- what a call will build, from its inputs ----------------------------------------------------


def _check_sizes(args: tuple[Any, ...], kwargs: dict[str, Any], budget: _Budget, *, ints: bool = True) -> None:
    """Refuse sizes past the limit before a C call allocates them: ``center(10**9)``, ``'%1000000000s'``."""
    for value in (*args, *kwargs.values()):
        if ints and isinstance(value, int) and not isinstance(value, bool):
            budget.check_len(abs(value))
        elif isinstance(value, str) and ("%" in value or "{" in value) and (width := _WIDTH.search(value)):
            budget.check_len(int(width.group()))


def _arg_cost(budget: _Budget, value: Any) -> int:
    """What one argument can add to a format: its text, or as a ``*``/``{}`` width, its value."""
    size = budget.size(value)
    return max(size, abs(value)) if isinstance(value, int) and not isinstance(value, bool) else size


def _format_size(budget: _Budget, fmt: str, args: Iterable[Any], marker: str) -> int:
    """Every field of ``fmt`` may print the largest argument (``%(a)s%(a)s...`` repeats one) at its widest."""
    fields = fmt.count(marker)
    if not fields:
        return len(fmt)
    widest = max((int(n) for n in _NUMBER.findall(fmt)), default=0)
    largest = max((_arg_cost(budget, a) for a in args), default=0)
    return len(fmt) + fields * (largest + min(widest, budget.limits.max_chars + 1))


def _format_args(right: Any) -> Iterable[Any]:
    if isinstance(right, tuple):
        return right
    if isinstance(right, dict):
        return right.values()
    return (right,)


def _replace_size(budget: _Budget, s: Any, old: Any, new: Any, count: Any = None) -> int:
    text_size = budget.size(s)
    if isinstance(s, str) and isinstance(old, str):
        hits = s.count(old)
    else:
        hits = text_size + 1  # every position, at most
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    return text_size + hits * max(budget.size(new) - budget.size(old), 0)


def _join_size(budget: _Budget, items: Any, sep: Any) -> int:
    n = len(items)
    if isinstance(items, str):
        total = n
    else:
        total = sum(budget.sizes(items))
    return total + max(n - 1, 0) * budget.size(sep)


def _lines(budget: _Budget, s: Any) -> int:
    return s.count("\n") + 1 if isinstance(s, str) else budget.size(s) + 1


def _shape(value: Any, depth: int = 0) -> tuple[int, int]:
    """Items and depth of a value: the lines ``tojson(indent=...)`` writes, and how far each is indented."""
    if depth > _MAX_NESTING or not isinstance(value, list | tuple | dict):
        return 1, depth
    nodes, deepest = 1, depth + 1
    for item in value.values() if isinstance(value, dict) else value:
        n, d = _shape(item, depth + 1)
        nodes, deepest = nodes + n, max(deepest, d)
    return nodes, deepest


def _width_of(value: Any) -> int:
    return len(value) if isinstance(value, str) else value if isinstance(value, int) and value > 0 else 0


def _tojson_size(
    budget: _Budget, x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, **_: Any
) -> int:
    """Escapes are a constant factor (checked after); indentation and long separators repeat per item."""
    size = budget.size(x)
    if indent is None and separators is None:
        return size
    nodes, depth = _shape(x)
    per_item = sum(_width_of(s) for s in separators) if isinstance(separators, tuple | list) else 2
    return size + nodes * (per_item + 1 + _width_of(indent) * depth)


def _escape_size(budget: _Budget, s: Any, *_: Any) -> int:
    if isinstance(s, str):
        return len(s) + 4 * sum(s.count(c) for c in "&<>\"'")  # &amp; &#34; ...
    return 6 * budget.size(s)


# Filters that build text from several inputs or multiply one: the size of what they would return,
# from the filtered value and the filter's arguments (the names and defaults of jinja's filters).
_FILTER_SIZES: dict[str, Callable[..., int]] = {
    "join": lambda b, value, d="", attribute=None: _join_size(b, value, d),
    "replace": lambda b, s, old, new, count=None: _replace_size(b, s, old, new, count),
    "indent": lambda b, s, width=4, first=False, blank=False: b.size(s) + _lines(b, s) * _width_of(width),
    "wordwrap": lambda b, s, width=79, break_long_words=True, wrapstring=None, break_on_hyphens=True: (
        b.size(s) + (b.size(s) // max(width, 1) + _lines(b, s)) * max(_width_of(wrapstring), 1)
        if isinstance(width, int)
        else b.size(s)
    ),
    "center": lambda b, value, width=80: max(b.size(value), _width_of(width)),
    "format": lambda b, value, *args, **kwargs: (
        _format_size(b, value, kwargs.values() if kwargs else args, "%") if isinstance(value, str) else b.size(value)
    ),
    "sum": lambda b, iterable, attribute=None, start=0: b.size(start) + sum(b.sizes(iterable)),
    "tojson": _tojson_size,
    "escape": _escape_size,
    "e": _escape_size,
    "forceescape": _escape_size,
    "xmlattr": lambda b, d, autospace=True: 6 * b.size(d),
    "urlencode": lambda b, value: 12 * b.size(value),
    "list": lambda b, value: b.size(value) + 4 * (len(value) if isinstance(value, str) else 0),
    "batch": lambda b, value, linecount, fill_with=None: (
        b.size(value) + 6 * len(value) + _width_of(linecount) * (b.size(fill_with) + 4)
    ),
    "slice": lambda b, value, slices, fill_with=None: (
        b.size(value) + 6 * len(value) + _width_of(slices) * (b.size(fill_with) + 6)
    ),
}

# str methods likewise, given the string they are called on.
_METHOD_SIZES: dict[str, Callable[..., int]] = {
    "join": lambda b, s, iterable: _join_size(b, iterable, s),
    "replace": lambda b, s, old, new, count=-1: _replace_size(b, s, old, new, count),
    "format": lambda b, s, *args, **kwargs: _format_size(b, s, (*args, *kwargs.values()), "{"),
    "format_map": lambda b, s, mapping: _format_size(b, s, _format_args(mapping), "{"),
    "expandtabs": lambda b, s, tabsize=8: len(s) + (s.count("\t") + 1) * _width_of(tabsize),
    "translate": lambda b, s, table: (
        len(s) * max([1, *b.sizes(_format_args(table) if isinstance(table, dict) else table)])
    ),
}


class _BoundedCodeGenerator(CodeGenerator):
    """jinja's compiler, with ``a ~ b ~ ...`` measured before it is joined."""

    @optimizeconst
    def visit_Concat(self, node: jinja2.nodes.Concat, frame: Frame) -> None:
        self.write("environment.bounded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "%", "+"})
    code_generator_class = _BoundedCodeGenerator

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        budget = _budget()
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int):
                    budget.check_len(budget.size(seq) * max(times, 0))
        elif operator == "+" and isinstance(left, str) and isinstance(right, str):
            budget.check_len(len(left) + len(right))  # the common case, kept cheap: every template adds strings
        elif operator == "+" and isinstance(left, list | tuple):
            budget.check_len(sum(budget.sizes((left, right))))
        elif operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0:
            budget.check_len(left.bit_length() * right // 4)
        elif operator == "%" and isinstance(left, str):
            _check_sizes((left,), {}, budget)
            budget.check_len(_format_size(budget, left, _format_args(right), "%"))
        result = super().call_binop(context, operator, left, right)
        budget.check_value(result)
        return result

    def bounded_concat(self, parts: tuple[Any, ...]) -> str:
        budget = _budget()
        budget.check_len(sum(budget.sizes(parts)))
        return "".join(map(str, parts))

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
        budget.sizes((*args, *kwargs.values()))
        owner = getattr(getattr(__obj, "__wrapped__", __obj), "__self__", None)
        name = getattr(__obj, "__name__", "")
        if isinstance(owner, str) and name in _METHOD_SIZES:
            if name == "join" and args:
                args = (budget.materialize(args[0]), *args[1:])
            if name in ("format", "format_map"):
                _check_sizes((owner,), {}, budget)
            try:
                budget.check_len(_METHOD_SIZES[name](budget, owner, *args, **kwargs))
            except TypeError:
                pass  # a wrong call: let Python say so
        result = super().call(__context, __obj, *args, **kwargs)
        budget.check_value(result)
        return result

    def finalize_output(self, value: Any) -> Any:
        _budget().check_value(value)  # ``{{ [x, x, ...] }}``: measured before str() writes it
        return value


def _bounded_filter(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    passes = 1 if _PassArg.from_obj(fn) is not None else 0  # context/environment first, then the value
    estimate = _FILTER_SIZES.get(name)

    def bounded(*args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.step()
        if len(args) > passes:
            args = (*args[:passes], budget.materialize(args[passes]), *args[passes + 1 :])
            _check_sizes(args[passes : passes + 1], {}, budget, ints=False)  # the value: a format string
            _check_sizes(args[passes + 1 :], kwargs, budget)
            budget.sizes((*args[passes:], *kwargs.values()))
            if estimate is not None:
                try:
                    budget.check_len(estimate(budget, *args[passes:], **kwargs))
                except (TypeError, ValueError, AttributeError):
                    pass  # a wrong call: the filter itself says so
        result = fn(*args, **kwargs)
        budget.check_value(result)
        return result

    if passes:  # keep pass_context/pass_eval_context/pass_environment
        bounded.jinja_pass_arg = fn.jinja_pass_arg  # type: ignore[attr-defined]
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
    env.finalize = env.finalize_output
    env.filters["tojson"] = _tojson
    for unbounded in ("pprint", "urlize"):  # output grows with nesting depth or markup: nothing a chat needs
        env.filters.pop(unbounded, None)
    env.filters = {name: _bounded_filter(name, fn) for name, fn in env.filters.items()}
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
                if size(value) > cap:
                    budget.check_value(value)
        return local

    size, cap = budget.size, budget.limits.max_chars

    def global_(frame: FrameType, event: str, arg: Any) -> Any:
        return local if frame.f_code.co_filename == _TEMPLATE_FILE else None

    return global_


def render(source: str, variables: dict[str, Any], limits: RenderLimits, param: str = "chat_template") -> str:
    """Render a chat template within ``limits`` (blocking: call it through ``preprocess.off_loop``).

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
    except MemoryError:
        raise TemplateLimitExceeded(
            f"the chat template needed more than {limits.max_memory_mb} MB (the template memory limit)", param=param
        ) from None
    except RecursionError:
        raise TemplateLimitExceeded(
            "the chat template recursed too deep (the template nesting limit)", param=param
        ) from None
    except Exception as exc:  # a template is code from a model folder or a client: its failure is the request's
        raise InvalidRequest(f"the chat template failed: {type(exc).__name__}: {exc}", param=param) from exc
    finally:
        sys.settrace(previous)
        _local.budget = None
