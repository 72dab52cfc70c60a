"""Server-sent events: an answer's text as it is generated, then its end, as OpenAI streams them (``data: {json}``
events, ``data: [DONE]`` last). The session's write, when the answer is remembered, is durable before the last
event is sent; a client that goes away mid-answer stops its stream, and nothing is written."""

from __future__ import annotations

import asyncio
import json
from typing import AsyncIterator, Callable

from fastapi.responses import StreamingResponse

from .errors import APIError, server_error
from .scheduler import Answer, Generation

Events = AsyncIterator[dict]


def event_stream(events: Events) -> StreamingResponse:
    async def body():
        try:
            async for event in events:
                yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n"
        except APIError as err:  # after the status line went out: OpenAI's clients raise on an error event
            yield f"data: {json.dumps(err.body())}\n\n"
            return
        except Exception:
            yield f"data: {json.dumps(server_error().body())}\n\n"
            raise
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def answer_stream(run: Callable, generation: Generation) -> AsyncIterator[tuple]:
    """Yields ``("text", str)`` pieces while ``run()`` (the service's generate) works, then ``("end", result)``."""
    texts: asyncio.Queue[str] = asyncio.Queue()
    generation.on_text = texts.put_nowait
    task, getter = asyncio.ensure_future(run()), None
    try:
        while True:
            getter = asyncio.ensure_future(texts.get())
            done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                yield "text", getter.result()
                continue
            getter.cancel()
            while not texts.empty():
                yield "text", texts.get_nowait()
            yield "end", task.result()
            return
    finally:
        if getter is not None:
            getter.cancel()
        if not task.done():  # the client went away: stop generating, write nothing
            generation.cancelled = True
            task.add_done_callback(lambda t: t.cancelled() or t.exception())


def usage(answer: Answer) -> dict:
    return {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
            "total_tokens": answer.prompt_tokens + answer.completion_tokens}
