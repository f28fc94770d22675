"""The OpenAI routes of a live `isvc serve` (tiny model), driven by the official openai client."""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import openai
import pytest

from tests.conftest import metric


@pytest.fixture(scope="module", params=["/openai/v1", "/v1"])
def client(request, tiny_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=tiny_server.base_url + request.param, api_key="unused", max_retries=0)


def test_models_lists_the_served_name(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"


def test_completion_has_text_usage_and_length_finish(client: openai.OpenAI) -> None:
    out = client.completions.create(
        model="tiny", prompt="The capital of France is", max_tokens=7, temperature=0, extra_body={"ignore_eos": True}
    )
    choice = out.choices[0]
    assert out.object == "text_completion" and choice.text
    assert choice.finish_reason == "length"
    assert out.usage.completion_tokens == 7
    assert out.usage.total_tokens == out.usage.prompt_tokens + 7


def test_chat_completion_uses_the_chat_template(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hello world!"}], max_tokens=5, temperature=0
    )
    assert out.object == "chat.completion"
    assert out.choices[0].message.role == "assistant"
    # the ChatML template wraps the message: far more tokens than the raw text
    raw = client.completions.create(model="tiny", prompt="Hello world!", max_tokens=1, temperature=0)
    assert out.usage.prompt_tokens > raw.usage.prompt_tokens


def test_streaming_chat_matches_non_streaming_and_reports_usage(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Once upon a time"}]
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0)
    stream = client.chat.completions.create(
        model="tiny",
        messages=messages,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_streaming_completion_ends_with_done(tiny_server) -> None:
    with httpx.stream(
        "POST",
        f"{tiny_server.base_url}/v1/completions",
        json={"model": "tiny", "prompt": "Hello", "max_tokens": 5, "stream": True},
    ) as r:
        lines = [line for line in r.iter_lines() if line]
    assert r.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


def test_n_choices_and_stop_list(client: openai.OpenAI) -> None:
    out = client.completions.create(model="tiny", prompt="Hello", n=3, max_tokens=6, temperature=1.0, seed=7)
    assert sorted(c.index for c in out.choices) == [0, 1, 2]
    free = (
        client.completions.create(
            model="tiny", prompt="Hello", max_tokens=20, temperature=0, extra_body={"ignore_eos": True}
        )
        .choices[0]
        .text
    )
    stop = free[4:7]
    stopped = client.completions.create(
        model="tiny",
        prompt="Hello",
        max_tokens=20,
        temperature=0,
        stop=["@@never@@", stop],
        extra_body={"ignore_eos": True},
    ).choices[0]
    assert stopped.finish_reason == "stop" and stopped.text == free[: free.index(stop)]


def test_seed_reproduces_sampled_text(client: openai.OpenAI) -> None:
    kw = dict(
        model="tiny", prompt="Once upon", max_tokens=12, temperature=1.0, seed=42, extra_body={"ignore_eos": True}
    )
    assert client.completions.create(**kw).choices[0].text == client.completions.create(**kw).choices[0].text


def test_chat_logprobs(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
        extra_body={"ignore_eos": True},
    )
    content = out.choices[0].logprobs.content
    assert len(content) == 4
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        # greedy: the chosen token is the most likely one
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob, abs=1e-5)


def test_completion_echo_logprobs_score_the_prompt(client: openai.OpenAI) -> None:
    """What lm-eval-harness' local-completions sends: echo, logprobs, max_tokens=0."""
    prompt = "The capital of France is Paris"
    out = client.completions.create(model="tiny", prompt=prompt, max_tokens=0, echo=True, logprobs=1, temperature=0)
    lp = out.choices[0].logprobs
    assert out.choices[0].text == prompt
    assert lp.token_logprobs[0] is None and all(v <= 0 for v in lp.token_logprobs[1:])
    assert "".join(lp.tokens) == prompt and len(lp.tokens) == out.usage.prompt_tokens
    assert out.usage.completion_tokens == 0


def test_penalties_change_sampling(client: openai.OpenAI) -> None:
    base = dict(model="tiny", prompt="Hello", max_tokens=24, temperature=0, extra_body={"ignore_eos": True})
    plain = client.completions.create(**base).choices[0].text
    penalized = client.completions.create(**base, frequency_penalty=2.0, presence_penalty=2.0).choices[0].text
    assert plain != penalized


def test_bad_parameter_is_a_400_naming_it(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tiny", prompt="Hi", temperature=5)
    assert err.value.body["param"] == "temperature"


def test_token_ids_outside_the_vocabulary_are_a_400_naming_the_field(client: openai.OpenAI) -> None:
    """Prompt ids and stop ids are checked against one vocabulary size, the model's."""
    hi = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.BadRequestError) as prompt_err:
        client.completions.create(model="tiny", prompt=[1, 10**6], max_tokens=2)
    with pytest.raises(openai.BadRequestError) as stop_err:
        client.completions.create(model="tiny", prompt="Hi", max_tokens=2, extra_body={"stop_token_ids": [10**6]})
    with pytest.raises(openai.BadRequestError) as chat_err:
        client.chat.completions.create(model="tiny", messages=hi, max_tokens=2, extra_body={"stop_token_ids": [10**6]})
    errors = [prompt_err.value.body, stop_err.value.body, chat_err.value.body]
    assert [e["param"] for e in errors] == ["prompt", "stop_token_ids", "stop_token_ids"]
    vocab = {e["message"].split("the vocabulary has ")[1] for e in errors}
    assert len(vocab) == 1, errors  # one definition of the vocabulary size
    last_id = int(vocab.pop().split()[0]) - 1
    out = client.completions.create(
        model="tiny", prompt=[1, last_id], max_tokens=2, extra_body={"stop_token_ids": [last_id]}
    )
    assert out.choices[0].finish_reason in ("length", "stop")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("guided_whitespace_pattern", "[ ]*"),
        ("functions", [{"name": "f", "parameters": {"type": "object"}}]),
        ("use_beam_search", True),
    ],
)
def test_fields_that_would_change_the_answer_are_refused_not_ignored(
    client: openai.OpenAI, field: str, value: object
) -> None:
    hi = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny", messages=hi, max_tokens=2, extra_body={field: value})
    assert err.value.body["param"] == field and "not supported" in err.value.body["message"]
    # their "off" values, as clients send them by default, pass
    out = client.chat.completions.create(
        model="tiny", messages=hi, max_tokens=2, response_format={"type": "text"}, extra_body={"tools": []}
    )
    assert out.choices[0].finish_reason in ("length", "stop")


