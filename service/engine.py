"""The model and its KV cache: prefill and decode for rows with different soft prompts.

Stateless apart from the model and the prefix cache: the scheduler owns the running batch
(`KVBatch`) and the per-request state, and calls `prefill` for newcomers and `decode` once per
iteration. Every row sees exactly the positions it would see alone (`position_ids_from_mask`),
which is what makes batched, cached and uncached greedy outputs agree with evaluation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from spul.prompts_store import position_ids_from_mask, prepend_prompt
from spul.service.kvcache import KVBatch, PrefixCache, concat_batches

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrefillRow:
    """One newcomer: the version's prompt embeddings and the query's token ids."""

    prompt_key: str  # artifact sha256: the prefix cache key
    prompt: torch.Tensor  # (P, H) on the model's device and dtype
    token_ids: tuple[int, ...]


class Engine:
    def __init__(self, model: torch.nn.Module, *, prefix_cache_bytes: int = 0) -> None:
        self.model = model.eval()
        self.embed = model.get_input_embeddings()
        self.device = self.embed.weight.device
        self.dtype = self.embed.weight.dtype
        self.prefix_cache = PrefixCache(prefix_cache_bytes)

    @torch.inference_mode()
    def prefill(self, rows: list[PrefillRow]) -> tuple[torch.Tensor, KVBatch]:
        """Run the newcomers' prompts + queries. Returns last-position logits (B, V) and their cache."""
        if self.prefix_cache.enabled:
            return self._prefill_cached(rows)
        return self._prefill_full(rows)

    @torch.inference_mode()
    def decode(self, batch: KVBatch, token_ids: list[int]) -> tuple[torch.Tensor, KVBatch]:
        """One step for every row of the running batch. Returns logits (B, V) and the grown cache."""
        ids = torch.tensor(token_ids, dtype=torch.long, device=self.device)[:, None]  # (B, 1)
        positions = batch.mask.sum(dim=1, keepdim=True)  # (B, 1): next position = real tokens so far
        mask = torch.cat([batch.mask, batch.mask.new_ones(batch.batch_size, 1)], dim=1)  # (B, L+1)
        return self._forward(self.embed(ids), mask, positions, batch)

    # ---- prefill paths -----------------------------------------------------------------
    def _prefill_full(self, rows: list[PrefillRow]) -> tuple[torch.Tensor, KVBatch]:
        """No prefix cache: [prompt ; query] per row, left-padded to the longest row."""
        parts = []
        for row in rows:
            ids = torch.tensor(row.token_ids, dtype=torch.long, device=self.device)[None]  # (1, T)
            embeds, mask, _ = prepend_prompt(row.prompt, self.embed(ids), torch.ones_like(ids))
            parts.append((embeds[0], mask[0]))  # (P+T, H), (P+T,)
        embeds, mask = _left_pad_rows(parts)  # (B, L, H), (B, L)
        return self._forward(embeds, mask, position_ids_from_mask(mask), None)

    def _prefill_cached(self, rows: list[PrefillRow]) -> tuple[torch.Tensor, KVBatch]:
        """Prefix K/V from the cache (computed once per version), then only the queries."""
        past = concat_batches(self._prefixes(rows))  # (B, kvh, Pmax, hd)
        parts = []
        for row in rows:
            ids = torch.tensor(row.token_ids, dtype=torch.long, device=self.device)  # (T,)
            parts.append((self.embed(ids), torch.ones_like(ids)))
        embeds, query_mask = _left_pad_rows(parts)  # (B, T, H), (B, T)
        mask = torch.cat([past.mask, query_mask], dim=1)  # (B, Pmax+T)
        positions = position_ids_from_mask(mask)[:, past.length :]  # (B, T)
        return self._forward(embeds, mask, positions, past)

    def _prefixes(self, rows: list[PrefillRow]) -> list[KVBatch]:
        """Each row's prompt K/V: from the cache, else computed -- all misses in one forward pass.

        With many profiles and spread traffic most rows miss; one batched pass over the missing
        prompts (left-padded, positions from the mask) costs far less than one pass per prompt.
        """
        found = {row.prompt_key: self.prefix_cache.get(row.prompt_key) for row in rows}
        missing = {row.prompt_key: row.prompt for row in rows if found[row.prompt_key] is None}
        if missing:
            keys = list(missing)
            prompts = [(missing[k], torch.ones(missing[k].shape[0], dtype=torch.long, device=self.device))
                       for k in keys]
            embeds, mask = _left_pad_rows(prompts)  # (M, Pmax, H), (M, Pmax)
            out = self.model(inputs_embeds=embeds, attention_mask=mask,
                             position_ids=position_ids_from_mask(mask), use_cache=True)
            computed = KVBatch.from_cache(out.cache, mask)
            for i, key in enumerate(keys):
                found[key] = computed.select([i])  # drops this row's pad columns: exactly its P positions
                self.prefix_cache.put(key, found[key])
        return [found[row.prompt_key] for row in rows]

    def _forward(
        self, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, past: KVBatch | None
    ) -> tuple[torch.Tensor, KVBatch]:
        out = self.model(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            cache=past.as_cache() if past is not None else None,
            use_cache=True,
            logits_to_keep=1,  # only the last position's logits are ever sampled
        )
        logits = out.logits[:, -1].float()  # (B, V)
        return logits, KVBatch.from_cache(out.cache, mask)


def _left_pad_rows(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """[(T_i, H), (T_i,)] -> embeds (B, T, H) and mask (B, T), padding on the left with zeros."""
    length = max(e.shape[0] for e, _ in parts)
    embeds = parts[0][0].new_zeros(len(parts), length, parts[0][0].shape[-1])
    mask = parts[0][1].new_zeros(len(parts), length)
    for i, (e, m) in enumerate(parts):
        embeds[i, length - e.shape[0] :] = e
        mask[i, length - m.shape[0] :] = m
    return embeds, mask
