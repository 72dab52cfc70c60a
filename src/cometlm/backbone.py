"""The parts of a Hugging Face decoder LLM that CoMeT drives, taken from the model itself (never re-implemented).

CoMeT needs the token embedding, the list of decoder layers, the rotary embedding, the final norm and the LM
head. For the supported families these live in the same places, and the decoder layers take the same
arguments (hidden states, a 4-D attention mask, position embeddings, a cache).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

SUPPORTED_FAMILIES = ("llama", "mistral", "qwen2", "qwen3")


@dataclass
class Backbone:
    """Handles onto a wrapped ``*ForCausalLM`` model; the modules stay owned by that model."""

    model: nn.Module
    embed_tokens: nn.Embedding
    layers: nn.ModuleList
    rotary_emb: nn.Module
    norm: nn.Module
    lm_head: nn.Module

    @classmethod
    def of(cls, model: nn.Module) -> "Backbone":
        config = getattr(model, "config", None)
        family = getattr(config, "model_type", type(model).__name__)
        if family not in SUPPORTED_FAMILIES:
            raise ValueError(
                f"CoMeT does not support the '{family}' architecture; supported families are "
                f"{', '.join(SUPPORTED_FAMILIES)} (decoder-only models with rotary positions)"
            )
        inner = model.model
        return cls(
            model=model,
            embed_tokens=inner.embed_tokens,
            layers=inner.layers,
            rotary_emb=inner.rotary_emb,
            norm=inner.norm,
            lm_head=model.lm_head,
        )

    @property
    def config(self):
        return self.model.config

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def uses_eager_attention(self) -> bool:
        return self.config._attn_implementation == "eager"

    def prepare_attention(self) -> None:
        """CoMeT passes its own masks, so kernels that cannot take an arbitrary mask are switched to sdpa."""
        if self.config._attn_implementation not in ("eager", "sdpa"):
            self.model.set_attn_implementation("sdpa")

    def attention_mask(self, mask: torch.Tensor | None, dtype, length: int, device) -> torch.Tensor | None:
        """A boolean (B, 1, q, k) mask in the form the attention kernel takes: as is for sdpa (None means plain
        causal attention there), additive for eager, which also needs the causal mask spelled out."""
        if not self.uses_eager_attention:
            return mask
        if mask is None:
            mask = torch.ones(length, length, dtype=torch.bool, device=device).tril()[None, None]
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)

    def rope(self, hidden: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rotary_emb(hidden, position_ids)

    def fingerprint(self) -> list[float]:
        """A cheap identity of the base weights, so an adapter is never loaded onto a different base."""
        weight = self.embed_tokens.weight.detach()
        rows = torch.linspace(0, weight.shape[0] - 1, 8).long()
        return [round(float(v), 4) for v in weight[rows].double().sum(dim=1)]

    def describe(self) -> dict:
        config = self.config
        return {
            "model_type": config.model_type,
            "hidden_size": config.hidden_size,
            "num_hidden_layers": config.num_hidden_layers,
            "vocab_size": config.vocab_size,
            "fingerprint": self.fingerprint(),
        }
