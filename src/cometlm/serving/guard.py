"""The ASGI layer in front of every route: who may call (Host and Origin), body size limits, strict UTF-8 and JSON,
and one log line per request.

A request's Host header must name one of the server's allowed hosts (``ServerSettings.allowed_hosts``), and a
request that carries an Origin header (a browser's) must come from the server's own origin: the API serves no web
pages and allows no cross-origin use, so a page elsewhere cannot make a browser read or write sessions, even with
the body types a browser sends without asking (a form's text, an upload of any type).

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
from urllib.parse import urlsplit

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


def _authority(url: str) -> tuple[str | None, int | None]:
    """(host name, port) of a URL or a Host header's value; (None, None) where it has none."""
    try:
        parts = urlsplit(url if "//" in url else "//" + url)
        return parts.hostname, parts.port
    except ValueError:  # a port that is not a number
        return None, None


def check_caller(headers: dict, allowed_hosts: tuple[str, ...] | None) -> None:
    """Raises an APIError unless the Host header is allowed and any Origin header is the server's own origin."""
    host_header = headers.get(b"host", b"").decode("latin-1")
    host = _authority(host_header)
    if allowed_hosts is not None and host[0] not in allowed_hosts:
        raise APIError(400, f"this server answers to {', '.join(allowed_hosts)} (the request's Host header says "
                       f"{host_header[:100]!r}); `cometlm serve --allowed-host NAME` adds a name",
                       code="invalid_host")
    origin = headers.get(b"origin")
    if origin is not None and (host[0] is None or _authority(origin.decode("latin-1")) != host):
        raise APIError(403, "a request from a web page of another origin is refused: this API allows no "
                       "cross-origin use", type="permission_error", code="cross_origin")


class RequestGuard:
    def __init__(self, app, max_body_bytes: int, max_state_bytes: int,
                 allowed_hosts: tuple[str, ...] | None = None):
        self.app, self.max_body_bytes, self.max_state_bytes = app, max_body_bytes, max_state_bytes
        self.allowed_hosts = allowed_hosts

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
            check_caller(dict(scope["headers"]), self.allowed_hosts)
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
