"""CometForCausalLM: a pre-trained decoder LLM that reads text chunk by chunk through a fixed-size dual memory.

Data flows one way: token ids -> chunks (``ChunkLayout``) -> the backbone's own decoder layers, each with its
memory rows in front -> logits and the next ``MemoryState``. Nothing here copies backbone code: the embedding,
decoder layers, rotary embedding, final norm and LM head are the wrapped model's modules.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.checkpoint import checkpoint
from tqdm.auto import tqdm
from transformers.modeling_outputs import CausalLMOutput

from .backbone import Backbone, LayerInputs
from .config import CometConfig
from .layout import ChunkLayout
from .memory import CometMemory
from .runtime import release_free_memory
from .state import LayerState, MemoryState

SAVE_FORMAT = "cometlm/1"
CONFIG_FILE = "comet_config.json"
WEIGHTS_FILE = "comet.safetensors"
BACKBONE_DIR = "backbone"
LORA_FILE = "lora.safetensors"


@dataclass(frozen=True)
class Batch:
    """Token ids moved to the left of each row (so chunk t of every stream starts at t*C), and how to undo it."""

    ids: torch.Tensor
    lengths: torch.Tensor
    order: torch.Tensor | None  # gather index used to left-align; None when nothing moved

    def restore(self, x: torch.Tensor) -> torch.Tensor:
        """Puts per-token values (B, N, ...) back at the caller's positions; padding positions get zeros."""
        if self.order is None:
            return x
        real = torch.arange(x.shape[1], device=x.device)[None] < self.lengths[:, None]
        x = x * real.view(*real.shape, *([1] * (x.dim() - 2))).to(x.dtype)
        index = self.order.view(*self.order.shape, *([1] * (x.dim() - 2))).expand_as(x)
        return torch.zeros_like(x).scatter(1, index, x)


@dataclass(frozen=True)
class Chunk:
    """Chunk ``t`` of every stream of a batch, cut as ``forward`` cuts it (see ``CometForCausalLM.split_chunks``).

    text_ids (B, n) left-aligned ids; text_len (B,) real tokens per stream (0 once a stream has ended); closing
    (B,) streams that more text follows, whose memories this chunk updates; index (B, n) where these tokens sit
    in the left-aligned batch (padding points at a spare last column); targets (B, n) next-token targets, -100
    where there is none, or None without labels.
    """

    text_ids: torch.Tensor
    text_len: torch.Tensor
    closing: torch.Tensor
    index: torch.Tensor
    targets: torch.Tensor | None


@dataclass(frozen=True)
class ChunkedBatch:
    """A checked batch cut into its chunks; ``num_targets`` counts the targets of all chunks together."""

    batch: Batch
    chunks: tuple[Chunk, ...]
    num_targets: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.batch.ids.shape[0]


@dataclass(frozen=True)
class ChunkInputs:
    """What every layer needs to run one chunk: its layout, and the rotary embeddings and attention masks of each
    layer type (``LayerInputs``); ``hidden`` (B, L, d) holds the stream rows' inputs to layer 0 (text embeddings,
    beacons, readouts)."""

    layout: ChunkLayout
    hidden: torch.Tensor
    layer_inputs: LayerInputs


def _summed_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross entropy in fp32 of logits (B, n, V) against targets (B, n), -100 ignored."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum")


def _quiet_token_id(config, tokenizer) -> int:
    """A single space (else newline) token if the tokenizer has one, else EOS, else 0 (see ``LearnedTokens``).

    Measured on SmolLM2-135M with untrained memory (2k tokens of essays, C=1024, temporary memory only): loss
    3.61 with space-initialised beacons, 3.69 newline, 4.00 comma, 4.08 zeros, 4.62 EOS; 3.28 without beacons.
    """
    if tokenizer is not None:
        for text in (" ", "\n"):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) == 1:
                return ids[0]
    eos = getattr(config, "eos_token_id", None)
    eos = eos[0] if isinstance(eos, list) and eos else eos
    return eos if isinstance(eos, int) else 0


def _sink_token_id(config) -> int:
    bos = getattr(config, "bos_token_id", None)
    return bos if isinstance(bos, int) else 0


