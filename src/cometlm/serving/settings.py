"""What a server is allowed to do: its state folder, keys and limits. One dataclass, validated once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServerSettings:
    """state_dir            sessions live here: ``index.sqlite`` and ``states/<session>.safetensors``.
    api_keys             a keys file (``name:sha256`` lines, see ``auth``); None: no keys, every client is "local".
    cache_bytes          RAM budget for memory states (least recently used ones are dropped; all are on disk).
    max_body_bytes       largest JSON request body (a state upload may be as large as a state file).
    max_append_tokens    most tokens one append (or one prompt) may add.
    max_new_tokens       most tokens one request may generate (``max_tokens``).
    max_sessions_per_key most sessions one key may hold.
    batch_window_ms      how long the scheduler collects requests of different sessions into one batch.
    max_batch            most requests in one batch.
    """

    state_dir: Path
    api_keys: Path | None = None
    cache_bytes: int = 1 << 30
    max_body_bytes: int = 1 << 20
    max_append_tokens: int = 32_768
    max_new_tokens: int = 1024
    max_sessions_per_key: int = 1000
    batch_window_ms: float = 5.0
    max_batch: int = 16

    def __post_init__(self) -> None:
        object.__setattr__(self, "state_dir", Path(self.state_dir))
        if self.api_keys is not None:
            object.__setattr__(self, "api_keys", Path(self.api_keys))
        for name in ("cache_bytes", "max_body_bytes", "max_append_tokens", "max_new_tokens", "max_sessions_per_key",
                     "max_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "cache_bytes" else 1):
                raise ValueError(f"{name} must be a positive int (got {value!r})")
        if not 0 <= self.batch_window_ms <= 1000:
            raise ValueError(f"batch_window_ms must be between 0 and 1000 (got {self.batch_window_ms!r})")
