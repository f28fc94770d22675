"""Structured outputs over HTTP with the real SmolLM2-135M and the official ``openai`` client.

What an application sees: ``chat.completions.parse`` with a pydantic model answers parsed objects
every time, vLLM's ``structured_outputs`` / ``guided_*`` fields constrain chat and completions,
streams concatenate to valid JSON, and a constraint that cannot be built is a 400 naming its field.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
from typing import Annotated, Literal

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

pytestmark = pytest.mark.slow


class City(BaseModel):
    name: str = Field(max_length=24)
    country: str = Field(max_length=24)
    continent: Literal["Europe", "Asia", "Africa", "America", "Oceania"]
    population_millions: int = Field(ge=0, le=100)
    landmarks: list[Annotated[str, Field(max_length=32)]] = Field(max_length=3)


QUESTIONS = ["Paris", "Tokyo", "Cairo", "Lima", "Sydney", "Rome", "Berlin", "Madrid", "Lagos", "Delhi"] * 2


def _client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=300)


def test_openai_parse_gives_a_parsed_object_every_time(smollm2_server) -> None:
    client = _client(smollm2_server)

    def ask(city: str) -> City | None:
        out = client.chat.completions.parse(
            model="llama2",
            messages=[{"role": "user", "content": f"Describe the city of {city} as JSON."}],
            response_format=City,
            temperature=1.0,  # the issue: 20 of 20 at temperature 1
            # the schema bounds every string, so the answer ends before this even if each character of
            # every string were an escape of several tokens (at temperature 1, one in ~20 wanders past 200)
            max_tokens=1000,
        )
        assert out.choices[0].finish_reason == "stop", out.choices[0].message.content
        return out.choices[0].message.parsed

    with concurrent.futures.ThreadPoolExecutor(len(QUESTIONS)) as pool:
        parsed = list(pool.map(ask, QUESTIONS))
    assert all(isinstance(city, City) for city in parsed)  # 20 of 20


def test_vllm_fields_constrain_chat_and_completions(smollm2_server) -> None:
    client = _client(smollm2_server)
    chat = client.chat.completions.create(
        model="llama2",
        messages=[{"role": "user", "content": "Is the sky blue? Answer yes or no."}],
        extra_body={"guided_choice": ["yes", "no"]},
        max_tokens=10,
    )
    assert chat.choices[0].message.content in ("yes", "no")
    completion = client.completions.create(
        model="llama2",
        prompt="My phone number is",
        max_tokens=20,
        extra_body={"structured_outputs": {"regex": r" [0-9]{3}-[0-9]{4}"}},
    )
    assert re.fullmatch(r" [0-9]{3}-[0-9]{4}", completion.choices[0].text)
    schema = City.model_json_schema()
    # seeded: the schema allows extra properties, and an unseeded draw once wrote one long string
    # past max_tokens (a valid but unfinished answer); greedy does so every time
    completion = client.completions.create(
        model="llama2", prompt="A city as JSON:", max_tokens=1000, seed=1, extra_body={"guided_json": schema}
    )
    jsonschema.validate(json.loads(completion.choices[0].text), schema)


def test_a_streamed_json_object_concatenates_to_valid_json(smollm2_server) -> None:
    client = _client(smollm2_server)
    stream = client.chat.completions.create(
        model="llama2",
        messages=[{"role": "user", "content": 'A JSON object with the "name" and "age" of a cat.'}],
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=300,
        stream=True,
    )
    parts, reasons = [], []
    for chunk in stream:
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
            reasons.append(chunk.choices[0].finish_reason)
    assert reasons[-1] == "stop", "".join(parts)
    assert isinstance(json.loads("".join(parts)), dict)


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"guided_regex": "([a-z"}, "guided_regex"),
        ({"guided_json": "{not json"}, "guided_json"),
        ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs"),
        ({"guided_choice": ["a"], "guided_regex": "b"}, "guided_choice"),  # the second one found
        ({"response_format": {"type": "structural_tag"}}, "response_format"),
        ({"guided_whitespace_pattern": " *"}, "guided_whitespace_pattern"),
    ],
)
def test_a_constraint_that_cannot_be_built_is_a_400_naming_its_field(smollm2_server, extra: dict, field: str) -> None:
    body = {"model": "llama2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, **extra}
    response = httpx.post(f"{smollm2_server.base_url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "BadRequestError" and error["param"] == field, error
