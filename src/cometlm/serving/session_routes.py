"""Memory sessions: ``/v1/sessions`` to create and list, and per session: stats, ``append`` (text, chat messages
or events, read without generating), ``ask`` (generate from the memory, optionally keeping question and answer),
``fork``, ``state`` (export the state file), delete; ``/v1/sessions/import`` makes a session of a state file."""

from __future__ import annotations

import secrets
import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from .auth import request_owner
from .index import SessionInfo
from .rendering import render_events, render_messages
from .scheduler import Generation
from .schemas import AppendRequest, AskRequest, CreateSessionRequest
from .streams import answer_stream, event_stream, usage

router = APIRouter(prefix="/v1/sessions", tags=["memory sessions"])


def session_body(info: SessionInfo, request: Request) -> dict:
    return {"id": info.id, "object": "session", "model": request.app.state.model_id, "created": info.created,
            "last_used": info.last_used, "appends": info.appends, "tokens_read": info.tokens_read,
            "chunks_closed": info.chunks_closed, "bytes": info.bytes, "fingerprint": info.fingerprint}


@router.post("", status_code=201)
async def create_session(request: Request, body: CreateSessionRequest | None = None,
                         owner: str = Depends(request_owner)):
    return session_body(await request.app.state.service.create(owner), request)


@router.get("")
async def list_sessions(request: Request, owner: str = Depends(request_owner)):
    infos = await request.app.state.service.sessions(owner)
    return {"object": "list", "data": [session_body(info, request) for info in infos]}


STATE_FILE_BODY = {"requestBody": {"required": True, "content": {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


@router.post("/import", status_code=201, openapi_extra=STATE_FILE_BODY)
async def import_session(request: Request, owner: str = Depends(request_owner)):
    """The body is a state file as ``GET /v1/sessions/{id}/state`` returns it (safetensors; never unpickled)."""
    info = await request.app.state.service.import_state(owner, await request.body())
    return session_body(info, request)


@router.get("/{session_id}")
async def session_stats(session_id: str, request: Request, owner: str = Depends(request_owner)):
    return session_body(await request.app.state.service.info(owner, session_id), request)


@router.delete("/{session_id}")
async def delete_session(session_id: str, request: Request, owner: str = Depends(request_owner)):
    await request.app.state.service.delete(owner, session_id)
    return {"id": session_id, "object": "session.deleted", "deleted": True}


@router.post("/{session_id}/append")
async def append(session_id: str, body: AppendRequest, request: Request, owner: str = Depends(request_owner)):
    service = request.app.state.service
    await service.info(owner, session_id)
    later = None
    if body.text is not None:
        ids = await service.tokenize(body.text, "text")
    elif body.events is not None:
        ids = await service.tokenize(render_events(body.events), "events")
    else:
        messages = [m.as_dict() for m in body.messages]
        ids, later = await service.tokenize_turn(
            lambda continuing: render_messages(service.tokenizer, messages, False, continuing), "messages")
    return session_body(await service.append(owner, session_id, ids, body.expect_appends, later), request)


@router.post("/{session_id}/ask")
async def ask(session_id: str, body: AskRequest, request: Request, owner: str = Depends(request_owner)):
    """Generates from the session's memory (greedy unless a temperature is given)."""
    service, settings = request.app.state.service, request.app.state.settings
    await service.info(owner, session_id)
    later = None
    if body.question is not None:
        ids = await service.tokenize(body.question, "question")
    else:
        messages = [m.as_dict() for m in body.messages]
        ids, later = await service.tokenize_turn(
            lambda continuing: render_messages(service.tokenizer, messages, True, continuing), "messages")
    generation = Generation(ids, body.sampling(0.0), body.new_tokens(settings.max_new_tokens, settings.max_new_tokens),
                            body.stops(), later_prompt=later)
    head = {"id": "ask-" + secrets.token_hex(12), "object": "session.answer", "created": int(time.time()),
            "session_id": session_id}

    def run():
        return service.generate(owner, session_id, generation, body.remember)

    def end(answer, after) -> dict:
        return {**head, "finish_reason": answer.finish_reason, "usage": usage(answer),
                "session": session_body(after, request)}

    if not body.stream:
        answer, after = await run()
        return {**end(answer, after), "answer": answer.text}

    async def events():
        async for kind, value in answer_stream(run, generation):
            yield {**head, "delta": value} if kind == "text" else end(*value)

    return event_stream(events())


@router.post("/{session_id}/fork", status_code=201)
async def fork(session_id: str, request: Request, owner: str = Depends(request_owner)):
    return session_body(await request.app.state.service.fork(owner, session_id), request)


@router.get("/{session_id}/state", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}, "description": "the state file"}})
async def export_state(session_id: str, request: Request, owner: str = Depends(request_owner)):
    data = await request.app.state.service.export(owner, session_id)
    return Response(data, media_type="application/octet-stream",
                    headers={"Content-Disposition": f'attachment; filename="{session_id}.safetensors"'})
