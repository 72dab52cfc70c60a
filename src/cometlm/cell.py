"""One chunk through every layer with its memories: the per-chunk step that everything else loops over.

``MemoryCell`` is the line the recurrent-memory codebases draw between one segment and the loop over segments
(RMT's ``MemoryCell`` / ``RecurrentWrapper``). It lays out chunk ``t`` of every stream (``ChunkLayout``), puts
each layer's memory rows in front of the stream rows, runs the backbone's own decoder layer, and updates that
layer's memories from the outputs at the beacon and readout rows (METHOD.md sections 1-2). Forward, streaming,
generation, the evaluation readers and the parallel schedule all call ``MemoryCell.run`` (or its three parts,
``start`` / ``layer`` / ``end``, when a schedule interleaves layers and chunks), so they compute the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .backbone import Backbone, LayerInputs
from .config import CometConfig
from .hardware import cpu_has_amx
from .layout import ChunkLayout
from .memory import CometMemory, update_global_memories, update_temporary_memories
from .state import LayerState, MemoryState


@dataclass(frozen=True)
class ChunkInputs:
    """What every layer needs to run one chunk: its layout, and the rotary embeddings and attention masks of each
    layer type (``LayerInputs``); ``hidden`` (B, L, d) holds the stream rows' inputs to layer 0 (text embeddings,
    beacons, readouts).

    Two forms of the same computation. In the ``prefix`` form (training), each layer's memory rows are keys and
    values only, computed apart (``Backbone.key_values`` at ``memory_inputs``' positions) and put before the stream
    rows' own keys (``Backbone.run_layer``'s ``prefix``); ``layer_inputs`` are the stream rows' (their mask has the
    memory rows' keys first). Otherwise every layer runs one sequence of sink, memory rows and stream rows, and
    ``layer_inputs`` are that sequence's (``MemoryCell.start`` says which form runs where and why).
    """

    layout: ChunkLayout
    hidden: torch.Tensor
    layer_inputs: LayerInputs
    prefix: bool = False
    memory_inputs: LayerInputs | None = None


@dataclass(frozen=True)
class ChunkOutput:
    """``text_hidden`` (B, n, d): final-norm hidden states at the text positions (apply the LM head for logits);
    ``state``: the memory state after the chunk (the streams that closed it have new memories and one more closed
    chunk; the open-chunk fields are the input state's); ``layout``: where each row sat; ``beacons`` (with
    ``keep_beacons``): per layer, that layer's outputs at the chunk's beacon slots (B, nb, d), which is what closing
    the chunk later needs besides the readouts (generation closes a full open chunk from its KV cache)."""

    text_hidden: torch.Tensor
    state: MemoryState
    layout: ChunkLayout
    beacons: tuple[torch.Tensor, ...] | None = None


def row_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross entropy in fp32 of logits (B, n, V) against targets (B, n), -100 ignored, summed per row: (B,)."""
    per_token = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="none")
    return per_token.view(targets.shape).sum(dim=1)


