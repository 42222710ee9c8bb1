"""The model and its KV cache: prefill and decode for rows with different soft prompts.

Stateless apart from the model and the prefix cache: the scheduler owns the running batch
(`KVBatch`) and the per-request state, and calls `prefill` for newcomers (or `begin` and then
`extend` chunk by chunk for a long prompt) and `decode` once per iteration. Every row sees
exactly the positions it would see alone (`position_ids_from_mask`), sliding windows included
(`AttentionLayout`), which is what makes batched, chunked, cached and uncached greedy outputs
agree with evaluation. Logits are computed only for the last position of rows that sample.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from spul.prompts_store import position_ids_from_mask, prepend_prompt
from spul.service.kvcache import KVBatch, PrefixCache, concat_batches, empty_cache

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrefillRow:
    """One newcomer: the version's prompt embeddings and the query's token ids."""

    prompt_key: str  # artifact sha256: the prefix cache key
    prompt: torch.Tensor  # (P, H) on the model's device and dtype
    token_ids: tuple[int, ...]


@dataclass(frozen=True)
class AttentionLayout:
    """Which attention each layer runs: full, or a sliding window of `window` positions.

    Hugging Face builds sliding-window masks from cache *columns* and keeps only the last
    `window` keys of those layers. Our batches are left-padded and carry soft prompts, so
    columns are not positions: for these models the engine builds the masks itself, from
    each row's real positions, and keeps every layer's keys as long as the mask.
    """

    window: int | None = None  # the sliding layers' window; None = every layer attends fully
    mixed: bool = False  # both full and sliding layers: masks go to the model per layer type
    eager: bool = False  # the eager kernel adds a float mask; the others take a boolean one

    @classmethod
    def of(cls, model: torch.nn.Module) -> AttentionLayout:
        config = model.config.get_text_config(decoder=True)
        types = list(getattr(config, "layer_types", None) or [])
        window = getattr(config, "sliding_window", None)
        if not types:
            types = ["sliding_attention" if window is not None else "full_attention"] * config.num_hidden_layers
        kinds = set(types)
        if "sliding_attention" not in kinds or window is None:
            return cls()
        if not kinds <= {"sliding_attention", "full_attention"}:
            raise ValueError(f"unsupported attention layer types {sorted(kinds)}; spul serves full and "
                             "sliding-window attention")
        impl = getattr(model.config, "_attn_implementation", None) or "sdpa"
        if impl not in ("sdpa", "eager"):
            raise ValueError(f"attention implementation {impl!r} cannot take the sliding-window masks spul "
                             "builds; load the model with attn_implementation='sdpa' or 'eager'")
        return cls(window=int(window), mixed=len(kinds) > 1, eager=impl == "eager")

    def masks(
        self, mask: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """The attention_mask argument for one forward.

        mask: (B, K) 1 = real key column (the last Q columns are this forward's queries)
        positions: (B, Q) the queries' real positions
        """
        if self.window is None:
            return mask
        key_pos = position_ids_from_mask(mask)[:, None, :]  # (B, 1, K)
        query_pos = positions[:, :, None]  # (B, Q, 1)
        full = mask.bool()[:, None, :] & (key_pos <= query_pos)  # (B, Q, K)
        # a pad query attends to itself only, so no row of the softmax is empty (no NaN in pad K/V)
        q_len, k_len = positions.shape[1], mask.shape[1]
        columns = torch.arange(k_len, device=mask.device)
        self_col = columns[None, :] == columns[k_len - q_len :, None]  # (Q, K): each query's own column
        pad_query = ~mask.bool()[:, -q_len:, None]  # (B, Q, 1)
        full = full | (pad_query & self_col)
        sliding = full & (key_pos > query_pos - self.window)
        out = {"full_attention": full, "sliding_attention": sliding}
        out = {k: self._format(v, dtype) for k, v in out.items()}
        return out if self.mixed else out["sliding_attention"]

    def _format(self, allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        allowed = allowed[:, None]  # (B, 1, Q, K)
        if not self.eager:
            return allowed
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )


class Engine:
    def __init__(self, model: torch.nn.Module, *, prefix_cache_bytes: int = 0) -> None:
        self.model = model.eval()
        self.embed = model.get_input_embeddings()
        self.device = self.embed.weight.device
        self.dtype = self.embed.weight.dtype
        self.layout = AttentionLayout.of(model)
        self.prefix_cache = PrefixCache(prefix_cache_bytes)
        # what one forward reads whatever its batch: a decode step is bound by this on CPU
        self.weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())

    @property
    def max_positions(self) -> int | None:
        """How many positions (soft prompt + query + generated) the model can attend over; None = no limit."""
        config = self.model.config.get_text_config(decoder=True)
        value = getattr(config, "max_position_embeddings", None)
        return int(value) if isinstance(value, int) and value > 0 else None

    @torch.inference_mode()
    def prefill(self, rows: list[PrefillRow]) -> tuple[torch.Tensor, KVBatch]:
        """Run the newcomers' prompts + queries. Returns last-position logits (B, V) and their cache."""
        past, inputs = self.begin(rows)
        return self.extend(past, inputs)

    @torch.inference_mode()
    def begin(self, rows: list[PrefillRow]) -> tuple[KVBatch | None, list[torch.Tensor]]:
        """Each row's starting cache and the input embeddings (T_i, H) still to run through the model.

        With the prefix cache the cache holds each row's prompt K/V (computed once per version) and
        the inputs are the query tokens; without it there is no cache and the inputs are
        [prompt ; query]. The inputs may be fed to `extend` whole or in chunks.
        """
        embeds = [self.embed(torch.tensor(row.token_ids, dtype=torch.long, device=self.device)) for row in rows]
        if self.prefix_cache.enabled:
            return concat_batches(self._prefixes(rows)), embeds  # (B, kvh, Pmax, hd)
        ones = [torch.ones(1, e.shape[0], dtype=torch.long, device=self.device) for e in embeds]
        return None, [prepend_prompt(row.prompt, e[None], m)[0][0] for row, e, m in zip(rows, embeds, ones)]  # (P+T, H)

    @torch.inference_mode()
    def extend(
        self, past: KVBatch | None, inputs: list[torch.Tensor], *, logits: bool = True
    ) -> tuple[torch.Tensor | None, KVBatch]:
        """Append each row's input embeddings (T_i, H), left-padded to the longest, to its cache.

        Returns the last position's logits (B, V) -- None with `logits=False`, when no token is
        sampled after this chunk -- and the grown cache.
        """
        embeds, new_mask = _left_pad_rows([(e, torch.ones(e.shape[0], dtype=torch.long, device=self.device))
                                           for e in inputs])  # (B, T, H), (B, T)
        mask = torch.cat([past.mask, new_mask], dim=1) if past is not None else new_mask  # (B, L+T)
        positions = position_ids_from_mask(mask)[:, mask.shape[1] - embeds.shape[1] :]  # (B, T)
        return self._forward(embeds, mask, positions, past, logits=logits)

    @torch.inference_mode()
    def decode(self, batch: KVBatch, token_ids: list[int]) -> tuple[torch.Tensor, KVBatch]:
        """One step for every row of the running batch. Returns logits (B, V) and the grown cache."""
        ids = torch.tensor(token_ids, dtype=torch.long, device=self.device)[:, None]  # (B, 1)
        positions = batch.mask.sum(dim=1, keepdim=True)  # (B, 1): next position = real tokens so far
        mask = torch.cat([batch.mask, batch.mask.new_ones(batch.batch_size, 1)], dim=1)  # (B, L+1)
        return self._forward(self.embed(ids), mask, positions, batch)

    def _prefixes(self, rows: list[PrefillRow]) -> list[KVBatch]:
        """Each row's prompt K/V: from the cache, else computed -- all misses in one forward pass.

        With many profiles and spread traffic most rows miss; one batched pass over the missing
        prompts (left-padded, positions from the mask) costs far less than one pass per prompt.
        """
        found = {row.prompt_key: self.prefix_cache.get(row.prompt_key) for row in rows}
        for row in rows:  # counted in prompt positions, as vLLM counts prefix-cache queries and hits
            self.prefix_cache.record(queried=row.prompt.shape[0], hit=found[row.prompt_key] is not None)
        missing = {row.prompt_key: row.prompt for row in rows if found[row.prompt_key] is None}
        if missing:
            keys = list(missing)
            _, computed = self.extend(None, [missing[k] for k in keys], logits=False)  # a prefix is never sampled
            for i, key in enumerate(keys):
                found[key] = computed.select([i])  # drops this row's pad columns: exactly its P positions
                self.prefix_cache.put(key, found[key])
        return [found[row.prompt_key] for row in rows]

    def _forward(
        self,
        embeds: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        past: KVBatch | None,
        *,
        logits: bool = True,
    ) -> tuple[torch.Tensor | None, KVBatch]:
        kwargs = {
            "inputs_embeds": embeds,
            "attention_mask": self.layout.masks(mask, positions, self.dtype),
            "position_ids": positions,
            "cache": past.as_cache() if past is not None else empty_cache(),  # full-length keys in every layer
            "use_cache": True,
        }
        if not logits:  # the base model only: nothing is sampled after this chunk
            return None, KVBatch.from_cache(self.model.base_model(**kwargs).cache, mask)
        out = self.model(**kwargs, logits_to_keep=1)  # only the last position's logits are ever sampled
        return out.logits[:, -1].float(), KVBatch.from_cache(out.cache, mask)  # (B, V)


def _left_pad_rows(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """[(T_i, H), (T_i,)] -> embeds (B, T, H) and mask (B, T), padding on the left with zeros."""
    length = max(e.shape[0] for e, _ in parts)
    embeds = parts[0][0].new_zeros(len(parts), length, parts[0][0].shape[-1])
    mask = parts[0][1].new_zeros(len(parts), length)
    for i, (e, m) in enumerate(parts):
        embeds[i, length - e.shape[0] :] = e
        mask[i, length - m.shape[0] :] = m
    return embeds, mask
