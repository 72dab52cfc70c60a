"""The attention kernel CoMeT runs a backbone's layers with: transformers' sdpa, except that on a CPU grouped-query
attention reads the shared keys and values in place instead of copying them once per query group.

CoMeT always passes a mask (memory rows, beacons, padding), and with a mask transformers' sdpa repeats each key
and value head for every query head of its group (``repeat_kv``) before calling
``torch.nn.functional.scaled_dot_product_attention``: on a CPU that copy is about a sixth of a decoding step that
appends a beacon. PyTorch's CPU kernels take ``enable_gqa=True`` with a mask and give the same result bit for bit
(tests/test_attention.py), so on a CPU this kernel passes it; everywhere else, and for anything it does not
handle, it is transformers' own sdpa (where a masked ``enable_gqa`` would fall back to the slow math kernel on
CUDA). In bfloat16 and float16 it also pads self-attention to a multiple of ``PAD_ROWS`` rows, where PyTorch's CPU
flash-attention kernel is fast (``_padded``); that changes the output only by rounding. When gradients flow
(training), the attentions this kernel computes itself (grouped keys on a CPU) run in float32 instead of bfloat16
or float16: PyTorch's CPU flash-attention backward is about twice as slow in bfloat16 as in float32, so forward and
backward together take 0.53-0.91x the time, casts included, and are more exact (``_in_float32``). Registered with transformers' ``AttentionInterface`` and
``AttentionMaskInterface`` (the same masks as sdpa), as transformers documents for custom kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

__all__ = ["KERNEL", "register"]

KERNEL = "cometlm_sdpa"
PAD_ROWS = 16  # 1 turns the padding off


def cpu_gqa_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, is_causal=None,
                 **kwargs):
    """``sdpa_attention_forward``'s contract: query (B, H, q, D), key and value (B, H_kv, k, D) -> (B, q, H, D)."""
    groups = getattr(module, "num_key_value_groups", 1)
    plain = kwargs.get("softcap") is None and kwargs.get("position_bias") is None and not kwargs.get("output_attentions")
    # With no mask, sdpa's causal flag aligns to the upper left, right only when the keys are the queries' own.
    if (query.device.type != "cpu" or groups == 1 or query.shape[2] == 1 or not plain
            or (attention_mask is None and key.shape[2] != query.shape[2])):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    causal = attention_mask is None and (is_causal if is_causal is not None else getattr(module, "is_causal", True))
    if _in_float32(query, key, value, attention_mask):
        out = F.scaled_dot_product_attention(query.float(), key.float(), value.float(), attn_mask=attention_mask,
                                             dropout_p=dropout, scale=scaling, is_causal=causal, enable_gqa=True)
        return out.to(query.dtype).transpose(1, 2).contiguous(), None
    rows = query.shape[2]
    query, key, value, attention_mask = _padded(query, key, value, attention_mask, causal)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout,
                                         scale=scaling, is_causal=causal, enable_gqa=True)
    return out[:, :, :rows].transpose(1, 2).contiguous(), None


def _in_float32(query, key, value, mask) -> bool:
    """Whether a CPU attention in bfloat16 or float16 runs in float32: when gradients flow through it (forward and
    backward, 2 x 9 query heads over 3 key heads, 161-200 rows, 64 dims, a padding mask, on this project's Xeon:
    3.4-4.5 ms against 4.8-6.1 ms in bfloat16, padded or not; docs/EXPERIMENTS.md, session 32). Reading, without
    gradients, stays in the low precision, where the forward alone is faster (0.6 against 1.2 ms)."""
    return (query.dtype in (torch.bfloat16, torch.float16) and torch.is_grad_enabled()
            and any(t.requires_grad for t in (query, key, value)) and (mask is None or mask.dtype == torch.bool))


def _padded(query, key, value, mask, causal: bool):
    """Self-attention in bfloat16 or float16 with rows appended up to a multiple of ``PAD_ROWS``: PyTorch's CPU
    flash-attention kernel takes up to twice as long at other lengths (193 rows: 0.62 ms, 208: 0.40, 192: 0.32 on
    this project's Xeon; float32 has no such steps). The appended rows are keys no real query sees (after every
    query under the causal flag, masked out otherwise) and queries whose outputs are dropped."""
    rows = query.shape[2]
    extra = -rows % PAD_ROWS
    if (not extra or query.dtype not in (torch.bfloat16, torch.float16) or key.shape[2] != rows
            or not (causal or (mask is not None and mask.dtype == torch.bool))):
        return query, key, value, mask
    query, key, value = (F.pad(t, (0, 0, 0, extra)) for t in (query, key, value))
    if mask is not None:
        mask = F.pad(mask, (0, extra, 0, extra), value=False)
        mask[..., rows:, :] = True  # the appended queries see something, so no row of the softmax is empty
    return query, key, value, mask


def register() -> str:
    """Makes ``KERNEL`` a name transformers models can be switched to (``set_attn_implementation``); idempotent."""
    AttentionInterface.register(KERNEL, cpu_gqa_sdpa)
    AttentionMaskInterface.register(KERNEL, sdpa_mask)
    return KERNEL
