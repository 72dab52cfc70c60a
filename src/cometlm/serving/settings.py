"""What a server is allowed to do: its state folder, keys and limits. One dataclass, validated once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


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
    allowed_hosts        the names a request's Host header may give (any port); None: any. The default, this
                         machine's names, is what a loopback server answers to: a web page whose domain is made to
                         resolve to 127.0.0.1 (DNS rebinding) gives its own name and is refused.
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
    allowed_hosts: tuple[str, ...] | None = LOOPBACK_HOSTS

    def __post_init__(self) -> None:
        object.__setattr__(self, "state_dir", Path(self.state_dir))
        if self.allowed_hosts is not None:
            hosts = tuple(self.allowed_hosts) if isinstance(self.allowed_hosts, (tuple, list)) else ()
            if not hosts or not all(isinstance(h, str) and h.strip("[]") and h.isprintable() and " " not in h
                                    for h in hosts):
                raise ValueError(f"allowed_hosts must be None or host names (got {self.allowed_hosts!r})")
            object.__setattr__(self, "allowed_hosts", tuple(h.strip("[]").lower() for h in hosts))
        if self.api_keys is not None:
            object.__setattr__(self, "api_keys", Path(self.api_keys))
        for name in ("cache_bytes", "max_body_bytes", "max_append_tokens", "max_new_tokens", "max_sessions_per_key",
                     "max_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "cache_bytes" else 1):
                raise ValueError(f"{name} must be a positive int (got {value!r})")
        if not 0 <= self.batch_window_ms <= 1000:
            raise ValueError(f"batch_window_ms must be between 0 and 1000 (got {self.batch_window_ms!r})")
