"""``isvc storage-init <storageUri> <dest> [...]`` and ``python -m isvc.storage``: KServe's storage initializer."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from isvc.errors import ConfigError
from isvc.storage.errors import StorageError
from isvc.storage.initializer import download
from isvc.storage.settings import StorageSettings
from isvc.storage.validate import validate_model_dir

logger = logging.getLogger("isvc.storage")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="isvc storage-init",
        description=(
            "Fetch each storageUri (pvc://, file://, hf://, s3://, gs://, http(s)://, or a local path) and make DEST "
            "show its content. Remote content is cached under $ISVC_CACHE_DIR/storage and fetched once."
        ),
        epilog="Example: isvc storage-init s3://models/llama /tmp/llama --validate",
    )
    parser.add_argument("pairs", nargs="+", metavar="URI DEST", help="one or more storageUri/destination pairs")
    parser.add_argument(
        "--validate", action="store_true", help="check each DEST is a servable Hugging Face model folder"
    )
    parser.add_argument("--no-tokenizer", action="store_true", help="with --validate: do not require a tokenizer")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def main(argv: list[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if len(args.pairs) % 2:
        parser.error(f"expected <storageUri> <dest> pairs, got {len(args.pairs)} arguments: {' '.join(args.pairs)}")
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        if not args.verbose:  # one line per request from the HTTP clients is noise here
            for name in ("httpx", "httpx2", "httpcore", "botocore", "urllib3", "google"):
                logging.getLogger(name).setLevel(logging.WARNING)
    try:
        settings = StorageSettings.from_env()
        for uri, dest in zip(args.pairs[::2], args.pairs[1::2], strict=True):
            started = time.monotonic()
            path = download(uri, dest, settings=settings)
            if args.validate:
                validate_model_dir(path, shown_as=dest, require_tokenizer=not args.no_tokenizer)
            logger.info("storage-init %s -> %s done in %.2fs", uri, path, time.monotonic() - started)
            print(path)
    except (StorageError, ConfigError) as exc:
        print(f"isvc storage-init: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("isvc storage-init: interrupted; nothing partial was kept", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
