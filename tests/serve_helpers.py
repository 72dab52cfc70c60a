"""Helpers for the server tests: a real server on a free loopback port, in a thread of the test process or in a
process of its own, and what its state folder holds."""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
from pathlib import Path

import httpx

from conftest import SMALL

TINY_OPTIONS = ["--chunk-size", str(SMALL.chunk_size), "--global-slots", str(SMALL.global_slots), "--temp-stride",
                str(SMALL.temp_stride), "--temp-capacity", str(SMALL.temp_capacity), "--adapter-rank",
                str(SMALL.adapter_rank)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, timeout: float = 60.0, headers=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url + "/v1/models", timeout=2, headers=headers)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise TimeoutError(f"no server at {url} after {timeout} s")


class ThreadServer:
    """``build_app`` on uvicorn in a daemon thread of this process."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, access_log=False,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_until_up(self.url)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def disk(state_dir: Path):
    """Everything a session's data is on disk: the state files' bytes and the index rows."""
    files = {p.name: p.read_bytes() for p in sorted((state_dir / "states").iterdir())}
    with sqlite3.connect(state_dir / "index.sqlite") as db:
        rows = db.execute("SELECT * FROM sessions ORDER BY id").fetchall()
    return files, rows
