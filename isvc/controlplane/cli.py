"""kubectl-style commands: apply, get, describe, delete, logs, export (``up``/``down`` are in ``isvc.node``).

Every command finds the control plane through the state dir (``--state-dir``, else
``$ISVC_STATE_DIR``, else ``~/.isvc``): desired state is written to its SQLite file and
status read back from it, so ``apply`` and ``get`` work whether or not ``isvc up`` runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import yaml

from isvc.controlplane.apply import GROUP as _GROUP
from isvc.controlplane.apply import PLURAL as _PLURAL
from isvc.controlplane.apply import apply_documents, load_resources
from isvc.controlplane.apply import check_args as _check_args
from isvc.controlplane.output import describe_text, isvc_table, runtime_table
from isvc.controlplane.plan import InvalidServeArgs, build_plan
from isvc.controlplane.process import running_pid
from isvc.controlplane.serving import Serving, serving_of
from isvc.controlplane.store import RevisionRow, Store, state_dir
from isvc.errors import IsvcError
from isvc.manifest import (
    SERVICE_KINDS,
    SHORT_NAMES,
    Problem,
    Resource,
    ServingRuntime,
    llmisvc,
    load_paths,
)
from isvc.manifest.models import InferenceService, LLMInferenceService


def fail(exc: Exception) -> int:
    print(f"error: {exc.message if isinstance(exc, IsvcError) else exc}", file=sys.stderr)
    return 1


def common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--state-dir", default=None, help="control plane state (default $ISVC_STATE_DIR or ~/.isvc)")
    return parser


def _store(args: argparse.Namespace) -> Store:
    return Store(state_dir(args.state_dir))


def _kind(word: str) -> str:
    kind = SHORT_NAMES.get(word.lower())
    if kind is None:
        raise IsvcError(f"unknown resource type {word!r}; use one of: {', '.join(sorted(SHORT_NAMES))}")
    return kind


# ---- apply / delete -------------------------------------------------------------------
def apply(argv: list[str]) -> int:
    p = common_args(argparse.ArgumentParser(prog="isvc apply", description="create or update resources"))
    p.add_argument("-f", "--filename", action="append", required=True, help="FILE, DIR or - (stdin); repeatable")
    p.add_argument("-n", "--namespace", default=None)
    p.add_argument("--dry-run", action="store_true", help="validate and print what would run, change nothing")
    args = p.parse_args(argv)
    store = _store(args)
    try:
        apply_documents(
            store, load_paths(args.filename), args.namespace, dry_run=args.dry_run,
            out=print, warn=lambda line: print(line, file=sys.stderr),
        )  # fmt: skip
    except IsvcError as exc:
        return fail(exc)
    if not args.dry_run and running_pid(store.root) is None:
        print(f"note: the control plane is not running for {store.root}; `isvc up` to run these", file=sys.stderr)
    return 0


def delete(argv: list[str]) -> int:
    p = common_args(argparse.ArgumentParser(prog="isvc delete", description="delete resources"))
    p.add_argument("what", nargs="*", help="TYPE NAME... or TYPE/NAME")
    p.add_argument("-f", "--filename", action="append", default=[])
    p.add_argument("-n", "--namespace", default=None)
    args = p.parse_args(argv)
    store = _store(args)
    try:
        targets: list[tuple[str, str, str]] = []
        if args.filename:
            targets += [
                r.key for r in load_resources(load_paths(args.filename), args.namespace, store.runtimes().items)
            ]
        if args.what:
            first = args.what[0]
            if "/" in first:
                for item in args.what:
                    word, _, name = item.partition("/")
                    targets.append((_kind(word), _ns(args, _kind(word)), name))
            else:
                kind = _kind(first)
                if len(args.what) < 2:
                    raise IsvcError(f"delete {first} needs a NAME")
                targets += [(kind, _ns(args, kind), name) for name in args.what[1:]]
        if not targets:
            raise IsvcError("nothing to delete: give TYPE NAME or -f FILE")
        missing = 0
        for kind, ns, name in targets:
            if store.delete_resource(kind, ns, name):
                print(f'{_PLURAL[kind]}.{_GROUP} "{name}" deleted')
            else:
                print(f'Error from server (NotFound): {_PLURAL[kind]}.{_GROUP} "{name}" not found', file=sys.stderr)
                missing += 1
        return 1 if missing else 0
    except IsvcError as exc:
        return fail(exc)


def _ns(args: argparse.Namespace, kind: str) -> str:
    return "" if kind == "ClusterServingRuntime" else (args.namespace or "default")


# ---- export ----------------------------------------------------------------------------
def export(argv: list[str]) -> int:
    from isvc.manifest import export as exp
    from isvc.manifest.deploy import IMAGE_PLACEHOLDER, RUNTIME_NAME, cluster_runtime, cluster_runtime_text

    p = argparse.ArgumentParser(
        prog="isvc export",
        description="print manifests a Kubernetes cluster with KServe accepts (pipe to `kubectl apply -f -`)",
    )
    p.add_argument("-f", "--filename", action="append", default=[], help="FILE, DIR or - (stdin); repeatable")
    p.add_argument("-n", "--namespace", default=None, help="fills a missing namespace or a ${...} placeholder")
    p.add_argument("--runtime", action="store_true", help=f"print the ClusterServingRuntime {RUNTIME_NAME} first")
    p.add_argument(
        "--runtime-name",
        default=RUNTIME_NAME,
        help=f"runtime pinned on huggingface models that name none (default {RUNTIME_NAME}; '' pins none)",
    )
    p.add_argument(
        "--image", default=None, help=f"with --runtime: the image instead of the '{IMAGE_PLACEHOLDER}' placeholder"
    )
    p.add_argument("--to", choices=exp.TARGETS, default="inferenceservice", help="kind of the exported services")
    args = p.parse_args(argv)
    if not args.filename and not args.runtime:
        p.error("give -f FILE (manifests to export) and/or --runtime")
    if args.image and not args.runtime:
        p.error("--image sets the image of the ClusterServingRuntime: give it with --runtime")
    try:
        result = (
            exp.export(
                load_paths(args.filename),
                runtime_name=args.runtime_name or None,
                namespace=args.namespace,
                to_llm=args.to == "llmisvc",
                check=_serve_args_problems,
            )
            if args.filename
            else exp.Exported()
        )
    except IsvcError as exc:
        return fail(exc)
    parts: list[str] = []
    if args.runtime:
        if args.image:
            runtime = cluster_runtime()
            for c in runtime["spec"]["containers"]:
                c["image"] = args.image
            parts.append(yaml.safe_dump(runtime, sort_keys=False))
        else:
            parts.append(cluster_runtime_text())
            print(
                f"Warning: clusterservingruntime/{RUNTIME_NAME}: its image is the placeholder '{IMAGE_PLACEHOLDER}'; "
                "pass --image REGISTRY/isvc:TAG, or install it with `kubectl apply -k deploy/kserve`",
                file=sys.stderr,
            )
    parts += [yaml.safe_dump(d, sort_keys=False, allow_unicode=True) for d in result.documents]
    for w in result.warnings:
        print(f"Warning: {w}", file=sys.stderr)
    sys.stdout.write("---\n".join(parts))
    return 0


def _serve_args_problems(resources: list[Resource]) -> list[Problem]:
    """Args ``isvc serve`` would refuse at start, as ``isvc apply`` refuses them (the cluster runs it too)."""
    runtimes = [r.obj for r in resources if isinstance(r.obj, ServingRuntime)]
    problems = []
    for res in resources:
        try:
            _check_args(res, runtimes)
        except InvalidServeArgs as exc:
            field = exc.param or ""
            problems.append(Problem(res.source, res.index, field, exc.message.removeprefix(f"{field}: ")))
    return problems


# ---- get / describe / logs -------------------------------------------------------------
def _isvc_objects(
    store: Store, ns: str | None, name: str | None, kind: str = "InferenceService"
) -> list[dict[str, Any]]:
    out = []
    for row in store.resources(kind, ns):
        if name and row.name != name:
            continue
        svc = store.service(row.namespace, row.name)
        body = dict(row.body)
        body["status"] = (svc.status if svc else None) or {}
        body.setdefault("metadata", {})["generation"] = row.generation
        body["metadata"]["creationTimestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(row.created))
        out.append(body)
    return out


def get(argv: list[str]) -> int:
    p = common_args(argparse.ArgumentParser(prog="isvc get", description="list resources"))
    p.add_argument("type")
    p.add_argument("name", nargs="?")
    p.add_argument("-n", "--namespace", default=None)
    p.add_argument("-A", "--all-namespaces", action="store_true")
    p.add_argument("-o", "--output", choices=["yaml", "json", "wide", "name"], default=None)
    args = p.parse_args(argv)
    try:
        word, _, slash_name = args.type.partition("/")
        kind, name = _kind(word), slash_name or args.name
        store = _store(args)
        ns = None if args.all_namespaces else (args.namespace or "default")
        if kind in SERVICE_KINDS:
            objs = _isvc_objects(store, ns, name, kind)
        else:
            from isvc.controlplane.runtimes import all_runtimes

            rts = [r for r in all_runtimes(store.runtimes().items) if r.kind == kind]
            if kind == "ServingRuntime":
                rts = [r for r in rts if ns is None or r.metadata.namespace == ns]
            rts = [r for r in rts if not name or r.metadata.name == name]
            objs = [r.model_dump(by_alias=True, exclude_none=True, exclude_defaults=True) for r in rts]
        if name and not objs:
            raise IsvcError(f'{_PLURAL[kind]}.{_GROUP} "{name}" not found')
        if args.output in ("yaml", "json"):
            data: Any = objs[0] if name else {"apiVersion": "v1", "kind": "List", "items": objs}
            print(
                json.dumps(data, indent=2) if args.output == "json" else yaml.safe_dump(data, sort_keys=False),
                end="" if args.output == "yaml" else "\n",
            )
        elif args.output == "name":
            print("\n".join(f"{_PLURAL[kind]}.{_GROUP}/{o['metadata']['name']}" for o in objs))
        elif not objs:
            where = "any namespace" if ns is None else f"{ns} namespace"
            print(f"No resources found in {where}.", file=sys.stderr)
        else:
            table = (
                isvc_table(objs, wide=args.output == "wide", all_ns=ns is None)
                if kind in SERVICE_KINDS
                else runtime_table(objs)
            )
            print(table)
        return 0
    except IsvcError as exc:
        return fail(exc)


def describe(argv: list[str]) -> int:
    p = common_args(
        argparse.ArgumentParser(
            prog="isvc describe", description="show one InferenceService or LLMInferenceService in detail"
        )
    )
    p.add_argument("type")
    p.add_argument("name", nargs="?")
    p.add_argument("-n", "--namespace", default="default")
    args = p.parse_args(argv)
    try:
        word, _, slash_name = args.type.partition("/")
        kind, name = _kind(word), slash_name or args.name
        if kind not in SERVICE_KINDS:
            return get(
                [args.type, *([name] if name else []), "-n", args.namespace, "-o", "yaml"]
                + (["--state-dir", args.state_dir] if args.state_dir else [])
            )
        if not name:
            raise IsvcError("describe isvc needs a NAME")
        store = _store(args)
        objs = _isvc_objects(store, args.namespace, name, kind)
        if not objs:
            raise IsvcError(f'{_PLURAL[kind]}.{_GROUP} "{name}" not found in namespace {args.namespace}')
        row = store.resource(kind, args.namespace, name)
        warnings = row.warnings if row else []
        events = store.events(args.namespace, name)
        gateway = store.gateway_url()
        revisions = store.revisions(args.namespace, name)
        serving = _serving(store, objs[0], revisions)
        running = running_pid(store.root) is not None
        print(describe_text(objs[0], warnings, events, revisions, gateway, running, serving))
        return 0
    except IsvcError as exc:
        return fail(exc)


def _serving(store: Store, body: dict[str, Any], revisions: list[RevisionRow]) -> Serving | None:
    """Task, engine and routes of the latest revision's plan (or of the plan the manifest would get)."""
    try:
        if revisions:
            return serving_of(revisions[-1].plan)
        return serving_of(build_plan(_predictor(body), store.runtimes().items))
    except (IsvcError, ValueError):
        return None  # a plan the controller cannot build: its conditions say why


