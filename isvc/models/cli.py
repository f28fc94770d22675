"""`isvc models prepare|path|list`: the models isvc prepares for itself (SmolLM2 by default, all-MiniLM-L6-v2)."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from isvc.models.catalog import DEFAULT, MODELS, UnknownModel, ensure_model, find
from isvc.models.prepare import is_prepared


def main(argv: list[str]) -> int:
    names = ", ".join(model.name for model in MODELS)
    parser = argparse.ArgumentParser("isvc models", description=f"Models isvc prepares for itself: {names}.")
    sub = parser.add_subparsers(dest="action", required=True)
    prep = sub.add_parser("prepare", help="prepare models into the cache (once); no name: the default chat model")
    prep.add_argument("names", nargs="*", metavar="NAME", help=f"{names} (case-insensitive); default {DEFAULT.name}")
    path = sub.add_parser("path", help="print a model's folder (prepared or not)")
    path.add_argument("name", nargs="?", default=DEFAULT.name, metavar="NAME")
    sub.add_parser("list", help="the models isvc can prepare, and whether each is prepared")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.action == "path":
            print(find(args.name).path)
        elif args.action == "list":
            for model in MODELS:
                state = "prepared" if is_prepared(model.path) else "not prepared"
                print(f"{model.name:<24} {state:<13} {model.summary}\n{'':<24} {model.path}")
        else:
            for name in args.names or [DEFAULT.name]:
                model = find(name)
                start = time.monotonic()
                cached = is_prepared(model.path)
                folder = ensure_model(model.name)
                how = "cached" if cached else f"prepared in {time.monotonic() - start:.0f}s"
                print(f"{folder}  ({how})")
    except UnknownModel as exc:
        print(f"isvc models: {exc}", file=sys.stderr)
        return 2
    return 0