class MemoryCell:
    """The per-chunk step over a backbone and CoMeT's memory modules (which stay owned by the model).

    ``checkpointing``: recompute each (layer, chunk) step and each chunk's logits in the backward pass instead of
    storing their activations (only when gradients are on and no KV cache is kept).
    """

    def __init__(self, backbone: Backbone, memory: CometMemory, config: CometConfig, checkpointing: bool = False):
        self.backbone, self.memory, self.config, self.checkpointing = backbone, memory, config, checkpointing

    def run(self, state: MemoryState, text_ids, text_len, closing, cache=None, keep_beacons: bool = False) -> ChunkOutput:
        """Runs one chunk of every stream through all layers (arguments as in ``start``). The layers' memory
        updates run together after the last layer (``update_memories``), the same update ``layer`` makes per
        layer."""
        prefix = None if cache is None else False  # a KV cache must hold the memory rows' keys and values too
        inputs = self.start(text_ids, text_len, closing, state.layers[0].row_valid(), prefix=prefix)
        layout = inputs.layout
        closes = bool(closing.any())
        readouts, beacons = [], []
        for outputs, shift in self._layer_outputs(state, inputs, cache):
            if closes or keep_beacons:
                beacons.append(outputs[:, layout.beacon_slot + shift])
            if closes:
                readouts.append(outputs[:, layout.readout_slot + shift])
        layers = state.layers
        if closes:
            layers = self.update_memories(range(len(layers)), layers, torch.stack(readouts), torch.stack(beacons),
                                          layout.beacon_valid, closing)
        after = MemoryState(
            state.config, tuple(layers), state.pending, state.pending_len, state.chunks_closed + closing.long()
        )
        text_hidden = self.backbone.final_norm(outputs[:, layout.text_slot + shift])  # ``end`` of the last layer
        return ChunkOutput(text_hidden, after, layout, tuple(beacons) if keep_beacons else None)

    def _layer_outputs(self, state: MemoryState, inputs: ChunkInputs, cache=None):
        """Yields every layer's outputs in turn as ``(outputs, shift)``: the output at stream slot ``j`` (any slot
        but the sink's) is ``outputs[:, j + shift]``.

        In the prefix form, or with gradients on, each layer's step is its own (checkpointed) function, as ``layer``
        runs it, and the outputs are the stream rows alone (shift 0). With gradients off, one sequence of all the rows goes from
        layer to layer (shift: the memory rows ahead of the stream rows) and each layer's memory rows are written
        over the previous layer's outputs there, which nothing reads: no layer copies the chunk's rows into a new
        input and out of its output (two copies of about 160 rows a layer)."""
        hidden = inputs.hidden
        if inputs.prefix or torch.is_grad_enabled():
            for index, layer in enumerate(state.layers):
                hidden = self._rows(index, hidden, layer, inputs, cache)
                yield hidden, 0
            return
        layout = inputs.layout
        k, m = layout.n_sink, layout.num_memory_rows
        sequence = None
        for index, layer in enumerate(state.layers):
            rows = layer.rows()[:, layout.memory_index]
            if sequence is None:
                sequence = torch.cat([hidden[:, :k], rows, hidden[:, k:]], dim=1)
            else:
                sequence[:, k : k + m] = rows
            sequence = self._run_sequence(index, sequence, layout, inputs.layer_inputs, cache)
            yield sequence, m

    def start(self, text_ids, text_len, closing, memory_valid: torch.Tensor, prefix: bool | None = None
              ) -> ChunkInputs:
        """Lays out one chunk of every stream and embeds its stream rows (the input of layer 0).

        text_ids (B, n) left-aligned, text_len (B,) real tokens per stream, closing (B,) which streams close this
        chunk, memory_valid (B, M+K) which memory rows exist before it (``LayerState.row_valid`` of any layer).

        ``prefix``: whether the memory rows run as a prefix of keys and values (``ChunkInputs``); by default when
        gradients are on. Training a bfloat16 backbone (4 samples of 1,024 tokens, forward and backward) then takes
        about 0.93x the time of the sequence with its memory rows cut out of the row-wise modules (fewer copies
        forward and backward); reading without gradients does not gain (float32 the same, bfloat16 1.1x slower: the
        separate key-value run of a layer's few memory rows costs what it saves; docs/EXPERIMENTS.md, session 33).
        """
        if prefix is None:
            prefix = torch.is_grad_enabled()
        layout = ChunkLayout.build(self.config, text_len, text_ids.shape[1], closing, memory_valid)
        hidden = self._stream_inputs(layout, text_ids)
        backbone = self.backbone
        if not prefix or layout.num_memory_rows == 0:  # no memory rows: the sequence is the stream rows
            return ChunkInputs(layout, hidden, backbone.layer_inputs(hidden, layout.position_ids, layout.mask), prefix)
        memory, stream = layout.memory_rows, layout.stream_rows()
        positions = layout.position_ids
        keys = torch.cat([positions[:, memory], positions[:, stream]], dim=1)
        return ChunkInputs(layout, hidden,
                           backbone.layer_inputs(hidden, positions[:, stream], layout.prefix_mask(), keys), True,
                           backbone.layer_inputs(hidden, positions[:, memory], None))

    def layer(self, index: int, hidden, layer: LayerState, inputs: ChunkInputs, cache=None):
        """(layer ``index``, one chunk): the layer's memory rows in front of the stream rows, the backbone's
        decoder layer, then the memory update. Returns the stream rows' outputs and the layer's new memories.
        """
        hidden = self._rows(index, hidden, layer, inputs, cache)
        layout = inputs.layout
        if not bool(layout.closing.any()):
            return hidden, layer
        readouts, beacons = hidden[:, layout.readout_slot], hidden[:, layout.beacon_slot]
        return hidden, self.update_memory(index, layer, readouts, beacons, layout.beacon_valid, layout.closing)

    def _rows(self, index: int, hidden, layer: LayerState, inputs: ChunkInputs, cache=None) -> torch.Tensor:
        """The stream rows' outputs of layer ``index`` (checkpointed when training asks for it)."""
        step = (index, hidden, layer, inputs.layout, inputs, cache)
        if self.checkpointing and torch.is_grad_enabled() and cache is None:
            return checkpoint(self._layer, *step, use_reentrant=False)
        return self._layer(*step)

    def end(self, hidden: torch.Tensor, inputs: ChunkInputs) -> torch.Tensor:
        """The final-norm hidden states at the text positions (B, n, d), from the last layer's outputs."""
        return self.backbone.final_norm(hidden[:, inputs.layout.text_slot])

    def loss(self, text_hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Next-token cross entropy (fp32) over a chunk's targets (B, n), -100 ignored, summed per row: (B,). With
        checkpointing the logits are recomputed in the backward pass, so a long sample keeps no (n, vocab) tensor
        per chunk."""
        if self.checkpointing and torch.is_grad_enabled():
            return checkpoint(self._loss, text_hidden, targets, use_reentrant=False)
        return self._loss(text_hidden, targets)

    def _loss(self, text_hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # Logits only where a target counts: a retrieval sample's loss is on its few answer tokens, and the LM head
        # (vocabulary x hidden) is about a fifth of a small backbone's work per row.
        keep = targets != -100
        rows = keep.nonzero()[:, 0]
        per_token = F.cross_entropy(self.backbone.logits(text_hidden[keep]).float(), targets[keep], reduction="none")
        return per_token.new_zeros(targets.shape[0]).index_add(0, rows, per_token)

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
                parts.append(param[None].to(parts[0].dtype).expand(batch, -1, -1))
                first[kind] = offset
                offset += param.shape[0]
        index = layout.stream_token.clone()
        for kind, start in first.items():
            index = torch.where(layout.stream_kind == kind, start + layout.stream_token, index)
        return torch.cat(parts, dim=1)[:, index]

    def _layer(self, index, hidden, layer: LayerState, layout, inputs: ChunkInputs, cache=None):
        rows = layer.rows()[:, layout.memory_index]
        if inputs.prefix:
            if hidden.shape[1] == 0:  # no stream rows (every stream has ended): no query, nothing to compute
                return hidden
            prefix = None if inputs.memory_inputs is None else self.backbone.key_values(index, rows,
                                                                                         inputs.memory_inputs)
            return self.backbone.run_layer(index, hidden, inputs.layer_inputs, prefix=prefix)
        layer_inputs = inputs.layer_inputs
        k, m = layout.n_sink, rows.shape[1]
        x = torch.cat([hidden[:, :k], rows, hidden[:, k:]], dim=1)  # (B, m + L, d)
        out = self._run_sequence(index, x, layout, layer_inputs, cache)
        return torch.cat([out[:, :k], out[:, k + m :]], dim=1)

    def _run_sequence(self, index, x, layout: ChunkLayout, layer_inputs: LayerInputs, cache=None) -> torch.Tensor:
        """Decoder layer ``index`` on a chunk's whole sequence x (B, m + L, d): sink, memory rows, stream rows."""
        if x.shape[1] == 0:  # a chunk no stream has text in (padding), before any memory exists: nothing to run
            return x
        cut = layout.memory_rows if self.cuts_memory_rows(x) else None
        return self.backbone.run_layer(index, x, layer_inputs, cache, key_rows=cut)

    @staticmethod
    def cuts_memory_rows(hidden: torch.Tensor) -> bool:
        """Whether a layer of the sequence form (``ChunkInputs``) runs its row-wise modules without the memory rows
        (``Backbone.run_layer``'s ``key_rows``): in float32, whenever gradients flow, and in bfloat16 or float16
        unless the CPU has AMX. With AMX a matrix product of 161 rows costs what one of 193 costs (reading the
        weights dominates) and the cuts cost more than they save (a Xeon, 2,048 tokens, one thread: 2.41 s with the cuts, 2.36 s without); without AMX bfloat16
        products are compute-bound and the cuts pay as in float32 (an AMD EPYC with AVX512-BF16: 4.51 s against
        4.84 s; ``docs/experiments/reading-overhead/row_skipping_dtype.py``)."""
        if hidden.dtype == torch.float32 or torch.is_grad_enabled():
            return True
        return hidden.device.type == "cpu" and not cpu_has_amx()  # on a GPU not measured: as before, no cuts

    def update_memory(self, index: int, layer: LayerState, readouts, beacons, beacon_valid, closing) -> LayerState:
        """METHOD.md section 2 for layer ``index`` after a chunk has passed it: the global memory from the layer's
        outputs at the readouts (B, M, d), the temporary memory from its outputs at the beacons (B, nb, d) that are
        valid (B, nb); only the ``closing`` (B,) streams change."""
        stack = lambda x: None if x is None else x[None]  # noqa: E731
        return self.update_memories([index], [layer], stack(readouts), stack(beacons), beacon_valid, closing)[0]

    def update_memories(self, indices, layers, readouts, beacons, beacon_valid, closing) -> list[LayerState]:
        """``update_memory`` of several layers at once (``indices``, their states ``layers``), from their outputs
        at the readouts (L, B, M, d) and the beacons (L, B, nb, d): one batch of small operations per chunk
        instead of one per layer."""
        modules = [self.memory.layers[i] for i in indices]
        g = torch.stack([layer.global_memory for layer in layers])
        s = torch.stack([layer.global_state for layer in layers])
        t = torch.stack([layer.temp for layer in layers])
        has_global, t_valid = layers[0].has_global, layers[0].temp_valid  # the same for every layer
        if modules[0].global_memory is not None:
            g, s = update_global_memories([m.global_memory for m in modules], readouts, s, has_global, closing)
            has_global = has_global | closing
        if modules[0].temporary_memory is not None:
            t, t_valid = update_temporary_memories([m.temporary_memory for m in modules], beacons,
                                                   beacon_valid & closing[:, None], t, t_valid)
        return [LayerState(g[i], s[i], has_global, t[i], t_valid) for i in range(len(layers))]
