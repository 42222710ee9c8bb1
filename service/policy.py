"""Request policy, before anything is queued: which prompt applies, and whether the query fits.

Fail closed: every path either returns a handle to a loaded prompt or raises; there is no path
that answers from the bare base model.
"""

from __future__ import annotations

from typing import Any

from spul.service.registry import PromptHandle, PromptRegistry
from spul.service.settings import Settings


class ProfileRequired(ValueError):
    """The deployment requires a profile and the request named none."""


class PromptTooLong(ValueError):
    pass


class EmptyPrompt(ValueError):
    pass


def choose_profile(settings: Settings, registry: PromptRegistry, requested: str | None) -> PromptHandle:
    """The named profile, else the default one; raises if neither applies (never serves bare)."""
    if requested is None and settings.require_profile:
        raise ProfileRequired(
            "this deployment requires every request to name a profile (SPUL_REQUIRE_PROFILE): "
            "name one (GET /v1/models lists them)"
        )
    name = requested if requested is not None else settings.default_profile
    if name is None:
        raise ProfileRequired(
            "no profile named and this server has no default profile: name one (GET /v1/models lists "
            "them), or start the server with SPUL_DEFAULT_PROFILE=<id>"
        )
    return registry.resolve(name)  # UnknownProfile / ProfileUnavailable propagate


def encode_prompt(tokenizer: Any, text: str, *, max_tokens: int) -> tuple[int, ...]:
    """Tokenise the query exactly as training and evaluation do (the tokenizer's own defaults)."""
    return _checked(tokenizer(text)["input_ids"], max_tokens)


def encode_chat(tokenizer: Any, messages: list[dict[str, str]], *, max_tokens: int) -> tuple[int, ...]:
    """Chat messages through the tokenizer's own template, ready for the assistant's turn.

    The ids are exactly transformers' `apply_chat_template(tokenize=True)`: the template writes
    its own special tokens (a `{{ bos_token }}` gives one BOS), none are added again.
    """
    encoded = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=True)
    return _checked(encoded["input_ids"], max_tokens)


def _checked(input_ids: Any, max_tokens: int) -> tuple[int, ...]:
    ids = tuple(int(i) for i in input_ids)
    if not ids:
        raise EmptyPrompt("the prompt has no tokens")
    if len(ids) > max_tokens:
        raise PromptTooLong(f"the prompt has {len(ids)} tokens; the limit is {max_tokens} (SPUL_MAX_PROMPT_TOKENS)")
    return ids
