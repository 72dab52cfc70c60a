"""Backbone families: the one place that knows how each Hugging Face decoder family differs from Llama.

CoMeT does not call a backbone's ``forward``: it runs the decoder layers itself, one chunk at a time, with its
own masks and chunk-local position ids and the memory rows in front of each chunk at every layer (METHOD.md
section 1). So for each family it must know what the family's own ``*Model.forward`` does around the layers,
and do exactly that with the family's own modules (never a copy of their code):

- the parts: the token embedding (any scaling is part of it), the decoder layers, the rotary embedding(s), the
  final norm and the LM head;
- the final logit processing after the LM head (Gemma's tanh soft-capping);
- per-layer differences: each layer's type (``config.layer_types``: full or sliding-window attention), the
  window of a sliding layer, and whether the rotary embedding differs by layer type (Gemma 3's local and global
  RoPE);
- which attention kernels compute the family correctly (attention soft-capping exists only in eager attention);
- anything that makes one model of the family impossible to support faithfully, with the reason.

Everything inside a decoder layer (fused projections, q/k norms, post-norms, attention scaling and soft-capping)
is the layer's own business: CoMeT passes each layer the hidden states, mask, position ids and rotary (cos, sin)
that the family's forward would pass, and nothing else. ``Backbone`` (backbone.py) turns a ``Family`` into the
methods the rest of the package uses. To add a family, add one ``Family`` to ``FAMILIES`` and one tiny config
to ``tests/conftest.py`` (docs/BACKBONES.md walks through one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

FULL, SLIDING = "full_attention", "sliding_attention"  # the layer types transformers writes in config.layer_types


@dataclass(frozen=True)
class Parts:
    """The modules CoMeT drives, owned by the wrapped ``*ForCausalLM``."""

    decoder: nn.Module  # the family's own decoder stack (``*Model``): the baselines run it as it is
    embed_tokens: nn.Module  # token ids -> layer-0 inputs, any embedding scaling included
    layers: nn.ModuleList
    rotary_emb: nn.Module
    norm: nn.Module
    lm_head: nn.Module


def llama_parts(model: nn.Module) -> Parts:
    """Where Llama keeps its parts; every family below uses the same names."""
    inner = model.model
    return Parts(inner, inner.embed_tokens, inner.layers, inner.rotary_emb, inner.norm, model.lm_head)


def unscaled(embed_tokens: nn.Module) -> float:
    return 1.0


def scaled_embedding(embed_tokens: nn.Module):
    """Gemma's embedding module multiplies its rows by ``embed_scale`` (sqrt(hidden_size), in the weights' dtype)."""
    return embed_tokens.embed_scale.to(embed_tokens.weight.dtype)


def layer_types_from_config(config) -> tuple[str, ...]:
    """``config.layer_types`` when the family has it (Qwen2/3, Gemma 2/3), else every layer attends in full."""
    types = getattr(config, "layer_types", None)
    return tuple(types) if types else (FULL,) * config.num_hidden_layers


def every_layer_slides_if_windowed(config) -> tuple[str, ...]:
    """Mistral and Phi-3 have no ``layer_types``: ``config.sliding_window``, when set, applies to every layer."""
    kind = SLIDING if getattr(config, "sliding_window", None) else FULL
    return (kind,) * config.num_hidden_layers


def no_final_processing(config) -> float | None:
    return None


def final_logit_softcapping(config) -> float | None:
    """Gemma: logits = cap * tanh(logits / cap) after the LM head, in ``*ForCausalLM.forward``."""
    return getattr(config, "final_logit_softcapping", None)


def refuse_nothing(config) -> str | None:
    return None


def refuse_bidirectional(config) -> str | None:
    if getattr(config, "use_bidirectional_attention", False):
        return (
            "this model uses bidirectional attention (use_bidirectional_attention=True, an embedding model), and "
            "CoMeT's chunks need causal attention: a token must not see the beacons and readouts after it"
        )
    return None


@dataclass(frozen=True)
class Family:
    """How CoMeT drives one decoder family. The defaults are Llama's; a family overrides what differs.

    parts             where the modules are (``Parts``).
    embed_scale       the factor the embedding module multiplies its rows by (the scaling itself must happen in
                      the module: ``Backbone.embed`` calls it); CoMeT's learned tokens start at that scale.
    layer_types       each layer's attention type (``FULL`` or ``SLIDING``); a ``SLIDING`` layer attends to keys
                      fewer than ``config.sliding_window`` positions behind the query, as transformers' masks say.
    rope_by_layer_type  the rotary embedding takes the layer type and gives each type its own (cos, sin)
                      (Gemma 3: local RoPE for sliding layers, global RoPE for full ones); otherwise one (cos, sin)
                      serves every layer.
    logit_softcap     the final soft-cap of the logits (None: the LM head's output as is).
    refuse            a reason why this particular model cannot be run faithfully, or None.
    lora_targets      the natural LoRA targets of the attention (named in errors and docs).
    row_modules       submodules of a decoder layer (dotted names) that act on each row alone and whose outputs at a
                      row feed only that row's output: a memory row's keys and values do not depend on them, so
                      CoMeT runs them on the rows whose outputs it uses and nothing else (the query projection,
                      when it is a module of its own, the attention's output projection and the MLP).
    differs           what differs from Llama, in a few words (for docs and errors).
    """

    parts: Callable[[nn.Module], Parts] = llama_parts
    embed_scale: Callable[[nn.Module], object] = unscaled
    layer_types: Callable[[object], tuple[str, ...]] = layer_types_from_config
    rope_by_layer_type: bool = False
    logit_softcap: Callable[[object], float | None] = no_final_processing
    refuse: Callable[[object], str | None] = refuse_nothing
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    row_modules: tuple[str, ...] = ("self_attn.q_proj", "self_attn.o_proj", "mlp")
    differs: str = ""


FAMILIES: dict[str, Family] = {
    "llama": Family(differs="the reference layout"),
    "mistral": Family(layer_types=every_layer_slides_if_windowed, differs="sliding window on every layer if set"),
    "qwen2": Family(differs="q/k/v biases; sliding-window layers if use_sliding_window"),
    "qwen3": Family(differs="q/k norms; sliding-window layers if use_sliding_window"),
    # Gemma 2: the embedding module multiplies by sqrt(hidden_size) itself; the norms before and after attention
    # and MLP, and attention soft-capping, happen inside the layers; sliding and full layers alternate.
    "gemma2": Family(
        embed_scale=scaled_embedding,
        logit_softcap=final_logit_softcapping,
        differs="scaled embeddings, extra norms, attention and final-logit soft-capping, alternating sliding layers",
    ),
    # Gemma 3 (text-only Gemma3ForCausalLM): as Gemma 2, plus q/k norms, and local/global RoPE per layer type.
    "gemma3_text": Family(
        embed_scale=scaled_embedding,
        rope_by_layer_type=True,
        logit_softcap=final_logit_softcapping,
        refuse=refuse_bidirectional,
        differs="as Gemma 2, plus q/k norms and separate local (sliding) and global (full) rotary embeddings",
    ),
    # Phi-3: fused qkv_proj and gate_up_proj live inside the layers; LoRA targets the fused projection.
    "phi3": Family(
        layer_types=every_layer_slides_if_windowed,
        lora_targets=("qkv_proj",),
        row_modules=("self_attn.o_proj", "mlp"),  # the queries come out of the fused projection with the keys
        differs="fused qkv and gate_up projections, sliding window on every layer if set",
    ),
    "olmo2": Family(differs="norms after attention and MLP instead of before, q/k norms over all heads"),
}

SUPPORTED_FAMILIES = tuple(FAMILIES)

REFUSED: dict[str, str] = {
    "gemma3": (
        "'gemma3' is the multimodal Gemma3ForConditionalGeneration; CoMeT reads text only: load the text model "
        "with Gemma3ForCausalLM (model_type 'gemma3_text')"
    ),
}


def family_of(config) -> Family:
    """The family of a backbone's config, or a ValueError that says why it is not supported."""
    model_type = getattr(config, "model_type", None)
    if model_type in REFUSED:
        raise ValueError(f"CoMeT does not support this model: {REFUSED[model_type]}")
    if model_type not in FAMILIES:
        raise ValueError(
            f"CoMeT does not support the '{model_type}' architecture; supported families are "
            f"{', '.join(SUPPORTED_FAMILIES)} (decoder-only models with rotary positions; docs/BACKBONES.md says "
            "how to add one)"
        )
    family = FAMILIES[model_type]
    reason = family.refuse(config)
    if reason is not None:
        raise ValueError(f"CoMeT does not support this {model_type} model: {reason}")
    return family


def attention_implementation(config) -> str:
    """The attention kernel CoMeT runs a backbone with: sdpa, unless the layers soft-cap attention scores, which
    only eager attention computes (transformers' sdpa refuses ``softcap``). Both take CoMeT's arbitrary masks."""
    return "eager" if getattr(config, "attn_logit_softcapping", None) is not None else "sdpa"
