"""The SQLite index of sessions: owner, counts, sizes, times and the model fingerprint of each state file.

The state files are the truth about memories; the index is what the server looks up without opening them
(ownership, limits, stats). It is written after the state file it describes, in WAL mode with full sync, and
``SessionStore.recover`` brings it back in line with the files after a crash.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import astuple, dataclass, fields
from pathlib import Path


@dataclass(frozen=True)
class SessionInfo:
    """``appends``: writes to the memory so far (appends and remembered answers); ``tokens_read`` and
    ``chunks_closed`` as in the state; ``bytes``: the state file's size; times in Unix seconds."""

    id: str
    owner: str
    created: int
    last_used: int
    appends: int
    tokens_read: int
    chunks_closed: int
    bytes: int
    fingerprint: str


_COLUMNS = tuple(f.name for f in fields(SessionInfo))
_TYPES = {"id": "TEXT PRIMARY KEY", "owner": "TEXT NOT NULL", "fingerprint": "TEXT NOT NULL"}


class SessionIndex:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        columns = ", ".join(f"{name} {_TYPES.get(name, 'INTEGER NOT NULL')}" for name in _COLUMNS)
        self._db.execute(f"CREATE TABLE IF NOT EXISTS sessions ({columns})")
        self._db.execute("CREATE INDEX IF NOT EXISTS sessions_owner ON sessions (owner)")

    def get(self, session_id: str) -> SessionInfo | None:
        with self._lock:
            row = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM sessions WHERE id = ?", (session_id,)).fetchone()
        return SessionInfo(*row) if row else None

    def put(self, info: SessionInfo) -> None:
        """Inserts or replaces the session's row (one transaction, synced)."""
        marks = ", ".join("?" * len(_COLUMNS))
        with self._lock:
            self._db.execute(f"INSERT OR REPLACE INTO sessions ({', '.join(_COLUMNS)}) VALUES ({marks})", astuple(info))

    def touch(self, session_id: str, when: int) -> None:
        with self._lock:
            self._db.execute("UPDATE sessions SET last_used = ? WHERE id = ?", (when, session_id))

    def delete(self, session_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))

    def count(self, owner: str) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM sessions WHERE owner = ?", (owner,)).fetchone()[0]

    def list(self, owner: str | None = None) -> list[SessionInfo]:
        query = f"SELECT {', '.join(_COLUMNS)} FROM sessions"
        with self._lock:
            rows = (self._db.execute(query + " WHERE owner = ? ORDER BY created, id", (owner,)) if owner is not None
                    else self._db.execute(query + " ORDER BY created, id")).fetchall()
        return [SessionInfo(*row) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
