"""`cometlm serve`: the HTTP server (OpenAI-compatible endpoints and memory sessions; docs/SERVING.md)."""

from __future__ import annotations

import sys

from .options import add_model_options, load_model, model_options, number_type, use_default_adapter

DEFAULT_STATE_DIR = "cometlm-sessions"


def register(sub) -> None:
    serve = sub.add_parser(
        "serve", help="serve memory sessions and an OpenAI-compatible API over HTTP",
        description="Serves the model over HTTP: OpenAI-compatible /v1/completions and /v1/chat/completions, and "
        "memory sessions whose states live on disk (/v1/sessions). Without --model, --comet and a size option "
        "it serves the bundled SmolLM2 with the default adapter shipped with cometlm (bundled.DEFAULT_ADAPTER). "
        "Binds to 127.0.0.1 unless --host says otherwise; SIGTERM finishes the requests in flight, then stops.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=number_type(int, 1, 65535), default=8000, help="port (default 8000)")
    serve.add_argument("--allowed-host", metavar="NAME", action="append", default=None,
                       help="a name clients reach the server by, which requests' Host header may give (repeat for "
                       "several). Default: localhost, 127.0.0.1 and ::1 on a loopback address, where other names "
                       "are refused (a web page that makes its domain resolve here gives its own name); any name on "
                       "another address")
    serve.add_argument("--state-dir", default=DEFAULT_STATE_DIR,
                       help=f"where sessions live: index.sqlite and states/ (default ./{DEFAULT_STATE_DIR})")
    serve.add_argument("--api-keys", metavar="FILE",
                       help="keys file, one 'name:sha256-of-key' line per key (see --hash-key); each key sees only "
                       "its own sessions. Without it every client is 'local'")
    serve.add_argument("--hash-key", metavar="NAME",
                       help="print the keys-file line for NAME and the key read from standard input, then exit")
    serve.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                       help="info (default) logs one line per request: method, path, status, ms, key name")
    limits = serve.add_argument_group("limits")
    limits.add_argument("--cache-mib", type=int, default=1024, help="RAM for memory states, MiB (default 1024)")
    limits.add_argument("--max-body-kib", type=int, default=1024, help="largest JSON request body, KiB (default 1024)")
    limits.add_argument("--max-append-tokens", type=int, default=32768, help="tokens per append or prompt (default 32768)")
    limits.add_argument("--max-new-tokens", type=int, default=512, help="tokens generated per request (default 512)")
    limits.add_argument("--max-sessions-per-key", type=int, default=1000, help="sessions per key (default 1000)")
    limits.add_argument("--batch-window-ms", type=float, default=5.0,
                        help="how long requests of different sessions are collected into one batch (default 5)")
    limits.add_argument("--max-batch", type=int, default=16, help="requests per batch (default 16)")
    add_model_options(serve, default_adapter=True)
    serve.set_defaults(run=cmd_serve)


def cmd_serve(args) -> int:
    if args.hash_key is not None:
        return hash_key_line(args.hash_key)
    import logging
    from pathlib import Path

    from cometlm.runtime import limit_heap_fragmentation
    from cometlm.serving import ServerSettings, build_app, serve
    from cometlm.serving.settings import LOOPBACK_HOSTS

    limit_heap_fragmentation()  # before any thread starts
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    use_default_adapter(args)
    settings = ServerSettings(
        state_dir=Path(args.state_dir), api_keys=args.api_keys, cache_bytes=args.cache_mib << 20,
        max_body_bytes=args.max_body_kib << 10, max_append_tokens=args.max_append_tokens,
        max_new_tokens=args.max_new_tokens, max_sessions_per_key=args.max_sessions_per_key,
        batch_window_ms=args.batch_window_ms, max_batch=args.max_batch,
        allowed_hosts=allowed_hosts(args.host, args.allowed_host),
    )
    if args.host not in LOOPBACK_HOSTS and args.api_keys is None:
        logging.getLogger("cometlm.serve").warning(
            "binding to %s without --api-keys: anyone who can reach this port reads and writes every session",
            args.host)
    check_before_loading(settings, args.host, args.port)
    model = load_model(args)
    app = build_app(model, settings, model_id=Path(model_options(args).name).name)
    serve(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def allowed_hosts(host: str, names: list[str] | None) -> tuple[str, ...] | None:
    """The Host names a server bound to ``host`` answers to: this machine's names and ``names``, plus ``host`` where
    it is one address; None (any) on a non-loopback address when no name is given."""
    from cometlm.serving.settings import LOOPBACK_HOSTS

    if host not in LOOPBACK_HOSTS and not names:
        return None
    bound = () if host in ("0.0.0.0", "::", "") else (host,)
    return tuple(dict.fromkeys((*LOOPBACK_HOSTS, *bound, *(names or ()))))


def check_before_loading(settings, host: str, port: int) -> None:
    """What would stop the server after the model has loaded (a slow step) fails first: the keys file, a file where
    the state folder belongs, an address that cannot be listened on (taken, or not this machine's)."""
    import socket

    from cometlm.serving.auth import KeyRing

    if settings.api_keys is not None:
        KeyRing.load(settings.api_keys)
    if settings.state_dir.exists() and not settings.state_dir.is_dir():
        raise NotADirectoryError(f"--state-dir {settings.state_dir} is a file, not a folder")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as err:
            raise OSError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None


def hash_key_line(name: str) -> int:
    """`openssl rand -hex 24 | tee alice.key | cometlm serve --hash-key alice >> keys.txt`."""
    import re

    from cometlm.serving.auth import hash_key

    if not re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}", name):
        raise ValueError(f"a key name is 1-64 letters, digits or _.@- (got {name!r})")
    key = sys.stdin.readline().strip()
    if len(key) < 16:
        raise ValueError("read a key of at least 16 characters from standard input (e.g. `openssl rand -hex 24 | ...`)")
    print(f"{name}:{hash_key(key)}")
    return 0