FINGERPRINT_TOLERANCE = 0.02  # bfloat16 rounding moved SmolLM2's entries by at most 0.006; another base by far more


def same_base(got: dict, want: dict) -> bool:
    """Whether two `Backbone.describe()` records name the same base weights: equal shapes and fingerprints equal
    up to the rounding of a lower-precision load (an adapter saved in float32 loads onto a bfloat16 base)."""
    if {k: v for k, v in got.items() if k != "fingerprint"} != {k: v for k, v in want.items() if k != "fingerprint"}:
        return False
    a, b = got.get("fingerprint") or [], want.get("fingerprint") or []
    return len(a) == len(b) and all(abs(x - y) <= FINGERPRINT_TOLERANCE for x, y in zip(a, b))


def _tied_names(module: nn.Module) -> list[list[str]]:
    """Groups of parameter names that are one tensor (e.g. ``lm_head.weight`` and ``embed_tokens.weight``)."""
    groups: dict[int, list[str]] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def _drop_tied_copies(module, state_dict, prefix, local_metadata) -> None:
    for first, *copies in _tied_names(module):
        if prefix + first in state_dict:
            for name in copies:
                state_dict.pop(prefix + name, None)


def _restore_tied_copies(module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors) -> None:
    for first, *copies in _tied_names(module):
        if prefix + first in state_dict:
            for name in copies:
                state_dict.setdefault(prefix + name, state_dict[prefix + first])


