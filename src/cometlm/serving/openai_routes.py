"""The OpenAI-compatible endpoints: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions``,
streaming or not. A ``session_id`` (body field, or the ``X-Session-Id`` header) answers from that session's memory;
without one, the prompt is read through a fresh memory. With a session a chat request reads only its new turn (the
messages after the last assistant message) and, unless ``remember`` is false, keeps the turn and the answer."""

from __future__ import annotations

import secrets
import time

from fastapi import APIRouter, Depends, Header, Request

from .auth import request_owner
from .errors import APIError, bad_request
from .rendering import new_turn, render_messages
from .scheduler import Generation
from .schemas import ChatRequest, CompletionRequest
from .streams import answer_stream, event_stream, usage

router = APIRouter(tags=["OpenAI-compatible"])

COMPLETION_DEFAULT_TOKENS = 16  # OpenAI's default for /v1/completions
SESSION_HEADER = "X-Session-Id"


def served_model(request: Request, name: str) -> None:
    want = request.app.state.model_id
    if name != want:
        raise APIError(404, f"the model {name!r} does not exist; this server serves {want!r}", param="model",
                       code="model_not_found")


def session_of(body_value: str | None, header_value: str | None) -> str | None:
    if body_value is not None and header_value is not None and body_value != header_value:
        raise bad_request(f"session_id and the {SESSION_HEADER} header name different sessions", param="session_id")
    return body_value if body_value is not None else header_value


@router.get("/v1/models")
async def list_models(request: Request, owner: str = Depends(request_owner)):
    return {"object": "list", "data": [{"id": request.app.state.model_id, "object": "model",
                                        "created": request.app.state.started, "owned_by": "cometlm"}]}


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request, owner: str = Depends(request_owner),
                      x_session_id: str | None = Header(None)):
    served_model(request, body.model)
    service, settings = request.app.state.service, request.app.state.settings
    session_id = session_of(body.session_id, x_session_id)
    if session_id is not None:
        await service.info(owner, session_id)
    generation = Generation(await service.tokenize(body.prompt, "prompt"), body.sampling(1.0),
                            body.new_tokens(settings.max_new_tokens, COMPLETION_DEFAULT_TOKENS), body.stops())
    remember = bool(body.remember)
    head = {"id": "cmpl-" + secrets.token_hex(12), "object": "text_completion", "created": int(time.time()),
            "model": body.model}

    def run():
        return service.generate(owner, session_id, generation, remember)

    if not body.stream:
        answer, _ = await run()
        return {**head, "choices": [{"index": 0, "text": answer.text, "logprobs": None,
                                     "finish_reason": answer.finish_reason}], "usage": usage(answer)}

    async def events():
        async for kind, value in answer_stream(run, generation):
            choice = {"index": 0, "text": value if kind == "text" else "", "logprobs": None,
                      "finish_reason": None if kind == "text" else value[0].finish_reason}
            yield {**head, "choices": [choice]}
            if kind == "end" and body.stream_options and body.stream_options.include_usage:
                yield {**head, "choices": [], "usage": usage(value[0])}

    return event_stream(events())


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatRequest, request: Request, owner: str = Depends(request_owner),
                           x_session_id: str | None = Header(None)):
    served_model(request, body.model)
    service, settings = request.app.state.service, request.app.state.settings
    session_id = session_of(body.session_id, x_session_id)
    info = await service.info(owner, session_id) if session_id is not None else None
    messages = [m.as_dict() for m in body.messages]
    turn = new_turn(messages) if info is not None else messages
    if not turn:
        raise bad_request("the last message is the assistant's: there is no new turn to answer", param="messages")
    ids, later = await service.tokenize_turn(
        lambda continuing: render_messages(service.tokenizer, turn, True, continuing), "messages")
    generation = Generation(ids, body.sampling(1.0), body.new_tokens(settings.max_new_tokens, settings.max_new_tokens),
                            body.stops(), later_prompt=later)
    remember = body.remember if body.remember is not None else info is not None
    head = {"id": "chatcmpl-" + secrets.token_hex(12), "object": "chat.completion", "created": int(time.time()),
            "model": body.model}

    def run():
        return service.generate(owner, session_id, generation, remember)

    if not body.stream:
        answer, _ = await run()
        message = {"role": "assistant", "content": answer.text}
        return {**head, "choices": [{"index": 0, "message": message, "finish_reason": answer.finish_reason}],
                "usage": usage(answer)}

    async def events():
        chunk = {**head, "object": "chat.completion.chunk"}
        yield {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
        async for kind, value in answer_stream(run, generation):
            if kind == "text":
                yield {**chunk, "choices": [{"index": 0, "delta": {"content": value}, "finish_reason": None}]}
                continue
            yield {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": value[0].finish_reason}]}
            if body.stream_options and body.stream_options.include_usage:
                yield {**chunk, "choices": [], "usage": usage(value[0])}

    return event_stream(events())
