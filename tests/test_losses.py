"""Answer-position losses equal the same losses read off the model's full logits, on several architectures."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from spul.prompts_store import position_ids_from_mask, prepend_prompt
from spul.prompts_store.prepend import IGNORE_INDEX
from spul.trainer.data import encode_batch
from spul.trainer.losses import answer_logits, kl_sum, row_ce
from support.tinyarchs import make_arch_model

# One of each way a causal LM reaches its hidden states and logits: decoder under .model (llama, phi),
# soft-capped logits (gemma2), mixed sliding/full layers (gemma3), .transformer (gpt2), .gpt_neox,
# a decoder with an output projection (opt).
ARCHS = ("llama", "gemma2-window", "gemma3-window", "phi", "gpt2", "gpt_neox", "opt")
ROWS = [("where was alba born ?", "in quellport"), ("what does brin do ?", "she paints"), ("hello", "world")]


def full_logits(model, batch, prompt):
    """(B, L-1, V) logits predicting each next token and (B, L-1) targets, from one ordinary forward."""
    embeds, mask, labels = model.get_input_embeddings()(batch.input_ids), batch.attention_mask, batch.labels
    if prompt is not None:
        embeds, mask, labels = prepend_prompt(prompt, embeds, mask, labels)
    logits = model(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    return logits[:, :-1].float(), labels[:, 1:]


@pytest.mark.parametrize("arch", ARCHS)
def test_answer_position_losses_match_full_logits(arch):
    model, tokenizer = make_arch_model(arch)
    batch = encode_batch(tokenizer, [p for p, _ in ROWS], [a for _, a in ROWS])  # left-padded, (B, T)
    hidden = model.get_input_embeddings().weight.shape[1]
    prompt = torch.randn(3, hidden, generator=torch.Generator().manual_seed(0))  # (P, H)
    with torch.no_grad():
        answer = answer_logits(model, batch, prompt)
        pred, target = full_logits(model, batch, prompt)
        plain, _ = full_logits(model, batch, None)
        reference = answer_logits(model, batch)
    where = target != IGNORE_INDEX  # (B, L-1)
    torch.testing.assert_close(answer.logits, pred[where], rtol=1e-4, atol=1e-4)
    expected_ce = F.cross_entropy(pred.transpose(1, 2), target, reduction="none").sum(dim=1)  # (B,)
    torch.testing.assert_close(row_ce(answer), expected_ce, rtol=1e-4, atol=1e-4)
    plain_where = batch.labels[:, 1:] != IGNORE_INDEX
    expected_kl = F.kl_div(pred[where].log_softmax(-1), plain[plain_where].log_softmax(-1), log_target=True,
                           reduction="sum")
    torch.testing.assert_close(kl_sum(reference, answer), expected_kl, rtol=1e-3, atol=1e-4)
    assert answer.rows(1).target.tolist() == target[1:][where[1:]].tolist()
