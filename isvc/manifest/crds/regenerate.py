"""Regenerate the vendored CRD schemas from KServe's CRD YAMLs.

The JSON files next to this script hold only each CRD's ``openAPIV3Schema`` (compact
JSON loads in milliseconds; the 2 MB YAML takes a second). Run:

    python -m isvc.manifest.crds.regenerate /path/to/kserve/config/crd/full

KServe keeps the LLMInferenceService CRD in a subfolder (``llmisvc/``); either layout is read.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

_FILES = {
    "InferenceService": "serving.kserve.io_inferenceservices.yaml",
    "ServingRuntime": "serving.kserve.io_servingruntimes.yaml",
    "ClusterServingRuntime": "serving.kserve.io_clusterservingruntimes.yaml",
    "LLMInferenceService": "serving.kserve.io_llminferenceservices.yaml",
}


def main(argv: list[str]) -> int:
    src = Path(argv[0] if argv else "/work/shared/kserve/crds")
    out = Path(__file__).parent
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    for kind, name in _FILES.items():
        path = src / name if (src / name).exists() else src / "llmisvc" / name
        crd = yaml.load(path.read_text(), Loader=loader)
        versions = {v["name"]: v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"] if v.get("served", True)}
        doc = {"group": crd["spec"]["group"], "kind": kind, "source": name, "versions": versions}
        (out / f"{kind}.json").write_text(json.dumps(doc, separators=(",", ":"), sort_keys=True))
        print(f"{kind}: {', '.join(versions)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
