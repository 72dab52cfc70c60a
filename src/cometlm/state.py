"""The streaming memory state: an explicit value passed into and returned from the model.

Per layer it holds the global memory rows ``G``, the global state ``S`` and its validity, and the temporary
queue ``T`` with one validity flag per row. It also holds the open chunk: text tokens that have been read but
whose chunk is not closed yet. Its size depends on the configuration and the batch, never on how much text
has been read.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from .config import CometConfig
from .files import write_bytes

STATE_FORMAT = "cometlm.memory_state/1"


@dataclass(frozen=True)
class LayerState:
    """One layer's memories. Shapes: G, S (B, M, d); has_global (B,); T (B, K, d); temp_valid (B, K). S is float32;
    G and T are in the backbone's dtype."""

    global_memory: torch.Tensor
    global_state: torch.Tensor
    has_global: torch.Tensor
    temp: torch.Tensor
    temp_valid: torch.Tensor

    def rows(self) -> torch.Tensor:
        """The rows injected ahead of the next chunk at this layer: (B, M+K, d)."""
        return torch.cat([self.global_memory, self.temp], dim=1)

    def select(self, rows: torch.Tensor) -> "LayerState":
        """The memories of some streams (``rows``: their indices in the batch)."""
        return LayerState(*(getattr(self, name)[rows] for name in _LAYER_FIELDS))

    def scatter(self, rows: torch.Tensor, other: "LayerState") -> "LayerState":
        """These memories with those of streams ``rows`` replaced by ``other``'s (out of place, differentiable)."""
        return LayerState(*(getattr(self, name).index_copy(0, rows, getattr(other, name)) for name in _LAYER_FIELDS))

    def row_valid(self) -> torch.Tensor:
        """Which of those rows exist: (B, M+K). Equal for every layer, since all layers update together."""
        m = self.global_memory.shape[1]
        return torch.cat([self.has_global[:, None].expand(-1, m), self.temp_valid], dim=1)


_LAYER_FIELDS = ("global_memory", "global_state", "has_global", "temp", "temp_valid")
_STREAM_FIELDS = ("pending", "pending_len", "chunks_closed")
_LAYER_NAME = re.compile(rf"layers\.(0|[1-9][0-9]{{0,5}})\.(?:{'|'.join(_LAYER_FIELDS)})")