def test_logit_bias_and_allowed_token_ids_steer_the_output(client: openai.OpenAI) -> None:
    base = dict(model="tiny", prompt="Hello", max_tokens=6, temperature=0, extra_body={"ignore_eos": True})
    forced = client.completions.create(**base, logit_bias={"42": 100}, logprobs=0)
    assert forced.choices[0].logprobs.tokens == [forced.choices[0].logprobs.tokens[0]] * 6
    allowed = client.completions.create(
        model="tiny", prompt="Hello", max_tokens=6, temperature=1.0, seed=3, logprobs=0,
        extra_body={"ignore_eos": True, "allowed_token_ids": [42, 43]},
    )  # fmt: skip
    assert set(allowed.choices[0].logprobs.tokens) <= set(
        client.completions.create(**base, logit_bias={"43": 100}, logprobs=0).choices[0].logprobs.tokens
        + forced.choices[0].logprobs.tokens
    )
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(**base, logit_bias={"x": 1})
    assert err.value.body["param"] == "logit_bias"
    # logprobs are the model's own, before shaping: finite even for tokens the request disallows
    hi = [{"role": "user", "content": "hi"}]
    chat = client.chat.completions.create(
        model="tiny", messages=hi, max_tokens=3, logprobs=True, top_logprobs=5, extra_body={"allowed_token_ids": [42]}
    )
    entries = chat.choices[0].logprobs.content
    assert entries and all(len(e.top_logprobs) == 5 and e.logprob <= 0 for e in entries)


