"""Key/value caches as plain tensors: a left-padded batch cache and a bounded LRU of prompt prefixes.

Rows of one batch have different lengths (different soft prompts P, different queries), so the
batch cache is left-padded: every row's real positions end at the last column, pad columns are
masked out, and positions come from the mask (`position_ids_from_mask`), never from the column.

A running batch's keys and values live in an arena per layer, with spare rows and columns:
a decode step writes its one new column in place instead of copying the whole cache to grow
it by one, newcomers are written into spare rows (`append_rows`) and a leaving row's slot is
filled by moving one other row (`drop_rows`), so rows join and leave without copying the rest.
Only a buffer's owner (the batch written last) writes into it again: extending the same batch
twice copies instead of writing over the first extension, and `select` / `concat_batches`
copy, so batches held elsewhere (the prefix cache) never change.
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
MIN_SPARE_ROWS = 4  # a running batch's buffer gets at least this many spare rows for newcomers


class _Buffer:
    """Keys and values (R, kvh, C, hd) of one layer: the arena a running batch lives in.

    The batch that wrote it last (its owner) spans rows [0, rows) and ends at column `filled`;
    only the owner may write into it again, which is how older views stay unchanged.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, rows: int, filled: int) -> None:
        self.keys, self.values, self.rows, self.filled = keys, values, rows, filled

    @property
    def row_capacity(self) -> int:
        return int(self.keys.shape[0])

    @property
    def column_capacity(self) -> int:
        return int(self.keys.shape[2])

    def owned_by(self, rows: int, end: int) -> bool:
        return self.rows == rows and self.filled == end


