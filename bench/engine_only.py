"""The engine without HTTP: the same prompts and concurrency as the load generator, in-process.

Comparing it with `bench.loadgen` against `isvc serve` shows what the HTTP layer costs.

    python -m bench.engine_only --concurrency 1,32 [--quantization int8|gptq|awq]

gptq and awq serve the embedded model's checkpoint that ``python -m bench.quantize`` makes.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from bench.loadgen import requests_for
from bench.prompts import build_prompts, request_prompt
from bench.quantize import GROUP_SIZE, SYMMETRIC, make
from isvc.engine.async_engine import AsyncEngine
from isvc.engine.config import EngineConfig
from isvc.engine.params import SamplingParams
from isvc.models.prepare import ensure_default_model


async def level(
    engine: AsyncEngine, concurrency: int, max_tokens: int, first_serial: int
) -> tuple[float, float, float, float]:
    prompts = build_prompts()
    tok = engine.tokenizer
    total = requests_for(concurrency)
    encoded = [
        tok.apply_chat_template(
            [{"role": "user", "content": request_prompt(prompts, first_serial + i)}],
            add_generation_prompt=True,
            tokenize=False,
        )
        for i in range(total)
    ]
    ids = [tok.encode(e, add_special_tokens=False) for e in encoded]
    next_index = 0
    tokens = 0
    ttfts: list[float] = []

    async def worker() -> None:
        nonlocal next_index, tokens
        while next_index < total:
            i = next_index
            next_index += 1
            start = time.perf_counter()
            first = True
            async for out in engine.generate(
                f"r{concurrency}-{i}", ids[i], SamplingParams(max_tokens=max_tokens, temperature=0)
            ):
                if first and out.token_ids:
                    ttfts.append(time.perf_counter() - start)
                    first = False
                tokens += len(out.token_ids)

    start = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(concurrency)])
    ttfts.sort()
    return tokens / (time.perf_counter() - start), ttfts[len(ttfts) // 2], ttfts[int(len(ttfts) * 0.9)], tokens / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", default="1,4,16,32")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--max-num-batched-tokens", type=int, default=256)
    parser.add_argument("--quantization", default=None, choices=["int8", "gptq", "awq"])
    args = parser.parse_args()
    model_dir = ensure_default_model()
    if args.quantization in GROUP_SIZE:
        method = args.quantization
        model_dir = make(method, 4, GROUP_SIZE[method], desc_act=False, sym=SYMMETRIC[method], samples=128)
    engine = AsyncEngine(
        EngineConfig(
            model_dir=str(model_dir),
            max_num_batched_tokens=args.max_num_batched_tokens,
            quantization=args.quantization,
        )
    )
    engine.load()
    serial = 0
    for c in (int(x) for x in args.concurrency.split(",")):
        tok_s, ttft, ttft90, mean_output = asyncio.run(level(engine, c, args.max_tokens, serial))
        serial += requests_for(c)
        # outputs end at EOS: weights that stop sooner spend more of the run on prompts
        print(
            f"c={c}: {tok_s:.1f} tok/s, TTFT p50 {ttft:.2f}s p90 {ttft90:.2f}s, {mean_output:.0f} tokens per answer",
            flush=True,
        )
    engine.shutdown()


if __name__ == "__main__":
    main()
