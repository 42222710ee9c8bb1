"""Tiny random models of many Hugging Face architectures, for conformance tests.

Each is a few kilobytes (hidden 16-32, 1-2 layers) and loads in milliseconds. The sliding-window
ones have a window (4) far shorter than the test prompts, so a cache that treats those layers
like full attention, or counts left padding inside the window, gives different tokens.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from spul.trainer.tokenizer import build_word_tokenizer, max_token_id
from support.tinymodel import TINY_TEXTS

WINDOW = 4  # sliding window of the windowed architectures: shorter than every test prompt

BYTE_CORPUS = [*TINY_TEXTS, "Привет мир", "世界 你好", "naïve café déjà vu", "emoji 🙂 ok"]


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2 style): non-ASCII characters span several tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(BYTE_CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", clean_up_tokenization_spaces=False
    )


def _llama_like(cls: str, **extra: object) -> Callable[..., object]:
    def build(**ids: object) -> object:
        values = {
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
        }
        return getattr(transformers, cls)(**values, **extra, **ids)

    return build


ARCHS: dict[str, Callable[..., object]] = {
    "llama": _llama_like("LlamaConfig"),
    "mistral-window": _llama_like("MistralConfig", sliding_window=WINDOW),
    "qwen2": _llama_like("Qwen2Config"),
    "qwen3": _llama_like("Qwen3Config", head_dim=8),
    "gemma": _llama_like("GemmaConfig", head_dim=8),
    "gemma2-window": _llama_like("Gemma2Config", head_dim=8, sliding_window=WINDOW),
    "gemma3-window": _llama_like(
        "Gemma3TextConfig", head_dim=8, sliding_window=WINDOW, layer_types=["sliding_attention", "full_attention"]
    ),
    "phi3-window": _llama_like("Phi3Config", sliding_window=WINDOW),
    "phi": _llama_like("PhiConfig"),
    "stablelm": _llama_like("StableLmConfig"),
    "olmo2": _llama_like("Olmo2Config"),
    "gpt2": lambda **ids: transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=128, **ids),
    "gpt_neox": lambda **ids: transformers.GPTNeoXConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=128, **ids,
    ),
    "opt": lambda **ids: transformers.OPTConfig(
        hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=128, word_embed_proj_dim=32, **ids,
    ),
    "falcon": lambda **ids: transformers.FalconConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, new_decoder_architecture=False,
        multi_query=True, alibi=False, max_position_embeddings=128, **ids,
    ),
    "bloom": lambda **ids: transformers.BloomConfig(hidden_size=32, n_layer=2, n_head=4, **ids),
}


def make_arch_model(arch: str, *, seed: int = 0, byte_level: bool = False, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) for `arch`: random weights, a word tokenizer or a byte-level BPE one."""
    tokenizer = byte_level_tokenizer() if byte_level else build_word_tokenizer(TINY_TEXTS)
    config = ARCHS[arch](
        vocab_size=max_token_id(tokenizer) + 1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # random init is small: widen it so that greedy tokens depend on every input
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 0.5 / param.shape[-1] ** 0.5 * 4)
    return model.to(dtype).eval(), tokenizer
