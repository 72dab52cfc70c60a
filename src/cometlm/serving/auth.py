"""API keys: stored hashed, checked in constant time, each naming the owner of the sessions it creates.

A keys file holds one ``name:sha256`` line per key (the SHA-256 of the key, in hex); ``#`` starts a comment. The
server never sees a key in the clear except in the request that carries it, and never logs one. Without a keys file
every client is the owner ``local`` (the server binds to loopback by default).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path

from fastapi import Request

from .errors import unauthorized

LOCAL_OWNER = "local"
_LINE = re.compile(r"^([A-Za-z0-9_.@-]{1,64}):([0-9a-f]{64})$")


def hash_key(key: str) -> str:
    """The line's hash of ``key``: what ``cometlm serve --hash-key NAME`` prints after the name."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class KeyRing:
    """The keys a server accepts, by owner name."""

    def __init__(self, hashes: dict[str, str]):
        if not hashes:
            raise ValueError("a keys file must hold at least one 'name:sha256' line")
        self.hashes = dict(hashes)

    @classmethod
    def load(cls, path: str | Path) -> "KeyRing":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no API keys file at {path}")
        hashes: dict[str, str] = {}
        for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            match = _LINE.match(line)
            if match is None:
                raise ValueError(
                    f"{path}:{number}: expected 'name:sha256' (a name of letters, digits and _.@-, then the key's "
                    "SHA-256 in lower-case hex; make one with `cometlm serve --hash-key NAME`)"
                )
            name, digest = match.groups()
            if name in hashes:
                raise ValueError(f"{path}:{number}: the name {name!r} appears twice")
            hashes[name] = digest
        return cls(hashes)

    def owner(self, authorization: str | None) -> str:
        """The owner named by an ``Authorization: Bearer KEY`` header; raises a 401 ``APIError`` otherwise."""
        if not authorization:
            raise unauthorized("this server needs an API key: send the header 'Authorization: Bearer YOUR_KEY'")
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise unauthorized("the Authorization header must be 'Bearer YOUR_KEY'")
        digest = hash_key(key.strip())
        found = None
        for name, want in self.hashes.items():  # every entry is compared, so the time says nothing about a match
            if hmac.compare_digest(digest, want):
                found = name
        if found is None:
            raise unauthorized("incorrect API key")
        return found


async def request_owner(request: Request) -> str:
    """The FastAPI dependency every /v1 route takes: the owner of the request's key (the log line names it)."""
    keys: KeyRing | None = request.app.state.keys
    name = LOCAL_OWNER if keys is None else keys.owner(request.headers.get("authorization"))
    request.scope.setdefault("cometlm", {})["owner"] = name
    return name
