"""CoMeT's per-layer memories (METHOD.md section 2) and their learned tokens.

Each decoder layer ``l`` owns a gated global memory (state ``S_l``, injected rows ``G_l = RLA(S_l)``) and a FIFO
temporary memory ``T_l`` of compressed beacon states. The update functions are pure: they take the old memory
tensors and return new ones, so the whole memory is a value (see ``state.py``).

Precision: the gate, the blend and the global state ``S`` are computed and kept in float32 whatever dtype the
backbone runs in (METHOD.md section 3: in bfloat16 a gate logit above about 6.2 rounds ``g`` to exactly 1, and the
candidate is never written). The rows injected into the next chunk (``G``, ``T``) take the backbone's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import CometConfig


class ResidualLowRankAdapter(nn.Module):
    """RLA(x) = x + U(D(x)); ``U`` starts at zero so an untrained CoMeT maps memories through unchanged."""

    def __init__(self, hidden_size: int, rank: int):
        super().__init__()
        self.down = nn.Linear(hidden_size, rank, bias=False)
        self.up = nn.Linear(rank, hidden_size, bias=False)
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _adapt([self], x.reshape(1, 1, -1, x.shape[-1])).view_as(x)


class GlobalMemory(nn.Module):
    """One layer's global memory: ``M`` slots updated from the chunk's readout outputs."""

    def __init__(self, hidden_size: int, rank: int, eps: float, gated: bool, centered: bool = False):
        super().__init__()
        self.norm = nn.RMSNorm(hidden_size, eps=eps)
        # One scalar gate per slot from [candidate ; old state]; absent in the no-gate ablation.
        self.gate = nn.Linear(2 * hidden_size, 1) if gated else None
        # What the gate subtracts from its input (CometConfig.gate_centered): a fixed buffer, saved with the adapter.
        self.register_buffer("gate_center", torch.zeros(2 * hidden_size) if gated and centered else None)
        self.adapter = ResidualLowRankAdapter(hidden_size, rank)

    def next_state(self, readouts: torch.Tensor, state: torch.Tensor, has_state: torch.Tensor) -> torch.Tensor:
        """New ``S``: the normalised readouts, mixed with the old ``S`` by the gate where one exists.

        readouts, state: (B, M, d); has_state: (B,) bool, False before a sample's first closed chunk.
        """
        return next_global_states([self], readouts[None], state[None], has_state)[0]


class TemporaryMemory(nn.Module):
    """One layer's FIFO queue of compressed recent states, one row per beacon."""

    def __init__(self, hidden_size: int, rank: int, eps: float, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.norm = nn.RMSNorm(hidden_size, eps=eps)
        self.adapter = ResidualLowRankAdapter(hidden_size, rank)


# ---------------------------------------------------------------------------------------------------------------
# The updates of several layers at once. A chunk updates every layer's memories from that layer's outputs, and no
# layer's update depends on another's, so they run as one batch over a leading layer dimension L: about twenty
# small operations per chunk instead of twenty per layer (per layer: 750 us a layer, 5.5% of the shipped adapter's
# reading time in float32; batched: 2.5%; docs/RESULTS.md, session 19). One layer's update
# (``MemoryCell.update_memory``, ``GlobalMemory.next_state``) is these with L = 1, so there is one implementation.


def _stacked(params: list[torch.Tensor]) -> torch.Tensor:
    return params[0][None] if len(params) == 1 else torch.stack(params)


def _rms_norm(norms: list[nn.RMSNorm], x: torch.Tensor) -> torch.Tensor:
    """Each layer's RMSNorm on its slice of x (L, B, n, d)."""
    weight = _stacked([norm.weight for norm in norms]).to(x.dtype)  # (L, d)
    return F.rms_norm(x, x.shape[-1:], None, norms[0].eps) * weight[:, None, None]


def _adapt(adapters: list[ResidualLowRankAdapter], x: torch.Tensor) -> torch.Tensor:
    """Each layer's RLA on its slice of x (L, B, n, d), in the adapters' dtype."""
    x = x.to(adapters[0].up.weight.dtype)
    down = _stacked([a.down.weight for a in adapters])  # (L, r, d)
    up = _stacked([a.up.weight for a in adapters])  # (L, d, r)
    flat = x.flatten(1, 2)  # (L, B*n, d)
    return x + torch.bmm(torch.bmm(flat, down.transpose(1, 2)), up.transpose(1, 2)).view_as(x)


def next_global_states(
    memories: list[GlobalMemory], readouts: torch.Tensor, state: torch.Tensor, has_state: torch.Tensor
) -> torch.Tensor:
    """``GlobalMemory.next_state`` of L layers: readouts, state (L, B, M, d); has_state (B,). Float32."""
    with torch.autocast(readouts.device.type, enabled=False):  # float32, also under a bfloat16 autocast
        candidate = _rms_norm([m.norm for m in memories], readouts.float())
        state = state.float()
        if memories[0].gate is None:
            return candidate
        weight = _stacked([m.gate.weight for m in memories]).float()  # (L, 1, 2d)
        bias = _stacked([m.gate.bias for m in memories]).float()  # (L, 1)
        if memories[0].gate_center is not None:  # W (x - c) + b, as the bias b - W c
            center = _stacked([m.gate_center for m in memories]).float()  # (L, 2d)
            bias = bias - (weight[:, 0] * center).sum(dim=-1, keepdim=True)
        both = torch.cat([candidate, state], dim=-1).flatten(1, 2)  # (L, B*M, 2d)
        logit = torch.baddbmm(bias[:, None], both, weight.transpose(1, 2))  # (L, B*M, 1)
        g = torch.sigmoid(logit).view(*state.shape[:-1], 1)
        mixed = g * state + (1 - g) * candidate
        return torch.where(has_state[:, None, None], mixed, candidate)


def update_global_memories(
    memories: list[GlobalMemory], readouts: torch.Tensor, state: torch.Tensor, has_state: torch.Tensor,
    closing: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The new (G, S) of L layers (``GlobalMemory.update``): readouts, state (L, B, M, d); has_state, closing (B,).
    G in the readouts' dtype, S in float32; streams whose chunk is not closing keep their old state."""
    new_state = next_global_states(memories, readouts, state, has_state)
    if not bool(closing.all()):
        new_state = torch.where(closing[:, None, None], new_state, state.float())
    return _adapt([m.adapter for m in memories], new_state).to(readouts.dtype), new_state


def update_temporary_memories(
    memories: list[TemporaryMemory], beacons: torch.Tensor, beacon_valid: torch.Tensor, queue: torch.Tensor,
    queue_valid: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``TemporaryMemory.update`` of L layers: pushes the valid beacon rows (L, B, nb, d) into each layer's queue
    (L, B, K, d) and keeps the newest ``capacity`` valid rows. beacon_valid (B, nb) and queue_valid (B, K) are the
    same for every layer (all layers update together). Returns the rows and their validity (B, K).

    Invalid rows sort before every valid row (stable, so valid rows keep their order), which evicts padding first;
    the kept invalid rows are zeroed so equal memories are equal tensors."""
    capacity = memories[0].capacity
    pushed = _adapt([m.adapter for m in memories], _rms_norm([m.norm for m in memories], beacons.to(
        memories[0].adapter.up.weight.dtype)))
    rows = torch.cat([queue, pushed.to(queue.dtype)], dim=2)
    valid = torch.cat([queue_valid, beacon_valid], dim=1)
    if bool(valid[:, -capacity:].all()):  # the newest rows are all valid: the queue keeps exactly them
        return rows[:, :, -capacity:].contiguous(), valid[:, -capacity:]  # compact: the state keeps K rows
    rank = valid.long() * torch.arange(1, valid.shape[1] + 1, device=valid.device)
    order = torch.argsort(rank, dim=1, stable=True)[:, -capacity:]  # (B, K)
    valid = torch.gather(valid, 1, order)
    rows = torch.gather(rows, 2, order[None, :, :, None].expand(rows.shape[0], -1, -1, rows.shape[-1]))
    return rows * valid[None, :, :, None].to(rows.dtype), valid


class LayerMemory(nn.Module):
    """The memory modules attached to one decoder layer (either may be absent in an ablation)."""

    def __init__(self, config: CometConfig, hidden_size: int, eps: float):
        super().__init__()
        self.global_memory = (
            GlobalMemory(hidden_size, config.adapter_rank, eps, config.gate, config.gate_centered)
            if config.use_global else None
        )
        self.temporary_memory = (
            TemporaryMemory(hidden_size, config.adapter_rank, eps, config.temp_capacity) if config.use_temp else None
        )


class LearnedTokens(nn.Module):
    """The beacon, the ``M`` readouts and the optional sink: module parameters, not vocabulary entries.

    They start as token embeddings as the first decoder layer sees them (``Backbone.embed``, with the family's
    embedding scaling), so their scale matches what that layer expects: the beacon and readouts as a "quiet"
    whitespace token, which disturbs the untrained backbone less than other tokens do, plus small noise (a tenth of
    the embeddings' spread) so the readouts differ; the sink as BOS.
    """

    def __init__(self, config: CometConfig, quiet: torch.Tensor, sink: torch.Tensor, spread: torch.Tensor):
        super().__init__()
        generator = torch.Generator().manual_seed(config.init_seed)
        quiet, sink = quiet.detach(), sink.detach()
        noise = torch.randn(config.global_slots, quiet.shape[0], generator=generator).to(quiet) * spread * 0.1
        self.beacon = nn.Parameter(quiet[None].clone()) if config.use_temp else None
        self.readouts = nn.Parameter(quiet[None] + noise) if config.use_global else None
        self.sink = nn.Parameter(sink[None].clone()) if config.attention_sink else None


class CometMemory(nn.Module):
    """All of CoMeT's own parameters: learned tokens plus one ``LayerMemory`` per decoder layer."""

    def __init__(
        self, config: CometConfig, num_layers: int, eps: float, quiet: torch.Tensor, sink: torch.Tensor,
        spread: torch.Tensor,
    ):
        """``quiet`` and ``sink`` (d,): the embeddings the learned tokens start from; ``spread``: the std of the
        embeddings (see ``LearnedTokens``)."""
        super().__init__()
        hidden_size = quiet.shape[0]
        self.tokens = LearnedTokens(config, quiet, sink, spread)
        self.layers = nn.ModuleList(LayerMemory(config, hidden_size, eps) for _ in range(num_layers))
        if config.gate_bias is not None:
            first, last = config.gate_bias
            with torch.no_grad():
                for index, layer in enumerate(self.layers):
                    share = index / (num_layers - 1) if num_layers > 1 else 0.0
                    layer.global_memory.gate.bias.fill_(first + (last - first) * share)

    def gate_weights(self) -> list[nn.Parameter]:
        """Every layer's global-memory gate weight (none without a gated global memory)."""
        return [layer.global_memory.gate.weight for layer in self.layers
                if layer.global_memory is not None and layer.global_memory.gate is not None]
