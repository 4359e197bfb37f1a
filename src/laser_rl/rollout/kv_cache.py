"""The sampler's KV cache: transformers' ``DynamicCache`` whose full-attention layers grow in place.

``DynamicLayer`` appends each decode step's keys and values with ``torch.cat``, which copies the
layer's whole cache every step: O(L²) bytes copied per response, and 36 % of the decode time of
``laser bench``'s tiny model (torch profiler, 64 tokens). :class:`GrowingLayer` keeps a buffer with
spare room, writes each step into it and hands attention a view of the filled part, so a step copies
only its own keys and values. The buffer grows geometrically, capped at the most the sampler can
need, so memory stays that of the live sequence plus the larger of 64 positions and a quarter (a
buffer sized for ``max_new_tokens`` up front would hold memory for responses that stop early). The stored values
are the same, so tokens, log-probs and lp_z are bit-identical to ``DynamicCache`` (tested).

Sliding-window, chunked and linear-attention layers keep transformers' own classes.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

MIN_GROWTH = 64  # tokens of spare room added at least when a buffer grows


class GrowingLayer(DynamicLayer):
    """A full-attention cache layer over a buffer [B, H, capacity, D] that grows in place.

    ``keys`` / ``values`` are views of the filled part ``[:, :, :length]``, so every ``DynamicLayer``
    reader (``get_seq_length``, the mask sizes, ``crop``) sees what it expects.
    """

    def __init__(self, length_limit: int) -> None:
        super().__init__()
        self.length_limit = length_limit  # no sequence the sampler builds is longer: never allocate past it
        self.length = 0

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + key_states.shape[-2]
        if not self.is_initialized:
            self.dtype, self.device = key_states.dtype, key_states.device
            self._key_buf, self._value_buf = key_states[:, :, :0], value_states[:, :, :0]
            self.is_initialized = True
        if end > self._key_buf.shape[-2]:
            self._grow(end)
        self._key_buf[:, :, self.length : end] = key_states
        self._value_buf[:, :, self.length : end] = value_states
        self.length = end
        self._refresh_views()
        return self.keys, self.values

    def _grow(self, needed: int) -> None:
        capacity = max(needed, min(self.length_limit, needed + max(MIN_GROWTH, needed // 4)))
        buffers = []
        for buf in (self._key_buf, self._value_buf):
            new = buf.new_empty((buf.shape[0], buf.shape[1], capacity, buf.shape[3]))
            new[:, :, : self.length] = buf[:, :, : self.length]
            buffers.append(new)
        self._key_buf, self._value_buf = buffers

    def _refresh_views(self) -> None:
        self.keys = self._key_buf[:, :, : self.length]
        self.values = self._value_buf[:, :, : self.length]

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self._key_buf, self._value_buf = self._key_buf[indices], self._value_buf[indices]
            self._refresh_views()

    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)  # checks the argument, cuts the views
        if self.is_initialized:
            self.length = self.keys.shape[-2]

    def reset(self) -> None:
        super().reset()
        self.length = 0

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            self._key_buf = self._key_buf.repeat_interleave(repeats, dim=0)
            self._value_buf = self._value_buf.repeat_interleave(repeats, dim=0)
            self._refresh_views()


def growing_cache(model: torch.nn.Module, max_length: int) -> DynamicCache:
    """A ``DynamicCache`` for ``model`` with every plain full-attention layer a :class:`GrowingLayer`
    that holds at most ``max_length`` positions (prompt width + tokens to generate)."""
    cache = DynamicCache(config=model.config)
    cache.layers = [GrowingLayer(max_length) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