@dataclass(frozen=True)
class MemoryState:
    """Everything CoMeT carries from one chunk to the next, for a batch of ``B`` streams.

    ``pending`` (B, P) holds the open chunk's token ids, ``pending_len`` (B,) how many of them are real
    (1..C once anything was read). ``chunks_closed`` (B,) counts closed chunks per stream.
    """

    config: CometConfig
    layers: tuple[LayerState, ...]
    pending: torch.Tensor
    pending_len: torch.Tensor
    chunks_closed: torch.Tensor = field(default=None)

    @classmethod
    def empty(
        cls, config: CometConfig, batch_size: int, num_layers: int, hidden_size: int, dtype, device
    ) -> "MemoryState":
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int (got {batch_size!r})")
        m, k = config.global_slots, config.queue_size

        def zeros(*shape):
            return torch.zeros(*shape, dtype=dtype, device=device)

        layer = LayerState(
            global_memory=zeros(batch_size, m, hidden_size),
            global_state=torch.zeros(batch_size, m, hidden_size, dtype=torch.float32, device=device),  # see memory.py
            has_global=torch.zeros(batch_size, dtype=torch.bool, device=device),
            temp=zeros(batch_size, k, hidden_size),
            temp_valid=torch.zeros(batch_size, k, dtype=torch.bool, device=device),
        )
        return cls(
            config=config,
            layers=(layer,) * num_layers,
            pending=torch.zeros(batch_size, 0, dtype=torch.long, device=device),
            pending_len=torch.zeros(batch_size, dtype=torch.long, device=device),
            chunks_closed=torch.zeros(batch_size, dtype=torch.long, device=device),
        )

    @property
    def batch_size(self) -> int:
        return self.pending.shape[0]

    def select(self, rows: torch.Tensor) -> "MemoryState":
        """The state of some streams (``rows``: their indices in the batch), open chunks cut to the longest."""
        pending_len = self.pending_len[rows]
        width = int(pending_len.max()) if rows.numel() else 0
        return MemoryState(
            self.config, tuple(layer.select(rows) for layer in self.layers), self.pending[rows][:, :width],
            pending_len, self.chunks_closed[rows],
        )

    @classmethod
    def stack(cls, states: Sequence[MemoryState]) -> MemoryState:
        """One batch holding the streams of several states, in order (``select`` takes them apart again). Their
        open chunks are padded with zeros to the longest; all must share one configuration and model shape."""
        states = list(states)
        if not states:
            raise ValueError("stack needs at least one memory state")
        first = states[0]
        for state in states[1:]:
            if state.config != first.config:
                raise ValueError(f"cannot stack memory states of different configs ({first.config} and {state.config})")
            if len(state.layers) != len(first.layers):
                raise ValueError(f"cannot stack memory states of {len(first.layers)} and {len(state.layers)} layers")
        width = max(state.pending.shape[1] for state in states)
        layers = tuple(
            LayerState(*(torch.cat([getattr(state.layers[i], name) for state in states]) for name in _LAYER_FIELDS))
            for i in range(len(first.layers))
        )
        pending = torch.cat([torch.nn.functional.pad(s.pending, (0, width - s.pending.shape[1])) for s in states])
        return cls(first.config, layers, pending, torch.cat([s.pending_len for s in states]),
                   torch.cat([s.chunks_closed for s in states]))

    def with_layers(self, layers) -> "MemoryState":
        return replace(self, layers=tuple(layers))

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"pending": self.pending, "pending_len": self.pending_len, "chunks_closed": self.chunks_closed}
        for i, layer in enumerate(self.layers):
            for name in _LAYER_FIELDS:
                out[f"layers.{i}.{name}"] = getattr(layer, name)
        return out

    def detach(self) -> "MemoryState":
        """The same values cut from the autograd graph (for truncated back-propagation or long streams)."""
        layers = [LayerState(*(getattr(l, n).detach() for n in _LAYER_FIELDS)) for l in self.layers]
        return replace(self, layers=tuple(layers))

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def save(self, path: str | os.PathLike, notes: dict[str, str] | None = None, durable: bool = False) -> None:
        """Writes a safetensors file atomically: a crash never leaves a half-written state behind. `notes`
        (string keys and values) are stored with it and read back by `read_notes`; `durable` flushes the file
        to disk before returning."""
        write_bytes(path, self.to_bytes(notes), durable)

    def to_bytes(self, notes: dict[str, str] | None = None) -> bytes:
        """The bytes of the state file ``save`` writes (``from_bytes`` reads them back)."""
        # cloned: layers may share one tensor (a fresh state does), which safetensors refuses to write
        tensors = {k: v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in self.tensors().items()}
        metadata = {"format": STATE_FORMAT, "config": json.dumps(self.config.to_dict()),
                    "notes": json.dumps(dict(notes or {}))}
        return save_bytes(tensors, metadata=metadata)

    @classmethod
    def load(cls, path: str | os.PathLike, device=None) -> "MemoryState":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no memory state file at {path}")
        # The file's bytes, decoded in memory: safetensors' load_file (and safe_open) keep about 1 KB per call that
        # is never given back (safetensors issue 369; measured in docs/experiments/serve-rss), which a server that
        # loads states all day cannot afford. The price: the file's bytes and the tensors are both in RAM for a
        # moment (3.3 MB for the shipped adapter's state).
        try:
            data = path.read_bytes()
        except OSError as err:
            raise ValueError(f"{path} is not a readable CoMeT memory state: {err}") from err
        state = cls.from_bytes(data, source=str(path))
        if device is None:
            return state
        tensors = {name: t.to(device) for name, t in state.tensors().items()}
        return cls.from_tensors(state.config, tensors, source=str(path))

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "the uploaded state") -> "MemoryState":
        """A state from the bytes of a state file (what ``save`` writes), e.g. an upload; safetensors only, so
        nothing in the bytes is ever executed."""
        metadata = _metadata_of_bytes(data, source)
        try:
            tensors = load_bytes(data)
        except (SafetensorError, ValueError) as err:
            raise ValueError(f"{source} is not a readable CoMeT memory state (corrupted or truncated?): {err}") from err
        return cls._from_file(metadata, tensors, source)

    @classmethod
    def _from_file(cls, metadata: dict, tensors: dict[str, torch.Tensor], source: str) -> "MemoryState":
        try:
            config = CometConfig.from_dict(json.loads(metadata["config"]))
        except (KeyError, TypeError, ValueError, RecursionError, ArithmeticError) as err:
            raise ValueError(f"{source} is not a CoMeT memory state: its config is missing or invalid ({err})") from err
        return cls.from_tensors(config, tensors, source=source)

    @staticmethod
    def read_notes(path_or_bytes: str | os.PathLike | bytes) -> dict[str, str]:
        """The `notes` saved with a state file (a path, or the file's bytes), without loading its tensors."""
        if isinstance(path_or_bytes, (bytes, bytearray)):
            metadata = _metadata_of_bytes(bytes(path_or_bytes), "the uploaded state")
        else:
            metadata = _read_metadata(Path(path_or_bytes))
        try:
            notes = json.loads(metadata.get("notes", "{}"))
        except (ValueError, TypeError, RecursionError) as err:
            raise ValueError(f"the notes of a memory state are not valid JSON: {err}") from err
        if not isinstance(notes, dict):
            raise ValueError("the notes of a memory state are not a JSON object")
        return notes

    @classmethod
    def from_tensors(cls, config: CometConfig, tensors: dict[str, torch.Tensor], source: str = "tensors"):
        def take(name: str) -> torch.Tensor:
            if name not in tensors:
                raise ValueError(f"{source}: memory state lacks '{name}'")
            return tensors[name]

        # The layers are counted from the names present, never from a number a name claims: an upload naming layer
        # 3,000,000 is one tensor, and must cost no more to refuse than any other.
        named = {name: _LAYER_NAME.fullmatch(name) for name in tensors if name not in _STREAM_FIELDS}
        unknown = sorted(name for name, match in named.items() if match is None)
        if unknown:
            raise ValueError(f"{source}: memory state holds tensors it does not have: {', '.join(unknown[:4])}")
        indices = sorted({int(match.group(1)) for match in named.values()})
        if not indices:
            raise ValueError(f"{source}: memory state has no layers")
        num_layers = indices[-1] + 1
        if len(indices) != num_layers:  # a gap: the first index missing
            missing = next(i for i, index in enumerate(indices) if i != index)
            raise ValueError(f"{source}: memory state lacks 'layers.{missing}.{_LAYER_FIELDS[0]}'")
        layers = tuple(LayerState(*(take(f"layers.{i}.{n}") for n in _LAYER_FIELDS)) for i in range(num_layers))
        state = cls(config, layers, take("pending"), take("pending_len"), take("chunks_closed"))
        state.check(num_layers=num_layers)
        return state

    def check(self, num_layers: int, hidden_size: int | None = None) -> None:
        """Raises ValueError when the tensors do not fit this configuration and model."""
        every = [self.pending, self.pending_len, self.chunks_closed,
                 *(getattr(layer, name) for layer in self.layers for name in _LAYER_FIELDS)]
        if any(t.dim() == 0 for t in every) or self.batch_size < 1:
            raise ValueError("memory state tensors must hold at least one stream (a scalar or an empty batch found)")
        b, m, k = self.batch_size, self.config.global_slots, self.config.queue_size
        if len(self.layers) != num_layers:
            raise ValueError(f"memory state has {len(self.layers)} layers but the model has {num_layers}")
        d = hidden_size if hidden_size is not None else self.layers[0].global_memory.shape[-1]
        want = {
            "global_memory": (b, m, d),
            "global_state": (b, m, d),
            "has_global": (b,),
            "temp": (b, k, d),
            "temp_valid": (b, k),
        }
        for i, layer in enumerate(self.layers):
            for name, shape in want.items():
                got = tuple(getattr(layer, name).shape)
                if got != shape:
                    raise ValueError(f"memory state layer {i} '{name}' has shape {got}, expected {shape}")
        if self.pending_len.shape != (b,) or self.chunks_closed.shape != (b,) or self.pending.dim() != 2:
            raise ValueError("memory state bookkeeping tensors do not match its batch size")
        rows = {t.dtype for layer in self.layers for t in (layer.global_memory, layer.temp)}
        states = {layer.global_state.dtype for layer in self.layers}
        flags = {t.dtype for layer in self.layers for t in (layer.has_global, layer.temp_valid)}
        counts = {t.dtype for t in (self.pending, self.pending_len, self.chunks_closed)}
        if (len(rows) != 1 or not next(iter(rows)).is_floating_point or states != {torch.float32}
                or flags != {torch.bool} or counts != {torch.long}):
            raise ValueError(
                "memory state tensors have the wrong dtypes (G and T one floating dtype, S float32, flags bool, token "
                f"ids and counts int64; got {sorted(map(str, rows | states | flags | counts))})"
            )
        if self.pending.shape[1] > self.config.chunk_size or int(self.pending_len.max()) > self.pending.shape[1]:
            raise ValueError("memory state open chunk is larger than chunk_size")
        if int(self.pending_len.min()) < 0 or int(self.chunks_closed.min()) < 0:
            raise ValueError("memory state counts are negative")


