"""InferenceService + runtime → LaunchPlan: the exact command, env, port mapping and probe of a predictor.

Ports: every predictor gets its own free port P on 127.0.0.1 at launch. The plan holds the
placeholder ``PORT_TOKEN`` wherever P goes: ``--http_port=P`` is appended for runtime
predictors; in custom containers every ``--port``/``--http_port``/``--http-port`` flag
with the declared port (``ports[0].containerPort``, else the probe's port, else 8080) is
rewritten, ``PORT=P`` is set, and probes on the declared port probe P.

Storage: ``/mnt/models`` in args/env stays as written here; the pod wrapper (pod.py)
rewrites it to wherever the storage initializer put the model.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shlex
from dataclasses import asdict, dataclass, field
from typing import Any

from isvc.controlplane.runtimes import all_runtimes, select_runtime
from isvc.errors import ConfigError
from isvc.manifest.images import entrypoint
from isvc.manifest.models import Container, InferenceService, Probe, ServingRuntime
from isvc.manifest.quantity import parse_quantity
from isvc.manifest.webhook import GPU_RESOURCE
from isvc.runtime_args import ArgsError, normalize, parse

PORT_TOKEN = "__ISVC_PORT__"
MOUNT_PATH = "/mnt/models"
DEFAULT_PORT = 8080
_TEMPLATE = re.compile(r"\{\{\s*\.(\w+)(?:\.([\w./-]+))?\s*\}\}")


@dataclass(frozen=True, slots=True)
class ProbePlan:
    kind: str  # "http" | "tcp"
    path: str = "/"
    initial_delay_s: float = 0.0
    period_s: float = 1.0
    timeout_s: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3


@dataclass(slots=True)
class LaunchPlan:
    """Everything needed to start (and restart) one predictor replica, as JSON-able data."""

    kind: str  # "runtime" | "custom"
    command: list[str]
    env: dict[str, str]
    probe: ProbePlan
    runtime: str = ""
    storage_uri: str | None = None
    declared_port: int = DEFAULT_PORT
    gpus: int = 0
    tensor_parallel: bool = False
    cpu_threads: int | None = None
    memory_limit_bytes: int | None = None
    model_names: list[str] = field(default_factory=list)
    timeout_s: float | None = None
    replicas: int = 1
    image: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LaunchPlan:
        data = json.loads(text)
        data["probe"] = ProbePlan(**data["probe"])
        return cls(**data)


def spec_hash(isvc_body: dict[str, Any]) -> str:
    """Hash of what defines a revision: the predictor minus traffic and replica counts."""
    pred = dict(isvc_body.get("spec", {}).get("predictor", {}))
    for key in ("canaryTrafficPercent", "minReplicas", "maxReplicas"):
        pred.pop(key, None)
    return hashlib.sha256(json.dumps(pred, sort_keys=True).encode()).hexdigest()[:16]


def render_template(text: str, isvc: InferenceService) -> str:
    meta = isvc.metadata

    def sub(m: re.Match[str]) -> str:
        what, key = m.group(1), m.group(2)
        if what == "Name":
            return meta.name
        if what == "Namespace":
            return meta.namespace
        if what == "Labels" and key:
            return meta.labels.get(key, "")
        if what == "Annotations" and key:
            return meta.annotations.get(key, "")
        return m.group(0)

    return _TEMPLATE.sub(sub, text)


def _flag_key(arg: str) -> str | None:
    if arg.startswith("--") and "=" in arg:
        return arg[2:].split("=", 1)[0].replace("-", "_")
    return None


def merge_args(runtime_args: list[str], isvc_args: list[str], notes: list[str]) -> list[str]:
    """Runtime args then the ISVC's; a later ``--flag=value`` replaces an earlier one (argparse would too)."""
    out: list[str] = []
    for arg in [*runtime_args, *isvc_args]:
        if arg.startswith("-") and " " in arg.strip() and "=" not in arg.split(" ", 1)[0]:
            parts = shlex.split(arg)
            notes.append(f"argument {arg!r} split into {parts} (one list item holds a flag and its value)")
            out += parts
            continue
        key = _flag_key(arg)
        if key is not None:
            out = [a for a in out if _flag_key(a) != key]
        out.append(arg)
    return out


