"""Sessions on disk: one safetensors state file each (written atomically and durably), the SQLite index beside
them, and a RAM cache in front.

A write is: the new state file replaces the old one (fsync, rename, fsync of the folder), then the index row is
updated, then the caller may acknowledge. So an acknowledged write is on disk, and a crash leaves at worst a state
file one write ahead of its index row, or a state file with no row (a session whose creation was never
acknowledged); ``recover`` settles both at start-up, the second by moving the file to ``orphans/`` beside
``states/`` (never deleting it: an index lost or restored from an old copy would otherwise take every session
with it). The state file's notes carry the session's owner, its write
count and the fingerprint of the model that wrote it, so a state from another model or configuration is refused.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import torch

from ..files import remove_file, write_bytes
from ..runtime import release_free_memory
from ..state import MemoryState, model_fingerprint
from .cache import StateCache
from .errors import bad_request, conflict, server_error, session_not_found
from .index import SessionIndex, SessionInfo

log = logging.getLogger("cometlm.serve")

STATES_DIR = "states"
ORPHANS_DIR = "orphans"  # state files with no index row, set aside at start-up
INDEX_FILE = "index.sqlite"
LOCK_FILE = "lock"
SESSION_ID = re.compile(r"^sess_[0-9a-f]{32}$")
MAX_TOKENS_READ = 2**53  # what a session may have read: an exact integer in JSON and far inside SQLite's int64


def tokens_read(state: MemoryState) -> int:
    """Tokens a one-stream state has read: the open chunk keeps 1..C tokens and every closed chunk held C."""
    return int(state.chunks_closed[0]) * state.config.chunk_size + int(state.pending_len[0])


class SessionStore:
    def __init__(self, directory: str | Path, model, cache_bytes: int):
        self.directory = Path(directory)
        self.states = self.directory / STATES_DIR
        if not self.directory.exists():  # users' memories: readable by the server's own user only
            self.directory.mkdir(parents=True, mode=0o700)
        self.states.mkdir(exist_ok=True)
        self.states.chmod(0o700)
        self._lock = _hold_folder(self.directory)
        self.index = SessionIndex(self.directory / INDEX_FILE)
        self.cache = StateCache(cache_bytes)
        self.fingerprint = model_fingerprint(model)
        self.template = model.init_memory(1)
        self.check_memory = model.check_memory

    def path(self, session_id: str) -> Path:
        return self.states / f"{session_id}.safetensors"

    def find(self, owner: str, session_id: str) -> SessionInfo:
        """The session if ``owner`` holds it; any other id answers 404, as if it did not exist."""
        info = self.index.get(session_id) if SESSION_ID.match(session_id or "") else None
        if info is None or info.owner != owner:
            raise session_not_found(session_id)
        return info

    def load(self, info: SessionInfo) -> MemoryState:
        if info.fingerprint != self.fingerprint:
            raise conflict(
                f"session {info.id} holds a memory written by another model or configuration (fingerprint "
                f"{info.fingerprint}; this server's is {self.fingerprint}): serve it with the model that wrote it",
                code="incompatible_state", param="session_id",
            )
        path = self.path(info.id)
        data = self.cache.get(info.id)
        cached = data is not None
        try:
            data = data if cached else path.read_bytes()
            state = MemoryState.from_bytes(data, source=str(path))
        except (OSError, ValueError) as err:
            log.error("session %s: %s", info.id, err)
            raise server_error(f"the state file of session {info.id} cannot be read") from err
        if not cached:
            self.cache.put(info.id, data)
        return state

    def write(self, session_id: str, owner: str, created: int, state: MemoryState, appends: int) -> SessionInfo:
        """Makes ``state`` the session's memory, durably (then the index row, then the cache)."""
        path = self.path(session_id)
        notes = {"session": session_id, "owner": owner, "model": self.fingerprint, "appends": str(appends),
                 "created": str(created)}
        data = state.to_bytes(notes)
        write_bytes(path, data, durable=True)
        info = SessionInfo(session_id, owner, created, int(time.time()), appends, tokens_read(state),
                           int(state.chunks_closed[0]), len(data), self.fingerprint)
        try:
            self.index.put(info)
        except Exception:
            # The file is new, the row old: as after a crash here, the write may or may not count (``recover``
            # counts it at the next start). Until then reads come from the file, never from an older cached copy.
            self.cache.drop(session_id)
            raise
        self.cache.put(session_id, data)
        release_free_memory()  # the heap's holes go back to the system, so a server that runs for days stays flat
        return info

    def delete(self, info: SessionInfo) -> None:
        """The file goes first (for good: its folder is flushed), then the index row: a crash in between leaves a
        row with no file, which ``recover`` drops. The other order left a file with no row, which ``recover`` keeps
        in ``orphans/``: a deleted user's memories outlived the deletion."""
        self.cache.drop(info.id)
        remove_file(self.path(info.id))
        self.index.delete(info.id)

    def export(self, info: SessionInfo) -> bytes:
        self.load(info)  # refuses a state of another model with the same message as every other use
        return self.path(info.id).read_bytes()

    def check_upload(self, data: bytes) -> tuple[MemoryState, int]:
        """The one-stream state in an uploaded state file and its write count, or a 400 saying what is wrong."""
        try:  # the notes first: the header alone says whose state it is, before any tensor is read
            notes = MemoryState.read_notes(data)
        except ValueError as err:
            raise bad_request(str(err), code="invalid_state") from err
        if notes.get("model") != self.fingerprint:
            raise bad_request(
                f"this state was written by another model or configuration (fingerprint {notes.get('model')!r}; "
                f"this server's is {self.fingerprint!r}); only states exported by a server of the same model load",
                code="incompatible_state",
            )
        try:
            state = MemoryState.from_bytes(data)
        except ValueError as err:
            raise bad_request(str(err), code="invalid_state") from err
        try:  # the model's own check of a memory it is given: sizes, config, dtype, open chunk, token ids
            self.check_memory(state, 1)
        except ValueError as err:
            raise bad_request(str(err), code="invalid_state") from err
        if tokens_read(state) > MAX_TOKENS_READ:
            raise bad_request(f"the state says it has read {tokens_read(state):,} tokens; a session reads at most "
                              f"{MAX_TOKENS_READ:,}", code="invalid_state")
        floats = [t for layer in state.layers for t in (layer.global_memory, layer.global_state, layer.temp)]
        if not all(bool(torch.isfinite(t).all()) for t in floats):
            raise bad_request("the state holds values that are not finite numbers", code="invalid_state")
        appends = notes.get("appends", "0")
        return state, int(appends) if isinstance(appends, str) and re.fullmatch(r"[0-9]{1,18}", appends) else 0

    def recover(self) -> dict[str, int]:
        """Brings the index in line with the state files after a crash (see the module notes)."""
        temporary = [p for p in self.states.iterdir() if p.name.startswith(".")]
        for p in temporary:  # half-written files of writes that never finished
            p.unlink(missing_ok=True)
        files = {p.stem: p for p in self.states.glob("sess_*.safetensors")}
        caught_up = dropped = 0
        for info in self.index.list():
            path = files.pop(info.id, None)
            if path is None:
                self.index.delete(info.id)
                dropped += 1
                continue
            try:
                notes = MemoryState.read_notes(path)
                if notes.get("appends") == str(info.appends):
                    continue
                state = MemoryState.load(path)
            except ValueError as err:
                log.error("session %s: its state file cannot be read: %s", info.id, err)
                continue
            self.index.put(SessionInfo(
                info.id, info.owner, info.created, info.last_used, int(notes["appends"]), tokens_read(state),
                int(state.chunks_closed[0]), path.stat().st_size, notes.get("model", info.fingerprint),
            ))
            caught_up += 1
        if files:  # written for a creation that was never acknowledged, or the index has lost their rows
            orphans = self.directory / ORPHANS_DIR
            orphans.mkdir(mode=0o700, exist_ok=True)
            for path in files.values():
                path.rename(orphans / path.name)
            log.warning("%d state files had no index row (sessions whose creation was never answered, or an index "
                        "that lost rows): moved to %s", len(files), orphans)
        return {"sessions": len(self.index.list()), "caught_up": caught_up, "dropped": dropped,
                "unacknowledged": len(files), "temporary": len(temporary)}

    def close(self) -> None:
        self.index.close()
        self._lock.close()


def _hold_folder(directory: Path):
    """An exclusive lock on the state folder for this process's lifetime: two servers writing one folder would
    break the one-writer-per-session rule. The kernel releases it when the process dies, however it dies."""
    import fcntl

    handle = open(directory / LOCK_FILE, "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ValueError(f"another server is using the state folder {directory}; give each server its own "
                         "--state-dir") from None
    return handle
