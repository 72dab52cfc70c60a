"""CometForCausalLM: a pre-trained decoder LLM that reads text chunk by chunk through a fixed-size dual memory.

Data flows one way: token ids -> checked batch and chunks (``inputs``) -> ``MemoryCell.run`` for each chunk, the
backbone's own decoder layers with each layer's memory rows in front (``cell``) -> logits and the next
``MemoryState``. This file is the loop over chunks and the Hugging Face-style surface around it (construction,
``forward``, ``ingest``, ``generate``, saving); nothing here copies backbone code.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutput

from . import saving
from .backbone import Backbone
from .cell import ChunkOutput, MemoryCell, row_cross_entropy
from .config import CometConfig
from .inputs import Batch, Chunk, ChunkedBatch, check_batch, chunk_plan, split_chunks
from .memory import CometMemory
from .progress import progress_bar
from .runtime import PeriodicTrim
from .state import MemoryState


@dataclass
class CometCausalLMOutput(CausalLMOutput):
    """``CausalLMOutput`` and ``row_losses`` (B,): each row's next-token cross entropy summed over its targets
    (detached; ``loss`` is their sum over the denominator), so a caller can tell the rows of a mixed batch apart."""

    row_losses: torch.FloatTensor | None = None


def mean_loss(row_losses: torch.Tensor, count) -> torch.Tensor:
    """The loss from each row's summed cross entropy (B,): over ``count`` targets (a number: every target weighs
    the same), or each row over its own denominator when ``count`` is a (B,) tensor (e.g. its targets times the
    step's samples: every sample weighs the same, ``TrainConfig.loss_weighting="sample"``)."""
    if isinstance(count, torch.Tensor) and count.dim() == 1:
        return (row_losses / count.to(row_losses.dtype)).sum()
    return row_losses.sum() / count


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
        backbone.prepare_linears()
        text = backbone.config
        eps = getattr(text, "rms_norm_eps", 1e-6)
        with torch.no_grad():
            ids = torch.tensor([_quiet_token_id(text, tokenizer), _sink_token_id(text)], device=backbone.device)
            quiet, sink = backbone.embed(ids)
            spread = backbone.embedding_spread()
        with torch.random.fork_rng(devices=[]):  # the adapters and gates start the same for the same init_seed
            torch.manual_seed(config.init_seed)
            self.memory = CometMemory(config, backbone.num_layers, eps, quiet, sink, spread).to(
                device=backbone.device, dtype=torch.float32)  # CoMeT's own parameters stay float32 (memory.py)
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
    def from_backbone(cls, model_or_path, config: CometConfig | None = None, tokenizer=None, dtype=None):
        """Wraps a loaded ``*ForCausalLM`` model, a local HF model directory, or the bundled model's name.

        The tokenizer (loaded with the model when a name or directory is given) picks the whitespace token that
        the beacon and readouts start from; it is kept as ``model.tokenizer`` for the command line. ``dtype`` is
        the backbone's when it is loaded here (default float32); a loaded model is used as it is (cast it first),
        so a ``dtype`` other than its own is refused.
        """
        config = config or CometConfig()
        if isinstance(model_or_path, (str, os.PathLike)):
            from .bundled import load_backbone

            name = str(model_or_path)
            model, loaded_tokenizer = load_backbone(name, dtype=torch.float32 if dtype is None else dtype)
            return cls(model, config, base_model=name, tokenizer=tokenizer or loaded_tokenizer)
        if isinstance(model_or_path, nn.Module):
            Backbone.of(model_or_path)  # a clear error for unsupported models before anything else
            own = {p.dtype for p in model_or_path.parameters() if p.is_floating_point()}
            if dtype is not None and own != {dtype}:
                raise ValueError(
                    f"dtype={dtype} applies to a backbone loaded here from a name or directory; this loaded model's "
                    f"weights are {', '.join(sorted(str(d) for d in own))}: cast it first (model.to(dtype)) or pass "
                    "its directory"
                )
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
    # The per-chunk step (cell.py) and the chunk loop

    @property
    def cell(self) -> MemoryCell:
        """The per-chunk step over this model's backbone and memories (see ``cometlm.cell``)."""
        return MemoryCell(self.backbone, self.memory, self.comet_config, checkpointing=self.gradient_checkpointing)

    def run_chunk(self, state: MemoryState, text_ids, text_len, closing, cache=None, keep_beacons: bool = False) -> ChunkOutput:
        """One chunk of every stream through all layers (``MemoryCell.run``): the final-norm text hidden states and
        the state after it. Streams with no text in the chunk (``text_len`` 0) are not run and keep their state."""
        idle = text_len == 0
        if not bool(idle.any()) or bool(idle.all()):
            return self.cell.run(state, text_ids, text_len, closing, cache, keep_beacons)
        if cache is not None or keep_beacons:
            raise ValueError("run_chunk keeps a KV cache or beacons only when every stream has text in the chunk")
        rows = (~idle).nonzero().squeeze(1)
        out = self.cell.run(state.select(rows), text_ids[rows], text_len[rows], closing[rows])
        layers = [layer.scatter(rows, new) for layer, new in zip(state.layers, out.state.layers)]
        after = MemoryState(state.config, tuple(layers), state.pending, state.pending_len,
                            state.chunks_closed.index_copy(0, rows, out.state.chunks_closed))
        text_hidden = out.text_hidden.new_zeros(len(text_len), *out.text_hidden.shape[1:])
        return ChunkOutput(text_hidden.index_copy(0, rows, out.text_hidden), after, out.layout)

    def read_chunks(self, chunks: Iterable[Chunk], state: MemoryState) -> Iterator[tuple[Chunk, ChunkOutput]]:
        """The loop over chunks: runs each chunk (an ``inputs.Chunk``; only its text, lengths and closing flags are
        read) on the state the one before it left, and yields it with its output. ``forward``, ``ingest`` and the
        evaluation readers all iterate this; ``chunks`` may be a generator that cuts each chunk when it is needed."""
        for chunk in chunks:
            out = self.run_chunk(state, chunk.text_ids, chunk.text_len, chunk.closing)
            state = out.state
            yield chunk, out

    def check_batch(self, input_ids, attention_mask=None, allow_empty_rows: bool = False) -> Batch:
        """Checks token ids (and a padding mask) against this model's vocabulary; see ``inputs.check_batch``."""
        backbone = self.backbone
        return check_batch(input_ids, attention_mask, backbone.vocab_size, backbone.device, allow_empty_rows)

    # Kept for the parallel schedule and other code that interleaves layers and chunks (see ``MemoryCell``).

    def start_chunk(self, text_ids, text_len, closing, memory_valid: torch.Tensor):
        return self.cell.start(text_ids, text_len, closing, memory_valid)

    def layer_step(self, index: int, hidden, layer, inputs, cache=None):
        return self.cell.layer(index, hidden, layer, inputs, cache)

    def end_chunk(self, hidden: torch.Tensor, inputs) -> torch.Tensor:
        return self.cell.end(hidden, inputs)

    def chunk_loss(self, text_hidden: torch.Tensor, chunk) -> torch.Tensor:
        """Next-token cross entropy (fp32) over ``chunk.targets`` summed per row (``MemoryCell.loss``): (B,)."""
        return self.cell.loss(text_hidden, chunk.targets)

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
    ) -> CometCausalLMOutput:
        """Reads every chunk of a batch with gradients through the memories.

        ``loss`` is next-token cross entropy over text positions (``labels`` as in Hugging Face: aligned with
        ``input_ids``, -100 to ignore; the last token of chunk t predicts the first of chunk t+1), computed chunk
        by chunk so logits for the whole sequence are never held at once unless ``logits`` are asked for
        (the default when no labels are given). ``num_items_in_batch`` (from Trainer's gradient accumulation)
        replaces the number of targets as the denominator; a (B,) tensor gives each row its own (``mean_loss``).

        ``chunk_sizes`` (B, T) optionally gives each stream its own chunk plan (training augmentation): sizes
        1..C that sum to the stream's length, then zeros. By default every stream is cut into fixed chunks of C
        from its start, exactly as ``ingest`` and ``generate`` cut it.

        With labels, ``row_losses`` (B,) holds each row's summed cross entropy (its own targets' nats).
        """
        chunked = self.split_chunks(input_ids, attention_mask, labels, chunk_sizes)
        batch = chunked.batch
        if return_logits is None:
            return_logits = labels is None
        state = self.init_memory(chunked.batch_size)
        row_losses = batch.ids.new_zeros(chunked.batch_size, dtype=torch.float32)
        logits = None
        width = batch.ids.shape[1]
        cell = self.cell
        for chunk, out in self.read_chunks(chunked.chunks, state):
            text_hidden = out.text_hidden
            if return_logits:
                chunk_logits = self.backbone.logits(text_hidden)  # (B, n, V)
                if logits is None:
                    logits = chunk_logits.new_zeros(batch.ids.shape[0], width + 1, chunk_logits.shape[-1])
                # written in place by index: a scatter, in place or not, copies the whole (B, N, V) tensor once per
                # chunk on a CPU, which made a 2,048-token forward with logits 3x as slow as one without
                # (docs/EXPERIMENTS.md, session 32). Padding rows all write the spare last column.
                rows = torch.arange(chunk.index.shape[0], device=chunk.index.device)[:, None].expand_as(chunk.index)
                logits.index_put_((rows, chunk.index), chunk_logits)
                if chunk.targets is not None:
                    row_losses = row_losses + row_cross_entropy(chunk_logits, chunk.targets)
            elif chunk.targets is not None:
                row_losses = row_losses + cell.loss(text_hidden, chunk.targets)
        loss = None
        if labels is not None:
            count = num_items_in_batch if num_items_in_batch is not None else chunked.num_targets.clamp(min=1)
            loss = mean_loss(row_losses, count)
        return CometCausalLMOutput(loss=loss, logits=batch.restore(logits[:, :width]) if return_logits else None,
                                   row_losses=row_losses.detach() if labels is not None else None)

    def split_chunks(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        chunk_sizes: torch.Tensor | None = None,
    ) -> ChunkedBatch:
        """Checks a batch and cuts it into the chunks ``forward`` reads (arguments as in ``forward``)."""
        batch = self.check_batch(input_ids, attention_mask)
        return split_chunks(batch, chunk_plan(batch, self.comet_config.chunk_size, chunk_sizes), labels)

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
        batch = self.check_batch(input_ids, attention_mask, allow_empty_rows=True)
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

        closes = (total - 1).clamp(min=0) // c  # every full chunk that more text follows is closed
        n_close = int(closes.max())

        def full_chunks():
            offset = torch.zeros_like(total)
            for _ in range(n_close):
                closing = total - offset > c
                index = (offset[:, None] + torch.arange(c, device=pending.device)[None]).clamp(max=width - 1)
                # A stream that closes no chunk now has no text in this one (run_chunk skips it).
                yield Chunk(torch.gather(pending, 1, index), c * closing.long(), closing, index, None)
                offset = offset + c * closing.long()

        chunks, trim = self.read_chunks(full_chunks(), state), PeriodicTrim()
        for _, out in progress_bar(chunks, total=n_close, desc="reading", unit="chunk", enabled=progress and n_close > 1):
            state = out.state
            trim()
        offset = c * closes
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
            state = self.run_chunk(state, state.pending, state.pending_len * closing.long(), closing).state
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
        rows, backbone = state.layers[0].global_memory.dtype, self.backbone
        if rows != backbone.dtype:
            raise ValueError(f"memory state holds {rows} rows but the model runs in {backbone.dtype}; read it with a "
                             "model of that dtype (a state keeps the dtype of the model that wrote it)")
        if state.pending.shape[1] != int(state.pending_len.max()):
            raise ValueError(f"memory state's open chunk is {state.pending.shape[1]} ids wide but its longest stream "
                             f"holds {int(state.pending_len.max())}")
        if bool(((state.pending < 0) | (state.pending >= backbone.vocab_size)).any()):
            raise ValueError(f"memory state's open chunk holds token ids outside the vocabulary [0, "
                             f"{backbone.vocab_size})")

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
        plain model it wraps, so that ``from_pretrained`` rebuilds exactly this model (see ``saving.py``). The
        folder is replaced whole: one holding anything but a saved CoMeT model is refused."""
        saving.save(self, directory, adapter)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, base_model=None, dtype=None):
        """Loads what ``save_pretrained`` wrote: a directory, or the name of an adapter shipped in the package
        (``bundled.shipped_adapters()``, e.g. ``"smollm2-135m-passkey"``). An adapter loads onto ``base_model`` (a
        model, a directory or the bundled name; default: the base it recorded) and refuses a base with different
        weights. ``dtype`` is the backbone's when it is loaded here (default float32); a loaded ``base_model`` is
        used as it is, and an adapter with LoRA puts its LoRA into it, so give each such adapter its own copy."""
        from .bundled import resolve_comet_path

        return saving.load(cls, resolve_comet_path(directory), base_model, dtype)
