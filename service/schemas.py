"""Request and response bodies. Limits that depend on settings are checked in the routes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_STOP = 8


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    profile: str | None = Field(None, description="unlearning profile; default profile when omitted")
    prompt: str = Field(..., min_length=1, max_length=200_000)
    max_new_tokens: int | None = Field(None, ge=1, description="default: the server's limit")
    temperature: float = Field(0.0, ge=0.0, le=10.0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: list[str] | str | None = Field(None, description="stop strings (not included in the text)")
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stream: bool = False


class GenerateResponse(BaseModel):
    text: str
    profile: str
    version: int
    sha256: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


class ActivateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(..., ge=1)


# ---- OpenAI-compatible -------------------------------------------------------------------
class _OpenAIBase(BaseModel):
    # the openai client sends fields we do not implement (penalties, user, ...): ignore them
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: Literal[1] = 1
    stop: list[str] | str | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stream: bool = False


class CompletionRequest(_OpenAIBase):
    prompt: str = Field(..., min_length=1, max_length=200_000)


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str = Field(..., max_length=200_000)


class ChatCompletionRequest(_OpenAIBase):
    messages: list[ChatMessage] = Field(..., min_length=1, max_length=256)
    max_completion_tokens: int | None = Field(None, ge=1)


def stop_tuple(stop: list[str] | str | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    items = (stop,) if isinstance(stop, str) else tuple(stop)
    return tuple(s for s in items if s)[:MAX_STOP]
