#!/usr/bin/env python
"""A customer's gift-card code, then a week of their shop events, read into a memory session over eight requests; the
server restarts; then a question whose answer was in the first request.

Starts `cometlm serve` (the bundled SmolLM2-135M with the shipped adapter) on a free loopback port, with its
sessions in `--state-dir`, stops it with SIGTERM after the appends, starts it again on the same folder, and asks.
About a minute on a laptop CPU. docs/SERVING.md walks through the same steps with curl.

    python docs/examples/shop_week.py [--state-dir shop-sessions] [--key 70614]
"""

from __future__ import annotations

import argparse
import random
import signal
import socket
import subprocess
import sys
import time

import httpx

DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
ITEMS = ("green tea", "oat milk", "rye bread", "coffee beans", "honey", "olive oil", "dark chocolate", "rice",
         "apples", "cheese")
# The shipped adapter was trained on one task, the passkey test, and recalls what is phrased as a passkey.
INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
         "I will quiz you about the important information there.")
QUESTION = "\nWhat is the pass key? The pass key is"


def note(key: str) -> str:
    """The first request: the customer's gift-card code, phrased as the passkey the shipped adapter was trained on."""
    return f"{INTRO}\nThe pass key is {key}. Remember it. {key} is the pass key.\n"


def week() -> list[list[dict]]:
    """Five events a day, Monday to Sunday."""
    rng = random.Random(7)
    return [[{"day": day, "time": f"{hour:02d}:{rng.randrange(60):02d}", "type": rng.choice(("view", "cart", "order")),
              "item": rng.choice(ITEMS)} for hour in range(9, 18, 2)] for day in DAYS]


def start(state_dir: str, port: int) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, "-m", "cometlm", "serve", "--port", str(port), "--state-dir", state_dir,
                               "--log-level", "warning"])
    for _ in range(1200):
        try:
            httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2)
            return server
        except httpx.TransportError:
            if server.poll() is not None:
                raise SystemExit(f"the server exited with {server.returncode}")
            time.sleep(0.1)
    server.kill()
    raise SystemExit("the server did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", default="shop-sessions")
    parser.add_argument("--key", default="70614", help="the gift-card code in the first request")
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1/sessions"

    server = start(args.state_dir, port)
    session = httpx.post(url, timeout=60).json()["id"]
    stats = httpx.post(f"{url}/{session}/append", json={"text": note(args.key)}, timeout=600).json()
    print(f"{'note':<9} the gift-card code -> {stats['tokens_read']:,} tokens read")
    for events in week():
        stats = httpx.post(f"{url}/{session}/append", json={"events": events}, timeout=600).json()
        print(f"{events[-1]['day']:<9} {len(events)} events -> {stats['tokens_read']:,} tokens read, "
              f"{stats['chunks_closed']} chunks closed, {stats['bytes']:,} bytes on disk")
    before = httpx.post(f"{url}/{session}/ask", json={"question": QUESTION, "max_tokens": 6}, timeout=600).json()
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=120)
    print(f"server stopped (exit code {server.returncode}); starting it again on {args.state_dir}")

    server = start(args.state_dir, port)
    try:
        after = httpx.post(f"{url}/{session}/ask", json={"question": QUESTION, "max_tokens": 6}, timeout=600).json()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
    print(f"asked {QUESTION.strip()!r}\n  before the restart: {before['answer']!r}\n  after the restart:  "
          f"{after['answer']!r}\n  the code in the first request: {args.key}")
    return 0 if after["answer"] == before["answer"] else 1


if __name__ == "__main__":
    sys.exit(main())
