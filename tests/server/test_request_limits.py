"""What one request may ask of a live `isvc serve`: every field bounded at the wire, request chat
templates refused unless trusted and bounded when trusted, and limits no retry can meet answered
as 400s naming the limit (not as overload)."""

from __future__ import annotations

import concurrent.futures
import re
import threading

import httpx
import openai
import pytest

INT64_MAX = 2**63 - 1

OPENAI_BOUNDS = [
    ("seed", 2**64),
    ("seed", -(2**63) - 1),
    ("top_k", 2**63),
    ("top_k", -2),
    ("n", 17),
    ("stop", ["s"] * 17),
    ("stop", "x" * 257),
    ("stop_token_ids", [10**6]),
    ("stop_token_ids", [-1]),
    ("presence_penalty", 2.5),
    ("frequency_penalty", -3),
    ("temperature", 2.5),
    ("top_p", 0),
    ("max_tokens", 2**63),
]


@pytest.mark.parametrize(("field", "value"), OPENAI_BOUNDS, ids=[f"{f}={str(v)[:12]}" for f, v in OPENAI_BOUNDS])
def test_completion_field_out_of_range_is_a_400_naming_it(tiny_server, field: str, value: object) -> None:
    body = {"model": "tiny", "prompt": "Hello", "max_tokens": 2, field: value}
    r = httpx.post(f"{tiny_server.base_url}/v1/completions", json=body, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"].split(".")[0] == field  # stop_token_ids.0: the field, then the item


@pytest.mark.parametrize(
    ("field", "value"),
    [("seed", 2**64), ("top_k", 2**63), ("top_logprobs", 21), ("max_completion_tokens", 2**63), ("stop", 5)],
)
def test_chat_field_out_of_range_is_a_400_naming_it(tiny_server, field: str, value: object) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "logprobs": True, field: value}
    r = httpx.post(f"{tiny_server.base_url}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == field


def test_completion_logprobs_past_twenty_is_a_400(tiny_server) -> None:
    client = openai.OpenAI(base_url=tiny_server.base_url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tiny", prompt="Hi", max_tokens=2, logprobs=21)
    assert err.value.body["param"] == "logprobs"


def test_extreme_seeds_within_int64_still_generate(tiny_server) -> None:
    client = openai.OpenAI(base_url=tiny_server.base_url + "/v1", api_key="unused", max_retries=0)
    for seed in (INT64_MAX, -(2**63)):
        out = client.completions.create(
            model="tiny",
            prompt="Hello",
            max_tokens=3,
            n=2,
            seed=seed,
            extra_body={"ignore_eos": True, "top_k": INT64_MAX},
        )
        assert [c.finish_reason for c in out.choices] == ["length", "length"]


@pytest.mark.parametrize(
    ("parameters", "named"),
    [
        ({"temperature": "hot"}, "parameters.temperature"),
        ({"seed": 2**64}, "parameters.seed"),
        ({"top_k": 2**63}, "parameters.top_k"),
        ({"max_tokens": 0}, "parameters.max_tokens"),
        ({"stop": [1, 2]}, "parameters.stop"),
        ({"beam_width": 4}, "parameters.beam_width"),
    ],
)
def test_kserve_parameters_are_checked_and_named(tiny_server, parameters: dict, named: str) -> None:
    base = tiny_server.base_url
    r = httpx.post(f"{base}/v1/models/tiny:predict", json={"instances": ["Hi"], "parameters": parameters}, timeout=30)
    assert r.status_code == 400 and named in r.json()["error"], r.text
    v2 = {
        "inputs": [{"name": "text_input", "shape": [1], "datatype": "BYTES", "data": ["Hi"]}],
        "parameters": parameters,
    }
    r = httpx.post(f"{base}/v2/models/tiny/infer", json=v2, timeout=30)
    assert r.status_code == 400 and named in r.json()["error"], r.text


# -- limits one request exceeds are not overload ---------------------------------------------


def _assert_limit_not_overload(r: httpx.Response, limit: str) -> None:
    assert r.status_code == 400, r.text
    assert "retry-after" not in r.headers
    body = r.json()
    message = body["error"]["message"] if isinstance(body["error"], dict) else body["error"]
    assert limit in message


def test_completion_larger_than_the_queue_is_a_400_naming_max_queue(tiny_server) -> None:
    body = {"model": "tiny", "prompt": ["Hello"] * 300, "n": 16, "max_tokens": 1}
    r = httpx.post(f"{tiny_server.base_url}/v1/completions", json=body, timeout=30)
    _assert_limit_not_overload(r, "max_queue")
    assert r.json()["error"]["param"] == "n"


def test_v1_instances_larger_than_the_queue_are_a_400(tiny_server) -> None:
    r = httpx.post(f"{tiny_server.base_url}/v1/models/tiny:predict", json={"instances": ["Hi"] * 1000}, timeout=30)
    _assert_limit_not_overload(r, "max_queue")


def test_v2_tensor_larger_than_the_queue_is_a_400(tiny_server) -> None:
    body = {"inputs": [{"name": "text_input", "shape": [1000], "datatype": "BYTES", "data": ["Hi"] * 1000}]}
    r = httpx.post(f"{tiny_server.base_url}/v2/models/tiny/infer", json=body, timeout=30)
    _assert_limit_not_overload(r, "max_queue")


@pytest.mark.parametrize(("shape", "data"), [([1000], ["Hi"]), ([2], ["a", "b", "c"]), ([1, 2], ["a"])])
def test_v2_shape_must_match_data(tiny_server, shape: list[int], data: list[str]) -> None:
    body = {"inputs": [{"name": "text_input", "shape": shape, "datatype": "BYTES", "data": data}]}
    r = httpx.post(f"{tiny_server.base_url}/v2/models/tiny/infer", json=body, timeout=30)
    assert r.status_code == 400 and "shape" in r.json()["error"], r.text


def test_v2_nested_data_is_flattened_row_major(tiny_server) -> None:
    body = {
        "inputs": [{"name": "text_input", "shape": [2, 1], "datatype": "BYTES", "data": [["Hello"], ["World"]]}],
        "parameters": {"max_tokens": 2},
    }
    r = httpx.post(f"{tiny_server.base_url}/v2/models/tiny/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["shape"] == [2]


# -- request chat templates ------------------------------------------------------------------

_ECHO_TEMPLATE = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}>"


def _chat(base_url: str, **extra: object) -> httpx.Response:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 2, **extra}
    return httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=60)