def _check_format(metadata: dict, source) -> dict:
    if metadata.get("format") != STATE_FORMAT:
        raise ValueError(f"{source} is not a CoMeT memory state (format {metadata.get('format')!r})")
    return metadata


def _read_metadata(path: Path) -> dict:
    """The ``__metadata__`` of a state file, from its header alone (not safe_open: see ``MemoryState.load``)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            size = int.from_bytes(head, "little") if len(head) == 8 else 0
            head += f.read(min(size, 100 << 20))  # the header; a length past the file's end is caught below
    except OSError as err:
        raise ValueError(f"{path} is not a readable CoMeT memory state: {err}") from err
    return _metadata_of_bytes(head, str(path))


def _metadata_of_bytes(data: bytes, source: str) -> dict:
    """The ``__metadata__`` of a safetensors file held in memory: an 8-byte little-endian header length, then
    that many bytes of JSON (the safetensors format), read without trusting either."""
    if len(data) < 8:
        raise ValueError(f"{source} is not a readable CoMeT memory state (truncated: {len(data)} bytes)")
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        raise ValueError(f"{source} is not a readable CoMeT memory state (truncated header)")
    try:
        header = json.loads(data[8 : 8 + size].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise ValueError(f"{source} is not a readable CoMeT memory state (bad header: {err})") from err
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return _check_format(metadata if isinstance(metadata, dict) else {}, source)


def model_fingerprint(model) -> str:
    """Identity of what a state is only meaningful to: the CoMeT config, the base model's shape and weights (its
    fingerprint), the dtype, and CoMeT's own weights and any LoRA on the backbone (16 hex digits). The server and
    `cometlm generate` record it in a state's notes (``"model"``) and refuse a state whose notes name another."""
    digest = hashlib.sha256()
    weight = model.backbone.embed_tokens.weight
    head = {"comet": model.comet_config.to_dict(), "base": model.backbone.describe(), "dtype": str(weight.dtype)}
    digest.update(json.dumps(head, sort_keys=True).encode())
    tensors = dict(model.comet_state_dict())
    tensors.update({name: p for name, p in model.backbone_model.named_parameters() if "lora_" in name})
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
