"""``isvc apply`` of parsed manifests: validate every document, then write each to the Store.

Shared by the CLI (``isvc apply -f``) and the web console (``POST api/apply``), so both give the same
errors and print the same lines.
"""

from __future__ import annotations

from collections.abc import Callable

from isvc.controlplane.plan import InvalidServeArgs, LaunchPlan, build_plan
from isvc.controlplane.serving import serving_of
from isvc.controlplane.store import Store
from isvc.errors import IsvcError
from isvc.manifest import SERVICE_KINDS, Document, ManifestError, Problem, Resource, ServingRuntime, parse_documents

GROUP = "serving.kserve.io"
PLURAL = {
    "InferenceService": "inferenceservice",
    "ServingRuntime": "servingruntime",
    "ClusterServingRuntime": "clusterservingruntime",
    "LLMInferenceService": "llminferenceservice",
}


def apply_documents(
    store: Store,
    docs: list[Document],
    namespace: str | None,
    *,
    dry_run: bool,
    out: Callable[[str], None],
    warn: Callable[[str], None],
) -> list[Resource]:
    """``isvc apply`` of parsed documents (the CLI's files, the console's text): validate all, then write each.

    Raises ``ManifestError`` (every problem with its field path) or another ``IsvcError`` before anything
    invalid is written; ``out`` gets the lines ``isvc apply`` prints, ``warn`` its warnings.
    """
    stored = store.runtimes().items
    resources = load_resources(docs, namespace, stored)
    applying = {r.key for r in resources}
    runtimes = [rt for rt in stored if (rt.kind, rt.metadata.namespace, rt.metadata.name) not in applying]
    runtimes += [r.obj for r in resources if isinstance(r.obj, ServingRuntime)]
    _check_names_free(store, resources)
    for res in resources:
        for w in res.warnings:
            warn(f"Warning: {res.kind.lower()}/{res.name}: {w}")
        if dry_run:
            _print_dry_run(res, runtimes, out)
            continue
        check_args(res, runtimes)
        verb = store.upsert_resource(res.kind, res.namespace, res.name, res.body, res.warnings)
        out(f"{PLURAL[res.kind]}.{GROUP}/{res.name} {verb}")
    return resources


def load_resources(docs: list[Document], namespace: str | None, runtimes: list[ServingRuntime]) -> list[Resource]:
    """``docs`` with ``-n`` applied (``Document.set_namespace``), parsed and checked against ``runtimes``;
    ``ManifestError`` with every problem."""
    problems = [p for d in docs for p in d.set_namespace(namespace)]
    if problems:
        raise ManifestError(problems)
    return parse_documents(docs, runtimes)


def check_args(res: Resource, runtimes: list[ServingRuntime]) -> None:
    """Refuse args ``isvc serve`` would refuse at start; other plan problems are the controller's to report
    (a runtime may be applied later, GPUs may come)."""
    try:
        _plan_of(res, runtimes)
    except InvalidServeArgs:
        raise
    except IsvcError:
        pass


def _plan_of(res: Resource, runtimes: list[ServingRuntime]) -> LaunchPlan | None:
    """The predictor's plan (None for a runtime); an LLMInferenceService's errors name its own fields."""
    if res.predictor is None:
        return None
    try:
        return build_plan(res.predictor, runtimes)
    except IsvcError as exc:
        if res.derived is None:
            raise
        raise type(exc)(res.derived.rename(exc.message), param=res.derived.rename(exc.param or "")) from exc


def _check_names_free(store: Store, resources: list[Resource]) -> None:
    """An InferenceService and an LLMInferenceService may not share a name (the gateway serves both by name):
    neither one already applied nor two in the same files. Checked before anything is applied, and in a dry run."""
    applying = {r.key for r in resources}
    problems = []
    for res in resources:
        if res.kind not in SERVICE_KINDS:
            continue
        for other in SERVICE_KINDS:
            if other == res.kind:
                continue
            if (other, res.namespace, res.name) in applying:
                where, fix = "is in the same files", "rename one"
            elif store.resource(other, res.namespace, res.name) is not None:
                where, fix = "exists", f"delete it first (isvc delete {PLURAL[other]} {res.name} -n {res.namespace})"
                fix += " or choose another name"
            else:
                continue
            host = f"{res.name}.{res.namespace}.{store.domain()}"
            message = f"{other} {res.namespace}/{res.name} {where}, and locally both would be served as {host}: {fix}"
            problems.append(Problem(res.source, res.index, "metadata.name", message))
    if problems:
        raise ManifestError(problems)


def _print_dry_run(res: Resource, runtimes: list[ServingRuntime], out: Callable[[str], None] = print) -> None:
    out(f"{PLURAL[res.kind]}.{GROUP}/{res.name} validated (dry run)")
    plan = _plan_of(res, runtimes)
    if plan is None:
        return
    out(f"  namespace:   {res.namespace}")
    out(f"  runtime:     {plan.runtime}")
    out(f"  command:     {' '.join(plan.command)}")
    out(f"  port:        declared {plan.declared_port} -> a free 127.0.0.1 port chosen at start (__ISVC_PORT__)")
    if plan.storage_uri:
        out(f"  storage:     {plan.storage_uri} -> /mnt/models")
    out(
        f"  readiness:   {plan.probe.kind} {plan.probe.path if plan.probe.kind == 'http' else ''} every {plan.probe.period_s:g}s"
    )
    out(f"  resources:   gpus={plan.gpus} threads={plan.cpu_threads} memory_limit={plan.memory_limit_bytes}")
    out(f"  replicas:    {plan.replicas}; model name(s): {', '.join(plan.model_names)}")
    for label, text in serving_of(plan).lines():
        out(f"  {(label + ':') if label else '':<12} {text}")
    for note in plan.notes:
        out(f"  note:        {note}")


__all__ = ["GROUP", "PLURAL", "apply_documents", "check_args", "load_resources"]
