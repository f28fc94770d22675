"""Human output of ``get`` and ``describe``: kubectl-like tables and KServe's columns."""

from __future__ import annotations

import calendar
import json
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from isvc.controlplane.serving import Serving
    from isvc.controlplane.store import EventRow, RevisionRow


def age(ts: str | float | None) -> str:
    if ts is None:
        return "<unknown>"
    seconds = time.time() - (ts if isinstance(ts, float) else calendar.timegm(time.strptime(ts, "%Y-%m-%dT%H:%M:%SZ")))
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == type_), {})


def isvc_table(objs: list[dict[str, Any]], *, wide: bool, all_ns: bool) -> str:
    # KServe's columns, and the restarts of the service's replicas (the kubelet's RESTARTS of its pods)
    head = [
        "NAME", "URL", "READY", "PREV", "LATEST", "PREVROLLEDOUTREVISION", "LATESTREADYREVISION", "RESTARTS", "AGE"
    ]  # fmt: skip
    if wide:
        head += ["REASON", "MODEL", "MESSAGE"]
    if all_ns:
        head = ["NAMESPACE", *head]
    rows = [head]
    for o in objs:
        st = o.get("status") or {}
        ready = _cond(st, "Ready")
        pred = st.get("components", {}).get("predictor", {})
        traffic = {t["revisionName"]: t["percent"] for t in pred.get("traffic", [])}
        latest = pred.get("latestCreatedRevision")
        prev = [p for r, p in traffic.items() if r != latest]
        row = [
            o["metadata"]["name"],
            st.get("url", ""),
            ready.get("status", "Unknown"),
            str(prev[0]) if prev else "",
            str(traffic.get(latest, 0)) if latest else "",
            pred.get("latestRolledoutRevision") or "" if prev else "",
            pred.get("latestReadyRevision") or "",
            str(sum(r.get("restarts", 0) for r in st.get("isvc", {}).get("replicas", []))),
            age(o["metadata"].get("creationTimestamp")),
        ]
        if wide:
            names = ",".join(st.get("isvc", {}).get("modelNames", []))
            row += [ready.get("reason", ""), names, (ready.get("message") or "")[:80]]
        if all_ns:
            row = [o["metadata"].get("namespace", "default"), *row]
        rows.append(row)
    return _table(rows)


def runtime_table(objs: list[dict[str, Any]]) -> str:
    rows = [["NAME", "DISABLED", "MODELTYPE", "CONTAINERS", "AGE", "SOURCE"]]
    for o in objs:
        spec = o.get("spec", {})
        fmts = spec.get("supportedModelFormats", [])
        builtin = o.get("metadata", {}).get("annotations", {}).get("isvc.dev/builtin") == "true"
        rows.append([
            o["metadata"]["name"],
            str(bool(spec.get("disabled", False))).lower(),
            fmts[0]["name"] if fmts else "",
            ",".join(c.get("name", "") for c in spec.get("containers", [])),
            "",
            "built-in" if builtin else "user",
        ])  # fmt: skip
    return _table(rows)


def describe_text(
    obj: dict[str, Any],
    warnings: list[str],
    events: list[EventRow],
    revisions: list[RevisionRow],
    gateway: str,
    running: bool,
    serving: Serving | None = None,
) -> str:
    meta, st = obj["metadata"], obj.get("status") or {}
    name, ns = meta["name"], meta.get("namespace", "default")
    pred = st.get("components", {}).get("predictor", {})
    extra = st.get("isvc", {})
    models = extra.get("modelNames") or ([serving.model_name] if serving and serving.model_name else [name])
    out = [
        f"Name:         {name}",
        f"Namespace:    {ns}",
        f"URL:          {st.get('url', '')}",
        f"Address:      {st.get('address', {}).get('url', '')}",
        f"Generation:   {meta.get('generation')} (observed {st.get('observedGeneration', '-')})",
        f'Model name:   {", ".join(models)}   <- the "model" to send in OpenAI requests',
    ]
    if revisions:
        plan = revisions[-1].plan
        out += [f"Runtime:      {plan.runtime}", f"Command:      {' '.join(plan.command)}"]
    if serving is not None:
        out += [f"{(label.capitalize() + ':') if label else '':<13} {text}" for label, text in serving.lines()]
    if not running:
        out.append("Control plane: NOT RUNNING (isvc up)")
    out.append("Traffic:")
    for t in pred.get("traffic", []):
        out.append(f"  {t['revisionName']:<32} {t['percent']:>3}%{'  (latest)' if t.get('latestRevision') else ''}")
    out.append("Conditions:")
    out.append(f"  {'TYPE':<16} {'STATUS':<7} {'REASON':<20} MESSAGE")
    for c in st.get("conditions", []):
        out.append(f"  {c['type']:<16} {c['status']:<7} {c.get('reason', ''):<20} {c.get('message', '')}")
    out.append("Replicas:")
    for r in extra.get("replicas", []):
        out.append(
            f"  {r['revision']}[{r['index']}]  {r['phase']:<9} ready={str(r['ready']).lower():<5} port={r['port']} restarts={r['restarts']} {r['message']}"
        )
    ms = st.get("modelStatus", {})
    if ms:
        out.append(f"Model status: {ms.get('states', {}).get('activeModelState')} ({ms.get('transitionStatus')})")
        if ms.get("lastFailureInfo"):
            out.append(f"  last failure: {ms['lastFailureInfo'].get('message')}")
    if warnings:
        out.append("Warnings:")
        out += [f"  {w}" for w in warnings]
    out.append("Events:")
    for e in events:
        out.append(f"  {age(e.time):>5}  {e.type:<8} {e.reason:<16} {e.message}")
    host = st.get("url", "").removeprefix("http://")
    path, body = _try_request(serving.task if serving else None, models[0])
    route = path.removeprefix("/openai")
    out += [
        "Try it:",
        f"  curl -H 'content-type: application/json' -H 'Host: {host}' {gateway}{path} -d '{body}'",
        f"  curl -H 'content-type: application/json' {gateway}/serving/{ns}/{name}{route} -d '{body}'",
    ]
    return "\n".join(out)


def _try_request(task: str | None, model: str) -> tuple[str, str]:
    """A first request for the served task: (path, JSON body)."""
    if task == "text_embedding":
        return "/openai/v1/embeddings", json.dumps({"model": model, "input": ["Hello world"]})
    if task == "rerank":
        body = {"model": model, "query": "capital of France", "documents": ["Paris is in France.", "Rome is in Italy."]}
        return "/openai/v1/rerank", json.dumps(body)
    if task in ("fill_mask", "token_classification", "sequence_classification"):
        return f"/v1/models/{model}:predict", json.dumps({"instances": ["Hello world"]})
    return "/openai/v1/completions", json.dumps({"model": model, "prompt": "Hello", "max_tokens": 30, "stream": False})
