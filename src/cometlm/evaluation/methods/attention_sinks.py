"""A bounded KV cache with attention sinks, as StreamingLLM keeps it (Xiao et al., ICLR 2024, arXiv 2309.17453).

The cache holds the first `sink_tokens` entries of the stream (the "attention sinks" that softmax attention
leans on) and the `window` most recent ones; everything in between is evicted. Positions are those within the
cache, not in the text: the model's decoder layers store keys already rotated by RoPE at their cache index
(the index is what a Hugging Face model uses as position when it is given no position ids), and when entries
are evicted the later keys move down and are rotated back by the same number of positions (RoPE rotations
compose: R(p - e) = R(-e) R(p)). So the largest position the model ever sees is the cache's capacity, however
long the stream. transformers 5 has no sink cache of its own (its `SinkCache` was removed in 4.53), so this
extends its `DynamicCache`: the decoder layers append to it as to any cache, and `trim` evicts between reads.
Each layer's keys are re-rotated with that layer's own RoPE (Gemma 3's local and global layers differ).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.models.llama.modeling_llama import rotate_half  # the same RoPE layout in every supported family


class AttentionSinkCache(DynamicCache):
    """`sink_tokens` first entries + the `window` most recent ones, per layer, after each `trim()`.

    Between two trims the decoder layers append the entries of one read, so the cache peaks at
    `sink_tokens + window + tokens per read`.
    """

    def __init__(self, backbone, sink_tokens: int, window: int):
        super().__init__()
        if sink_tokens < 0 or window < 1:
            raise ValueError(f"an attention-sink cache needs sink_tokens >= 0 and window >= 1 (got {sink_tokens}, {window})")
        self.backbone = backbone
        self.sink_tokens = sink_tokens
        self.window = window

    def trim(self) -> None:
        """Evicts the oldest entries after the sinks until at most `window` follow them."""
        excess = self.get_seq_length() - self.sink_tokens - self.window
        if excess <= 0:
            return
        s = self.sink_tokens
        for layer, kind in zip(self.layers, self.backbone.layer_types):
            kept = self._shift_positions(layer.keys[..., s + excess :, :], excess, kind)
            layer.keys = torch.cat([layer.keys[..., :s, :], kept], dim=-2)
            layer.values = torch.cat([layer.values[..., :s, :], layer.values[..., s + excess :, :]], dim=-2)

    def _shift_positions(self, keys: torch.Tensor, by: int, layer_type: str) -> torch.Tensor:
        """Keys rotated at positions p by the RoPE of `layer_type`, rotated to p - by (in fp32, so repeated shifts
        stay accurate). With partial rotary (Phi-4-mini) only the first dims that the RoPE covers turn."""
        x = keys.float()
        position = torch.tensor([[-by]], device=keys.device)
        cos, sin = self.backbone.rope(x, position, layer_type)  # (1, 1, rotary dims), times the rotary's scaling
        scale = self.backbone.rope_scaling(layer_type)
        cos, sin = cos[:, None] / scale, sin[:, None] / scale
        turn, rest = x[..., : cos.shape[-1]], x[..., cos.shape[-1] :]
        return torch.cat([turn * cos + rotate_half(turn) * sin, rest], dim=-1).to(keys.dtype)