@pytest.mark.parametrize(
    "extra", [{"chat_template": _ECHO_TEMPLATE}, {"chat_template_kwargs": {"chat_template": _ECHO_TEMPLATE}}]
)
def test_request_chat_template_is_refused_by_default(tiny_server, extra: dict) -> None:
    r = _chat(tiny_server.base_url, **extra)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "chat_template" and "--trust-request-chat-template" in error["message"]


def test_chat_template_kwargs_without_a_template_are_template_variables(tiny_server) -> None:
    r = _chat(tiny_server.base_url, chat_template_kwargs={"enable_thinking": False, "messages": "ignored"})
    assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def trusted_server(start_server, tiny_model_dir):
    return start_server(["--model_dir", str(tiny_model_dir), "--model_name", "tiny", "--trust-request-chat-template"])


def test_trusted_server_renders_the_request_template(trusted_server) -> None:
    own = _chat(trusted_server.base_url, chat_template=_ECHO_TEMPLATE)
    model = _chat(trusted_server.base_url)
    assert own.status_code == 200 and model.status_code == 200, own.text
    # the echo template has no ChatML markers: a different prompt, so a different token count
    assert own.json()["usage"]["prompt_tokens"] != model.json()["usage"]["prompt_tokens"]


_X = "{% set x = 'a' * 60000 %}"  # just under the tiny model's 65,536-character limit
_RUNAWAY = {  # each builds 60M to 3.6G characters in one call unless it is measured first
    "nested-range": (
        "{% for i in range(12000) %}{% for j in range(12000) %}{% endfor %}{% endfor %}",
        "template (step|time) limit",
    ),
    "string-times-1e9": ("{{ 'x' * 1000000000 }}", "prompt size limit"),
    "doubling": (
        "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "limit",
    ),
    "center": ("{{ 'x'|center(1000000000) }}", "prompt size limit"),
    "join-of-repeated-list": (_X + "{{ ([x] * 1000)|join }}", "prompt size limit"),
    "replace-with-itself": (_X + "{{ x|replace('a', x) }}", "prompt size limit"),
    "concat-chain": (_X + "{{ " + " ~ ".join(["x"] * 1000) + " }}", "prompt size limit"),
    "indent-by-itself": (_X + "{{ (x ~ '\n' ~ x)|indent(x) }}", "prompt size limit"),
    "format-filter": (_X + "{{ ('%s' * 1000)|format(*([x] * 1000)) }}", "prompt size limit"),
    "percent-repeated-key": (_X + "{{ ('%(a)s' * 1000) % {'a': x} }}", "prompt size limit"),
    "str-format-repeated-field": (_X + "{{ ('{0}' * 1000).format(x) }}", "prompt size limit"),
    "print-repeated-list": (_X + "{{ [x] * 1000 }}", "prompt size limit"),
    "list-literal": (_X + "{{ [" + ", ".join(["x"] * 1000) + "] }}", "prompt size limit"),
    "str-join": (_X + "{{ x.join([x] * 1000) }}", "prompt size limit"),
    "tojson-of-repeated-list": (_X + "{{ ([x] * 1000)|tojson }}", "prompt size limit"),
    "wordwrap-with-itself": (_X + "{{ x|wordwrap(1, wrapstring=x) }}", "prompt size limit"),
    "expandtabs": ("{% set t = '\t' * 60000 %}{{ t.expandtabs(60000) }}", "prompt size limit"),
    "block-set-in-a-loop": (
        _X + "{% set b %}{% for i in range(5000) %}{{ x }}{% endfor %}{% endset %}{{ b|length }}",
        "prompt size limit",
    ),
}


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


