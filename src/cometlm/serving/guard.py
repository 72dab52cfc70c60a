"""The ASGI layer in front of every route: body size limits, strict UTF-8 and JSON, and one log line per request.

A request body is read up to its limit (a state upload may be as large as a state file, anything else
``max_body_bytes``), then checked: a JSON body must be UTF-8 without lone surrogates and strict JSON (no NaN or
Infinity, no number too large for a float). A refusal is an OpenAI-style error and happens before any route runs,
so it changes nothing. The log line says method, path, status, milliseconds and the key's owner name, never the key
or the content.
"""

from __future__ import annotations

import json
import logging
import math
import time

from .errors import APIError, bad_request, too_large

log = logging.getLogger("cometlm.serve")

RAW_BODY_PATHS = ("/v1/sessions/import",)


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is too large")
    return value


def check_json(body: bytes) -> None:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise bad_request(f"the request body is not valid UTF-8 ({err.reason} at byte {err.start})",
                          code="invalid_utf8") from err
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite)
    except ValueError as err:
        raise bad_request(f"the request body is not valid JSON: {err}", code="invalid_json") from err
    except RecursionError as err:  # no request of this API nests more than a few levels
        raise bad_request("the request body's JSON is nested too deeply", code="invalid_json") from err
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except RecursionError as err:
        raise bad_request("the request body's JSON is nested too deeply", code="invalid_json") from err
    except UnicodeEncodeError as err:
        raise bad_request("the request body holds a lone surrogate (\\ud800-\\udfff): not valid Unicode text",
                          code="invalid_utf8") from err


class RequestGuard:
    def __init__(self, app, max_body_bytes: int, max_state_bytes: int):
        self.app, self.max_body_bytes, self.max_state_bytes = app, max_body_bytes, max_state_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [0]
        scope.setdefault("cometlm", {})

        async def logged_send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                owner = scope["cometlm"].get("owner", "-")
                log.info('%s %s %d %.1fms key=%s', scope["method"], scope["path"], status[0],
                         1000 * (time.perf_counter() - start), owner)
            await send(message)

        try:
            body, receive = await self._read_body(scope, receive)
        except APIError as err:
            return await _send_error(err, logged_send)
        if body is None:  # the client went away
            return
        return await self.app(scope, receive, logged_send)

    async def _read_body(self, scope, receive):
        raw = scope["path"] in RAW_BODY_PATHS
        limit = self.max_state_bytes if raw else self.max_body_bytes
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large("the request body", limit)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None, receive
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_large("the request body", limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body and not raw and scope["method"] in ("POST", "PUT", "PATCH"):
            kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            if kind != b"application/json" and not kind.endswith(b"+json"):
                raise APIError(415, "send the body as JSON, with the header 'Content-Type: application/json'",
                               code="unsupported_media_type")
            check_json(body)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return body, replay


async def _send_error(err: APIError, send) -> None:
    payload = json.dumps(err.body()).encode()
    await send({"type": "http.response.start", "status": err.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
