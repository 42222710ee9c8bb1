"""Everything the app serves with, built once at start: model, registry, engine, scheduler, metrics."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from spul.assets import demo_profiles
from spul.models import ModelLoadError, load_base_model, pick_device, serving_dtype
from spul.prompts_store import ArtifactError, PromptStore, model_fingerprint
from spul.service import settings as settings_module
from spul.service.engine import Engine
from spul.service.metrics import Metrics
from spul.service.registry import ModelIdentity, PromptRegistry
from spul.service.scheduler import Scheduler
from spul.service.settings import Settings
from spul.service.vllm_gateway import GatewayError, VllmGateway, connect_gateway

log = logging.getLogger(__name__)


class StartupError(RuntimeError):
    """The service cannot start (missing model, bad settings); the message says what to do."""


@dataclass
class Runtime:
    settings: Settings
    model_name: str
    tokenizer: Any
    registry: PromptRegistry
    engine: Engine | None  # None when vLLM is the engine (--engine vllm)
    scheduler: Scheduler | VllmGateway
    metrics: Metrics

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))


def reference_paths() -> tuple[Path, Path]:
    from spul import assets  # looked up now: tests point REFERENCE_DIR elsewhere

    return assets.REFERENCE_DIR / "model", assets.REFERENCE_DIR / "profiles"


def wants_demo_profiles(settings: Settings) -> bool:
    """Demo profiles go into the default store (`spul serve` with no --store), or wherever asked
    (SPUL_DEMO_PROFILES=true); never unasked into a store the user named."""
    if settings.demo_profiles is not None:
        return settings.demo_profiles
    default = settings_module.DEFAULT_STORE  # looked up now: tests point it elsewhere
    return settings.store.expanduser().resolve() == default.expanduser().resolve()


def seed_demo_profiles(store: PromptStore, model: str | None) -> None:
    """Copy the shipped profiles trained for `model` into the store, each one that is not there yet."""
    files = demo_profiles(model)
    if model in (None, "reference") and not files:
        raise StartupError(f"no demo profiles in {reference_paths()[1]}; reinstall spul-serve or pass "
                           "--store with trained profiles")
    present = set(store.profiles())
    for profile, path in files.items():
        if profile not in present:
            store.put(profile, path.read_bytes())
            log.info("seeded demo profile %s into %s", profile, store.root)


def float32_fingerprint(model_name: str) -> str:
    """The fingerprint of a float32 load (then freed), for a server that holds float16 weights.

    A float16 load of a float32 checkpoint rounds each weight twice on the way to the
    fingerprint's bfloat16 rendering and would match no profile trained on float32 weights; so
    a float16 server loads the checkpoint once more, in float32 on the CPU, only to fingerprint it.
    """
    base = load_base_model(model_name, device="cpu", dtype=torch.float32)
    return model_fingerprint(base.model, base.tokenizer)


def build_runtime(settings: Settings, metrics: Metrics) -> Runtime:
    """Load the model once, then every active profile (validated against this model)."""
    model_name = settings.model
    store = PromptStore(settings.store, max_bytes=settings.max_upload_bytes)
    if model_name in (None, "reference"):  # the shipped model (spul.catalog name) + its demo profiles
        model_dir, _ = reference_paths()
        if not (model_dir / "config.json").is_file():
            raise StartupError(
                f"the reference model is missing from {model_dir}; pass --model PATH (a Hugging Face "
                "model directory) or reinstall spul-serve"
            )
        model_name = str(model_dir)
    if wants_demo_profiles(settings):
        seed_demo_profiles(store, settings.model)
    elif not store.profiles() and demo_profiles(settings.model):
        log.info("the store %s is empty; SPUL_DEMO_PROFILES=true copies the demo profiles into it", store.root)
    gateway = settings.engine == "vllm"  # vLLM runs the model; this process only embeds the tokens
    try:
        device = torch.device("cpu") if gateway else pick_device(settings.device)
        dtype = serving_dtype(settings.dtype, device)
        fingerprint = float32_fingerprint(model_name) if dtype == torch.float16 else None
        base = load_base_model(model_name, device=device, dtype=dtype)
    except ModelLoadError as err:
        raise StartupError(str(err)) from err
    model, tokenizer = base.model, base.tokenizer
    if fingerprint is None:
        log.info("fingerprinting %s (hashes every weight: seconds on a CPU)", served_name(model_name))
    engine = None if gateway else Engine(model, prefix_cache_bytes=settings.prefix_cache_bytes)
    identity = ModelIdentity(
        fingerprint=fingerprint or model_fingerprint(model, tokenizer),
        hidden_size=base.hidden_size,  # the input embedding's width (multimodal configs nest hidden_size)
        device=engine.device if engine is not None else device,
        dtype=engine.dtype if engine is not None else base.model.get_input_embeddings().weight.dtype,
        name=served_name(model_name),
    )
    def on_change(active: set[str]) -> None:
        if engine is not None:
            engine.prefix_cache.retain(active)  # old versions' prefixes can never be asked for again
        metrics.profiles_loaded.set(len(registry.loaded()))

    registry = PromptRegistry(
        store, identity, on_load=metrics.artifact_load_seconds.observe, on_change=on_change
    )
    start = time.perf_counter()
    registry.refresh()
    log.info("loaded %d profiles in %.2fs", len(registry.loaded()), time.perf_counter() - start)
    _check_default_profile(settings, registry)
    if engine is None:
        try:
            scheduler = connect_gateway(settings, base, metrics, eos_token_ids=_eos_ids(model, tokenizer))
        except GatewayError as err:
            raise StartupError(str(err)) from err
    else:
        scheduler = Scheduler(
            engine,
            tokenizer,
            metrics,
            max_batch_size=settings.max_batch_size,
            max_step_tokens=settings.max_step_tokens,
            max_queue=settings.max_queue,
            eos_token_ids=_eos_ids(model, tokenizer),
        )
    return Runtime(settings, served_name(model_name), tokenizer, registry, engine, scheduler, metrics)


def served_name(model_name: str) -> str:
    """The name the API reports for the model (its folder name); OpenAI requests naming it mean no profile."""
    return Path(model_name).name or model_name


def _check_default_profile(settings: Settings, registry: PromptRegistry) -> None:
    """Fail closed at start: a mandatory profile that cannot be applied stops the server."""
    if settings.default_profile is None:
        return
    try:
        registry.resolve(settings.default_profile)
    except (LookupError, RuntimeError, ArtifactError) as err:
        raise StartupError(f"SPUL_DEFAULT_PROFILE={settings.default_profile!r} cannot be applied: {err}") from err


def _eos_ids(model: torch.nn.Module, tokenizer: Any) -> set[int]:
    """Token ids that end a generation; empty when neither tokenizer nor config names one (then
    every request runs to its max_new_tokens)."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    candidates = [tokenizer.eos_token_id, *(configured if isinstance(configured, list) else [configured])]
    return {int(i) for i in candidates if isinstance(i, int)}