def _arena(like: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
    """An uninitialised (rows, kvh, columns, hd) tensor like `like`."""
    return like.new_empty((rows, like.shape[1], columns, like.shape[3]))


def _spare_columns(length: int) -> int:
    return length + max(MIN_SPARE_COLUMNS, length // 2)


class _GrowingLayer(DynamicLayer):
    """A DynamicLayer that appends into a buffer's spare columns instead of concatenating."""

    def __init__(self, buffer: _Buffer | None = None, start: int = 0, keys: torch.Tensor | None = None,
                 values: torch.Tensor | None = None) -> None:
        super().__init__()
        self.buffer, self.start, self.length = buffer, start, 0
        if keys is not None:
            self.keys, self.values, self.length = keys, values, keys.shape[-2]
            self.device, self.is_initialized = keys.device, True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        rows, new = key_states.shape[0], key_states.shape[-2]
        buffer, begin = self.buffer, self.start + self.length
        if buffer is None or not buffer.owned_by(rows, begin) or begin + new > buffer.column_capacity:
            buffer = self._grown(key_states, value_states, _spare_columns(self.length + new))
            self.start, begin = 0, self.length
        end = begin + new
        buffer.keys[:rows, :, begin:end] = key_states
        buffer.values[:rows, :, begin:end] = value_states
        buffer.filled = end
        self.buffer, self.length = buffer, self.length + new
        self.keys = buffer.keys[:rows, :, self.start : end]  # (B, kvh, L, hd) views
        self.values = buffer.values[:rows, :, self.start : end]
        self.device, self.is_initialized = key_states.device, True
        return self.keys, self.values

    def _grown(self, key_states: torch.Tensor, value_states: torch.Tensor, capacity: int) -> _Buffer:
        """A new buffer holding this layer's columns from column 0, with room for `capacity` in all."""
        rows = key_states.shape[0]
        spare_rows = self.buffer.row_capacity if self.buffer is not None and self.buffer.rows == rows else rows
        keys = _arena(key_states, max(rows, spare_rows), capacity)
        values = _arena(value_states, max(rows, spare_rows), capacity)
        if self.length:
            keys[:rows, :, : self.length] = self.keys
            values[:rows, :, : self.length] = self.values
        return _Buffer(keys, values, rows, self.length)

    def get_seq_length(self) -> int:
        return self.length


def empty_cache() -> DynamicCache:
    """A cache whose every layer keeps full-length keys and grows in place."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = _GrowingLayer
    return cache


@dataclass(frozen=True)
class KVBatch:
    """Per-layer keys/values (B, kvh, L, hd) plus the (B, L) mask of real positions.

    Where `buffers` is set, layer i's keys are the view `buffers[i].keys[:B, :, starts[i]:...]`
    of an arena with spare rows and columns: decode steps write their column in place, and
    `append_rows` / `drop_rows` let rows join and leave without copying the other rows.
    """

    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]
    mask: torch.Tensor  # (B, L) long, 1 = real position
    buffers: tuple[_Buffer | None, ...] | None = None  # where keys/values have spare room, if they do
    starts: tuple[int, ...] | None = None  # each buffer's column where this batch's columns begin

    @property
    def batch_size(self) -> int:
        return int(self.mask.shape[0])

    @property
    def length(self) -> int:
        return int(self.mask.shape[1])

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    @property
    def column_bytes(self) -> int:
        """Bytes one row's one position takes over every layer's keys and values."""
        return sum(t.shape[1] * t.shape[3] * t.element_size() for t in (*self.keys, *self.values))

    def as_cache(self) -> DynamicCache:
        """An HF cache over these tensors; the model's appends go to spare columns, never into ours."""
        buffers = self.buffers or (None,) * len(self.keys)
        starts = self.starts or (0,) * len(self.keys)
        cache = empty_cache()
        cache.layers = [
            _GrowingLayer(buffer, start, keys, values)
            for buffer, start, keys, values in zip(buffers, starts, self.keys, self.values)
        ]
        return cache

    @classmethod
    def from_cache(cls, cache: DynamicCache, mask: torch.Tensor) -> KVBatch:
        keys = tuple(layer.keys for layer in cache.layers)
        values = tuple(layer.values for layer in cache.layers)
        buffers = tuple(getattr(layer, "buffer", None) for layer in cache.layers)
        starts = tuple(getattr(layer, "start", 0) for layer in cache.layers)
        return cls(keys, values, mask, buffers, starts)

    def _owns_buffers(self) -> bool:
        """Whether this batch is its buffers' owner (the last batch written into them)."""
        if self.buffers is None or self.starts is None or any(b is None for b in self.buffers):
            return False
        return all(b.owned_by(self.batch_size, s + self.length) for b, s in zip(self.buffers, self.starts))

    @torch.inference_mode()  # the engine's tensors are inference tensors
    def append_rows(self, other: KVBatch) -> KVBatch:
        """This batch's rows followed by `other`'s, left-padded to the longer.

        Written into this batch's spare rows when it owns an arena with room (the rows already
        there are not copied); otherwise both are copied once into a new arena with spare rows
        and columns. Either way this batch must not be used afterwards.
        """
        length = max(self.length, other.length)
        rows, extra = self.batch_size, other.batch_size
        room = self._owns_buffers() and all(
            b.row_capacity >= rows + extra and b.filled >= length for b in self.buffers  # type: ignore[union-attr]
        )
        if not room:
            return _into_arena([self, other], spare_rows=max(MIN_SPARE_ROWS, (rows + extra) // 2))
        keys, values, starts = [], [], []
        for buffer, start, new_k, new_v in zip(self.buffers, self.starts, other.keys, other.values):  # type: ignore[arg-type]
            end = buffer.filled
            begin = end - length
            for arena, new in ((buffer.keys, new_k), (buffer.values, new_v)):
                if begin < start:  # the newcomers are longer: the running rows get pad columns on the left
                    arena[:rows, :, begin:start] = 0
                arena[rows : rows + extra, :, begin : end - other.length] = 0
                arena[rows : rows + extra, :, end - other.length : end] = new
            buffer.rows = rows + extra
            keys.append(buffer.keys[: rows + extra, :, begin:end])
            values.append(buffer.values[: rows + extra, :, begin:end])
            starts.append(begin)
        mask = torch.cat([F.pad(self.mask, (length - self.length, 0)), F.pad(other.mask, (length - other.length, 0))])
        return KVBatch(tuple(keys), tuple(values), mask, self.buffers, tuple(starts))

    @torch.inference_mode()  # the engine's tensors are inference tensors
    def drop_rows(self, keep: list[int]) -> tuple[KVBatch, list[int]]:
        """Keep only rows `keep` (ascending), then drop leading columns no row uses any more.

        In an owned arena the kept rows past the new end move into the holes (only they are
        copied) and the result's row i is old row `order[i]`; otherwise this is `select(keep)`.
        Returns (the batch, order). This batch must not be used afterwards.
        """
        if not self._owns_buffers():
            return self.select(keep), list(keep)
        n, kept = len(keep), set(keep)
        holes = [i for i in range(n) if i not in kept]
        movers = [i for i in keep if i >= n]
        order = list(range(n))
        for hole, mover in zip(holes, movers, strict=True):
            order[hole] = mover
        mask = self.mask[order]  # (n, L)
        used = mask.any(dim=0).nonzero()
        first = int(used[0]) if used.numel() else self.length
        keys, values, starts = [], [], []
        for buffer, start in zip(self.buffers, self.starts):  # type: ignore[arg-type]
            end = buffer.filled
            if movers:
                src = torch.tensor(movers, device=self.mask.device)
                dst = torch.tensor(holes, device=self.mask.device)
                buffer.keys[dst, :, start:end] = buffer.keys[src, :, start:end]
                buffer.values[dst, :, start:end] = buffer.values[src, :, start:end]
            buffer.rows = n
            keys.append(buffer.keys[:n, :, start + first : end])
            values.append(buffer.values[:n, :, start + first : end])
            starts.append(start + first)
        return KVBatch(tuple(keys), tuple(values), mask[:, first:], self.buffers, tuple(starts)), order

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
        """Keep only `rows` (in that order), then drop leading columns no row uses any more (a copy)."""
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


def padding_bytes(batches: list[KVBatch]) -> int:
    """Bytes of pad columns `concat_batches(batches)` would add: what every later step re-reads."""
    length = max(b.length for b in batches)
    return sum(b.batch_size * (length - b.length) * b.column_bytes for b in batches)


def concat_batches(batches: list[KVBatch]) -> KVBatch:
    """Stack batches along B, left-padding each to the longest (a copy; the inputs are unchanged)."""
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


@torch.inference_mode()  # the engine's tensors are inference tensors
def _into_arena(batches: list[KVBatch], *, spare_rows: int) -> KVBatch:
    """Batches stacked along B into a new arena with `spare_rows` and spare columns to grow into."""
    length = max(b.length for b in batches)
    rows = sum(b.batch_size for b in batches)
    columns = _spare_columns(length)
    buffers, keys, values = [], [], []
    for layer in range(len(batches[0].keys)):
        arenas = [_arena(batches[0].keys[layer], rows + spare_rows, columns),
                  _arena(batches[0].values[layer], rows + spare_rows, columns)]
        row = 0
        for b in batches:
            for arena, part in zip(arenas, (b.keys[layer], b.values[layer])):
                arena[row : row + b.batch_size, :, : length - b.length] = 0
                arena[row : row + b.batch_size, :, length - b.length : length] = part
            row += b.batch_size
        buffers.append(_Buffer(arenas[0], arenas[1], rows, length))
        keys.append(arenas[0][:rows, :, :length])
        values.append(arenas[1][:rows, :, :length])
    mask = torch.cat([F.pad(b.mask, (length - b.length, 0)) for b in batches])
    return KVBatch(tuple(keys), tuple(values), mask, tuple(buffers), (0,) * len(buffers))


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
