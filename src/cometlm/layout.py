"""Where every row of a chunk sits (METHOD.md section 1), for a batch of streams of different lengths.

A chunk is fed to each layer as ``[ G | T | text with a beacon after every s tokens | R ]``, optionally behind
one attention-sink row. Rows are placed at
fixed slots shared by the whole batch, and a row that a stream does not have (padding, a memory that is still
empty, the readouts of a chunk that is not closed) is marked invalid. Position ids count only valid rows, and
attention never sees an invalid key, so each stream computes exactly what it would compute alone. Slots that
are invalid for every stream are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import CometConfig


@dataclass(frozen=True)
class ChunkLayout:
    """Index maps and masks for one chunk of a batch.

    The sequence a layer sees is ``[sink | memory rows | other stream rows]``. Memory rows are re-injected at
    every layer from that layer's memories; stream rows (sink, text, beacons, readouts) carry hidden states from
    layer to layer. ``n_sink`` (0 or 1) stream rows come before the memory rows.

    memory_index  (m,)     which of the M+K memory rows are present
    text_slot     (n,)     stream row of text token i
    text_valid    (B, n)
    beacon_slot   (nb,)    stream row of beacon j;  beacon_valid (B, nb)
    readout_slot  (M',)    stream rows of the readouts (empty when the chunk is not closed for anyone)
    closing       (B,)     which streams close this chunk (their memories are updated)
    stream_kind   (L,)     0 text, 1 beacon, 2 readout, 3 sink, per stream row; stream_token (L,) text index or
                           readout id
    valid         (B, m+L) which rows each stream has, in sequence order
    position_ids  (B, m+L) chunk-local positions over valid rows
    mask          (B, 1, m+L, m+L) bool, or None when every row is valid (plain causal attention)
    """

    memory_index: torch.Tensor
    text_slot: torch.Tensor
    text_valid: torch.Tensor
    beacon_slot: torch.Tensor
    beacon_valid: torch.Tensor
    readout_slot: torch.Tensor
    closing: torch.Tensor
    n_sink: int
    stream_kind: torch.Tensor
    stream_token: torch.Tensor
    valid: torch.Tensor
    position_ids: torch.Tensor
    mask: torch.Tensor | None

    TEXT, BEACON, READOUT, SINK = 0, 1, 2, 3

    @property
    def num_memory_rows(self) -> int:
        return self.memory_index.numel()

    @property
    def memory_rows(self) -> slice:
        """Where the memory rows sit in a layer's sequence: one block after the sink. Their outputs are never used
        (they are only keys and values for the stream rows)."""
        return slice(self.n_sink, self.n_sink + self.num_memory_rows)

    def stream_rows(self) -> torch.Tensor:
        """Where the stream rows sit in a layer's sequence (every row but the memory rows), in order: (L,)."""
        n, memory = self.valid.shape[1], self.memory_rows
        rows = torch.arange(n, device=self.valid.device)
        return torch.cat([rows[: memory.start], rows[memory.stop :]])

    def prefix_mask(self) -> torch.Tensor:
        """Which keys each stream row sees when the memory rows are keys and values only, put before the stream
        rows' own (``Backbone.run_layer``'s ``prefix``): (B or 1, 1, L, m + L) bool, the rows and columns of ``mask``
        (or of plain causal attention) in that order. The sink sees only itself, as in the sequence."""
        n, memory = self.valid.shape[1], self.memory_rows
        mask = self.mask
        if mask is None:
            mask = torch.ones(n, n, dtype=torch.bool, device=self.valid.device).tril()[None, None]
        stream = self.stream_rows()
        keys = torch.cat([torch.arange(memory.start, memory.stop, device=stream.device), stream])
        return mask[:, :, stream][..., keys]

    @classmethod
    def build(
        cls,
        config: CometConfig,
        text_len: torch.Tensor,
        n_text: int,
        closing: torch.Tensor,
        memory_valid: torch.Tensor,
    ) -> "ChunkLayout":
        """text_len (B,) real text tokens per stream (0..n_text); closing (B,); memory_valid (B, M+K)."""
        device = text_len.device
        s, m_slots = config.temp_stride, config.global_slots
        i = torch.arange(n_text, device=device)
        text_valid = i[None, :] < text_len[:, None]  # (B, n)

        if config.use_temp:
            n_beacons = -(-n_text // s)
            j = torch.arange(n_beacons, device=device)
            text_pos = i + i // s
            # The beacon of a partial last block sits right after its tokens, at the end of the region.
            beacon_pos = (j * (s + 1) + s).clamp(max=n_text + n_beacons - 1)
            # A beacon follows every complete s-block, and the trailing partial block when the chunk closes.
            complete = (j[None, :] + 1) * s <= text_len[:, None]
            trailing = closing[:, None] & (j[None, :] * s < text_len[:, None])
            beacon_valid = complete | trailing
        else:
            n_beacons = 0
            text_pos, beacon_pos = i, i[:0]
            beacon_valid = torch.zeros(len(text_len), 0, dtype=torch.bool, device=device)
        region = n_text + n_beacons

        readouts_used = bool(closing.any()) and config.use_global
        n_readouts = m_slots if readouts_used else 0
        readout_pos = region + torch.arange(n_readouts, device=device)
        readout_valid = closing[:, None].expand(-1, n_readouts)

        n_sink = int(config.attention_sink)
        text_pos, beacon_pos, readout_pos = text_pos + n_sink, beacon_pos + n_sink, readout_pos + n_sink
        n_stream = n_sink + region + n_readouts
        kind = torch.full((n_stream,), cls.TEXT, dtype=torch.long, device=device)
        token = torch.zeros(n_stream, dtype=torch.long, device=device)
        stream_valid = torch.zeros(len(text_len), n_stream, dtype=torch.bool, device=device)
        kind[:n_sink] = cls.SINK
        stream_valid[:, :n_sink] = True
        token[text_pos] = i
        stream_valid[:, text_pos] = text_valid
        kind[beacon_pos] = cls.BEACON
        stream_valid[:, beacon_pos] = beacon_valid
        kind[readout_pos] = cls.READOUT
        token[readout_pos] = torch.arange(n_readouts, device=device)
        stream_valid[:, readout_pos] = readout_valid

        # Drop rows that no stream has, then renumber the stream slots.
        memory_index = memory_valid.any(dim=0).nonzero().squeeze(1)
        memory_valid = memory_valid[:, memory_index]
        keep = stream_valid.any(dim=0)
        new_slot = keep.long().cumsum(0) - 1
        stream_valid, kind, token = stream_valid[:, keep], kind[keep], token[keep]

        valid = torch.cat([stream_valid[:, :n_sink], memory_valid, stream_valid[:, n_sink:]], dim=1)
        position_ids = (valid.long().cumsum(dim=1) - 1).clamp(min=0)
        mask = None
        if not bool(valid.all()):
            n = valid.shape[1]
            causal = torch.ones(n, n, dtype=torch.bool, device=device).tril()
            # The diagonal keeps rows with no valid key (padding) finite; their outputs are never read.
            mask = (causal[None] & valid[:, None, :]) | torch.eye(n, dtype=torch.bool, device=device)[None]
            mask = mask[:, None]
        return cls(
            memory_index=memory_index,
            text_slot=new_slot[text_pos],
            text_valid=text_valid,
            beacon_slot=new_slot[beacon_pos],
            beacon_valid=beacon_valid,
            readout_slot=new_slot[readout_pos],
            closing=closing,
            n_sink=n_sink,
            stream_kind=kind,
            stream_token=token,
            valid=valid,
            position_ids=position_ids,
            mask=mask,
        )
