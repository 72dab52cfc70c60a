"""The parts of a Hugging Face decoder LLM that CoMeT drives, taken from the model itself (never re-implemented).

CoMeT runs the backbone's decoder layers itself, chunk by chunk, so it must do what the family's own forward
does around them: embed, give every layer its rotary embedding and attention mask (which can differ by layer:
sliding-window layers, Gemma 3's local and global RoPE), apply the final norm, the LM head and any final logit
processing. ``Backbone`` does these with the model's own modules, as its ``Family`` (families.py) says; the rest
of the package goes through its methods and never reaches for the modules directly.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .attention import register as register_kernel
from .families import SLIDING, SUPPORTED_FAMILIES, Family, attention_implementation, family_of
from .linear import KERNELS, prepare_linears

__all__ = ["Backbone", "LayerInputs", "SUPPORTED_FAMILIES"]


@contextmanager
def _skipping_rows(modules: list[nn.Module], skip: slice):
    """While inside, each of ``modules`` (B, N, d) -> (B, N, d') runs on its input without the rows ``skip`` (one
    block); its output is zero at those rows."""

    def before(_, args):
        x = args[0]
        if skip.start == 0:
            # The rows after the block, laid out as a tensor of their own (a copy only when the batch has more than
            # one stream): a view keeps its parent's batch stride, on which PyTorch's bfloat16 CPU products run
            # about 3x slower (a batch of one as well; docs/EXPERIMENTS.md, session 32).
            kept = x[:, skip.stop :]
            kept = kept.reshape(-1, x.shape[-1]).view(kept.shape)
        else:
            kept = torch.cat([x[:, : skip.start], x[:, skip.stop :]], dim=1)
        return (kept, *args[1:])

    def after(_, args, output):
        zeros = output.new_zeros(output.shape[0], skip.stop - skip.start, *output.shape[2:])
        return torch.cat([output[:, : skip.start], zeros, output[:, skip.start :]], dim=1)

    handles = []
    try:
        for module in modules:
            handles += (module.register_forward_pre_hook(before), module.register_forward_hook(after))
        yield
    finally:
        for handle in handles:
            handle.remove()


class _KeysAndValues(Exception):
    """Raised by ``_CaptureKeysAndValues.update`` to end a decoder layer's run where its attention has them."""

    def __init__(self, key: torch.Tensor, value: torch.Tensor):
        super().__init__("keys and values captured")
        self.key, self.value = key, value


class _CaptureKeysAndValues:
    """Stands in for a transformers ``Cache``: the attention module hands ``update`` its keys and values after the
    family's norms and rotary embedding, and the run stops there (nothing after it is computed)."""

    def update(self, key, value, *args, **kwargs):
        raise _KeysAndValues(key, value)


class _KeyValuePrefix:
    """Stands in for a transformers ``Cache`` holding rows before the ones the layer runs: ``update`` returns the
    given keys and values with the prefix's in front (as a cache does with the rows it holds), and keeps nothing."""

    def __init__(self, key: torch.Tensor, value: torch.Tensor):
        self.key, self.value = key, value

    def update(self, key, value, *args, **kwargs):
        return torch.cat([self.key, key], dim=2), torch.cat([self.value, value], dim=2)


@dataclass(frozen=True)
class LayerInputs:
    """What the decoder layers take besides hidden states, for one run of rows: position ids (B, q), and per
    layer type the rotary (cos, sin) and the attention mask in the kernel's form (None: plain causal)."""

    position_ids: torch.Tensor
    rope: dict[str, tuple[torch.Tensor, torch.Tensor]]
    masks: dict[str, torch.Tensor | None]


