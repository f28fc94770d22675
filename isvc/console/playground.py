"""What the Playground offers per service: the model name to send, the task, and the modes that task answers.

The task comes, as ``isvc apply --dry-run`` says it, from ``--task`` or the local model folder's config.json
(``isvc.controlplane.serving``); when only the started server knows it (a remote ``storageUri``), the
console asks a ready predictor's KServe V2 model metadata, whose ``parameters.task`` names it. A service
whose task cannot be known (a custom container, a vLLM runtime, nothing ready yet) is offered the
generative modes, which is what those servers answer.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from urllib.parse import quote

import httpx

from isvc import tasks
from isvc.controlplane.serving import serving_of
from isvc.controlplane.store import Store

GENERATIVE_MODES = ("chat", "completions")
MODES: dict[str, tuple[str, ...]] = {
    tasks.TEXT_GENERATION: GENERATIVE_MODES,
    tasks.TEXT2TEXT_GENERATION: ("completions", "chat"),  # T5 and BART folders seldom ship a chat template
    tasks.TEXT_EMBEDDING: ("embeddings", "rerank"),  # rerank by the embeddings' cosine (tasks.routes)
    tasks.RERANK: ("rerank", "classify"),
    tasks.SEQUENCE_CLASSIFICATION: ("classify", "rerank"),
    tasks.TOKEN_CLASSIFICATION: ("predict",),
    tasks.FILL_MASK: ("predict",),
}
"""Task -> the Playground's modes, first the default (each mode is one route: see static/js/playground.js)."""

_PROBE_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class Target:
    """A service as the Playground offers it."""

    namespace: str
    name: str
    model: str
    """The first model name the service answers to (what ``model`` is sent as)."""
    ready: bool
    task: str | None
    endpoint: str | None
    """A ready replica's URL (the console asks it for the task when the plan cannot tell)."""

    @property
    def modes(self) -> tuple[str, ...]:
        return MODES.get(self.task or "", GENERATIVE_MODES)


def targets(store: Store) -> list[Target]:
    """Every service with a revision, by namespace then name, with the task its latest plan tells."""
    out = []
    ready_endpoint = {(r.namespace, r.service): r.endpoint for r in store.replicas() if r.endpoint}
    latest = {(rev.namespace, rev.service): rev for rev in store.revisions()}  # oldest first: the last wins
    for (ns, name), rev in latest.items():
        plan = rev.plan
        row = store.service(ns, name)
        status = (row.status if row else None) or {}
        names = status.get("isvc", {}).get("modelNames") or plan.model_names or [name]
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", []))
        task = serving_of(plan).task
        out.append(Target(ns, name, names[0], ready, task, ready_endpoint.get((ns, name))))
    return sorted(out, key=lambda t: (t.namespace, t.name))


async def with_served_tasks(found: list[Target]) -> list[Target]:
    """``found``, with the task of each service whose plan did not tell it asked of a ready predictor."""

    async def one(client: httpx.AsyncClient, t: Target) -> Target:
        if t.task is not None or t.endpoint is None:
            return t
        try:
            r = await client.get(f"{t.endpoint}/v2/models/{quote(t.model, safe='')}")
            task = r.json().get("parameters", {}).get("task") if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            task = None
        if not isinstance(task, str):  # a custom container's metadata may say anything
            task = None
        return t if task not in MODES else replace(t, task=task)

    async with httpx.AsyncClient(timeout=_PROBE_TIMEOUT_S, trust_env=False) as client:  # 127.0.0.1: no proxy
        return list(await asyncio.gather(*(one(client, t) for t in found)))