@pytest.mark.parametrize(("template", "limit"), list(_RUNAWAY.values()), ids=list(_RUNAWAY))
def test_runaway_template_fails_its_own_request_and_the_server_keeps_answering(
    trusted_server, template: str, limit: str
) -> None:
    base = trusted_server.base_url
    _chat(base)  # warm: the first request's buffers are not the template's
    rss_before = _rss_mb(trusted_server.proc.pid)
    stop = threading.Event()
    health: list[int] = []

    def poll() -> None:
        with httpx.Client(timeout=1.0) as http:  # a frozen event loop would time these out
            while True:  # at least once, however fast the refusal
                health.append(http.get(f"{base}/v2/health/ready").status_code)
                if stop.is_set():
                    return

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        poller = pool.submit(poll)
        try:
            r = _chat(base, chat_template=template)
        finally:
            stop.set()
        poller.result()
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "chat_template" and re.search(limit, error["message"]), error
    assert health and set(health) == {200}
    assert _rss_mb(trusted_server.proc.pid) - rss_before < 40  # nothing was built in the server
    assert _chat(base).status_code == 200  # the server is fine afterwards


def test_broken_request_template_is_a_400(trusted_server) -> None:
    r = _chat(trusted_server.base_url, chat_template="{{ raise_exception('roles must alternate') }}")
    assert r.status_code == 400 and "roles must alternate" in r.json()["error"]["message"]
    r = _chat(trusted_server.base_url, chat_template="{% for %}")
    assert r.status_code == 400 and r.json()["error"]["param"] == "chat_template"