def _predictor(body: dict[str, Any]) -> InferenceService:
    """The InferenceService whose predictor serves ``body`` (an LLMInferenceService runs as one)."""
    if body.get("kind") == "LLMInferenceService":
        return llmisvc.to_inference_service(LLMInferenceService.model_validate(body)).isvc
    return InferenceService.model_validate(body)


def logs(argv: list[str]) -> int:
    p = common_args(argparse.ArgumentParser(prog="isvc logs", description="print a predictor's log"))
    p.add_argument("name", help="InferenceService name (or isvc/NAME)")
    p.add_argument("-n", "--namespace", default="default")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("--revision", default=None, help="default: the latest revision")
    p.add_argument("--replica", type=int, default=0)
    p.add_argument("--tail", type=int, default=-1)
    args = p.parse_args(argv)
    name = args.name.split("/", 1)[-1]
    store = _store(args)
    revisions = store.revisions(args.namespace, name)
    if not revisions and args.revision is None:
        return fail(IsvcError(f'inferenceservice "{name}" has no revision in namespace {args.namespace}'))
    rev = args.revision or revisions[-1].name
    path = store.root / "logs" / args.namespace / f"{rev}-{args.replica}.log"
    if not path.exists():
        return fail(IsvcError(f"no log yet for {rev} replica {args.replica} ({path})"))
    with open(path, "rb") as f:
        lines = f.read().decode("utf-8", "replace").splitlines(keepends=True)
        sys.stdout.write("".join(lines if args.tail < 0 else lines[-args.tail :]))
        sys.stdout.flush()
        while args.follow:
            chunk = f.read()
            if chunk:
                sys.stdout.write(chunk.decode("utf-8", "replace"))
                sys.stdout.flush()
            else:
                try:
                    time.sleep(0.2)
                except KeyboardInterrupt:
                    return 0
    return 0


__all__ = ["apply", "apply_documents", "common_args", "delete", "describe", "export", "fail", "get", "logs"]
