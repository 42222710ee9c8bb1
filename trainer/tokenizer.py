"""Word-level tokenizer for the reference world, saved as a normal Hugging Face tokenizer.

Whitespace split, lower case. Ids are assigned from a fixed vocabulary list, so the largest id
is ``len(vocab) - 1`` -- but callers must still size embeddings from ``max_token_id + 1``
(``tokenizers`` can leave gaps when a vocabulary is trained rather than given).
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)

# A minimal chat template: role markers are ordinary words of the vocabulary.
CHAT_TEMPLATE = (
    "{% for m in messages %}### {{ m['role'] }} : {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}### assistant :{% endif %}"
)


def words(text: str) -> list[str]:
    """Split text the way the tokenizer does (lower case, whitespace)."""
    return text.lower().split()


def build_word_tokenizer(texts: Iterable[str], *, extra_words: Iterable[str] = ()) -> PreTrainedTokenizerFast:
    """Build a word-level tokenizer whose vocabulary is every word in ``texts`` plus ``extra_words``.

    The vocabulary order is deterministic (specials first, then sorted words), so the same corpus
    always gives the same ids -- the base-model fingerprint depends on it.
    """
    vocab_words: set[str] = set(extra_words)
    for text in texts:
        vocab_words.update(words(text))
    vocab_words.difference_update(SPECIAL_TOKENS)
    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *sorted(vocab_words)])}

    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # No decoder: `tokenizers` joins word-level tokens with single spaces.
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def max_token_id(tokenizer: PreTrainedTokenizerFast) -> int:
    """Largest id the tokenizer can emit (embedding tables need ``max_token_id + 1`` rows)."""
    return max(tokenizer.get_vocab().values())
