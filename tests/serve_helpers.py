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


def run_cli(argv: list[str], log_path: str) -> None:
    """A `cometlm` command in a child process, its standard error (the server's log) going to ``log_path``."""
    import os
    import sys

    from transformers.utils import logging

    from cometlm.cli import main

    logging.disable_progress_bar()  # tqdm's lock is a semaphore that a killed process would leave behind
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 2)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    sys.exit(main(argv))


class ProcessServer:
    """`cometlm serve` in a process forked from a forkserver that has imported torch, transformers and the server
    already, so that a start (model load, app, uvicorn) takes about a second, and a kill is a real kill."""

    PRELOAD = ["torch", "transformers", "fastapi", "uvicorn", "cometlm.cli", "cometlm.loading", "cometlm.model",
               "cometlm.serving", "serve_helpers"]
    _context = None

    def __init__(self, argv: list[str], log_path: Path):
        import multiprocessing

        if ProcessServer._context is None:
            ProcessServer._context = multiprocessing.get_context("forkserver")
            ProcessServer._context.set_forkserver_preload(self.PRELOAD)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.argv, self.log_path = [*argv, "--port", str(self.port)], log_path
        self.process = None

    def start(self, timeout: float = 60.0):
        self.process = self._context.Process(target=run_cli, args=(self.argv, str(self.log_path)), daemon=True)
        self.process.start()
        try:
            wait_until_up(self.url, timeout)
        except TimeoutError:
            self.process.kill()
            raise TimeoutError(f"the server did not start; its log:\n{self.log_path.read_text()[-3000:]}") from None
        return self

    def signal(self, number: int) -> None:
        import os

        os.kill(self.process.pid, number)

    def wait(self, timeout: float = 30.0) -> int | None:
        self.process.join(timeout)
        return self.process.exitcode
