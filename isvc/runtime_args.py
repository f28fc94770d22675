"""The command line of KServe's huggingfaceserver and model server, made forgiving where users slip.

The contract between a manifest's runtime ``args`` and ``isvc serve``: the server parses its
argv with it, and the control plane checks a manifest's args with it at apply time. A leaf
module (argparse only), so both can import it.

Accepted as KServe users write them in manifests (task names from the leaf ``isvc.tasks``):
- both spellings of a flag: ``--trust-remote-code`` and ``--trust_remote_code``;
- one list item holding flag and value: ``"--quantization gptq"``;
- ``--max_length`` as the old name of ``--max_model_len``.
Unlike KServe, an unknown flag is an error that names it and the nearest known one
(KServe drops it silently and users lose hours to that).
"""

from __future__ import annotations

import argparse
import difflib
import json
from collections.abc import Callable

from isvc.tasks import ALIASES, TASKS

BACKENDS = ("auto", "huggingface", "vllm")
TOOL_CALL_PARSERS = ("hermes", "llama3_json", "mistral")
REASONING_PARSERS = ("deepseek_r1", "qwen3")
"""--tool_call_parser and --reasoning_parser values (the server's parser tables; a test checks they agree)."""
DTYPES = ("auto", "float32", "float", "bfloat16", "float16", "half")


