"""Input checking and chunking: token ids in, a checked batch cut into the chunks the model reads.

Every entry point of the model (``forward``, ``ingest``, ``generate``) checks its ids here first, so a bad input
fails with one clear message before any work is done. A batch may hold rows of different lengths (an attention
mask, padding on either side): the ids are moved to the left of each row, so chunk ``t`` of every stream starts at
``t * C``, and ``Batch.restore`` puts per-token results back where the caller had them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Batch:
    """Token ids moved to the left of each row (so chunk t of every stream starts at t*C), and how to undo it."""

    ids: torch.Tensor
    lengths: torch.Tensor
    order: torch.Tensor | None  # gather index used to left-align; None when nothing moved

    @property
    def size(self) -> int:
        return self.ids.shape[0]

    def mask(self) -> torch.Tensor | None:
        """The attention mask of the left-aligned ids, or None when every row is full."""
        if bool((self.lengths == self.ids.shape[1]).all()):
            return None
        return (torch.arange(self.ids.shape[1], device=self.ids.device)[None] < self.lengths[:, None]).long()

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
    """Chunk ``t`` of every stream of a batch, cut as ``forward`` cuts it (see ``split_chunks``).

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


def check_batch(
    input_ids, attention_mask, vocab_size: int, device, allow_empty_rows: bool = False
) -> Batch:
    """Checks ids (B, N) and an optional 0/1 mask of the same shape; returns them left-aligned on ``device``."""
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
    ids = input_ids.long().to(device)
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
    if bool(((real < 0) | (real >= vocab_size)).any()):
        raise ValueError(f"input_ids hold token ids outside the vocabulary [0, {vocab_size})")
    order = None
    if not bool(mask.all()):
        order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
        ids = torch.gather(ids, 1, order)
        ids = ids.masked_fill(torch.arange(ids.shape[1], device=ids.device)[None] >= lengths[:, None], 0)
    return Batch(ids, lengths, order)


def chunk_plan(batch: Batch, chunk_size: int, chunk_sizes: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) text tokens per stream per chunk: fixed chunks of ``chunk_size`` from the start, or ``chunk_sizes``
    checked against the batch and the chunk size."""
    c = chunk_size
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


def split_chunks(batch: Batch, plan: torch.Tensor, labels: torch.Tensor | None = None) -> ChunkedBatch:
    """Cuts a checked batch into chunks by ``plan`` (from ``chunk_plan``); chunk ``t`` holds chunk ``t`` of every
    stream's plan, so streams of different lengths advance together, and a stream that has ended has no tokens in
    the later chunks. ``labels`` (B, N) as given to ``forward`` (aligned with the caller's ids, -100 to ignore)."""
    targets = None
    if labels is not None:
        if not isinstance(labels, torch.Tensor) or labels.shape != batch.ids.shape:
            raise ValueError(f"labels must have the shape of input_ids {tuple(batch.ids.shape)}")
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
