"""RouteTable: which service a request is for, and which revision/replica serves it. Pure.

A request is matched, in order, by ``Host`` (``{name}.{ns}.{domain}``,
``{name}-predictor.{ns}.{domain}``), by path prefix (``/serving/{ns}/{name}/...``), or by
the OpenAI ``model`` field across all services. A model name that two services serve is
ambiguous and refused, never routed by chance.

Every listing in an error message is filtered by ``visible`` (the namespaces the caller's API
key opens), so a caller without a key learns no protected name (nor how many services share a model).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from isvc.errors import InvalidRequest, NotFound, NotReady

Visible = Callable[[str], bool]
"""namespace -> may this caller see (and use) it."""


def visible_to_all(namespace: str) -> bool:
    return True


class AmbiguousModel(InvalidRequest):
    """A ``model`` name served by more than one InferenceService: the caller must pick one."""

    code = "ambiguous_model"


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

    def known(self, visible: Visible = visible_to_all) -> list[str]:
        return sorted(f"{r.namespace}/{r.name}" for r in self.routes if visible(r.namespace))

    def known_hosts(self, visible: Visible = visible_to_all) -> list[str]:
        return sorted(h for h, r in self._by_host.items() if "-predictor." not in h and visible(r.namespace))

    def known_models(self, visible: Visible = visible_to_all) -> list[str]:
        return sorted(m for m, routes in self._by_model.items() if any(visible(r.namespace) for r in routes))

    def is_our_host(self, host: str) -> bool:
        return host.endswith("." + self.domain)

    def by_host(self, host: str, visible: Visible = visible_to_all) -> Route:
        route = self._by_host.get(host.lower())
        if route is None:
            hosts = ", ".join(self.known_hosts(visible)) or "none"
            raise NotFound(f"no InferenceService for host {host!r}; known hosts: {hosts}", param="host")
        return route

    def by_path(self, namespace: str, name: str, visible: Visible = visible_to_all) -> Route:
        for r in self.routes:
            if r.namespace == namespace and r.name == name:
                return r
        known = ", ".join(self.known(visible)) or "none"
        raise NotFound(f"no InferenceService {namespace}/{name}; known: {known}", param="path")

    def by_model(self, model: str, visible: Visible = visible_to_all) -> Route:
        """The one service that serves ``model``; AmbiguousModel if several do, whoever may see them."""
        routes = self._by_model.get(model, [])
        if len(routes) == 1:
            return routes[0]
        if routes:  # only the ones the caller may see are named, and not how many there are
            shown = [f"{r.name}.{r.namespace}.{self.domain} (/serving/{r.namespace}/{r.name}/)"
                     for r in routes if visible(r.namespace)]  # fmt: skip
            among = f", among them {', '.join(shown)}" if shown else ""
            raise AmbiguousModel(
                f"the model {model!r} is served by more than one InferenceService{among}; address one by "
                "its Host header ({name}.{namespace}." + self.domain + ") or by /serving/{namespace}/{name}/",
                param="model",
            )
        models = ", ".join(self.known_models(visible)) or "none"
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