@dataclass
class Backbone:
    """Handles onto a wrapped ``*ForCausalLM`` model; the modules stay owned by that model."""

    model: nn.Module
    family: Family
    decoder: nn.Module
    embed_tokens: nn.Module
    layers: nn.ModuleList
    rotary_emb: nn.Module
    norm: nn.Module
    lm_head: nn.Module

    @classmethod
    def of(cls, model: nn.Module) -> "Backbone":
        config = getattr(model, "config", None)
        if config is None:
            raise ValueError(
                f"CoMeT wraps a Hugging Face *ForCausalLM model with a config (got {type(model).__name__}); "
                f"supported families are {', '.join(SUPPORTED_FAMILIES)}"
            )
        family = family_of(config)
        parts = family.parts(model)
        return cls(
            model, family, parts.decoder, parts.embed_tokens, parts.layers, parts.rotary_emb, parts.norm, parts.lm_head
        )

    # ----------------------------------------------------------------------------------------------------------
    # What the model is

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
    def vocab_size(self) -> int:
        """Rows of the embedding table: the token ids the backbone can read."""
        return self.embed_tokens.weight.shape[0]

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    @property
    def layer_types(self) -> tuple[str, ...]:
        return self.family.layer_types(self.config)

    def window(self, layer_type: str) -> int | None:
        """Keys a query of this layer type may attend to (itself included), or None for no limit."""
        return getattr(self.config, "sliding_window", None) if layer_type == SLIDING else None

    @property
    def lora_targets(self) -> tuple[str, ...]:
        return self.family.lora_targets

    def linear_names(self) -> list[str]:
        """Names of the linear layers inside a decoder layer (what LoRA can target)."""
        linear = (name for name, m in self.layers[0].named_modules() if isinstance(m, nn.Linear))
        return sorted({name.rsplit(".", 1)[-1] for name in linear})

    # ----------------------------------------------------------------------------------------------------------
    # Attention kernels

    @property
    def uses_eager_attention(self) -> bool:
        return self.config._attn_implementation == "eager"

    def prepare_attention(self) -> None:
        """CoMeT passes its own masks, so kernels that cannot take an arbitrary mask are switched to sdpa (as
        ``attention.KERNEL``: sdpa that reads grouped keys in place on a CPU), and a family whose layers soft-cap
        attention scores to eager, the one kernel that computes that. Eager chosen by the user stays."""
        wanted = attention_implementation(self.config)
        current = self.config._attn_implementation
        if wanted == "sdpa":
            if current == "eager":
                return
            wanted = register_kernel()
        if current != wanted:
            self.model.set_attn_implementation(wanted)

    def prepare_linears(self) -> None:
        """The model's linear layers compute on a CPU with the kernels measured faster here (linear.py): a few
        float32 rows as ``W @ x.T``, bfloat16 products without gradients from weights packed once (a second copy
        of the weights). The environment variable ``COMETLM_LINEAR_KERNEL`` overrides the choice: ``linear`` keeps
        PyTorch's own (and the memory), ``few-rows`` or ``packed`` forces one, ``auto`` measures (the default)."""
        kernel = os.environ.get("COMETLM_LINEAR_KERNEL", "auto")
        if kernel not in KERNELS:
            raise ValueError(f"COMETLM_LINEAR_KERNEL must be one of {', '.join(KERNELS)} (got {kernel!r})")
        prepare_linears(self.model, kernel=kernel)

    def attention_mask(self, mask: torch.Tensor | None, dtype, length: int, device) -> torch.Tensor | None:
        """A boolean (B, 1, q, k) mask in the form the attention kernel takes: as is for sdpa (None means plain
        causal attention there), additive for eager, which also needs the causal mask spelled out."""
        if not self.uses_eager_attention:
            return mask
        if mask is None:
            mask = torch.ones(length, length, dtype=torch.bool, device=device).tril()[None, None]
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)

    # ----------------------------------------------------------------------------------------------------------
    # Around the decoder layers, as the family's own forward does it

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (B, n) -> layer-0 inputs (B, n, d), with the family's embedding scaling (Gemma: sqrt(d))."""
        return self.embed_tokens(ids)

    def embedding_spread(self) -> torch.Tensor:
        """The std of the layer-0 inputs over the vocabulary: the table's std times the family's embedding scale."""
        return self.embed_tokens.weight.detach().std() * self.family.embed_scale(self.embed_tokens)

    def rope(self, hidden: torch.Tensor, position_ids: torch.Tensor, layer_type: str | None = None):
        """The rotary (cos, sin) at ``position_ids`` (B, q) for layers of ``layer_type`` (any layer's when the
        family has one rotary embedding for all)."""
        if self.family.rope_by_layer_type:
            return self.rotary_emb(hidden, position_ids, layer_type or self.layer_types[0])
        return self.rotary_emb(hidden, position_ids)

    def rope_scaling(self, layer_type: str | None = None) -> float:
        """The factor the rotary embedding multiplies cos and sin by (YaRN, LongRoPE; 1.0 for plain RoPE)."""
        if self.family.rope_by_layer_type:
            return getattr(self.rotary_emb, f"{layer_type or self.layer_types[0]}_attention_scaling", 1.0)
        return getattr(self.rotary_emb, "attention_scaling", 1.0)

    def layer_inputs(
        self, hidden: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor | None,
        key_positions: torch.Tensor | None = None,
    ) -> LayerInputs:
        """Rotary embeddings and attention masks of every layer type, for rows at ``position_ids`` (B, q).

        ``mask`` (B, 1, q, k) bool says which keys each query may see (None: plain causal attention over the q
        rows); ``key_positions`` (B, k) are the keys' positions (default: ``position_ids``, the rows themselves).
        A sliding-window layer additionally hides keys ``window`` or more positions behind the query, as
        transformers' sliding masks do. CoMeT's positions are chunk-local, never above ``CometConfig.max_positions``,
        so a window at least that long changes nothing and costs nothing: the mask is built only when some query
        sits ``window`` or more positions in.
        """
        types = sorted(set(self.layer_types))
        if self.family.rope_by_layer_type:
            rope = {t: self.rope(hidden, position_ids, t) for t in types}
        else:
            shared = self.rope(hidden, position_ids)
            rope = {t: shared for t in types}
        q = position_ids.shape[1]
        masks = {}
        for t in types:
            window, m = self.window(t), mask
            if window is not None and q > 0 and int(position_ids.max()) >= window:
                if m is None:
                    m = torch.ones(q, q, dtype=torch.bool, device=hidden.device).tril()[None, None]
                keys = position_ids if key_positions is None else key_positions
                near = (position_ids[:, :, None] - keys[:, None, :]) < window  # (B, q, k)
                m = m & near[:, None]
            length = q if m is None else m.shape[-1]
            masks[t] = self.attention_mask(m, hidden.dtype, length, hidden.device)
        return LayerInputs(position_ids, rope, masks)

    def key_values(self, index: int, rows: torch.Tensor, inputs: LayerInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values (B, H_kv, m, D) decoder layer ``index``'s attention makes of ``rows`` (B, m, d) at
        ``inputs``' positions, as it makes them: the layer's own forward runs up to the point where it would hand
        them to a KV cache (its input norm, the projections, the family's query/key norms, the rotary embedding),
        and no further. ``run_layer``'s ``prefix`` takes them."""
        kind = self.layer_types[index]
        try:
            self.layers[index](rows, attention_mask=None, position_ids=inputs.position_ids,
                               position_embeddings=inputs.rope[kind], cache=_CaptureKeysAndValues(), use_cache=True)
        except _KeysAndValues as captured:
            return captured.key, captured.value
        raise RuntimeError(f"decoder layer {index} ({type(self.layers[index]).__name__}) never handed its keys and "
                           "values to the cache; cometlm cannot run its memory rows as a prefix")

    def run_layer(
        self, index: int, hidden: torch.Tensor, inputs: LayerInputs, cache=None, key_rows: slice | None = None,
        prefix: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Decoder layer ``index`` on hidden (B, q, d), with the rotary embedding and mask of its layer type.

        ``key_rows``: a block of rows that are keys and values for the other rows and nothing else (CoMeT's memory
        rows), whose outputs the caller does not use. The layer's row-wise parts that keys and values do not depend
        on (the family's ``row_modules``: the query and output projections and the MLP, most of a layer's work)
        skip them; their outputs there are taken as zero, so those rows' outputs are not meaningful. The layer's own
        modules run as they are: two hooks on each cut the rows out before it and put zeros back after it.

        ``prefix``: keys and values (``key_values``) of rows before ``hidden`` that the layer's attention sees as if
        a KV cache held them (``inputs``' mask and key positions cover them first); no ``cache`` then.
        """
        if prefix is not None:
            if cache is not None:
                raise ValueError("run_layer takes a prefix or a cache, not both")
            cache = _KeyValuePrefix(*prefix)
        kind = self.layer_types[index]
        layer = self.layers[index]
        run = lambda: layer(  # noqa: E731
            hidden,
            attention_mask=inputs.masks[kind],
            position_ids=inputs.position_ids,
            position_embeddings=inputs.rope[kind],
            cache=cache,
            use_cache=cache is not None,
        )
        if key_rows is None or key_rows.start == key_rows.stop:
            return run()
        with _skipping_rows(self.row_modules(index), key_rows):
            return run()

    def row_modules(self, index: int) -> list[nn.Module]:
        """Decoder layer ``index``'s modules named by the family's ``row_modules`` (LoRA wrappers included)."""
        layer = self.layers[index]
        return [layer.get_submodule(name) for name in self.family.row_modules]

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.norm(hidden)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final-norm hidden states (..., d) -> logits (..., V): the LM head, then the family's final logit
        processing (Gemma's soft-cap: cap * tanh(logits / cap), as its ``*ForCausalLM.forward`` does)."""
        logits = self.lm_head(hidden)
        cap = self.family.logit_softcap(self.config)
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def hidden_states(self, ids: torch.Tensor, cache=None) -> torch.Tensor:
        """The backbone's own forward without CoMeT (B, n) -> final-norm hidden states (B, n, d): what the
        baselines read with. Positions continue from ``cache`` if given."""
        out = self.decoder(input_ids=ids, cache=cache, use_cache=cache is not None)
        return out.last_hidden_state

    # ----------------------------------------------------------------------------------------------------------
    # Identity

    def fingerprint(self) -> list[float]:
        """A cheap identity of the base weights, so an adapter is never loaded onto a different base."""
        weight = self.embed_tokens.weight.detach()
        rows = torch.linspace(0, weight.shape[0] - 1, 8).long()
        return [round(float(v), 4) for v in weight[rows].double().sum(dim=1)]

    def weights_fingerprint(self, rounded: bool = True) -> list[float]:
        """A cheap identity of the decoder layers' own weights (the first, middle and last layer; LoRA left out):
        one sum of four spread rows per weight matrix, so a fine-tune that kept the embeddings is told apart. The
        entries are rounded to bfloat16 first (``rounded``), so the same base held in float32 or bfloat16 gives the
        same sums: a row's sum moves by more than the fingerprints' tolerance under that rounding. ``rounded=False``
        sums the entries as held, as adapters saved before session 42 recorded them."""
        sums = []
        for index in sorted({0, len(self.layers) // 2, len(self.layers) - 1}):
            for name, weight in self.layers[index].named_parameters():
                if weight.dim() == 2 and ".lora_" not in name:
                    rows = weight.detach()[torch.linspace(0, weight.shape[0] - 1, 4).long()]
                    if rounded:
                        rows = rows.to(torch.bfloat16)
                    sums.append(round(float(rows.double().sum()), 4))
        return sums

    def describe(self) -> dict:
        config = self.config
        return {
            "model_type": config.model_type,
            "hidden_size": config.hidden_size,
            "num_hidden_layers": config.num_hidden_layers,
            "vocab_size": config.vocab_size,
            "fingerprint": self.fingerprint(),
        }