def _merge_env(base: list[Any], over: list[Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for e in [*base, *over]:
        if e.value is not None:
            env[e.name] = e.value
        elif e.value_from is not None:
            env.pop(e.name, None)
    return env


def _probe(probe: Probe | None, default: ProbePlan, declared_port: int) -> ProbePlan:
    if probe is None:
        return default
    common = dict(
        initial_delay_s=float(probe.initial_delay_seconds),
        period_s=float(max(probe.period_seconds, 1)),
        timeout_s=float(max(probe.timeout_seconds, 1)),
        success_threshold=max(probe.success_threshold, 1),
        failure_threshold=max(probe.failure_threshold, 1),
    )
    if probe.http_get is not None:
        return ProbePlan(kind="http", path=probe.http_get.path or "/", **common)  # type: ignore[arg-type]
    if probe.tcp_socket is not None:
        return ProbePlan(kind="tcp", **common)  # type: ignore[arg-type]
    return default  # exec probes: fall back to the default readiness check


def _declared_port(c: Container) -> int:
    if c.ports:
        return c.ports[0].container_port
    probe = c.readiness_probe
    for action in (probe.tcp_socket, probe.http_get) if probe else ():
        if action is not None and isinstance(action.port, int):
            return action.port
    m = re.search(r"--(?:port|http[_-]port)[= ](\d+)\b", " ".join([*c.command, *c.args]))
    return int(m.group(1)) if m else DEFAULT_PORT


def rewrite_port(text: str, declared: int) -> str:
    """``--port 8080`` / ``--port=8080`` / ``--http_port``/``--http-port`` → the placeholder."""
    return re.sub(rf"(--(?:port|http[_-]port)[= ]){declared}\b", rf"\g<1>{PORT_TOKEN}", text)


def rewrite_ports(argv: list[str], declared: int) -> list[str]:
    """Rewrite the declared port in every ``--port N`` (one or two list items) to the placeholder."""
    out = [rewrite_port(a, declared) for a in argv]
    for i in range(len(out) - 1):
        if re.fullmatch(r"--(?:port|http[_-]port)", out[i]) and out[i + 1] == str(declared):
            out[i + 1] = PORT_TOKEN
    return out


def _resources(c: Container, plan: LaunchPlan) -> None:
    limits = {**c.resources.requests, **c.resources.limits}
    if GPU_RESOURCE in limits:
        plan.gpus = int(parse_quantity(limits[GPU_RESOURCE]))
    if "cpu" in limits:
        want = max(1, math.ceil(parse_quantity(limits["cpu"])))
        have = os.cpu_count() or 1
        plan.cpu_threads = min(want, have)
        if want > have:
            plan.notes.append(f"cpu limit {limits['cpu']} > {have} cores here: {have} threads")
    if "memory" in c.resources.limits:
        plan.memory_limit_bytes = int(parse_quantity(c.resources.limits["memory"]))


def _model_names(command: list[str], fallback: str) -> list[str]:
    names: list[str] = []
    joined = " ".join(command)
    for m in re.finditer(r"--(?:model_name|model-name|served-model-name|served_model_name)[= ]([^\s\"']+)", joined):
        names.append(m.group(1))
    return names or [fallback]


class InvalidServeArgs(ConfigError):
    """Args of an ``isvc serve`` predictor that the server's own parser refuses (caught at apply time)."""

    code = "invalid_runtime_args"


def check_serve_args(argv: list[str], fields: list[tuple[str, str]]) -> None:
    """Parse ``argv`` as ``isvc serve`` will; name the manifest field (``fields``: arg, field) that fails."""
    argv = [a for a in argv if PORT_TOKEN not in a]  # the port is ours
    try:
        parse(argv)
    except ArgsError as exc:
        message = str(exc)
        field = next((f for arg, f in reversed(fields) if _named_in(arg, message)), None)
        if field is None:
            field = fields[0][1].rsplit("[", 1)[0] if fields else "spec.predictor"
        raise InvalidServeArgs(f"{field}: {message}", param=field) from exc


def _named_in(arg: str, message: str) -> bool:
    """Does the argparse ``message`` name the flag (or the value) of manifest item ``arg``?"""
    items = normalize([arg])
    flag = items[0].split("=", 1)[0] if items and items[0].startswith("--") else None
    if flag is not None:
        return re.search(re.escape(flag) + r"(?![\w-])", message) is not None
    return f"'{arg}'" in message


def build_plan(isvc: InferenceService, user_runtimes: list[ServingRuntime]) -> LaunchPlan:
    """Resolve runtime, args, env, resources, port mapping and probe; raise ConfigError if impossible."""
    pred = isvc.spec.predictor
    replicas = max(pred.min_replicas or 1, 1)
    model = pred.model_spec()
    http_default = ProbePlan(kind="http", path="/v2/health/ready", period_s=1.0, failure_threshold=3)
    if model is not None:
        selected = select_runtime(model, isvc.metadata.namespace, all_runtimes(user_runtimes))
        rt = selected.runtime
        rc = next((c for c in rt.spec.containers if c.name == "kserve-container"), rt.spec.containers[0])
        notes: list[str] = [selected.reason]
        args = merge_args(
            [render_template(a, isvc) for a in rc.args], [render_template(a, isvc) for a in model.args], notes
        )
        command = [render_template(a, isvc) for a in (model.command or rc.command or entrypoint(rc.image) or [])]
        merged = Container.model_validate(
            {
                **rc.model_dump(by_alias=True, exclude_none=True),
                **model.model_dump(by_alias=True, exclude_none=True, exclude_unset=True),
            }
        )
        declared = _declared_port(rc)
        is_isvc_server = command[:2] == ["isvc", "serve"]
        argv = [*command, *args]
        if is_isvc_server:
            check_serve_args(
                argv[2:],
                [(a, f"spec.predictor.model.args[{i}]") for i, a in enumerate(model.args)]
                + [(a, f"{rt.kind} {rt.metadata.name}: spec.containers[0].args[{i}]") for i, a in enumerate(rc.args)],
            )
            argv = [a for a in argv if _flag_key(a) not in ("http_port", "port")] + [f"--http_port={PORT_TOKEN}"]
        else:
            argv = rewrite_ports(argv, declared)
        plan = LaunchPlan(
            kind="runtime",
            command=argv,
            env={**_merge_env(rc.env, model.env), "PORT": PORT_TOKEN},
            probe=_probe(model.readiness_probe or rc.readiness_probe, http_default, declared),
            runtime=f"{rt.kind}/{rt.metadata.name}",
            storage_uri=model.storage_uri,
            declared_port=declared,
            tensor_parallel=is_isvc_server,
            model_names=_model_names(argv, isvc.metadata.name),
            timeout_s=float(pred.timeout) if pred.timeout else None,
            replicas=replicas,
            image=rc.image,
            notes=notes,
        )
        _resources(merged, plan)
        return plan
    if not pred.containers:
        raise ConfigError("predictor has neither a model nor containers", param="spec.predictor")
    c = next((c for c in pred.containers if c.name == "kserve-container"), pred.containers[0])
    index = pred.containers.index(c)
    command = c.command or entrypoint(c.image) or []
    if command[:2] == ["isvc", "serve"]:
        check_serve_args(
            [*command[2:], *c.args],
            [(a, f"spec.predictor.containers[{index}].args[{i}]") for i, a in enumerate(c.args)],
        )
    declared = _declared_port(c)
    env = _merge_env([], c.env)
    storage_uri = env.pop("STORAGE_URI", None)
    tcp_default = ProbePlan(kind="tcp", period_s=1.0)
    plan = LaunchPlan(
        kind="custom",
        command=rewrite_ports([render_template(a, isvc) for a in [*command, *c.args]], declared),
        env={k: rewrite_port(v, declared) for k, v in env.items()} | {"PORT": PORT_TOKEN},
        probe=_probe(c.readiness_probe, tcp_default, declared),
        runtime="custom container",
        storage_uri=storage_uri,
        declared_port=declared,
        model_names=_model_names([*command, *c.args], isvc.metadata.name),
        timeout_s=float(pred.timeout) if pred.timeout else None,
        replicas=replicas,
        image=c.image,
    )
    if storage_uri:
        plan.env["STORAGE_URI"] = MOUNT_PATH
    _resources(c, plan)
    if PORT_TOKEN not in " ".join(plan.command):
        plan.notes.append(
            f"declared port {declared} not found as a --port flag in command/args: the process must listen on $PORT"
        )
    return plan
