"""The `isvc` console entry: a thin dispatcher to each role's own ``main(argv)``.

Each subcommand lives in the package that owns it and is imported only when used, so
``isvc get isvc`` never imports torch.
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, function, one-line help). Each function takes argv (the
# arguments after the subcommand) and returns a process exit code.
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "serve": ("isvc.server.main", "main", "run the model server (KServe huggingfaceserver flags)"),
    "models": ("isvc.models.cli", "main", "prepare/list/locate the embedded models (SmolLM2, all-MiniLM-L6-v2)"),
    "storage-init": ("isvc.storage.__main__", "main", "fetch a storageUri into a folder (KServe storage initializer)"),
    "up": ("isvc.node.cli", "up", "start the control plane (controller + gateway)"),
    "down": ("isvc.node.cli", "down", "stop the control plane and its predictors"),
    "apply": ("isvc.controlplane.cli", "apply", "create or update resources from YAML (-f FILE|DIR|-)"),
    "get": ("isvc.controlplane.cli", "get", "list resources (isvc, servingruntimes, ...)"),
    "describe": ("isvc.controlplane.cli", "describe", "show one resource in detail"),
    "delete": ("isvc.controlplane.cli", "delete", "delete resources"),
    "logs": ("isvc.controlplane.cli", "logs", "print a predictor's logs"),
    "export": (
        "isvc.controlplane.cli",
        "export",
        "print manifests for a Kubernetes cluster with KServe (-f FILE, --runtime)",
    ),
}


def _usage() -> str:
    lines = ["usage: isvc <command> [args]", "", "commands:"]
    lines += [f"  {name:<14} {help_}" for name, (_, _, help_) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("--version", "version"):
        from isvc import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        import difflib

        near = difflib.get_close_matches(name, SUBCOMMANDS, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        print(f"isvc: unknown command '{name}'{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, func_name, _ = SUBCOMMANDS[name]
    func = getattr(importlib.import_module(module_name), func_name)
    return int(func(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