class ArgsError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ArgsError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        "isvc serve",
        allow_abbrev=False,
        description="Serve a HuggingFace LLM (a drop-in for KServe's huggingfaceserver).",
    )
    add = p.add_argument
    # kserve model_server
    add("--http_port", type=int, default=8080, help="HTTP port (KServe default 8080)")
    add("--host", default="0.0.0.0", help="address to bind (isvc)")
    add("--grpc_port", type=int, default=8081, help="accepted for compatibility; isvc serves HTTP only")
    add("--enable_grpc", type=_bool, default=False, help="accepted for compatibility; gRPC is not served")
    add("--workers", type=int, default=1, help="accepted for compatibility; one engine per process")
    add("--max_threads", type=int, default=None, help="accepted for compatibility")
    add("--max_asyncio_workers", type=int, default=None, help="accepted for compatibility")
    add("--enable_docs_url", type=_bool, nargs="?", const=True, default=False, help="serve /docs and /openapi.json")
    add("--enable_latency_logging", type=_bool, nargs="?", const=True, default=True, help="log per-request latency")
    add("--configure_logging", type=_bool, nargs="?", const=True, default=True, help="configure logging")
    add("--log_config_file", default=None, help="accepted for compatibility")
    add("--access_log_format", default=None, help="accepted for compatibility")
    add("--model_name", default="model", help="the name clients send as `model`")
    add("--predictor_host", default=None, help="accepted for compatibility")
    add("--predictor_protocol", default="v1", help="accepted for compatibility")
    add("--predictor_use_ssl", type=_bool, nargs="?", const=True, default=False, help="accepted for compatibility")
    add("--predictor_request_timeout_seconds", type=int, default=600, help="accepted for compatibility")
    # isvc: what one client may make the server hold (defaults: isvc.http_limits.RequestLimits)
    add(
        "--max_request_body_bytes",
        type=_bounded(int, 1024, 1 << 30),
        default=4 << 20,
        help="largest request body; larger ones get 413 (default 4 MiB, 1 KiB..1 GiB)",
    )
    add(
        "--max_request_header_bytes",
        type=_bounded(int, 1024, 1 << 20),
        default=32 << 10,
        help="largest request line plus headers; larger ones get 431 (default 32 KiB, 1 KiB..1 MiB)",
    )
    add(
        "--request_header_timeout_seconds",
        type=_bounded(float, 0.1, 3600),
        default=10.0,
        help="a connection that has not sent a complete header block by then is closed (default 10, 0.1..3600)",
    )
    add(
        "--request_body_timeout_seconds",
        type=_bounded(float, 0.1, 3600),
        default=30.0,
        help="longest stall between request body chunks before 408 (default 30, 0.1..3600)",
    )
    # huggingfaceserver
    add("--model_dir", default="/mnt/models", help="model folder, or a storage URI (pvc://, s3://, hf://, ...)")
    add("--model_id", default=None, help="HuggingFace model id (served from the local hub cache; no network)")
    add("--model_revision", default=None, help="HuggingFace model revision")
    add("--tokenizer_revision", default=None, help="HuggingFace tokenizer revision")
    add(
        "--max_model_len",
        "--max_length",
        dest="max_model_len",
        type=int,
        default=None,
        help="longest input: prompt + output tokens for generation, the whole input for encoder tasks "
        "(V1/V2 inputs are cut to it, like KServe); defaults to the model's max_position_embeddings",
    )
    add(
        "--disable_lower_case",
        action="store_true",
        help="encoder tasks: keep the text's case even when the tokenizer lower-cases (uncased models)",
    )
    add(
        "--disable_special_tokens",
        action="store_true",
        help="encoder tasks: tokenize without the model's special tokens ([CLS], [SEP], <s>, ...)",
    )
    add("--trust_remote_code", action="store_true", help="allow custom model code from the model folder")
    add(
        "--trust_request_chat_template",
        action="store_true",
        help="accept a chat template in chat requests (vLLM's flag; refused by default)",
    )
    add(
        "--enable_auto_tool_choice",
        action="store_true",
        help='tool_choice "auto": the model decides to call tools, read back by --tool_call_parser (vLLM\'s flag)',
    )
    add(
        "--tool_call_parser",
        choices=TOOL_CALL_PARSERS,
        default=None,
        help="how the model writes tool calls: hermes (also Qwen2.5 and isvc's tool template), llama3_json, mistral",
    )
    add(
        "--reasoning_parser",
        choices=REASONING_PARSERS,
        default=None,
        help="move the text inside <think>...</think> to reasoning_content: deepseek_r1 or qwen3 (vLLM's flag)",
    )
    add(
        "--generation_config",
        default="auto",
        help="default sampling values and max_new_tokens: auto (the model folder's generation_config.json), "
        "vllm (none), or a folder holding a generation_config.json (vLLM's flag)",
    )
    add(
        "--override_generation_config",
        type=_json_object,
        default=None,
        help='JSON merged over --generation_config\'s values, e.g. \'{"temperature": 0.5, "max_new_tokens": 512}\'',
    )
    add(
        "--chat_template",
        default=None,
        help="a Jinja chat template replacing the model's: a file's path, or the template itself (vLLM's flag)",
    )
    add(
        "--tensor_input_names",
        type=_names,
        default=None,
        help="encoder tasks: the tokenizer outputs given to the model, comma-separated (default: all it makes)",
    )
    add(
        "--task",
        type=_task,
        default=None,
        help=f"the model's task (default: inferred from config.json architectures); one of: {', '.join(TASKS)}",
    )
    add("--backend", default="auto", choices=BACKENDS, help="auto: vLLM with a GPU, else isvc's CPU engine")
    add(
        "--return_token_type_ids",
        action="store_true",
        help="encoder tasks: give the model token type ids even when its tokenizer does not make them",
    )
    add(
        "--return_offsets_mapping",
        action="store_true",
        help="token_classification: add each token's character offsets to V1/V2 answers (KServe's offset_mapping)",
    )
    output_format = p.add_mutually_exclusive_group()
    output_format.add_argument(
        "--return_probabilities",
        action="store_true",
        help="classification and fill-mask V1/V2 answers: class probabilities instead of the top class",
    )
    output_format.add_argument(
        "--return_raw_logits",
        action="store_true",
        help="classification and fill-mask V1/V2 answers: raw logits instead of the top class",
    )
    add("--disable_log_requests", action="store_true", help="do not log requests")
    add("--max_log_len", type=int, default=None, help="max prompt characters in request logs")
    add("--dtype", default="auto", choices=DTYPES, help="float32 on CPU (auto); bf16 is slow without native support")
    # vLLM engine flags
    add("--tensor_parallel_size", type=int, default=None, help="GPUs per model (vLLM backend)")
    add("--pipeline_parallel_size", type=int, default=1, help="vLLM backend")
    add("--gpu_memory_utilization", type=float, default=0.9, help="vLLM backend")
    add(
        "--quantization",
        default=None,
        help="int8: weights and activations in 8 bits on the CPU engine; gptq/awq/...: the vLLM backend on a GPU",
    )
    add("--max_num_seqs", type=int, default=32, help="requests decoded together per step")
    add("--max_num_batched_tokens", type=int, default=256, help="token budget per step (prefill chunks + decode)")
    add(
        "--max_batch_tokens",
        type=int,
        default=512,
        help="encoder tasks: padded tokens per forward pass (rows x longest input; a longer input runs alone)",
    )
    add(
        "--max_queue",
        type=int,
        default=None,
        help="requests that may wait before 429/503 (default 256 generations, or 4096 encoder inputs)",
    )
    add(
        "--kv_cache_dtype",
        default="auto",
        help="KV cache type: auto (float16 on the native CPU kernels, else the model dtype), float32, float16, "
        "fp8_e5m2 (a quarter of float32: for long contexts); passed to vLLM as-is",
    )
    add(
        "--enable_prefix_caching",
        dest="enable_prefix_caching",
        action="store_true",
        default=True,
        help="reuse the KV of earlier prompts that start the same way (default: on)",
    )
    add(
        "--no_enable_prefix_caching",
        dest="enable_prefix_caching",
        action="store_false",
        help="compute every prompt in full",
    )
    add(
        "--num_speculative_tokens",
        type=int,
        default=3,
        help="isvc engine: tokens drafted by prompt lookup and verified per step for greedy requests (0: off)",
    )
    add(
        "--speculative_max_batch",
        type=int,
        default=1,
        help="isvc engine: speculate only while at most this many requests decode",
    )
    add("--kv_cache_space", type=float, default=4.0, help="KV cache budget in GiB")
    add("--num_threads", type=int, default=None, help="torch threads (default: the cores this process may use)")
    add("--seed", type=int, default=0, help="seed for requests that give none")
    add("--served_model_name", default=None, help="vLLM spelling of --model_name")
    add("--enforce_eager", action="store_true", help="vLLM backend")
    return p