class CometForCausalLM(nn.Module):
    """A causal LM with CoMeT memories around a Hugging Face decoder (``SUPPORTED_FAMILIES``, families.py)."""

    # forward takes ``num_items_in_batch``, so Trainer's gradient accumulation weights micro-batches by tokens.
    accepts_loss_kwargs = True

    def __init__(self, backbone_model: nn.Module, config: CometConfig, base_model: str | None = None, tokenizer=None):
        super().__init__()
        if not isinstance(config, CometConfig):
            raise TypeError(f"config must be a CometConfig (got {type(config).__name__})")
        self.backbone_model = backbone_model
        self.comet_config = config
        self.base_model = base_model or getattr(backbone_model.config, "_name_or_path", "") or None
        backbone = self.backbone
        backbone.prepare_attention()
        text = backbone.config
        eps = getattr(text, "rms_norm_eps", 1e-6)
        with torch.no_grad():
            ids = torch.tensor([_quiet_token_id(text, tokenizer), _sink_token_id(text)], device=backbone.device)
            quiet, sink = backbone.embed(ids)
            spread = backbone.embedding_spread()
        with torch.random.fork_rng(devices=[]):  # the adapters and gates start the same for the same init_seed
            torch.manual_seed(config.init_seed)
            self.memory = CometMemory(config, backbone.num_layers, eps, quiet, sink, spread).to(backbone.dtype)
        self.gradient_checkpointing = False
        self.tokenizer = tokenizer
        # Tied weights (an LM head sharing the embedding) appear once in the state dict, as in save_pretrained, so
        # that safetensors can hold it: Trainer's checkpoints and torch.save(model.state_dict()) then round-trip.
        self.register_state_dict_post_hook(_drop_tied_copies)
        self.register_load_state_dict_pre_hook(_restore_tied_copies)

    # ----------------------------------------------------------------------------------------------------------
    # Construction

    @property
    def backbone(self) -> Backbone:
        return Backbone.of(self.backbone_model)

    @property
    def config(self):
        """The backbone's HF config (what Trainer, peft and generation utilities look for)."""
        return self.backbone_model.config

    @classmethod
    def from_backbone(cls, model_or_path, config: CometConfig | None = None, tokenizer=None, dtype=torch.float32):
        """Wraps a loaded ``*ForCausalLM`` model, a local HF model directory, or the bundled model's name.

        The tokenizer (loaded with the model when a name or directory is given) picks the whitespace token that
        the beacon and readouts start from; it is kept as ``model.tokenizer`` for the command line.
        """
        config = config or CometConfig()
        if isinstance(model_or_path, (str, os.PathLike)):
            from .bundled import load_backbone

            name = str(model_or_path)
            model, loaded_tokenizer = load_backbone(name, dtype=dtype)
            return cls(model, config, base_model=name, tokenizer=tokenizer or loaded_tokenizer)
        if isinstance(model_or_path, nn.Module):
            Backbone.of(model_or_path)  # a clear error for unsupported models before anything else
            return cls(model_or_path, config, tokenizer=tokenizer)
        raise TypeError(
            "from_backbone takes a Hugging Face *ForCausalLM model, a local model directory, or the bundled "
            f"model's name (got {type(model_or_path).__name__})"
        )

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None, every_n_layers=1, offload=False):
        """Recompute each (layer, chunk) step in the backward pass instead of storing its activations.

        The signature is the one ``transformers.Trainer`` calls; CoMeT checkpoints every (layer, chunk) step
        without offloading, and says so if asked for anything else.
        """
        if every_n_layers != 1 or offload or activation_checkpointing_kwargs:
            raise ValueError(
                "CoMeT checkpoints every (layer, chunk) step on the device; every_n_layers, offload and checkpoint "
                f"kwargs are not supported (got every_n_layers={every_n_layers}, offload={offload}, "
                f"kwargs={activation_checkpointing_kwargs})"
            )
        self.gradient_checkpointing = True

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None, every_n_layers=1, offload=False):
        """The older Hugging Face name of ``activation_checkpointing_enable``."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, every_n_layers, offload)

    def gradient_checkpointing_disable(self) -> None:
        self.gradient_checkpointing = False

    def init_memory(self, batch_size: int = 1) -> MemoryState:
        backbone = self.backbone
        return MemoryState.empty(
            self.comet_config, batch_size, backbone.num_layers, backbone.hidden_size, backbone.dtype, backbone.device
        )

    # ----------------------------------------------------------------------------------------------------------
    # Input checks

    def _batch(self, input_ids, attention_mask=None, allow_empty_rows: bool = False) -> Batch:
        if not isinstance(input_ids, torch.Tensor):
            raise TypeError(f"input_ids must be a torch.Tensor of token ids (got {type(input_ids).__name__})")
        if input_ids.dtype.is_floating_point or input_ids.dtype in (torch.bool, torch.complex64, torch.complex128):
            raise ValueError(f"input_ids must hold integer token ids (got dtype {input_ids.dtype})")
        if input_ids.dim() != 2:
            raise ValueError(
                f"input_ids must have shape (batch, length) (got {tuple(input_ids.shape)}); use input_ids[None] "
                "for a single sequence"
            )
        if input_ids.numel() == 0:
            raise ValueError(f"input_ids is empty (shape {tuple(input_ids.shape)}): give at least one token")
        vocab = self.backbone.vocab_size
        ids = input_ids.long().to(self.backbone.device)
        if attention_mask is None:
            mask = torch.ones_like(ids, dtype=torch.bool)
        else:
            if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
                got = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else attention_mask
                raise ValueError(f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)} (got {got})")
            mask = attention_mask.to(ids.device)
            if not bool(((mask == 0) | (mask == 1)).all()):
                raise ValueError("attention_mask must hold only 0 (padding) and 1 (token)")
            mask = mask.bool()
        lengths = mask.sum(dim=1)
        if bool((lengths == 0).any()) and not allow_empty_rows:
            raise ValueError("every row of the batch needs at least one token (attention_mask has an all-zero row)")
        real = ids[mask]
        if bool(((real < 0) | (real >= vocab)).any()):
            raise ValueError(f"input_ids hold token ids outside the vocabulary [0, {vocab})")
        order = None
        if not bool(mask.all()):
            order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
            ids = torch.gather(ids, 1, order)
            ids = ids.masked_fill(torch.arange(ids.shape[1], device=ids.device)[None] >= lengths[:, None], 0)
        return Batch(ids, lengths, order)

    # ----------------------------------------------------------------------------------------------------------
    # One chunk through all layers

    def _stream_inputs(self, layout: ChunkLayout, text_ids: torch.Tensor) -> torch.Tensor:
        """Input hidden states of the stream rows (text embeddings, the beacon, the readouts): (B, L, d)."""
        batch, n = text_ids.shape
        tokens = self.memory.tokens
        # One table of every possible row input; each stream row picks its entry by kind.
        parts, first = [self.backbone.embed(text_ids)], {}
        offset = n
        for kind, param in ((ChunkLayout.BEACON, tokens.beacon), (ChunkLayout.READOUT, tokens.readouts),
                            (ChunkLayout.SINK, tokens.sink)):
            if param is not None:
                parts.append(param[None].expand(batch, -1, -1))
                first[kind] = offset
                offset += param.shape[0]
        index = layout.stream_token.clone()
        for kind, start in first.items():
            index = torch.where(layout.stream_kind == kind, start + layout.stream_token, index)
        return torch.cat(parts, dim=1)[:, index]

    def _update_memory(self, index: int, hidden: torch.Tensor, layer: LayerState, layout: ChunkLayout) -> LayerState:
        """METHOD.md section 2 for one layer, after the chunk has passed it (only for streams that close)."""
        if not bool(layout.closing.any()):
            return layer
        modules = self.memory.layers[index]
        g, s, has_global = layer.global_memory, layer.global_state, layer.has_global
        if modules.global_memory is not None:
            g, s = modules.global_memory.update(hidden[:, layout.readout_slot], s, has_global, layout.closing)
            has_global = has_global | layout.closing
        t, t_valid = layer.temp, layer.temp_valid
        if modules.temporary_memory is not None:
            beacon_valid = layout.beacon_valid & layout.closing[:, None]
            t, t_valid = modules.temporary_memory.update(hidden[:, layout.beacon_slot], beacon_valid, t, t_valid)
        return LayerState(g, s, has_global, t, t_valid)

    # ----------------------------------------------------------------------------------------------------------
    # The (layer, chunk) step: forward, streaming and the parallel schedule (cometlm.parallel) all run chunks
    # through these methods, so they compute the same thing.

    def start_chunk(self, text_ids, text_len, closing, memory_valid: torch.Tensor) -> ChunkInputs:
        """Lays out one chunk of every stream and embeds its stream rows (the input of layer 0).

        text_ids (B, n) left-aligned, text_len (B,) real tokens per stream, closing (B,) which streams close this
        chunk, memory_valid (B, M+K) which memory rows exist before it (``LayerState.row_valid`` of any layer).
        """
        layout = ChunkLayout.build(self.comet_config, text_len, text_ids.shape[1], closing, memory_valid)
        hidden = self._stream_inputs(layout, text_ids)
        return ChunkInputs(layout, hidden, self.backbone.layer_inputs(hidden, layout.position_ids, layout.mask))

    def layer_step(self, index: int, hidden, layer: LayerState, inputs: ChunkInputs, cache=None):
        """(layer ``index``, one chunk): the layer's memory rows in front of the stream rows, the backbone's
        decoder layer, then the memory update. Returns the stream rows' outputs and the layer's new memories.

        With activation checkpointing on (and gradients, and no cache) only the step's inputs are kept; its
        activations are recomputed in the backward pass.
        """
        step = (index, hidden, layer, inputs.layout, inputs.layer_inputs, cache)
        if self.gradient_checkpointing and torch.is_grad_enabled() and cache is None:
            return checkpoint(self._layer_step, *step, use_reentrant=False)
        return self._layer_step(*step)

    def end_chunk(self, hidden: torch.Tensor, inputs: ChunkInputs) -> torch.Tensor:
        """The final-norm hidden states at the text positions (B, n, d), from the last layer's outputs."""
        return self.backbone.final_norm(hidden[:, inputs.layout.text_slot])

    def chunk_loss(self, text_hidden: torch.Tensor, chunk: Chunk) -> torch.Tensor:
        """Summed next-token cross entropy (fp32) over the chunk's targets.

        With activation checkpointing the chunk's logits are recomputed in the backward pass, so a long sample
        keeps no (n, vocab) tensor per chunk until its backward.
        """
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(self._chunk_loss, text_hidden, chunk.targets, use_reentrant=False)
        return self._chunk_loss(text_hidden, chunk.targets)

    def _chunk_loss(self, text_hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return _summed_cross_entropy(self.backbone.logits(text_hidden), targets)

    def _layer_step(self, index, hidden, layer: LayerState, layout, layer_inputs: LayerInputs, cache=None):
        rows = layer.rows()[:, layout.memory_index]
        k, m = layout.n_sink, rows.shape[1]
        x = torch.cat([hidden[:, :k], rows, hidden[:, k:]], dim=1)  # (B, m + L, d)
        out = self.backbone.run_layer(index, x, layer_inputs, cache)
        hidden = torch.cat([out[:, :k], out[:, k + m :]], dim=1)
        return hidden, self._update_memory(index, hidden, layer, layout)

    def _run_chunk(self, state: MemoryState, text_ids, text_len, closing, cache=None):
        """Runs one chunk of every stream through all layers.

        Returns the final-norm hidden states at the text positions (B, n, d), the layers' new memories, and the
        layout (see ``start_chunk`` for the arguments).
        """
        inputs = self.start_chunk(text_ids, text_len, closing, state.layers[0].row_valid())
        hidden, new_layers = inputs.hidden, []
        for index, layer in enumerate(state.layers):
            hidden, layer = self.layer_step(index, hidden, layer, inputs, cache)
            new_layers.append(layer)
        return self.end_chunk(hidden, inputs), new_layers, inputs.layout

    @staticmethod
    def _advance(state: MemoryState, layers, closing: torch.Tensor) -> MemoryState:
        return MemoryState(
            config=state.config,
            layers=tuple(layers),
            pending=state.pending,
            pending_len=state.pending_len,
            chunks_closed=state.chunks_closed + closing.long(),
        )

    # ----------------------------------------------------------------------------------------------------------
    # Training / scoring

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        chunk_sizes: torch.Tensor | None = None,
        return_logits: bool | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
    ) -> CausalLMOutput:
        """Reads every chunk of a batch with gradients through the memories.

        ``loss`` is next-token cross entropy over text positions (``labels`` as in Hugging Face: aligned with
        ``input_ids``, -100 to ignore; the last token of chunk t predicts the first of chunk t+1), computed chunk
        by chunk so logits for the whole sequence are never held at once unless ``logits`` are asked for
        (the default when no labels are given). ``num_items_in_batch`` (from Trainer's gradient accumulation)
        replaces the number of targets as the denominator.

        ``chunk_sizes`` (B, T) optionally gives each stream its own chunk plan (training augmentation): sizes
        1..C that sum to the stream's length, then zeros. By default every stream is cut into fixed chunks of C
        from its start, exactly as ``ingest`` and ``generate`` cut it.
        """
        chunked = self.split_chunks(input_ids, attention_mask, labels, chunk_sizes)
        batch = chunked.batch
        if return_logits is None:
            return_logits = labels is None
        state = self.init_memory(chunked.batch_size)
        total_loss = batch.ids.new_zeros((), dtype=torch.float32)
        logits = None
        width = batch.ids.shape[1]
        for chunk in chunked.chunks:
            text_hidden, layers, _ = self._run_chunk(state, chunk.text_ids, chunk.text_len, chunk.closing)
            state = self._advance(state, layers, chunk.closing)
            if return_logits:
                chunk_logits = self.backbone.logits(text_hidden)  # (B, n, V)
                if logits is None:
                    logits = chunk_logits.new_zeros(batch.ids.shape[0], width + 1, chunk_logits.shape[-1])
                logits = logits.scatter(1, chunk.index[..., None].expand_as(chunk_logits), chunk_logits)
                if chunk.targets is not None:
                    total_loss = total_loss + _summed_cross_entropy(chunk_logits, chunk.targets)
            elif chunk.targets is not None:
                total_loss = total_loss + self.chunk_loss(text_hidden, chunk)
        loss = None
        if labels is not None:
            count = num_items_in_batch if num_items_in_batch is not None else chunked.num_targets.clamp(min=1)
            loss = total_loss / count
        return CausalLMOutput(loss=loss, logits=batch.restore(logits[:, :width]) if return_logits else None)

    def split_chunks(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        chunk_sizes: torch.Tensor | None = None,
    ) -> ChunkedBatch:
        """Checks a batch and cuts it into the chunks ``forward`` reads (arguments as in ``forward``).

        Chunk ``t`` holds chunk ``t`` of every stream's plan, so streams of different lengths advance together;
        a stream that has ended has no tokens in the later chunks.
        """
        batch = self._batch(input_ids, attention_mask)
        plan = self._chunk_plan(batch, chunk_sizes)
        targets = None
        if labels is not None:
            if not isinstance(labels, torch.Tensor) or labels.shape != input_ids.shape:
                raise ValueError(f"labels must have the shape of input_ids {tuple(input_ids.shape)}")
            labels = labels.long().to(batch.ids.device)
            if batch.order is not None:
                labels = torch.gather(labels, 1, batch.order)
            positions = torch.arange(labels.shape[1], device=labels.device)[None]
            labels = labels.masked_fill(positions >= batch.lengths[:, None], -100)
            targets = F.pad(labels[:, 1:], (0, 1), value=-100)  # target of position i is labels[i + 1]
            num_targets = (targets != -100).sum()
        else:
            num_targets = batch.lengths.new_zeros(())
        chunks = []
        offset = torch.zeros_like(batch.lengths)
        width = batch.ids.shape[1]
        for text_len in plan.unbind(dim=1):
            n = int(text_len.max())
            index = offset[:, None] + torch.arange(n, device=offset.device)[None]  # (B, n) positions of this chunk
            real = torch.arange(n, device=offset.device)[None] < text_len[:, None]
            index = torch.where(real, index, width)  # padding reads and writes a spare column
            text_ids = torch.gather(F.pad(batch.ids, (0, 1)), 1, index)
            offset = offset + text_len
            closing = (text_len > 0) & (offset < batch.lengths)  # only chunks that more text follows need memory
            chunk_targets = None
            if targets is not None:
                chunk_targets = torch.gather(F.pad(targets, (0, 1), value=-100), 1, index)
            chunks.append(Chunk(text_ids, text_len, closing, index, chunk_targets))
        return ChunkedBatch(batch, tuple(chunks), num_targets)

    def _chunk_plan(self, batch: Batch, chunk_sizes: torch.Tensor | None) -> torch.Tensor:
        """(B, T) text tokens per stream per chunk; checks a given plan against the batch and C."""
        c = self.comet_config.chunk_size
        if chunk_sizes is None:
            starts = torch.arange(0, batch.ids.shape[1], c, device=batch.lengths.device)
            return (batch.lengths[:, None] - starts[None]).clamp(0, c)
        if not isinstance(chunk_sizes, torch.Tensor) or chunk_sizes.dim() != 2 or chunk_sizes.shape[0] != batch.ids.shape[0]:
            got = tuple(chunk_sizes.shape) if isinstance(chunk_sizes, torch.Tensor) else type(chunk_sizes).__name__
            raise ValueError(f"chunk_sizes must be a (batch, chunks) tensor with one row per input (got {got})")
        plan = chunk_sizes.long().to(batch.lengths.device)
        if bool(((plan < 0) | (plan > c)).any()):
            raise ValueError(f"chunk_sizes must lie in 0..chunk_size={c} (got {plan.min().item()}..{plan.max().item()})")
        if not torch.equal(plan.sum(dim=1), batch.lengths):
            raise ValueError(f"chunk_sizes rows must sum to the input lengths {batch.lengths.tolist()} (got {plan.sum(1).tolist()})")
        if bool(((plan[:, :-1] == 0) & (plan[:, 1:] > 0)).any()):
            raise ValueError("chunk_sizes has an empty chunk before a non-empty one; put the zeros at the end")
        return plan

    # ----------------------------------------------------------------------------------------------------------
    # Streaming

    def ingest(
        self,
        input_ids: torch.Tensor,
        state: MemoryState | None = None,
        attention_mask: torch.Tensor | None = None,
        progress: bool = False,
        requires_grad: bool = False,
    ) -> MemoryState:
        """Reads more text into a memory state and returns the new state (the old one is not changed).

        Tokens join the open chunk; every chunk that is full and followed by more text is closed (run through
        the layers, memories updated, activations dropped). The open chunk keeps 1..C tokens, so reading a
        text in any pieces gives the same state as reading it whole. Runs without gradients unless
        ``requires_grad`` (a long stream with gradients keeps every chunk's activations). A row of
        ``attention_mask`` may be all zeros: that stream reads nothing this time.
        """
        batch = self._batch(input_ids, attention_mask, allow_empty_rows=True)
        state = state if state is not None else self.init_memory(batch.ids.shape[0])
        self.check_memory(state, batch.ids.shape[0])
        with torch.set_grad_enabled(requires_grad and torch.is_grad_enabled()):
            return self._ingest(batch, state, progress)

    def _ingest(self, batch: Batch, state: MemoryState, progress: bool) -> MemoryState:
        c = self.comet_config.chunk_size
        # Append each stream's new tokens right after its open chunk; padding goes to a spare last column.
        total = state.pending_len + batch.lengths
        width = int(total.max())
        if width == 0:
            return state
        pending = batch.ids.new_zeros(batch.ids.shape[0], width + 1)
        pending[:, : state.pending.shape[1]] = state.pending
        cols = torch.arange(batch.ids.shape[1], device=pending.device)[None]
        real = cols < batch.lengths[:, None]
        pending.scatter_(1, torch.where(real, cols + state.pending_len[:, None], width), batch.ids)
        pending = pending[:, :width]

        offset = torch.zeros_like(total)
        n_close = int(((total - 1).clamp(min=0) // c).max())
        steps = range(n_close)
        if progress and n_close > 1:
            steps = tqdm(steps, desc="reading", unit="chunk", total=n_close, dynamic_ncols=True)
        for _ in steps:
            closing = total - offset > c
            index = (offset[:, None] + torch.arange(c, device=pending.device)[None]).clamp(max=width - 1)
            text_ids = torch.gather(pending, 1, index)
            if bool(closing.all()):
                _, layers, _ = self._run_chunk(state, text_ids, torch.full_like(total, c), closing)
            else:  # only the streams that close a chunk now are run: the others would be padding
                rows = closing.nonzero().squeeze(1)
                some = state.select(rows)
                _, closed, _ = self._run_chunk(some, text_ids[rows], torch.full_like(rows, c), closing[rows])
                layers = [layer.scatter(rows, new) for layer, new in zip(state.layers, closed)]
            state = self._advance(state, layers, closing)
            offset = offset + c * closing.long()
            release_free_memory()
        left = total - offset
        keep = int(left.max())
        index = (offset[:, None] + torch.arange(keep, device=pending.device)[None]).clamp(max=width - 1)
        rest = torch.gather(pending, 1, index).masked_fill(torch.arange(keep, device=pending.device)[None] >= left[:, None], 0)
        return MemoryState(state.config, state.layers, rest, left, state.chunks_closed)

    def close_open_chunk(self, state: MemoryState) -> MemoryState:
        """Closes every stream's open chunk now, even if it is not full (trailing beacon, readouts, memory
        update), so the next text starts a fresh chunk.

        Reading ``text[:r]``, closing, then reading the rest is the right-aligned layout: choose ``r`` so that
        the final open chunk holds the prompt's tail (for example a question) with room left for the answer,
        and no chunk boundary falls between a question and its answer (METHOD.md section 4).
        """
        self.check_memory(state)
        closing = state.pending_len > 0
        if not bool(closing.any()):
            return state
        with torch.no_grad():
            _, layers, _ = self._run_chunk(state, state.pending, state.pending_len, closing)
        state = self._advance(state, layers, closing)
        empty = state.pending[:, :0]
        return MemoryState(state.config, state.layers, empty, torch.zeros_like(state.pending_len), state.chunks_closed)

    def check_memory(self, state: MemoryState, batch_size: int | None = None) -> None:
        if not isinstance(state, MemoryState):
            raise TypeError(f"memory must be a MemoryState (got {type(state).__name__})")
        if state.config != self.comet_config:
            raise ValueError(f"memory state was made with {state.config}, but this model uses {self.comet_config}")
        state.check(self.backbone.num_layers, self.backbone.hidden_size)
        if batch_size is not None and state.batch_size != batch_size:
            raise ValueError(f"memory state holds {state.batch_size} streams but the input has {batch_size} rows")

    # ----------------------------------------------------------------------------------------------------------
    # Generation (see generation.py)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, memory: MemoryState | None = None, **kwargs):
        """Generates after ``input_ids`` (read on top of ``memory`` if given); see ``cometlm.generation``."""
        from .generation import generate

        return generate(self, input_ids, memory=memory, **kwargs)

    # ----------------------------------------------------------------------------------------------------------
    # Saving and loading

    def comet_state_dict(self) -> dict[str, torch.Tensor]:
        """CoMeT's own parameters (what an adapter ships), keyed as in ``self.memory``."""
        return {k: v.detach().contiguous() for k, v in self.memory.state_dict().items()}

    def save_pretrained(self, directory: str | os.PathLike, adapter: bool = False) -> None:
        """Writes the model atomically: a full model (backbone + CoMeT) or an adapter (CoMeT weights only,
        plus the name and fingerprint of the base model it needs). LoRA on the backbone (``apply_lora``) goes
        to its own ``lora.safetensors`` either way, and a full model's backbone is saved without it, as the
        plain model it wraps, so that ``from_pretrained`` rebuilds exactly this model."""
        from .training.lora import has_lora, save_lora

        directory = Path(directory)
        if adapter and not self.base_model:
            raise ValueError(
                "cannot save an adapter: the base model has no name or path to record; wrap a model loaded from "
                "a directory or the bundled name, or save the full model"
            )
        meta = {
            "format": SAVE_FORMAT,
            "kind": "adapter" if adapter else "full",
            "comet": self.comet_config.to_dict(),
            "base_model": self.base_model,
            "base": self.backbone.describe(),
        }
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            save_file(self.comet_state_dict(), tmp / WEIGHTS_FILE, metadata={"format": SAVE_FORMAT})
            lora = has_lora(self)
            if lora:
                save_lora(self, tmp / LORA_FILE)
            if not adapter:
                # peft wraps each LoRA target as `<name>.base_layer`: its weights go back under their own names.
                plain = None if not lora else {
                    k.replace(".base_layer.", "."): v for k, v in self.backbone_model.state_dict().items()
                    if ".lora_" not in k
                }
                self.backbone_model.save_pretrained(tmp / BACKBONE_DIR, state_dict=plain)
                if self.tokenizer is not None:
                    self.tokenizer.save_pretrained(tmp / BACKBONE_DIR)
            (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
            if directory.exists():
                old = directory.with_name(f".{directory.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                directory.rename(old)
                tmp.rename(directory)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(directory)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, base_model=None, dtype=torch.float32):
        """Loads what ``save_pretrained`` wrote: a directory, or the name of an adapter shipped in the package
        (``bundled.shipped_adapters()``, e.g. ``"smollm2-135m-passkey"``). An adapter loads onto ``base_model`` (a
        model, a directory or the bundled name; default: the base it recorded) and refuses a base with different
        weights."""
        from .bundled import resolve_comet_path

        directory = resolve_comet_path(directory)
        config_path = directory / CONFIG_FILE
        if not config_path.is_file():
            raise FileNotFoundError(f"{directory} is not a saved CoMeT model (no {CONFIG_FILE})")
        meta = json.loads(config_path.read_text())
        if meta.get("format") != SAVE_FORMAT:
            raise ValueError(f"{config_path} has format {meta.get('format')!r}, expected {SAVE_FORMAT!r}")
        config = CometConfig.from_dict(meta["comet"])
        if meta["kind"] == "full":
            model = cls.from_backbone(str(directory / BACKBONE_DIR), config, dtype=dtype)
            model.base_model = meta.get("base_model")
        else:
            base = base_model if base_model is not None else meta.get("base_model")
            model = cls.from_backbone(base, config, dtype=dtype)
            got, want = model.backbone.describe(), meta["base"]
            if not same_base(got, want):
                raise ValueError(
                    f"the adapter in {directory} was trained on base model {meta.get('base_model')!r} {want}, "
                    f"but the given base is {got}; load it onto the base it was trained on"
                )
        weights = load_file(directory / WEIGHTS_FILE, device=str(model.backbone.device))
        missing, unexpected = model.memory.load_state_dict(weights, strict=False)
        if missing or unexpected:
            raise ValueError(f"{directory / WEIGHTS_FILE} does not fit this CoMeT config: missing {missing}, unexpected {unexpected}")
        if (directory / LORA_FILE).is_file():  # an adapter trained with LoRA on the backbone
            from .training.lora import load_lora

            load_lora(model, directory / LORA_FILE)
        return model