# -- the bounded renderer itself (in process) ------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "{{ 'x'.ljust(1000000000) }}",
        "{{ '%1000000000s'|format('x') }}",
        "{{ '{:>1000000000}'.format('x') }}",
        "{{ ([1] * 60000) * 60000 }}",
        "{% set a = 'x' * 1000 %}" + "{% set a = a ~ a %}" * 40,
        "{% set s = 'x' * 60000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}",
        "{% for i in range(70000) %}xxxxxxxxxx{% endfor %}",
    ],
    ids=["ljust", "format-width", "str-format-width", "list-repeat", "concat-doubling", "string-loops", "long-output"],
)
def test_renderer_stops_templates_that_grow_or_spin(template: str) -> None:
    from isvc.server.protocols.chat_template import RenderLimits, TemplateLimitExceeded, render

    with pytest.raises(TemplateLimitExceeded, match="limit"):
        render(template, {"messages": []}, RenderLimits(max_chars=65536))


def test_renderer_still_renders_what_real_templates_do() -> None:
    """The size checks refuse what would pass the limit, not the constructs themselves."""
    from isvc.server.protocols.chat_template import RenderLimits, render

    template = (
        "{% set tools_json = tools|tojson(indent=4) %}{{ '%s: %s'|format('tools', tools_json|length) }}\n"
        "{% for m in messages %}{{ ('[' ~ m.role ~ '] ' ~ m.content)|indent(2, first=true)|replace('  ', ' ') }}\n"
        "{% endfor %}{{ messages|map(attribute='role')|join(',') }} {{ '{0}-{1}'.format('a', 'b') }}"
    )
    tools = [{"type": "function", "function": {"name": f"f{i}", "parameters": {"type": "object"}}} for i in range(20)]
    messages = [{"role": "user", "content": "hello " * 500}, {"role": "assistant", "content": "hi"}]
    out = render(template, {"messages": messages, "tools": tools}, RenderLimits(max_chars=65536))
    assert out.startswith("tools: ") and out.endswith("user,assistant a-b")


def test_sandbox_kills_a_render_past_its_deadline() -> None:
    """What the renderer cannot interrupt (one long C call) is killed with its process."""
    import asyncio
    import time

    from isvc.server.protocols.chat_template import RenderLimits, TemplateLimitExceeded
    from isvc.server.protocols.template_sandbox import TemplateSandbox

    sandbox = TemplateSandbox()
    try:
        started = time.monotonic()
        with pytest.raises(TemplateLimitExceeded, match="template time limit"):
            asyncio.run(
                sandbox.render("{{ 3 ** 50000000 % 7 }}", {}, RenderLimits(max_chars=10**9, timeout_s=0.3), "t")
            )
        assert time.monotonic() - started < 10
        # the fork server lives on: the next template renders
        assert asyncio.run(sandbox.render("{{ 1 + 1 }}", {}, RenderLimits(max_chars=100), "t")) == "2"
    finally:
        sandbox.close()


def test_sandbox_caps_a_render_s_memory() -> None:
    import asyncio

    from isvc.server.protocols.chat_template import RenderLimits, TemplateLimitExceeded
    from isvc.server.protocols.template_sandbox import TemplateSandbox

    sandbox = TemplateSandbox()
    limits = RenderLimits(max_chars=10**9, max_memory_mb=64)  # sizes allowed: only the memory cap stops it
    try:
        with pytest.raises(TemplateLimitExceeded, match="template memory limit") as err:
            asyncio.run(sandbox.render("{{ ('x' * 500000000)|length }}", {}, limits, "chat_template"))
        assert err.value.param == "chat_template"
    finally:
        sandbox.close()


def test_renderer_matches_transformers_on_the_model_template(tiny_model_dir) -> None:
    from transformers import AutoTokenizer

    from isvc.server.protocols.chat_template import RenderLimits, render

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi!"},
        {"role": "user", "content": "你好"},
    ]
    expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    variables = {**tokenizer.special_tokens_map, "messages": messages, "add_generation_prompt": True}
    assert render(tokenizer.chat_template, variables, RenderLimits(max_chars=65536)) == expected