def test_stop_reason_names_the_stop_and_include_stop_str_keeps_it(client: openai.OpenAI) -> None:
    base = dict(model="tiny", prompt="Hello", max_tokens=24, temperature=0)
    free = client.completions.create(**base, extra_body={"ignore_eos": True}).choices[0].text
    stop = free[3:5]
    upto = free.index(stop)
    cut = client.completions.create(**base, stop=[stop], extra_body={"ignore_eos": True}).choices[0]
    assert cut.finish_reason == "stop" and cut.stop_reason == stop and cut.text == free[:upto]
    kept = client.completions.create(
        **base, stop=[stop], extra_body={"ignore_eos": True, "include_stop_str_in_output": True}
    )
    assert kept.choices[0].text == free[: upto + len(stop)]
    late = client.completions.create(**base, stop=[stop], extra_body={"ignore_eos": True, "min_tokens": 24})
    assert late.choices[0].text.startswith(free[: upto + len(stop)])  # no stop string counts before min_tokens


def test_tokenize_and_detokenize_as_vllm_serves_them(tiny_server, client: openai.OpenAI) -> None:
    base = tiny_server.base_url
    body = {"model": "tiny", "prompt": "Hello world", "add_special_tokens": False, "return_token_strs": True}
    out = httpx.post(f"{base}/tokenize", json=body).json()
    assert out["count"] == len(out["tokens"]) == len(out["token_strs"]) > 0 and out["max_model_len"] > 0
    back = httpx.post(f"{base}/detokenize", json={"model": "tiny", "tokens": out["tokens"]}).json()
    assert back == {"prompt": "Hello world"}
    messages = [{"role": "user", "content": "Hello world!"}]
    chat = httpx.post(f"{base}/tokenize", json={"model": "tiny", "messages": messages}).json()
    used = client.chat.completions.create(model="tiny", messages=messages, max_tokens=1).usage.prompt_tokens
    assert chat["count"] == used  # the same template rendering as chat completions
    bad = httpx.post(f"{base}/detokenize", json={"model": "tiny", "tokens": [10**6]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"
    wrong = httpx.post(f"{base}/tokenize", json={"model": "tiny", "messages": [{"role": "robot", "content": "x"}]})
    assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "messages.0.role"


def test_context_overflow_is_a_400_with_both_numbers(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tiny", prompt="Hello " * 40, max_tokens=250)
    message = err.value.body["message"]
    assert "256" in message and "250" in message


def test_unknown_model_is_a_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    assert "gpt-4" in err.value.body["message"]


def test_invalid_json_is_a_400(tiny_server) -> None:
    r = httpx.post(
        f"{tiny_server.base_url}/openai/v1/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400 and "error" in r.json() and "message" in r.json()["error"]


def test_eight_concurrent_streams_share_decode_steps(tiny_server) -> None:
    client = openai.OpenAI(base_url=tiny_server.base_url + "/v1", api_key="unused", max_retries=0)

    def one(i: int) -> int:
        stream = client.completions.create(
            model="tiny",
            prompt=f"Hello {i}",
            max_tokens=160,  # long enough that the 8 streams overlap
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
            stream_options={"include_usage": True},
        )
        return list(stream)[-1].usage.completion_tokens

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert list(pool.map(one, range(8))) == [160] * 8
    assert metric(tiny_server.base_url, "isvc_batch_size_max") >= 4


def test_client_disconnect_frees_the_slot(tiny_server) -> None:
    aborted = metric(tiny_server.base_url, "isvc_requests_aborted_total")
    with httpx.stream(
        "POST",
        f"{tiny_server.base_url}/v1/completions",
        json={"model": "tiny", "prompt": "Hello", "max_tokens": 250, "stream": True, "ignore_eos": True},
    ) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i >= 3:
                break
    deadline = time.monotonic() + 10
    while metric(tiny_server.base_url, "isvc_num_requests_running") > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metric(tiny_server.base_url, "isvc_num_requests_running") == 0
    assert metric(tiny_server.base_url, "isvc_requests_aborted_total") == aborted + 1


def test_metrics_are_prometheus_text(tiny_server) -> None:
    text = httpx.get(f"{tiny_server.base_url}/metrics").text
    for name in (
        "isvc_generation_tokens_total",
        "isvc_time_to_first_token_seconds_bucket",
        "isvc_num_requests_waiting",
        "isvc_e2e_request_latency_seconds_bucket",
    ):
        assert name in text
