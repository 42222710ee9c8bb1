"""Models to benchmark and the synthetic profile store they are served with.

- ``reference``: the shipped reference model (``spul/reference``), if this checkout has it;
- ``speed-100m``: a randomly initialised Llama of realistic shape (~110M parameters), since
  speed does not need trained weights;
- ``smollm2-135m-instruct`` or a local ``.gguf`` file: converted once per machine (spul.catalog);
- any local Hugging Face model directory (the tests pass the tiny fixture model this way).

Profiles are synthetic: random (P, H) prompts scaled like the model's token embeddings, with
mixed P, fingerprinted for the model so the server accepts them. Speed does not depend on what
a prompt has learned, only on its shape.
"""

from __future__ import annotations

import logging
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SPEED_VOCAB = 32_000
QUERY_WORDS = (
    "### question : where was {name} born ? ### answer :",
    "### question : what does {name} do for a living ? ### answer :",
    "### text : the film with {name} was a quiet and moving story . ### sentiment :",
    "### text : i did not enjoy the long dinner with {name} at all . ### sentiment :",
)
NAMES = ("alba", "brin", "cora", "dax", "eldo", "fenn", "gari", "hale")


class BenchModelError(ValueError):
    """The requested benchmark model is not available; the message says what to do."""


@dataclass(frozen=True)
class BenchModel:
    name: str  # "reference", "speed-100m" or the path as given
    path: Path  # local Hugging Face model directory
    n_params: int
    hidden_size: int
    description: str


def query_texts() -> list[str]:
    """The prompts the load generator sends (every word is in the speed model's vocabulary)."""
    return [t.format(name=n) for t in QUERY_WORDS for n in NAMES]


def prepare_model(name: str, *, workdir: Path) -> BenchModel:
    """Resolve `name` to a local model directory, building the speed model under `workdir`."""
    if name == "speed-100m":
        return _describe(
            name, build_speed_model(workdir / "speed-100m"), "random-init Llama, realistic shape"
        )
    if name == "reference":
        return _describe(name, find_reference_model(), "shipped reference model (spul/reference)")
    from spul.catalog import PACKAGED, resolve_model

    if name in PACKAGED or name.lower().endswith(".gguf"):
        return _describe(name, Path(resolve_model(name)), "pretrained, converted from GGUF (spul.catalog)")
    path = Path(name)
    if (path / "config.json").is_file():
        return _describe(str(path), path, "local model directory")
    raise BenchModelError(
        f"unknown model {name!r}: use 'reference', 'speed-100m', {', '.join(PACKAGED)}, a .gguf file "
        "or a local HF model directory"
    )


def find_reference_model() -> Path:
    """The shipped reference model directory (any dir under spul/reference with a config.json)."""
    from spul.assets import REFERENCE_DIR

    candidates = (
        sorted(p.parent for p in REFERENCE_DIR.glob("**/config.json")) if REFERENCE_DIR.is_dir() else []
    )
    if not candidates:
        raise BenchModelError(
            f"no reference model shipped under {REFERENCE_DIR} in this checkout; "
            "use --model speed-100m (or a local model directory) instead"
        )
    return candidates[0]


def build_speed_model(out: Path, *, hidden: int = 768, layers: int = 12, heads: int = 12) -> Path:
    """Save a random Llama (hidden 768, 12 layers, vocab 32000, tied embeddings) with a word tokenizer."""
    if (out / "config.json").is_file():
        return out  # built earlier in this work directory
    from transformers import LlamaConfig, LlamaForCausalLM

    from spul.trainer.tokenizer import build_word_tokenizer, max_token_id

    tokenizer = build_word_tokenizer(query_texts())
    filler = [f"w{i}" for i in range(SPEED_VOCAB - len(tokenizer.get_vocab()))]
    tokenizer = build_word_tokenizer(query_texts(), extra_words=filler)
    config = LlamaConfig(
        vocab_size=max_token_id(tokenizer) + 1,
        hidden_size=hidden,
        intermediate_size=int(hidden * 8 / 3) // 64 * 64,  # Llama's 8/3 ratio, rounded like Llama
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=4096,  # room for the long-prompt scenario (2,000 tokens)
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    log.info("built speed model at %s (%.1fM parameters)", out, _count(model) / 1e6)
    return out


def _describe(name: str, path: Path, description: str) -> BenchModel:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):  # count parameters without allocating them
        from transformers import AutoModelForCausalLM

        n_params = _count(AutoModelForCausalLM.from_config(config))
    return BenchModel(name, path, n_params, int(config.hidden_size), description)


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def write_profiles(
    store_root: Path,
    model_path: Path,
    *,
    count: int,
    lengths: tuple[int, ...] = (20, 30, 40),
    prefix: str = "bench",
) -> list[str]:
    """Publish `count` random profiles (P cycling through `lengths`) for the model; returns their ids."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spul.prompts_store import PromptStore, artifact_bytes, model_fingerprint

    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    fingerprint = model_fingerprint(model, tokenizer)
    scale = float(model.get_input_embeddings().weight.detach().std())
    hidden = int(model.get_input_embeddings().weight.shape[1])
    store = PromptStore(store_root)
    ids = [f"{prefix}-{i:05d}" for i in range(count)]

    def publish(i: int) -> None:
        generator = torch.Generator().manual_seed(zlib.crc32(ids[i].encode()))  # own RNG per thread, stable
        prompt = torch.randn(lengths[i % len(lengths)], hidden, generator=generator) * scale  # (P, H)
        data = artifact_bytes(
            prompt, profile=ids[i], base_model=str(model_path), base_fingerprint=fingerprint
        )
        store.put(ids[i], data, expected_fingerprint=fingerprint)

    # the store fsyncs every file it writes; threads overlap those waits (10,000 profiles: ~1 min)
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(publish, range(count)))
    return ids
