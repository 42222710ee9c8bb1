"""Key/value caches as plain tensors: a left-padded batch cache and a bounded LRU of prompt prefixes.

Rows of one batch have different lengths (different soft prompts P, different queries), so the
batch cache is left-padded: every row's real positions end at the last column, pad columns are
masked out, and positions come from the mask (`position_ids_from_mask`), never from the column.

A batch's keys and values live in buffers with spare columns on the right: a decode step
writes its one new column in place instead of copying the whole cache to grow it by one. A
batch's views never change; extending a batch hands its spare columns to the result, and
extending the same batch twice copies instead of writing over the first extension.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

MIN_SPARE_COLUMNS = 64  # a buffer grown for new columns gets at least this many spare ones


class _Buffer:
    """Keys and values (B, kvh, capacity, hd) of one layer; columns [0, filled) are written."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, filled: int) -> None:
        self.keys, self.values, self.filled = keys, values, filled


class _GrowingLayer(DynamicLayer):
    """A DynamicLayer that appends into a buffer's spare columns instead of concatenating."""

    def __init__(self, buffer: _Buffer | None = None, length: int = 0, keys: torch.Tensor | None = None,
                 values: torch.Tensor | None = None) -> None:
        super().__init__()
        self.buffer, self.length = buffer, length
        if keys is not None:
            self.keys, self.values = keys, values
            self.device, self.is_initialized = keys.device, True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        new = key_states.shape[-2]
        end = self.length + new
        buffer = self.buffer
        if buffer is None or buffer.filled != self.length or end > buffer.keys.shape[-2]:
            buffer = self._grown(key_states, value_states, end + max(MIN_SPARE_COLUMNS, end // 2))
        buffer.keys[:, :, self.length : end] = key_states
        buffer.values[:, :, self.length : end] = value_states
        buffer.filled = end
        self.buffer, self.length = buffer, end
        self.keys, self.values = buffer.keys[:, :, :end], buffer.values[:, :, :end]  # (B, kvh, L, hd) views
        self.device, self.is_initialized = key_states.device, True
        return self.keys, self.values

    def _grown(self, key_states: torch.Tensor, value_states: torch.Tensor, capacity: int) -> _Buffer:
        """A new buffer holding this layer's columns, with room for `capacity` in all."""
        shape = (*key_states.shape[:2], capacity)
        keys = key_states.new_empty((*shape, key_states.shape[-1]))
        values = value_states.new_empty((*shape, value_states.shape[-1]))
        if self.length:
            keys[:, :, : self.length] = self.keys
            values[:, :, : self.length] = self.values
        return _Buffer(keys, values, self.length)

    def get_seq_length(self) -> int:
        return self.length


def empty_cache() -> DynamicCache:
    """A cache whose every layer keeps full-length keys and grows in place."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = _GrowingLayer
    return cache


@dataclass(frozen=True)
class KVBatch:
    """Per-layer keys/values (B, kvh, L, hd) plus the (B, L) mask of real positions."""

    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]
    mask: torch.Tensor  # (B, L) long, 1 = real position
    buffers: tuple[_Buffer | None, ...] | None = None  # where keys/values have spare columns, if they do

    @property
    def batch_size(self) -> int:
        return int(self.mask.shape[0])

    @property
    def length(self) -> int:
        return int(self.mask.shape[1])

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def as_cache(self) -> DynamicCache:
        """An HF cache over these tensors; the model's appends go to spare columns, never into ours."""
        buffers = self.buffers or (None,) * len(self.keys)
        cache = empty_cache()
        cache.layers = [
            _GrowingLayer(buffer, self.length, keys, values)
            for buffer, keys, values in zip(buffers, self.keys, self.values)
        ]
        return cache

    @classmethod
    def from_cache(cls, cache: DynamicCache, mask: torch.Tensor) -> KVBatch:
        keys = tuple(layer.keys for layer in cache.layers)
        values = tuple(layer.values for layer in cache.layers)
        buffers = tuple(getattr(layer, "buffer", None) for layer in cache.layers)
        return cls(keys, values, mask, buffers)

    def left_pad(self, length: int) -> KVBatch:
        """Prepend masked columns so the cache is `length` long."""
        extra = length - self.length
        if extra <= 0:
            return self
        pad = (0, 0, extra, 0)  # pads dim -2 (L) on the left
        return KVBatch(
            tuple(F.pad(k, pad) for k in self.keys),
            tuple(F.pad(v, pad) for v in self.values),
            F.pad(self.mask, (extra, 0)),
        )

    def select(self, rows: list[int]) -> KVBatch:
        """Keep only `rows` (in that order), then drop leading columns no row uses any more."""
        index = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        kept = KVBatch(
            tuple(k.index_select(0, index) for k in self.keys),
            tuple(v.index_select(0, index) for v in self.values),
            self.mask.index_select(0, index),
        )
        return kept.trim()

    def trim(self) -> KVBatch:
        used = self.mask.any(dim=0).nonzero()
        start = int(used[0]) if used.numel() else self.length
        if start == 0:
            return self
        return KVBatch(
            tuple(k[:, :, start:] for k in self.keys),
            tuple(v[:, :, start:] for v in self.values),
            self.mask[:, start:],
        )


def concat_batches(batches: list[KVBatch]) -> KVBatch:
    """Stack batches along B, left-padding each to the longest."""
    if len(batches) == 1:
        return batches[0]
    length = max(b.length for b in batches)
    padded = [b.left_pad(length) for b in batches]
    n_layers = len(padded[0].keys)
    return KVBatch(
        tuple(torch.cat([b.keys[i] for b in padded]) for i in range(n_layers)),
        tuple(torch.cat([b.values[i] for b in padded]) for i in range(n_layers)),
        torch.cat([b.mask for b in padded]),
    )


class PrefixCache:
    """LRU of prompt-prefix caches keyed by artifact sha256, bounded by total tensor bytes.

    The K/V of a profile's P prompt positions depend only on that prompt (causal attention), so
    they are computed once per version and shared by every request of it. Thread-safe: the
    engine thread reads, the registry evicts on upload/activate/delete.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, KVBatch] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._active: set[str] | None = None  # the keys of the last `retain`; None = not told yet
        self.hits = 0
        self.misses = 0
        self.query_tokens = 0  # prompt positions looked up
        self.hit_tokens = 0  # prompt positions found

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        """Whether `key`'s prefix is cached, without counting a query or touching the LRU order."""
        with self._lock:
            return key in self._entries

    def get(self, key: str) -> KVBatch | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def record(self, *, queried: int, hit: bool) -> None:
        """Count one lookup of `queried` prompt positions (for the metrics)."""
        with self._lock:
            self.query_tokens += queried
            self.hit_tokens += queried if hit else 0

    def put(self, key: str, entry: KVBatch) -> None:
        size = entry.nbytes()
        if size > self.max_bytes:
            return  # larger than the whole budget: serve it uncached rather than thrash
        with self._lock:
            if self._active is not None and key not in self._active:
                return  # retired while its prefill ran: storing it would undo the last `retain`
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes()
            self._entries[key] = entry
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes()

    def retain(self, keys: set[str]) -> None:
        """Keep only the active versions' entries; until the next call, `put` refuses other keys.

        Called after store changes. A prefill that started before the change may still `put` a
        retired version's prefix; refusing it keeps the retired entry from coming back.
        """
        with self._lock:
            self._active = set(keys)
            for key in [k for k in self._entries if k not in keys]:
                self._bytes -= self._entries.pop(key).nbytes()
