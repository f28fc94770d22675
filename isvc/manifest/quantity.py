"""Kubernetes resource quantities ("500m", "6", "24Gi", "1e3") as numbers."""

from __future__ import annotations

import re

_SUFFIX = {
    "": 1.0, "n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
    "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50, "Ei": 2.0**60,
}  # fmt: skip
_RE = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(?:([eE][+-]?[0-9]+)|(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]))?$")


def parse_quantity(value: int | float | str) -> float:
    """``"500m"`` → 0.5, ``"24Gi"`` → 25769803776.0; ValueError on anything else."""
    if isinstance(value, (int, float)):
        return float(value)
    match = _RE.match(value.strip())
    if not match:
        raise ValueError(f"{value!r} is not a quantity (e.g. 6, 500m, 24Gi)")
    number, exponent, suffix = match.groups()
    if exponent:
        return float(number + exponent)
    return float(number) * _SUFFIX[suffix or ""]
