"""What will serve an InferenceService: its task, the engine, and the routes that answer.

Shown by ``isvc apply --dry-run`` and ``isvc describe`` before any process starts. The task comes
from ``--task`` in the args; else from the model folder's ``config.json`` architectures when
that folder is local (``pvc://``, ``file://``, a plain path or a local ``--model_dir``) and
readable, through the same table the engine uses (``isvc.tasks``); else it is inferred when
the predictor starts (a remote ``storageUri`` is only fetched then). Torch-free: the control
plane never imports the engine.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from isvc import tasks
from isvc.controlplane.plan import PORT_TOKEN, LaunchPlan
from isvc.errors import IsvcError
from isvc.runtime_args import ArgsError, parse
from isvc.storage.pvc import resolve_local
from isvc.storage.settings import StorageSettings
from isvc.storage.uri import parse_uri

AT_START = "inferred at start"


@dataclass(frozen=True, slots=True)
class Serving:
    task: str | None
    """A KServe task name, or None when only the started server will know it."""
    task_source: str
    """Where the task comes from: ``--task``, ``config.json (BertModel)``, or why it is not known yet."""
    engine: str
    routes: list[str] = field(default_factory=list)
    """The inference routes that will answer (empty: not known before the process starts)."""
    model_name: str | None = None
    """The name requests give as ``model`` (``--model_name``), when the args say it."""

    @property
    def task_text(self) -> str:
        """The task with where it comes from, as dry-run, describe and the console show it."""
        return f"{self.task} (from {self.task_source})" if self.task else f"{AT_START} ({self.task_source})"

    def lines(self) -> list[tuple[str, str]]:
        """(label, text) rows for dry-run and describe."""
        rows = [("task", self.task_text), ("engine", self.engine)]
        rows += [("routes" if i == 0 else "", route) for i, route in enumerate(self.routes)]
        return rows


def serving_of(plan: LaunchPlan, settings: StorageSettings | None = None) -> Serving:
    """The task, engine and routes of ``plan`` (reads the model folder's config.json when it is local)."""
    argv = _serve_args(plan.command)
    if argv is None:
        if plan.runtime.endswith("/kserve-vllmserver"):
            return Serving(None, "vLLM reads the model when it starts", "vLLM (OpenAI server)")
        return Serving(None, "a container that is not isvc serve", "the container's own server")
    try:
        args = parse(argv)
    except ArgsError as exc:
        return Serving(None, f"the args do not parse: {exc}", "isvc serve")
    model_name = args.served_model_name or args.model_name
    if args.task:
        task, source = args.task, "--task"
    else:
        task, source = _task_from_folder(args, plan, settings or StorageSettings.from_env())
    if task is None:
        return Serving(None, source, _engine(None, args.backend, plan.gpus), model_name=model_name)
    engine = _engine(task, args.backend, plan.gpus)
    return Serving(task, source, engine, tasks.routes(task, model_name), model_name)


def _serve_args(command: list[str]) -> list[str] | None:
    """The args after ``isvc serve`` (also ``python -m isvc serve``), without the port the launcher owns."""
    for i in range(len(command) - 1):
        if command[i + 1] == "serve" and (command[i] == "isvc" or command[i].endswith("/isvc")):
            return [a for a in command[i + 2 :] if PORT_TOKEN not in a]
    return None


def _task_from_folder(args: argparse.Namespace, plan: LaunchPlan, settings: StorageSettings) -> tuple[str | None, str]:
    folder, why_not = _local_model_folder(args, plan, settings)
    if folder is None:
        return None, why_not
    task = tasks.infer_task_from_folder(folder)
    if task is not None and (folder / "modules.json").is_file():
        return task, f"modules.json: a sentence-transformers folder ({tasks.architecture_of(folder)})"
    if task is not None:
        return task, f"config.json architectures: {tasks.architecture_of(folder)}"
    arch = tasks.architecture_of(folder)
    if arch is None:
        return None, f"no readable config.json architectures in {folder}"
    return None, f"architecture {arch} names no task isvc serves; add --task"


def _local_model_folder(
    args: argparse.Namespace, plan: LaunchPlan, settings: StorageSettings
) -> tuple[Path | None, str]:
    if args.model_id:  # isvc serve prefers it over --model_dir (KServe's order)
        return None, f"--model_id {args.model_id}"
    model_dir: str | None = args.model_dir
    if model_dir is None:
        return None, "no --model_dir"
    mount = settings.mount_root  # where pod.py puts the fetched model (KServe's /mnt/models)
    if not (model_dir == mount or model_dir.startswith(mount.rstrip("/") + "/")):
        path = Path(model_dir)
        return (path, "") if path.is_dir() else (None, f"--model_dir {model_dir} is not a folder here")
    if not plan.storage_uri:
        return None, f"--model_dir {model_dir} with no storageUri"
    try:
        uri = parse_uri(plan.storage_uri)
        if uri.is_remote:
            return None, f"{plan.storage_uri} is fetched when the predictor starts"
        root = resolve_local(uri, settings)
    except IsvcError as exc:
        return None, exc.message
    folder = root / model_dir[len(mount) :].lstrip("/") if len(model_dir) > len(mount) else root
    return (folder, "") if folder.is_dir() else (None, f"{folder} is not a folder")


def _engine(task: str | None, backend: str, gpus: int) -> str:
    if backend == "vllm":
        return "vLLM (--backend=vllm)"
    if task is None:
        return (
            "isvc serve: the generative engine for decoder and encoder-decoder LLMs, the encoder engine for other tasks"
        )
    if task == tasks.TEXT2TEXT_GENERATION:  # never vLLM on auto (as KServe falls back to its HF backend)
        return "isvc generative engine (encoder-decoder: continuous batching, sampling)"
    if tasks.is_generative(task):
        if backend == "auto" and gpus:
            return "vLLM on the GPU (--backend=auto), else isvc's generative engine (continuous batching)"
        return "isvc generative engine (continuous batching, sampling)"
    return "isvc encoder engine (dynamic length-bucketed batches, pooling/classification heads)"
