"""One rank's part of a training step over a pipeline of ``P`` ranks (METHOD.md section 5).

(layer ``l``, chunk ``t``) needs (``l-1``, ``t``) for its hidden input and (``l``, ``t-1``) for its memories.
Rank ``p`` owns a contiguous block of the chunks (``chunk_blocks``) and every rank holds the whole model, so
only memories cross between ranks; hidden states never do.

- wavefront: for each layer, receive the layer's memories from rank ``p-1``, run the own chunks through the
  layer, send the layer's memories to rank ``p+1``. Rank ``p-1`` is already on layer ``l+1`` while rank ``p``
  works on layer ``l``: a forward (or backward) pass takes ``L + P - 1`` block-layer steps instead of ``P * L``.
- naive: rank ``p`` receives all layers' memories at once, after rank ``p-1`` has finished its whole block,
  then runs its chunks through every layer and hands all memories on (the chunk-by-chunk hand-off; a
  comparison mode).

Each rank's loss is the sum of its chunks' token losses divided by the number of targets in the whole batch
(every rank holds the whole batch, so it counts them itself; or per row, ``mean_loss``), plus the zero-valued
message token. Summing the ranks' gradients therefore gives exactly the single-process gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..model import ChunkedBatch, CometForCausalLM, mean_loss
from ..state import LayerState
from .blocks import active_ranks, chunk_blocks
from .messages import Link, message_dtype, pack, packed_size, unpack

SCHEDULES = ("wavefront", "naive")


@dataclass(frozen=True)
class Stage:
    """This process's place in its pipeline: stage ``index`` of ``len(ranks)``, where ``ranks`` lists the global
    ranks of the stages in pipeline order (``ranks[index]`` is this process)."""

    index: int
    ranks: tuple[int, ...]
    group: object = None  # the process group the ranks belong to (None: the default group)

    def __post_init__(self):
        if not 0 <= self.index < len(self.ranks):
            raise ValueError(f"stage index {self.index} is outside a pipeline of {len(self.ranks)} stages")

    @property
    def size(self) -> int:
        return len(self.ranks)


class Pipeline:
    """Runs one rank's share of forward passes with the given schedule; the backward pass of the returned loss
    runs the matching reverse schedule. Call ``wait`` after the backward pass (and before the process exits) so
    that every message this rank sent has been delivered."""

    def __init__(self, stage: Stage, schedule: str = "wavefront"):
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)} (got {schedule!r})")
        self.stage, self.schedule = stage, schedule
        self._links: list[Link] = []

    def loss(self, model: CometForCausalLM, chunked: ChunkedBatch, num_items: int | torch.Tensor | None = None):
        """This rank's part of ``model(...).loss`` for the batch ``chunked`` (from ``model.split_chunks``).

        ``num_items`` replaces the number of targets in ``chunked`` as the denominator (gradient accumulation,
        data parallelism), or gives each row its own as a (B,) tensor (``mean_loss``). The ranks' losses sum to the
        single-process loss, and so do their gradients.
        """
        if any(chunk.targets is None for chunk in chunked.chunks):
            raise ValueError("the pipeline computes a training loss: give labels to split_chunks")
        self.wait()
        p, size = self.stage.index, self.stage.size
        num_chunks = len(chunked.chunks)
        active = active_ranks(num_chunks, size)
        own = [chunked.chunks[t] for t in chunk_blocks(num_chunks, size)[p]]
        prev = self.stage.ranks[p - 1] if 0 < p < active else None
        next_ = self.stage.ranks[p + 1] if p + 1 < active else None
        link = Link(prev, next_, self.stage.group, per_layer=self.schedule == "wavefront",
                    device=chunked.chunks[0].text_ids.device if chunked.chunks else None)
        self._links.append(link)
        run = _wavefront if self.schedule == "wavefront" else _naive
        total = run(model, chunked.batch_size, own, link)
        count = num_items if num_items is not None else chunked.num_targets.clamp(min=1)
        return mean_loss(total, count) + link.token

    def wait(self) -> None:
        for link in self._links:
            link.wait()
        self._links.clear()


def _empty_layers(model: CometForCausalLM, batch_size: int) -> list[LayerState]:
    return list(model.init_memory(batch_size).layers)


def _receive(link: Link, tag: int, like: LayerState, count: int) -> list[LayerState]:
    dtype, device = message_dtype(like), like.global_memory.device
    return unpack(link.receive(tag, packed_size(like, count), dtype, device), like, count)


def _wavefront(model: CometForCausalLM, batch_size: int, chunks, link: Link) -> torch.Tensor:
    """Layer by layer over the own chunks, with one message per layer in each direction."""
    empty = _empty_layers(model, batch_size)
    inputs, hidden = [None] * len(chunks), [None] * len(chunks)
    for index in range(len(empty)):
        layer = _receive(link, index, empty[index], 1)[0] if link.prev is not None else empty[index]
        for i, chunk in enumerate(chunks):
            if index == 0:  # the layout needs to know which memory rows exist, i.e. layer 0's incoming memories
                inputs[i] = model.start_chunk(chunk.text_ids, chunk.text_len, chunk.closing, layer.row_valid())
                hidden[i] = inputs[i].hidden
            hidden[i], layer = model.layer_step(index, hidden[i], layer, inputs[i])
        if link.next is not None:
            link.send(index, pack([layer], message_dtype(empty[index])))
    total = link.token.new_zeros(batch_size, dtype=torch.float32)  # per row
    for chunk, h, x in zip(chunks, hidden, inputs):
        total = total + model.chunk_loss(model.end_chunk(h, x), chunk)
    return total


def _naive(model: CometForCausalLM, batch_size: int, chunks, link: Link) -> torch.Tensor:
    """Chunk by chunk through all layers, as a single process would, after receiving every layer at once."""
    empty = _empty_layers(model, batch_size)
    layers = _receive(link, 0, empty[0], len(empty)) if link.prev is not None else empty
    total = link.token.new_zeros(batch_size, dtype=torch.float32)  # per row
    for chunk in chunks:
        inputs = model.start_chunk(chunk.text_ids, chunk.text_len, chunk.closing, layers[0].row_valid())
        hidden = inputs.hidden
        for index in range(len(layers)):
            hidden, layers[index] = model.layer_step(index, hidden, layers[index], inputs)
        total = total + model.chunk_loss(model.end_chunk(hidden, inputs), chunk)
    if link.next is not None:
        link.send(0, pack(layers, message_dtype(empty[0])))
    return total
