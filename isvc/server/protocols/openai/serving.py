"""OpenAI completions and chat completions on the engine: wire request -> jobs -> wire response or SSE."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from isvc.engine.client import NO_PROMPT_LOGPROBS, EngineClient, Task
from isvc.engine.outputs import RequestOutput, TokenLogprob
from isvc.engine.params import SamplingParams, StructuredOutput
from isvc.errors import InvalidRequest, NotFound
from isvc.server.generation_defaults import GenerationDefaults
from isvc.server.jobs import Job, check_fits_queue, run_jobs
from isvc.server.protocols.chat_template import RenderLimits, render
from isvc.server.protocols.encode import require_generative
from isvc.server.protocols.openai.reasoning import REASONING_PARSERS, ReasoningStream
from isvc.server.protocols.openai.schema import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    ChatTokenLogprob,
    CompletionChoice,
    CompletionChunk,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    DeltaMessage,
    DetokenizeRequest,
    DetokenizeResponse,
    ModelCard,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
    TokenizeResponse,
    ToolCall,
    TopLogprob,
    UsageInfo,
)
from isvc.server.protocols.openai.structured import structured_output
from isvc.server.protocols.openai.tools import (
    ToolPlan,
    ToolSettings,
    ToolStream,
    plan_tools,
    template_message,
    template_tools,
)
from isvc.server.protocols.preprocess import encode_all, off_loop
from isvc.server.protocols.template_sandbox import TemplateSandbox
from isvc.server.protocols.templates import tool_template
from isvc.sse import DONE, event


class OpenAIServing:
    def __init__(
        self,
        engine: EngineClient,
        model_name: str,
        model_root: str,
        *,
        trust_request_chat_template: bool = False,
        tools: ToolSettings | None = None,
        chat_template: str | None = None,
        reasoning_parser: str | None = None,
        generation: GenerationDefaults | None = None,
    ) -> None:
        self.engine = engine
        self.model_name = model_name
        self.model_root = model_root
        self.trust_request_chat_template = trust_request_chat_template
        self.tool_settings = tools or ToolSettings()
        self.chat_template = chat_template
        """``--chat-template``: replaces the model's own."""
        self.reasoning = REASONING_PARSERS[reasoning_parser] if reasoning_parser else None
        """``--reasoning-parser``: ``<think>`` text goes to ``reasoning_content``."""
        self.generation = generation or GenerationDefaults()
        """``--generation-config``: sampling defaults and the server-wide output cap."""
        self.created = int(time.time())
        self._sandbox = TemplateSandbox() if trust_request_chat_template else None
        """Renders request templates in a child process (started with the first one)."""

    # -- models --------------------------------------------------------------------------

    def model_card(self) -> ModelCard:
        max_len = self.engine.max_model_len if self.engine.ready else None
        return ModelCard(id=self.model_name, created=self.created, root=self.model_root, max_model_len=max_len)

    def check_model(self, name: str) -> None:
        if name != self.model_name:
            raise NotFound(f"The model `{name}` does not exist. This server serves `{self.model_name}`.", param="model")

    # -- completions -----------------------------------------------------------------------

    async def completion_jobs(self, req: CompletionRequest) -> tuple[list[Job], list[list[int]], int]:
        self.check_model(req.model)
        require_generative(self.engine, "completions")
        if req.echo and req.logprobs is not None and self.engine.model_info.task is Task.TEXT2TEXT_GENERATION:
            raise InvalidRequest(NO_PROMPT_LOGPROBS, param="echo")  # here, before a stream's headers go out
        if req.suffix:
            raise InvalidRequest("suffix is not supported", param="suffix")
        if req.best_of is not None and req.best_of != req.n:
            raise InvalidRequest("best_of must equal n (beam search is not supported)", param="best_of")
        p = req.prompt
        num_prompts = 1 if isinstance(p, str) or (p and isinstance(p[0], int)) else len(p)
        check_fits_queue(self.engine, num_prompts * req.n, param="n" if req.n > 1 else "prompt")
        self._check_sampling_fields(req)
        structured = await self._structured(req)
        tokenizer = self.engine.tokenizer
        prompts: list[list[int]]
        if isinstance(p, str):
            prompts = await encode_all(tokenizer, [p])
        elif p and all(isinstance(x, int) for x in p):
            prompts = [list(p)]  # type: ignore[arg-type]
        elif p and all(isinstance(x, str) for x in p):
            prompts = await encode_all(tokenizer, p)  # type: ignore[arg-type]
        elif p and all(isinstance(x, list) for x in p):
            prompts = [list(x) for x in p]  # type: ignore[arg-type]
        else:
            raise InvalidRequest("prompt must be a string, a list of strings, or token ids", param="prompt")
        wanted = req.max_tokens
        jobs: list[Job] = []
        for pi, ids in enumerate(prompts):
            # max_tokens=0 (lm-eval's echo scoring): one token is generated and dropped
            # the request checked against the context first (vLLM's order), then held to the server-wide cap
            max_tokens = self.generation.cap(self.engine.check_request(ids, 1 if wanted == 0 else wanted))
            for j in range(req.n):
                params = _params(
                    req,
                    max_tokens,
                    self.generation,
                    logprobs=req.logprobs,
                    choice=j,
                    prompt_logprobs=req.logprobs if req.echo and req.logprobs is not None else None,
                    structured=structured,
                )
                jobs.append(Job(pi * req.n + j, ids, params))
        self.engine.check_capacity(len(jobs))
        return jobs, prompts, wanted if wanted is not None else -1

    async def completion(self, req: CompletionRequest) -> CompletionResponse:
        jobs, prompts, wanted = await self.completion_jobs(req)
        request_id = f"cmpl-{uuid.uuid4().hex}"
        collected = await _collect(self.engine, request_id, jobs)
        choices = []
        usage = UsageInfo()
        for job in jobs:
            outs = collected[job.index]
            ids = prompts[job.index // req.n]
            text, logprobs, finish = self._completion_text(req, ids, outs, drop_generated=wanted == 0)
            stop_reason = outs[-1].stop_reason if outs and wanted != 0 else None
            choices.append(
                CompletionChoice(
                    index=job.index, text=text, logprobs=logprobs, finish_reason=finish, stop_reason=stop_reason
                )
            )
            usage.completion_tokens += 0 if wanted == 0 else outs[-1].num_output_tokens
        usage.prompt_tokens = sum(len(x) for x in prompts)
        usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
        return CompletionResponse(
            id=request_id, created=int(time.time()), model=self.model_name, choices=choices, usage=usage
        )

    def _completion_text(
        self, req: CompletionRequest, prompt_ids: list[int], outs: list[RequestOutput], drop_generated: bool
    ) -> tuple[str, CompletionLogprobs | None, str | None]:
        text = "" if drop_generated else "".join(o.text for o in outs)
        finish = outs[-1].finish_reason if outs else None
        if drop_generated:
            finish = "length"
        prefix = self.engine.tokenizer.decode(prompt_ids) if req.echo else ""
        if req.logprobs is None:
            return prefix + text, None, finish
        entries: list[TokenLogprob | None] = []
        if req.echo:
            for o in outs:
                if o.prompt_logprobs:
                    entries.extend(o.prompt_logprobs)
        if not drop_generated:
            for o in outs:
                entries.extend(o.logprobs or [])
        first = self.engine.tokenizer.decode(prompt_ids[:1]) if prompt_ids else ""
        return prefix + text, _completion_logprobs(entries, first), finish

    async def completion_stream(self, req: CompletionRequest) -> AsyncIterator[str]:
        jobs, prompts, wanted = await self.completion_jobs(req)
        return self._completion_events(req, jobs, prompts)

    async def _completion_events(
        self, req: CompletionRequest, jobs: list[Job], prompts: list[list[int]]
    ) -> AsyncIterator[str]:
        request_id = f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        completion_tokens: dict[int, int] = {}
        echoed: set[int] = set()
        async for index, out in run_jobs(self.engine, request_id, jobs):
            text = out.text
            if req.echo and index not in echoed:
                echoed.add(index)
                text = self.engine.tokenizer.decode(prompts[index // req.n]) + text
            logprobs = None
            if req.logprobs is not None:
                logprobs = _completion_logprobs(list(out.logprobs or []))
            completion_tokens[index] = out.num_output_tokens
            if not text and not out.finished and logprobs is None:
                continue
            chunk = CompletionChunk(
                id=request_id,
                created=created,
                model=self.model_name,
                choices=[
                    CompletionChoice(
                        index=index,
                        text=text,
                        logprobs=logprobs,
                        finish_reason=out.finish_reason,
                        stop_reason=out.stop_reason,
                    )
                ],
            )
            yield event(chunk)
        if req.stream_options and req.stream_options.include_usage:
            prompt_tokens = sum(len(x) for x in prompts)
            done = sum(completion_tokens.values())
            yield event(
                CompletionChunk(
                    id=request_id,
                    created=created,
                    model=self.model_name,
                    choices=[],
                    usage=UsageInfo(
                        prompt_tokens=prompt_tokens, completion_tokens=done, total_tokens=prompt_tokens + done
                    ),
                )
            )
        yield DONE

    def _check_sampling_fields(self, req: CompletionRequest | ChatCompletionRequest) -> None:
        """Fields isvc does not implement (400), and token ids the vocabulary has no row for (400)."""
        req.refuse_unimplemented()
        if req.stop_token_ids:
            self.engine.check_token_ids(req.stop_token_ids, "stop_token_ids")
        if req.allowed_token_ids:
            self.engine.check_token_ids(req.allowed_token_ids, "allowed_token_ids")
        if req.logit_bias:
            self.engine.check_token_ids(req.logit_bias, "logit_bias")

    async def _structured(
        self, req: CompletionRequest | ChatCompletionRequest, plan: ToolPlan | None = None
    ) -> StructuredOutput | None:
        """The request's output constraint — its own, or the one its ``tool_choice`` needs (not both) —
        its grammar built (400 if it cannot be) before any work."""
        structured = structured_output(req)
        forced = plan.constraint() if plan is not None else None
        if forced is not None:
            if structured is not None:
                assert plan is not None
                raise InvalidRequest(
                    f"tool_choice {'required' if plan.choice == 'required' else 'naming a function'} constrains "
                    f"the output, and so does {structured.source}: set one",
                    param="tool_choice",
                )
            structured = forced
        if structured is not None:
            await self.engine.check_structured(structured)
        return structured

    # -- chat ------------------------------------------------------------------------------

    def _chat_template(self, req: ChatCompletionRequest | TokenizeChatRequest) -> tuple[str, str]:
        """The template to render and the field its failures name: the request's own, or the model's."""
        kwargs = req.chat_template_kwargs or {}
        requested = req.chat_template if req.chat_template is not None else kwargs.get("chat_template")
        if requested is not None:
            if not self.trust_request_chat_template:
                raise InvalidRequest(
                    "chat_template: this server does not accept chat templates in requests "
                    "(start it with --trust-request-chat-template to allow them)",
                    param="chat_template",
                )
            if not isinstance(requested, str):
                raise InvalidRequest("chat_template must be a string", param="chat_template")
            return requested, "chat_template"
        template = self.chat_template or getattr(self.engine.tokenizer, "chat_template", None)
        if isinstance(template, dict):  # named templates: "default" is the chat one
            template = template.get("default")
        if _uses_tools(req) and not (template and "tool" in template):
            # the model's own template would drop the tools and the calls (SmolLM2's does)
            return tool_template(), "messages"
        if not template:
            raise InvalidRequest("this model has no chat template; use /v1/completions", param="messages")
        return template, "messages"

    async def chat_jobs(self, req: ChatCompletionRequest) -> tuple[list[Job], list[int], ToolPlan]:
        self.check_model(req.model)
        require_generative(self.engine, "chat completions")
        check_fits_queue(self.engine, req.n, param="n")
        self._check_sampling_fields(req)
        plan = plan_tools(req, self.tool_settings)
        structured = await self._structured(req, plan)
        ids = await self.chat_prompt_ids(req)
        max_tokens = self.generation.cap(self.engine.check_request(ids, req.max_completion_tokens or req.max_tokens))
        top = req.top_logprobs if req.logprobs else None
        if req.top_logprobs and not req.logprobs:
            raise InvalidRequest("top_logprobs requires logprobs=true", param="top_logprobs")
        jobs = [
            Job(
                j,
                ids,
                _params(
                    req,
                    max_tokens,
                    self.generation,
                    logprobs=(top or 0) if req.logprobs else None,
                    choice=j,
                    structured=structured,
                    keep_special_tokens=plan.keeps_special_tokens,
                ),
            )
            for j in range(req.n)
        ]
        self.engine.check_capacity(len(jobs))
        return jobs, ids, plan

    async def chat_prompt_ids(
        self, req: ChatCompletionRequest | TokenizeChatRequest, add_special_tokens: bool = False
    ) -> list[int]:
        """The request's messages through the chat template (the model's, or a trusted request's), as token ids.

        ``add_special_tokens``: the tokenizer's own (a BOS) on top of what the template wrote (vLLM's
        /tokenize field; chat requests never do)."""
        source, param = self._chat_template(req)
        tokenizer = self.engine.tokenizer
        kwargs = {k: v for k, v in (req.chat_template_kwargs or {}).items() if k != "chat_template"}
        variables = {
            **tokenizer.special_tokens_map,  # bos_token, eos_token...: what transformers gives templates
            **kwargs,
            "messages": [template_message(m) for m in req.messages],
            "add_generation_prompt": req.add_generation_prompt,
        }
        if req.tools:
            variables["tools"] = template_tools(req.tools)
        # A few times the context in characters: longer could never fit, and tokenizing it is wasted work.
        limits = RenderLimits(max_chars=max(65536, 32 * self.engine.max_model_len))
        if param == "chat_template":  # the client's code: in a process a deadline can kill
            assert self._sandbox is not None  # _chat_template refuses request templates unless trusted
            rendered = await self._sandbox.render(source, variables, limits, param)
            ids = (await encode_all(tokenizer, [rendered], add_special_tokens=add_special_tokens))[0]
        else:

            def render_and_encode() -> list[int]:
                rendered = render(source, variables, limits, param=param)
                return list(tokenizer.encode(rendered, add_special_tokens=add_special_tokens))

            ids = await off_loop(render_and_encode)
        return ids

    # -- vLLM's /tokenize and /detokenize --------------------------------------------------

    async def tokenize(self, req: TokenizeCompletionRequest | TokenizeChatRequest) -> TokenizeResponse:
        if req.model is not None:
            self.check_model(req.model)
        tokenizer = self.engine.tokenizer
        if isinstance(req, TokenizeChatRequest):
            ids = await self.chat_prompt_ids(req, add_special_tokens=req.add_special_tokens)
        else:
            ids = (await encode_all(tokenizer, [req.prompt], add_special_tokens=req.add_special_tokens))[0]
        strs = list(tokenizer.convert_ids_to_tokens(ids)) if req.return_token_strs else None
        return TokenizeResponse(count=len(ids), max_model_len=self.engine.max_model_len, tokens=ids, token_strs=strs)

    async def detokenize(self, req: DetokenizeRequest) -> DetokenizeResponse:
        if req.model is not None:
            self.check_model(req.model)
        self.engine.check_token_ids(req.tokens, "tokens")
        return DetokenizeResponse(prompt=self.engine.tokenizer.decode(req.tokens))

    async def chat(self, req: ChatCompletionRequest) -> ChatCompletionResponse:
        jobs, ids, plan = await self.chat_jobs(req)
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        collected = await _collect(self.engine, request_id, jobs)
        choices = []
        completion_tokens = 0
        for job in jobs:
            outs = collected[job.index]
            logprobs = None
            if req.logprobs:
                logprobs = ChatLogprobs(content=[_chat_logprob(lp) for o in outs for lp in (o.logprobs or [])])
            content: str | None = "".join(o.text for o in outs)
            thinking = None
            if self.reasoning is not None and content is not None:
                thinking, content = self.reasoning.split(content)
            calls: list[ToolCall] = []
            if plan.active and content is not None:
                content, calls = plan.read(content)
            choices.append(
                ChatChoice(
                    index=job.index,
                    message=AssistantMessage(content=content, reasoning_content=thinking, tool_calls=calls),
                    logprobs=logprobs,
                    finish_reason=plan.finish_reason(outs[-1].finish_reason, calls),
                    stop_reason=outs[-1].stop_reason,
                )
            )
            completion_tokens += outs[-1].num_output_tokens
        usage = UsageInfo(
            prompt_tokens=len(ids), completion_tokens=completion_tokens, total_tokens=len(ids) + completion_tokens
        )
        return ChatCompletionResponse(
            id=request_id, created=int(time.time()), model=self.model_name, choices=choices, usage=usage
        )

    async def chat_stream(self, req: ChatCompletionRequest) -> AsyncIterator[str]:
        jobs, ids, plan = await self.chat_jobs(req)
        return self._chat_events(req, jobs, ids, plan)

    async def _chat_events(
        self, req: ChatCompletionRequest, jobs: list[Job], ids: list[int], plan: ToolPlan
    ) -> AsyncIterator[str]:
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())

        def chunk(choices: list[ChatChunkChoice], usage: UsageInfo | None = None) -> str:
            return event(
                ChatCompletionChunk(id=request_id, created=created, model=self.model_name, choices=choices, usage=usage)
            )

        for job in jobs:
            yield chunk([ChatChunkChoice(index=job.index, delta=DeltaMessage(role="assistant", content=""))])
        completion_tokens: dict[int, int] = {}
        tool_streams = {job.index: ToolStream(plan) for job in jobs} if plan.active else {}
        thinking_streams = {job.index: ReasoningStream(self.reasoning) for job in jobs} if self.reasoning else {}
        async for index, out in run_jobs(self.engine, request_id, jobs):
            completion_tokens[index] = out.num_output_tokens
            logprobs = None
            if req.logprobs:
                logprobs = ChatLogprobs(content=[_chat_logprob(lp) for lp in (out.logprobs or [])])
            text, thinking, finish_reason = out.text, "", out.finish_reason
            split = thinking_streams.get(index)
            if split is not None:
                thinking, text = split.feed(text)
                if out.finished:
                    more_thinking, more_text = split.close()
                    thinking, text = thinking + more_thinking, text + more_text
            tools, calls = tool_streams.get(index), None
            if tools is not None:
                text = tools.feed(text)
                if out.finished:
                    calls = tools.close()
                    finish_reason = plan.finish_reason(finish_reason, tools.calls)
            deltas = []
            if text or thinking or logprobs is not None:
                deltas.append(
                    DeltaMessage(content=text if text or not thinking else None, reasoning_content=thinking or None)
                )
            if calls is not None:
                deltas.append(calls)
            if out.finished and not deltas:
                deltas.append(DeltaMessage())
            for i, delta in enumerate(deltas):
                last = i == len(deltas) - 1
                choice = ChatChunkChoice(
                    index=index,
                    delta=delta,
                    logprobs=logprobs if i == 0 else None,
                    finish_reason=finish_reason if last else None,
                    stop_reason=out.stop_reason if last else None,
                )
                yield chunk([choice])
        if req.stream_options and req.stream_options.include_usage:
            done = sum(completion_tokens.values())
            yield chunk([], UsageInfo(prompt_tokens=len(ids), completion_tokens=done, total_tokens=len(ids) + done))
        yield DONE


async def _collect(engine: EngineClient, request_id: str, jobs: list[Job]) -> dict[int, list[RequestOutput]]:
    collected: dict[int, list[RequestOutput]] = {job.index: [] for job in jobs}
    async for index, out in run_jobs(engine, request_id, jobs):
        collected[index].append(out)
    return collected


def _params(
    req: Any,
    max_tokens: int,
    defaults: GenerationDefaults,
    *,
    logprobs: int | None,
    choice: int,
    prompt_logprobs: int | None = None,
    structured: StructuredOutput | None = None,
    keep_special_tokens: bool = False,
) -> SamplingParams:
    seed = None if req.seed is None else req.seed + choice
    top_k = defaults.pick(req, "top_k", 0)
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=defaults.pick(req, "temperature", 1.0),
        top_p=defaults.pick(req, "top_p", 1.0),
        top_k=0 if top_k < 0 else int(top_k),
        seed=seed,
        stop=req.stop_list(),
        stop_token_ids=tuple(req.stop_token_ids or ()),
        ignore_eos=req.ignore_eos,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
        skip_special_tokens=req.skip_special_tokens and not keep_special_tokens,
        min_p=defaults.pick(req, "min_p", 0.0),
        repetition_penalty=defaults.pick(req, "repetition_penalty", 1.0),
        logit_bias=tuple((req.logit_bias or {}).items()),
        allowed_token_ids=tuple(req.allowed_token_ids) if req.allowed_token_ids else None,
        min_tokens=req.min_tokens,
        include_stop_str_in_output=req.include_stop_str_in_output,
        structured=structured,
    )


def _completion_logprobs(entries: list[TokenLogprob | None], first_token: str = "") -> CompletionLogprobs:
    """OpenAI's legacy logprobs; a None entry is the first prompt token, which has no logprob."""
    out = CompletionLogprobs()
    offset = 0
    for e in entries:
        if e is None:
            out.tokens.append(first_token)
            out.token_logprobs.append(None)
            out.top_logprobs.append(None)
            out.text_offset.append(offset)
            offset += len(first_token)
            continue
        out.tokens.append(e.token)
        out.token_logprobs.append(e.logprob)
        out.top_logprobs.append({tok: lp for _, tok, lp in e.top} if e.top else {e.token: e.logprob})
        out.text_offset.append(offset)
        offset += len(e.token)
    return out


def _chat_logprob(lp: TokenLogprob) -> ChatTokenLogprob:
    return ChatTokenLogprob(
        token=lp.token,
        logprob=lp.logprob,
        bytes=list(lp.token.encode()),
        top_logprobs=[TopLogprob(token=t, logprob=v, bytes=list(t.encode())) for _, t, v in lp.top],
    )


def _uses_tools(req: Any) -> bool:
    """Whether rendering needs a template that knows tools: tools offered, or calls and results in the history."""
    return bool(req.tools) or any(m.tool_calls or m.role == "tool" for m in req.messages)
