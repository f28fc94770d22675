"""RouteTable: which service a request is for, and which revision/replica serves it. Pure.

A request is matched, in order, by ``Host`` (``{name}.{ns}.{domain}``,
``{name}-predictor.{ns}.{domain}``), by path prefix (``/serving/{ns}/{name}/...``), or by
the OpenAI ``model`` field across all services.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from typing import Any

from isvc.errors import NotFound, NotReady


@dataclass(frozen=True, slots=True)
class RevisionRoute:
    name: str
    percent: int
    endpoints: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Route:
    namespace: str
    name: str
    model_names: tuple[str, ...] = ()
    timeout_s: float | None = None
    revisions: tuple[RevisionRoute, ...] = ()
    reason: str = ""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Route:
        revs = tuple(RevisionRoute(r["name"], int(r["percent"]), tuple(r["endpoints"])) for r in d.get("revisions", []))
        return cls(
            d["namespace"], d["name"], tuple(d.get("model_names") or ()), d.get("timeout_s"), revs, d.get("reason", "")
        )

    @property
    def ready(self) -> bool:
        return any(r.percent > 0 and r.endpoints for r in self.revisions)


@dataclass(slots=True)
class Pick:
    route: Route
    revision: str
    endpoint: str


@dataclass
class RouteTable:
    routes: list[Route]
    domain: str = "example.com"
    rng: random.Random = field(default_factory=random.Random)
    _by_host: dict[str, Route] = field(init=False, default_factory=dict)
    _by_model: dict[str, list[Route]] = field(init=False, default_factory=dict)
    _counter: itertools.count[int] = field(init=False, default_factory=itertools.count)

    def __post_init__(self) -> None:
        for r in self.routes:
            self._by_host[f"{r.name}.{r.namespace}.{self.domain}"] = r
            self._by_host[f"{r.name}-predictor.{r.namespace}.{self.domain}"] = r
            for m in r.model_names or (r.name,):
                self._by_model.setdefault(m, []).append(r)

    def known(self) -> list[str]:
        return sorted(f"{r.namespace}/{r.name}" for r in self.routes)

    def known_hosts(self) -> list[str]:
        return sorted(h for h in self._by_host if "-predictor." not in h)

    def known_models(self) -> list[str]:
        return sorted(self._by_model)

    def is_our_host(self, host: str) -> bool:
        return host.endswith("." + self.domain)

    def by_host(self, host: str) -> Route:
        route = self._by_host.get(host.lower())
        if route is None:
            hosts = ", ".join(self.known_hosts()) or "none"
            raise NotFound(f"no InferenceService for host {host!r}; known hosts: {hosts}", param="host")
        return route

    def by_path(self, namespace: str, name: str) -> Route:
        for r in self.routes:
            if r.namespace == namespace and r.name == name:
                return r
        raise NotFound(
            f"no InferenceService {namespace}/{name}; known: {', '.join(self.known()) or 'none'}", param="path"
        )

    def by_model(self, model: str) -> Route:
        routes = self._by_model.get(model, [])
        ready = [r for r in routes if r.ready]
        if ready:
            return ready[next(self._counter) % len(ready)]
        if routes:
            return routes[0]
        models = ", ".join(self.known_models()) or "none"
        raise NotFound(f"the model {model!r} does not exist; known models: {models}", param="model")

    def pick(self, route: Route, exclude: frozenset[str] = frozenset()) -> Pick:
        """Weighted by traffic percent among revisions with a ready endpoint; round-robin inside one."""
        live = [(rev, [e for e in rev.endpoints if e not in exclude]) for rev in route.revisions if rev.percent > 0]
        live = [(rev, eps) for rev, eps in live if eps]
        if not live:
            why = f": {route.reason}" if route.reason else ""
            raise NotReady(f"InferenceService {route.namespace}/{route.name} has no ready revision{why}")
        total = sum(rev.percent for rev, _ in live)
        x = self.rng.uniform(0, total)
        for rev, eps in live:  # noqa: B007 (the pick is the loop's last pair)
            x -= rev.percent
            if x <= 0:
                break
        return Pick(route, rev.name, eps[next(self._counter) % len(eps)])
