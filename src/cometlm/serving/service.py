"""What the routes ask for, as operations on sessions: create, append, generate (with or without a session, keeping
the answer or not), fork, export, import, delete, stats.

Requests to one session are serialised by that session's lock (FIFO, so two appends land in the order they
arrived); requests to different sessions meet in the scheduler's batches. A write is acknowledged (the operation
returns) only after its state file is durable. Tokenising and disk work run in worker threads, the model in the
scheduler's thread, so the event loop only routes.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from contextlib import asynccontextmanager

from ..bundled import encode
from .errors import bad_request, conflict, quota
from .index import SessionInfo
from .scheduler import Answer, Generation, Scheduler
from .settings import ServerSettings
from .store import SessionStore

to_thread = asyncio.to_thread


class MemoryService:
    def __init__(self, model, store: SessionStore, scheduler: Scheduler, settings: ServerSettings):
        self.model, self.store, self.scheduler, self.settings = model, store, scheduler, settings
        self.tokenizer = model.tokenizer
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._create_lock = asyncio.Lock()

    # ---------------------------------------------------------------------------------------------------------
    # Locks and lookups

    @asynccontextmanager
    async def _session(self, owner: str, session_id: str):
        """Holds the session's lock; yields its index row as it is once the lock is held (404 if it went away)."""
        await to_thread(self.store.find, owner, session_id)  # no lock is made for ids that do not exist
        lock, users = self._locks.get(session_id, (asyncio.Lock(), 0))
        self._locks[session_id] = (lock, users + 1)
        try:
            async with lock:
                yield await to_thread(self.store.find, owner, session_id)
        finally:
            lock, users = self._locks[session_id]
            if users == 1:
                del self._locks[session_id]
            else:
                self._locks[session_id] = (lock, users - 1)

    async def info(self, owner: str, session_id: str) -> SessionInfo:
        return await to_thread(self.store.find, owner, session_id)

    async def sessions(self, owner: str) -> list[SessionInfo]:
        return await to_thread(self.store.index.list, owner)

    async def tokenize(self, text: str, param: str) -> list[int]:
        ids = await to_thread(encode, self.tokenizer, text)
        if len(ids) > self.settings.max_append_tokens:
            raise bad_request(f"{param} is {len(ids):,} tokens; this server reads at most "
                              f"{self.settings.max_append_tokens:,} per request", param=param, code="too_many_tokens")
        return ids

    async def tokenize_turn(self, render: Callable[[bool], str], param: str) -> tuple[list[int], list[int] | None]:
        """A chat turn's token ids as rendered into a session that has read nothing (``render(False)``: a template
        adds its default system prompt) and, where it differs, into one that has (``render(True)``). Which one is
        read is decided under the session's lock (``later_ids`` of ``append``, ``Generation.later_prompt``), so two
        concurrent first turns cannot both carry the default prompt."""
        first, later = render(False), render(True)
        return await self.tokenize(first, param), None if later == first else await self.tokenize(later, param)

    # ---------------------------------------------------------------------------------------------------------
    # Sessions

    async def _new_session(self, owner: str, state, appends: int) -> SessionInfo:
        async with self._create_lock:  # so that concurrent creations cannot pass the limit together
            if await to_thread(self.store.index.count, owner) >= self.settings.max_sessions_per_key:
                raise quota(f"this key holds {self.settings.max_sessions_per_key:,} sessions, the most this server "
                            "allows; delete some first", code="too_many_sessions")
            session_id = "sess_" + secrets.token_hex(16)
            return await to_thread(self.store.write, session_id, owner, int(time.time()), state, appends)

    async def create(self, owner: str) -> SessionInfo:
        return await self._new_session(owner, self.store.template, 0)

    async def append(self, owner: str, session_id: str, ids: list[int], expect_appends: int | None,
                     later_ids: list[int] | None = None) -> SessionInfo:
        """Reads ``ids`` into the session (``later_ids`` instead if given and the session has read something)."""
        if not ids:
            raise bad_request("there is nothing to append (the text is empty)", code="empty_append")
        async with self._session(owner, session_id) as info:
            if expect_appends is not None and expect_appends != info.appends:
                raise conflict(f"session {session_id} has {info.appends} appends, not {expect_appends}: another "
                               "write landed first (or this one already did)", code="appends_mismatch",
                               param="expect_appends")
            if later_ids is not None and self.continuing(info):
                ids = later_ids
            state = await to_thread(self.store.load, info)
            state = await self.scheduler.read(state, ids)
            return await to_thread(self.store.write, info.id, owner, info.created, state, info.appends + 1)

    async def fork(self, owner: str, session_id: str) -> SessionInfo:
        async with self._session(owner, session_id) as info:
            state = await to_thread(self.store.load, info)
            return await self._new_session(owner, state, info.appends)

    async def export(self, owner: str, session_id: str) -> bytes:
        async with self._session(owner, session_id) as info:
            return await to_thread(self.store.export, info)

    async def import_state(self, owner: str, data: bytes) -> SessionInfo:
        state, appends = await to_thread(self.store.check_upload, data)
        return await self._new_session(owner, state, appends)

    async def delete(self, owner: str, session_id: str) -> None:
        async with self._session(owner, session_id) as info:
            await to_thread(self.store.delete, info)

    # ---------------------------------------------------------------------------------------------------------
    # Generation

    async def generate(self, owner: str, session_id: str | None, generation: Generation,
                       remember: bool) -> tuple[Answer, SessionInfo | None]:
        """The answer to ``generation.prompt`` read after the session's memory (a fresh one without a session;
        ``generation.later_prompt`` instead, where given, after a memory that has read something). With ``remember``
        the prompt and the answer stay in the session's memory (acknowledged once durable)."""
        if not generation.prompt:
            raise bad_request("the prompt is empty", param="prompt", code="empty_prompt")
        if session_id is None:
            if remember:
                raise bad_request("remember needs a session", param="remember")
            return await self.scheduler.generate(self.store.template, generation), None
        async with self._session(owner, session_id) as info:
            if generation.later_prompt is not None and self.continuing(info):
                generation.prompt = generation.later_prompt
            state = await to_thread(self.store.load, info)
            answer = await self.scheduler.generate(state, generation)
            if answer.finish_reason == "cancelled":
                return answer, info
            if remember:
                info = await to_thread(self.store.write, info.id, owner, info.created, answer.state, info.appends + 1)
            else:
                await to_thread(self.store.index.touch, info.id, int(time.time()))
            return answer, info

    def continuing(self, info: SessionInfo | None) -> bool:
        """Whether a session has read anything (its chat turns then skip the template's default system prompt)."""
        return info is not None and info.tokens_read > 0
