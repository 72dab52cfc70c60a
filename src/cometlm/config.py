"""CoMeT's hyper-parameters: one dataclass, validated once, with the derived sizes the layout needs."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class CometConfig:
    """Sizes of the chunked dual memory (METHOD.md notation in brackets).

    chunk_size     [C] text tokens per chunk.
    global_slots   [M] global-memory slots, and readout tokens per closed chunk; 0 disables the global memory.
    temp_stride    [s] one beacon after every ``s`` text tokens; 0 disables the temporary memory.
    temp_capacity  [K] rows kept in each layer's FIFO temporary memory.
    adapter_rank   [r] rank of the residual low-rank adapters that map memory states into the next chunk.
    gate           gated global update; ``False`` makes the update a plain overwrite (the paper's ablation).
    attention_sink one learned row at position 0 of every chunk, ahead of the memory rows, initialised from the
                   backbone's BOS embedding: the backbone keeps the attention sink it expects at the first
                   position instead of finding memory rows there (METHOD.md section 1). Off by default, so that
                   the layout is exactly the paper's.
    init_seed      seed of CoMeT's initial parameters (learned tokens, adapters, gates): ``from_backbone`` is
                   reproducible.
    gate_bias      initial bias of the global-memory gate in the first and the last layer (linear in between),
                   or None for PyTorch's default small random bias (gate ~0.5). A large bias starts the layer
                   keeping its state (sigmoid(4) = 0.98): spreading it over layers gives them time scales from
                   one chunk to many (the "chrono" initialisation of recurrent gates), a lever for recall far
                   beyond the training length. Only the initialisation: a trained model's gates are weights.
    gate_centered  the gate reads its input less a fixed per-layer center: ``g = sigmoid(W_g ([cand ; S] - c) + b)``
                   with ``c`` a buffer (``GlobalMemory.gate_center``), zero until set from data (e.g. the input's
                   mean: ``docs/experiments/reset_gates.py --center``). The same functions as the paper's gate
                   (``b - W_g c`` is a bias); what changes is how its weights train: SmolLM2's gate inputs share a constant part
                   (85-93% of their square norm in most layers), so uncentered weight updates move every logit
                   together instead of learning content (docs/EXPERIMENTS.md, sessions 27 and 36).
    """

    chunk_size: int = 1024
    global_slots: int = 64
    temp_stride: int = 8
    temp_capacity: int = 256
    adapter_rank: int = 8
    gate: bool = True
    attention_sink: bool = False
    init_seed: int = 0
    gate_bias: tuple[float, float] | None = None
    gate_centered: bool = False

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(f"invalid CometConfig: {message}")

        for name in ("chunk_size", "global_slots", "temp_stride", "temp_capacity", "adapter_rank"):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool), f"{name} must be an int (got {value!r})")
        need(isinstance(self.gate, bool), f"gate must be True or False (got {self.gate!r})")
        need(
            isinstance(self.attention_sink, bool), f"attention_sink must be True or False (got {self.attention_sink!r})"
        )
        if self.gate_bias is not None:
            ok = isinstance(self.gate_bias, (tuple, list)) and len(self.gate_bias) == 2
            ok = ok and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in self.gate_bias)
            ok = ok and all(math.isfinite(b) if isinstance(b, float) else abs(b) < 2**53 for b in self.gate_bias)
            need(ok, f"gate_bias must be None or (first_layer, last_layer) finite numbers (got {self.gate_bias!r})")
            object.__setattr__(self, "gate_bias", tuple(float(b) for b in self.gate_bias))  # JSON gives lists
            need(self.gate and self.global_slots > 0, "gate_bias needs the gated global memory (gate=True, global_slots > 0)")
        need(isinstance(self.gate_centered, bool), f"gate_centered must be True or False (got {self.gate_centered!r})")
        if self.gate_centered:
            need(self.gate and self.global_slots > 0,
                 "gate_centered needs the gated global memory (gate=True, global_slots > 0)")
        need(self.chunk_size >= 1, f"chunk_size must be at least 1 (got {self.chunk_size})")
        need(self.global_slots >= 0, f"global_slots must be >= 0; use 0 to disable the global memory (got {self.global_slots})")
        need(self.temp_stride >= 0, f"temp_stride must be >= 0; use 0 to disable the temporary memory (got {self.temp_stride})")
        need(self.temp_capacity >= 0, f"temp_capacity must be >= 0 (got {self.temp_capacity})")
        if self.temp_stride > 0:
            need(
                self.chunk_size % self.temp_stride == 0,
                f"chunk_size must be a multiple of temp_stride (got {self.chunk_size} and {self.temp_stride})",
            )
            need(
                self.temp_capacity >= 1,
                "temp_capacity must be >= 1 when the temporary memory is on; set temp_stride=0 to disable it "
                f"(got temp_capacity={self.temp_capacity})",
            )
        elif self.temp_capacity not in (0, CometConfig.temp_capacity):
            raise ValueError(
                "invalid CometConfig: temp_capacity has no effect with temp_stride=0 (temporary memory disabled); "
                f"leave it at its default or set it to 0 (got {self.temp_capacity})"
            )
        if self.global_slots > 0 or self.temp_stride > 0:
            need(self.adapter_rank >= 1, f"adapter_rank must be >= 1 when a memory is on (got {self.adapter_rank})")
        if self.global_slots == 0 and not self.gate:
            raise ValueError(
                "invalid CometConfig: gate=False changes the global-memory update, but global_slots=0 disables "
                "the global memory; leave gate=True or set global_slots > 0"
            )

    @property
    def use_global(self) -> bool:
        return self.global_slots > 0

    @property
    def use_temp(self) -> bool:
        return self.temp_stride > 0

    @property
    def queue_size(self) -> int:
        """Rows in each layer's temporary queue (0 when the temporary memory is off)."""
        return self.temp_capacity if self.use_temp else 0

    @property
    def beacons_per_chunk(self) -> int:
        return self.chunk_size // self.temp_stride if self.use_temp else 0

    @property
    def max_positions(self) -> int:
        """Largest chunk-local sequence length: sink + G + T + text + beacons + readouts (RoPE never sees more)."""
        return int(self.attention_sink) + self.global_slots + self.queue_size + self.chunk_size + self.beacons_per_chunk + self.global_slots

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "CometConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown CometConfig fields {unknown}; known fields are {sorted(known)}")
        return cls(**data)
