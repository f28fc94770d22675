"""Manifest errors: every problem names its source, document index and field path."""

from __future__ import annotations

from dataclasses import dataclass

from isvc.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with one document, addressed like kubectl does (`spec.predictor.model`)."""

    source: str
    """File path, ``<stdin>`` or ``<string>``."""
    index: int
    """0-based document index within the source (multi-document YAML)."""
    path: str
    """Dotted field path, list items as ``[i]``; empty for the whole document."""
    message: str

    def __str__(self) -> str:
        where = f"{self.source}[doc {self.index}]"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ManifestError(ConfigError):
    """One or more documents are invalid; ``problems`` lists them all, not just the first."""

    code = "invalid_manifest"

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        lines = [str(p) for p in self.problems]
        head = "invalid manifest" if len(lines) == 1 else f"{len(lines)} problems in manifests"
        super().__init__(f"{head}:\n  " + "\n  ".join(lines), param=self.problems[0].path if problems else None)
