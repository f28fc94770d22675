"""Read YAML/JSON documents from files, directories or stdin, keeping where each came from."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

from isvc.manifest.errors import ManifestError, Problem

_SUFFIXES = (".yaml", ".yml", ".json")
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(slots=True)
class Document:
    """One parsed document and its address (``source``, ``index``) for error messages."""

    source: str
    index: int
    body: dict[str, Any] = field(default_factory=dict)

    def problem(self, path: str, message: str) -> Problem:
        return Problem(self.source, self.index, path, message)

    def set_namespace(self, namespace: str | None) -> list[Problem]:
        """``-n NAMESPACE`` as kubectl reads it: fills a missing namespace or a ``${...}`` placeholder (the
        seed's ``namespace: "${YOUR-NS}"``); another namespace in the file is a problem. A
        ClusterServingRuntime is cluster-scoped: its namespace is dropped."""
        meta = self.body.get("metadata")
        if not isinstance(meta, dict):
            return []
        if self.body.get("kind") == "ClusterServingRuntime":
            meta.pop("namespace", None)
            return []
        if namespace:
            current = meta.get("namespace")
            if current not in (None, namespace) and "${" not in str(current):
                message = f"the namespace from the file ({current}) does not match -n {namespace}"
                return [self.problem("metadata.namespace", message)]
            meta["namespace"] = namespace
        return []


def load_text(text: str, source: str = "<string>") -> list[Document]:
    """Parse a multi-document YAML string; empty documents are skipped (kubectl does too)."""
    docs: list[Document] = []
    try:
        for index, body in enumerate(yaml.load_all(text, Loader=_Loader)):
            if body is None:
                continue
            if not isinstance(body, dict):
                raise ManifestError([Problem(source, index, "", f"expected a mapping, got {type(body).__name__}")])
            if body.get("kind") == "List" and isinstance(body.get("items"), list):
                docs += [Document(source, index, item) for item in body["items"] if isinstance(item, dict)]
            else:
                docs.append(Document(source, index, body))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        index = len(docs)
        raise ManifestError(
            [Problem(source, index, "", f"not valid YAML{at}: {getattr(exc, 'problem', exc)}")]
        ) from exc
    return docs


def _files_in(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_file() and p.suffix in _SUFFIXES)


def load_paths(paths: Iterable[str], stdin: TextIO | None = None) -> list[Document]:
    """Load every ``-f`` argument: a file, a directory (its *.yaml/*.yml/*.json, sorted) or ``-``."""
    docs: list[Document] = []
    for raw in paths:
        if raw == "-":
            docs += load_text((stdin or sys.stdin).read(), "<stdin>")
            continue
        path = Path(raw)
        if path.is_dir():
            files = _files_in(path)
            if not files:
                raise ManifestError([Problem(raw, 0, "", "directory holds no .yaml, .yml or .json file")])
        elif path.is_file():
            files = [path]
        else:
            raise ManifestError([Problem(raw, 0, "", "no such file or directory")])
        for file in files:
            docs += load_text(file.read_text(encoding="utf-8"), str(file))
    return docs
