"""Request and response bodies. Limits that depend on settings are checked in the routes.

Every string a request carries must be valid Unicode (a lone surrogate, which JSON can encode
but UTF-8 cannot, is refused), and every number finite (`NaN`, `Infinity` are refused).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

MAX_STOP = 8
MAX_TEXT = 200_000


def _valid_unicode(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"text is not valid Unicode (a lone surrogate at position {err.start})") from None
    return text


Text = Annotated[str, AfterValidator(_valid_unicode)]
_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)


class GenerateRequest(BaseModel):
    model_config = _STRICT

    profile: Text | None = Field(None, description="unlearning profile; the server's default profile when omitted")
    prompt: Text = Field(..., min_length=1, max_length=MAX_TEXT)
    max_new_tokens: int | None = Field(None, ge=1, description="default: the server's limit")
    temperature: float = Field(0.0, ge=0.0, le=10.0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: list[Text] | Text | None = Field(None, description="stop strings (not included in the text)")
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stream: bool = Field(False, description="server-sent events, ending with `data: [DONE]`")


class GenerateResponse(BaseModel):
    text: str
    profile: str
    version: int
    sha256: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str


class ErrorResponse(BaseModel):
    """The body of every error answer (OpenAI's envelope)."""

    error: ErrorDetail


class ActivateRequest(BaseModel):
    model_config = _STRICT

    version: int = Field(..., ge=1)


# ---- OpenAI-compatible -------------------------------------------------------------------
class StreamOptions(BaseModel):
    include_usage: bool = False


class _OpenAIBase(BaseModel):
    # the openai client sends fields we do not implement (penalties, user, ...): ignore them
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model: Text
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: Literal[1] = 1
    stop: list[Text] | Text | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = Field(None, description="include_usage: a last chunk with the usage")
    top_logprobs: int | None = Field(None, ge=0, description="not supported: refused with 400 when > 0")


    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(_OpenAIBase):
    prompt: Text = Field(..., min_length=1, max_length=MAX_TEXT)
    logprobs: int | None = Field(None, ge=0, description="not supported: refused with 400 when set")
    echo: bool = Field(False, description="not supported: refused with 400 when true")


class ChatMessage(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)

    role: Literal["system", "user", "assistant"]
    content: Text = Field(..., max_length=MAX_TEXT)


class ChatCompletionRequest(_OpenAIBase):
    messages: list[ChatMessage] = Field(..., min_length=1, max_length=256)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = Field(False, description="not supported: refused with 400 when true")


def stop_tuple(stop: list[str] | str | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    items = (stop,) if isinstance(stop, str) else tuple(stop)
    return tuple(s for s in items if s)[:MAX_STOP]
