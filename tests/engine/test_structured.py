"""Structured outputs on the engine: every sampled token obeys the request's grammar, at any temperature.

The tiny random Llama would write anything; constrained, its outputs must parse (JSON, checked
against the schema with ``jsonschema``), fully match the regex, be one of the choices or a
sentence of the grammar — and a constrained request leaves the other rows of its batch alone.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import jsonschema
import pytest
import torch

from isvc.engine.async_engine import AsyncEngine
from isvc.engine.config import EngineConfig
from isvc.engine.params import SamplingParams, StructuredOutput
from isvc.engine.structured import apply_bitmask
from isvc.errors import InvalidRequest
from tests.engine.test_engine import prompts, run

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "mood": {"enum": ["happy", "sad", "calm"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 3},
        "member": {"type": "boolean"},
    },
    "required": ["name", "age", "mood", "tags", "member"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path):
    eng = AsyncEngine(EngineConfig(model_dir=str(tiny_model_dir), max_num_batched_tokens=64, num_threads=2))
    eng.load()
    yield eng
    eng.shutdown()


def _params(spec: StructuredOutput, seed: int, temperature: float = 1.0) -> SamplingParams:
    return SamplingParams(max_tokens=160, temperature=temperature, seed=seed, structured=spec)


@pytest.mark.parametrize("native", [True, False])
def test_the_bitmask_allows_exactly_its_set_bits(native: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    from isvc.engine import structured

    if native and structured._native_apply() is None:
        pytest.skip("no C compiler: the kernels do not build here")
    if not native:
        monkeypatch.setattr(structured, "_native_apply", lambda: None)
    torch.manual_seed(0)
    bitmask = torch.randint(-(2**31), 2**31 - 1, (3, 4), dtype=torch.int32)
    logits = torch.randn(3, 100)  # the last word's high bits lie past the vocabulary
    masked = logits.clone()
    apply_bitmask(masked, bitmask)
    for row in range(3):
        for token in range(100):
            allowed = (int(bitmask[row, token // 32]) >> (token % 32)) & 1
            assert masked[row, token] == (logits[row, token] if allowed else float("-inf"))


async def test_json_schema_outputs_validate_at_temperature_one(engine: AsyncEngine) -> None:
    spec = StructuredOutput("json", json.dumps(PERSON))
    await engine.check_structured(spec)
    ids = prompts(engine, 6)
    outs = await asyncio.gather(*(run(engine, f"j{i}", ids[i], _params(spec, seed=i)) for i in range(6)))
    for _, text, reason in outs:
        assert reason == "stop", text
        jsonschema.validate(json.loads(text), PERSON)
    assert len({text for _, text, _ in outs}) > 1  # still sampling, within the grammar


async def test_json_object_regex_choice_and_grammar(engine: AsyncEngine) -> None:
    ids = prompts(engine, 1)[0]
    cases = [
        (StructuredOutput("json_object"), lambda text: isinstance(json.loads(text), dict)),
        (StructuredOutput("regex", r"[0-9]{3}-[a-z]{2}"), lambda text: re.fullmatch(r"[0-9]{3}-[a-z]{2}", text)),
        (
            StructuredOutput("choice", choices=("Paris", "Lyon", 'say "hi"')),
            lambda t: t in ("Paris", "Lyon", 'say "hi"'),
        ),
        (StructuredOutput("grammar", 'root ::= "yes" | "no" | "n" [0-9]'), lambda t: re.fullmatch(r"yes|no|n[0-9]", t)),
        (StructuredOutput("grammar", 'start: "up" | "down"'), lambda text: text in ("up", "down")),  # Lark
    ]
    for spec, valid in cases:
        await engine.check_structured(spec)
        for seed in range(3):
            _, text, reason = await run(engine, f"{spec.kind}{seed}", ids, _params(spec, seed))
            assert reason == "stop" and valid(text), (spec, text)


async def test_logprobs_come_with_constrained_tokens(engine: AsyncEngine) -> None:
    """Each constrained token gets its logprob and top alternatives: the model's own distribution
    before the mask (vLLM's raw logprobs), so the alternatives may lie outside the grammar."""
    spec = StructuredOutput("regex", r"[0-9]{4}")
    await engine.check_structured(spec)
    params = SamplingParams(max_tokens=16, temperature=0, structured=spec, logprobs=3)
    tokens, entries, text = [], [], ""
    async for out in engine.generate("lp", prompts(engine, 1)[0], params):
        tokens += out.token_ids
        entries += out.logprobs or []
        text += out.text
    assert re.fullmatch(r"[0-9]{4}", text)
    assert [e.token_id for e in entries] == tokens
    for e in entries:
        assert e.logprob <= 0 and len(e.top) == 3
        assert all(lp <= 0 for _, _, lp in e.top) and [lp for _, _, lp in e.top] == sorted(
            (lp for _, _, lp in e.top), reverse=True
        )


async def test_a_constrained_row_leaves_the_rest_of_its_batch_alone(engine: AsyncEngine) -> None:
    ids = prompts(engine, 4)
    greedy = SamplingParams(max_tokens=12, temperature=0)
    alone = [await run(engine, f"a{i}", ids[i], greedy) for i in range(3)]
    spec = StructuredOutput("json", json.dumps(PERSON))
    await engine.check_structured(spec)
    together = await asyncio.gather(
        run(engine, "c", ids[3], _params(spec, seed=7)), *(run(engine, f"b{i}", ids[i], greedy) for i in range(3))
    )
    jsonschema.validate(json.loads(together[0][1]), PERSON)
    assert list(together[1:]) == alone


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        (StructuredOutput("regex", "([a-z", source="guided_regex"), "guided_regex", "regex"),
        (StructuredOutput("grammar", "root ::= (", source="guided_grammar"), "guided_grammar", ""),
        (
            StructuredOutput("json", json.dumps({"type": "object", "minProperties": "two"}), source="response_format"),
            "response_format",
            "",
        ),
    ],
)
async def test_a_grammar_that_cannot_be_built_is_a_400_naming_its_field(
    engine: AsyncEngine, spec: StructuredOutput, field: str, words: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        await engine.check_structured(spec)
    assert refused.value.param == field and refused.value.http_status == 400
    assert str(refused.value).startswith(f"{field}: ") and words in str(refused.value).lower()


def test_extreme_shaping_cannot_push_a_constrained_row_off_its_grammar(tiny_model_dir: Path) -> None:
    """A repetition_penalty of 5e-324 turns a positive logit into +inf (NaN after a softmax): the pick
    must still be the one token the grammar allows (the property test found this one)."""
    from transformers import AutoTokenizer

    from isvc.engine.sampler import Sampler
    from isvc.engine.structured import Grammars

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    grammars = Grammars(tokenizer, len(tokenizer), [eos])
    spec = StructuredOutput("regex", "")  # an empty output: EOS at once
    sampler = Sampler(eos_ids=(eos,), grammars=grammars)
    params = SamplingParams(max_tokens=4, repetition_penalty=5e-324, seed=1, structured=spec)
    sampler.add("r", params, grammars.check(spec))
    logits = torch.full((1, len(tokenizer)), -3.0)
    logits[0, eos] = 2.0  # positive: divided by the penalty, +inf
    picked = sampler.sample(logits, ["r"], [params], [[]], [[eos, 5]]).token_ids[0]
    assert picked == eos
    sampler.accept("r", picked)


def test_constrained_greedy_speculates_and_gives_the_tokens_of_plain_decoding(tiny_model_dir: Path) -> None:
    """Drafts of a constrained request are verified row by row against its grammar: accepted drafts
    save steps, and the output is token for token what constrained greedy decoding without drafts gives."""
    from isvc.engine import kernels, metrics
    from tests.conftest import counter_value

    if kernels.load() is None:
        pytest.skip("speculation runs on the native kernels only (row-exact verification)")
    spec = StructuredOutput("json", json.dumps(PERSON))

    def answers(k: int) -> list[str]:
        eng = AsyncEngine(EngineConfig(model_dir=str(tiny_model_dir), num_threads=2, num_speculative_tokens=k))
        eng.load()
        try:

            async def go() -> list[str]:
                await eng.check_structured(spec)
                greedy = _params(spec, seed=0, temperature=0)
                return [(await run(eng, f"s{k}-{i}", ids, greedy))[1] for i, ids in enumerate(prompts(eng, 3))]

            return asyncio.run(go())
        finally:
            eng.shutdown()

    drafted, taken = counter_value(metrics.SPEC_DRAFT_TOKENS), counter_value(metrics.SPEC_ACCEPTED_TOKENS)
    speculated = answers(3)
    assert counter_value(metrics.SPEC_DRAFT_TOKENS) > drafted
    assert counter_value(metrics.SPEC_ACCEPTED_TOKENS) > taken  # JSON repeats itself: some drafts hold
    assert speculated == answers(0)
    for text in speculated:
        jsonschema.validate(json.loads(text), PERSON)