def _bounded(kind: type[int] | type[float], low: float, high: float) -> Callable[[str], float]:
    """An argparse type: a number of ``kind`` within [low, high]."""

    def convert(value: str) -> float:
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range {low}..{high}")
        return number

    convert.__name__ = kind.__name__  # argparse names the type in its messages
    return convert


def _task(value: str) -> str:
    """A task's KServe name; ``text-embedding``, ``TEXT_EMBEDDING`` and other servers' names (``embed``,
    ``ner``: ``isvc.tasks.ALIASES``) are forgiven and answered with KServe's."""
    task = value.strip().lower().replace("-", "_")
    task = ALIASES.get(task, task)
    if task not in TASKS:
        near = difflib.get_close_matches(task, [*TASKS, *ALIASES], n=1, cutoff=0.6)
        hint = f" (did you mean {near[0]}?)" if near else ""
        raise argparse.ArgumentTypeError(f"unknown task {value!r}{hint}; choose one of: {', '.join(TASKS)}")
    return task


_task.__name__ = "task"


def _names(value: str) -> list[str]:
    """A comma-separated list (KServe's ``list_of_strings``), blanks dropped."""
    return [name.strip() for name in value.split(",") if name.strip()]


def _bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {value!r}")


def normalize(argv: list[str]) -> list[str]:
    """Split "--flag value" items and turn dashes in flag names into underscores."""
    out: list[str] = []
    for item in argv:
        if item.startswith("--"):
            name, eq, value = item.partition("=")
            if not eq and " " in name.strip():
                name, _, value = name.strip().partition(" ")
                out += ["--" + name[2:].replace("-", "_"), value.strip()]
                continue
            name = "--" + name[2:].replace("-", "_")
            out.append(name + eq + value)
        else:
            out.append(item)
    return out


def _json_object(text: str) -> dict[str, object]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError('a JSON object is needed, like {"temperature": 0.5}')
    return value


def parse(argv: list[str]) -> argparse.Namespace:
    parser = build_parser()
    args, unknown = parser.parse_known_args(normalize(argv))
    if unknown:
        known = [o for a in parser._actions for o in a.option_strings]
        messages = []
        for item in unknown:
            flag = item.split("=", 1)[0]
            if not flag.startswith("-"):
                messages.append(f"unexpected argument {item!r}")
                continue
            near = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
            hint = f"; did you mean {near[0]}?" if near else ""
            messages.append(f"unknown flag {flag}{hint}")
        raise ArgsError("; ".join(messages) + " (see `isvc serve --help`)")
    if args.served_model_name:
        args.model_name = args.served_model_name
    return args
