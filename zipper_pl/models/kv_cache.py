"""Key/value caches of the towers' self-attention for incremental decoding.

``KVCache`` slices its buffers to their fill level (python ints) each step; ``StaticKVCache``
writes one-token steps at a device-side slot and hands back the whole buffers on CUDA, so a step's
shapes never change (the ``static`` generation engine, models/static_decoding.py), and on a CPU
the buffers up to the fill level the runner counts (``bound``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from zipper_pl.errors import UserError


class KVCache:
    """Preallocated per-layer keys/values for incremental decoding.

    Every layer keeps its OWN fill level (``lengths[i]``), advanced by that layer's attention when
    it appends the new step's keys/values. Running blocks ``[0, k)`` and then ``[k, n)`` (as the
    Zipper does) therefore advances each layer exactly once: no manual bookkeeping can go wrong.
    ``length`` is the number of tokens that went through every layer.
    """

    def __init__(
        self,
        n_layers: int,
        batch_size: int,
        n_heads: int,
        head_dim: int,
        max_len: int,
        device: torch.device | str | None,
        dtype: torch.dtype,
    ) -> None:
        shape = (batch_size, n_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.lengths = [0] * n_layers
        self.max_len = max_len

    @property
    def length(self) -> int:
        return min(self.lengths)

    def append(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k, v [B,H,T,hd] after this layer's cached ones; return all keys/values so far."""
        start, t = self.lengths[layer], k.size(2)
        if start + t > self.max_len:
            raise UserError(
                f"KV cache full ({start} + {t} > {self.max_len} tokens): raise the generation "
                "budget's max_len / the tower's max_seq_len"
            )
        self.k[layer][:, :, start : start + t] = k
        self.v[layer][:, :, start : start + t] = v
        self.lengths[layer] = start + t
        return self.k[layer][:, :, : start + t], self.v[layer][:, :, : start + t]


class StaticKVCache(KVCache):
    """A KVCache whose single-token appends land at ``slot``, a 0-dim device tensor the runner
    advances in place. On CUDA the step's shapes never change (attention reads the whole
    capacity, the mask hides unwritten slots), so a step can be captured once and replayed; on
    a CPU it reads up to ``bound``. Longer appends (the prompt) use the python fill levels as
    before, then ``slot`` takes over."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.slot: Tensor | None = None  # set by the runner once the prompt is in
        # slots a step reads: None = the whole capacity (what a captured CUDA graph needs); on a
        # CPU the runner sets the fill level it counts on the host (no sync), so a step does not
        # attend over empty slots (0.8x the dynamic engine at batch 16 when it did)
        self.bound: int | None = None

    def append(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if self.slot is None or k.size(2) != 1:
            return super().append(layer, k, v)
        # cast as KVCache's slice assignment does (autocast computes k, v in bf16)
        self.k[layer].index_copy_(2, self.slot.view(1), k.to(self.k[layer].dtype))  # [B,H,cap,hd]
        self.v[layer].index_copy_(2, self.slot.view(1), v.to(self.v[layer].dtype))
        return self.k[layer][:, :, : self.bound], self.v[layer][:, :, : self.bound]
