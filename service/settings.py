"""Service settings: one pydantic-settings object, from `SPUL_*` environment variables, validated at start."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_STORE = Path.home() / ".cache" / "spul" / "store"


class Settings(BaseSettings):
    # hide_input_in_errors: a rejected SPUL_ADMIN_TOKEN (too short) must never be echoed in an error or a log
    model_config = SettingsConfigDict(env_prefix="SPUL_", extra="forbid", hide_input_in_errors=True)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    model: str | None = Field(None, description="HF model dir or id; None = the shipped reference model")
    store: Path = DEFAULT_STORE
    demo_profiles: bool | None = Field(
        None, description="seed the reference model's demo profiles into an empty store; None = only the default store"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    engine: Literal["builtin", "vllm"] = Field("builtin", description="vllm: forward to vLLM servers (vllm_urls)")
    vllm_urls: Annotated[list[str], NoDecode] = Field(default_factory=list, description="vLLM servers (JSON list or comma-separated)")
    vllm_model: str | None = Field(None, description="model name the vLLM servers serve (default: theirs)")

    admin_enabled: bool | None = Field(None, description="None = enabled exactly when a token is set")
    admin_token: SecretStr | None = None

    default_profile: str | None = Field(None, description="applied to requests that name no profile")
    require_profile: bool = Field(False, description="refuse requests that name no profile")

    max_batch_size: int = Field(32, ge=1, le=1024)
    max_step_tokens: int = Field(256, ge=1, description="tokens per engine step (decodes + prefill chunk); "
                                 "lower keeps running streams smoother while long prompts arrive")
    max_queue: int = Field(256, ge=1)
    max_prompt_tokens: int = Field(1024, ge=1)
    max_new_tokens: int = Field(256, ge=1)
    request_timeout_s: float = Field(120.0, gt=0)
    store_poll_s: float = Field(2.0, ge=0, description="0 = never poll the store for other writers")
    prefix_cache_bytes: int = Field(256 * 1024 * 1024, ge=0, description="0 = no prefix cache")
    max_upload_bytes: int = Field(64 * 1024 * 1024, ge=1)
    max_request_bytes: int = Field(1024 * 1024, ge=1, description="request body limit (413 beyond); uploads: max_upload_bytes")
    max_connections: int = Field(1024, ge=1, description="open connections + requests before 503s")
    read_timeout_s: float = Field(30.0, gt=0, description="a request's head and body must arrive within this")
    keep_alive_timeout_s: float = Field(5.0, gt=0, description="idle keep-alive connections close after this")
    max_profile_labels: int = Field(100, ge=1, description="distinct profile metric labels before 'other'")
    shutdown_grace_s: float = Field(10.0, ge=0)

    @field_validator("vllm_urls", mode="before")
    @classmethod
    def _split_urls(cls, value: object) -> object:
        if isinstance(value, str):  # SPUL_VLLM_URLS=http://a:8000,http://b:8000 or a JSON list
            value = json.loads(value) if value.lstrip().startswith("[") else [
                u.strip() for u in value.split(",") if u.strip()]
        if isinstance(value, list):
            for url in value:
                if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                    raise ValueError(f"vLLM URL {url!r} must start with http:// or https://")
        return value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.engine == "vllm" and not self.vllm_urls:
            raise ValueError("--engine vllm needs at least one --vllm-url (SPUL_VLLM_URLS)")
        if self.admin_enabled and self.admin_token is None:
            raise ValueError("admin endpoints are enabled but no token is set: set SPUL_ADMIN_TOKEN "
                             "(or SPUL_ADMIN_ENABLED=false)")
        if self.admin_token is not None and len(self.admin_token.get_secret_value()) < 16:
            raise ValueError("SPUL_ADMIN_TOKEN is too short: use at least 16 random characters")
        return self

    @property
    def admin(self) -> bool:
        return self.admin_token is not None if self.admin_enabled is None else self.admin_enabled
