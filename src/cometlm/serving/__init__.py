"""``cometlm serve``: CoMeT memories served over HTTP, one durable memory state per session.

Reading order: ``settings`` (limits) -> ``errors`` (OpenAI-style refusals) -> ``auth`` (hashed keys) -> ``store``
(state files, ``index`` SQLite, ``cache`` LRU) -> ``scheduler`` (the model thread that batches sessions;
``decoding`` for an answer's text) -> ``service`` (the operations, per-session locks) -> ``schemas`` and
``rendering`` (request bodies, what is read) -> ``openai_routes``, ``session_routes``, ``streams`` -> ``guard``
(body limits, the request log) -> ``app`` (wiring, uvicorn). docs/SERVING.md describes the API.
"""

from .app import build_app, serve
from .settings import ServerSettings

__all__ = ["ServerSettings", "build_app", "serve"]
