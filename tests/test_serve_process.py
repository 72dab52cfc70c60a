"""`cometlm serve` as a process: acknowledged appends survive SIGKILL at random moments, SIGTERM lets requests in
flight finish, and a state folder written by another model is refused."""

from __future__ import annotations

import io
import json
import random
import signal
import threading
import time

import httpx
import pytest
import torch

from cometlm import MemoryState
from cometlm.bundled import encode
from cometlm.loading import ModelOptions, load_model
from conftest import SMALL
from serve_helpers import TINY_OPTIONS, ProcessServer, disk

KILLS = 20
WORDS = "tea milk bread parcel order refund card coffee basket receipt voucher ribbon".split()


def serve_argv(model_dir: str, state_dir, *more: str) -> list[str]:
    # float32 as the tests' reference readings (the default, auto, is bfloat16 on hardware that computes it natively)
    return ["serve", "--model", model_dir, *TINY_OPTIONS, "--dtype", "float32", "--threads", "1", "--state-dir",
            str(state_dir), "--batch-window-ms", "0", *more]


def test_acknowledged_appends_survive_sigkill(tiny_model_dir, tmp_path, one_thread):
    """Kills the server at random moments during a stream of appends, restarts it each time, and finds every session
    holding exactly the appends it acknowledged (and the one in flight at the kill, when the server says it landed:
    an append can be durable before its answer is sent; `appends` tells the client which)."""
    state_dir = tmp_path / "sessions"
    server = ProcessServer(serve_argv(tiny_model_dir, state_dir), tmp_path / "server.log").start()
    http = httpx.Client(base_url=server.url, timeout=10)
    sids = [http.post("/v1/sessions").json()["id"] for _ in range(3)]
    tokenizer = load_model(ModelOptions(base=tiny_model_dir, config=SMALL)).tokenizer
    rng = random.Random(0)
    acked: dict[str, list[str]] = {sid: [] for sid in sids}
    in_flight: tuple[str, str] | None = None
    landed_in_flight = kills = appends = 0

    def check_against_acknowledged():
        nonlocal in_flight, landed_in_flight
        for sid in sids:
            stats = http.get(f"/v1/sessions/{sid}").json()
            unknown = in_flight is not None and in_flight[0] == sid
            assert len(acked[sid]) <= stats["appends"] <= len(acked[sid]) + unknown, (sid, stats, len(acked[sid]))
            if stats["appends"] > len(acked[sid]):
                acked[sid].append(in_flight[1])
                landed_in_flight += 1
            assert stats["tokens_read"] == sum(len(encode(tokenizer, t)) for t in acked[sid])
        in_flight = None

    deadline = time.monotonic() + 150
    while kills < KILLS:
        assert time.monotonic() < deadline, f"only {kills} kills in time"
        threading.Timer(rng.uniform(0.02, 0.25), server.signal, (signal.SIGKILL,)).start()
        try:
            for i in range(10_000):
                sid = sids[i % len(sids)]
                text = f" {sid[-3:]}#{len(acked[sid])}: " + " ".join(rng.choices(WORDS, k=rng.randint(1, 9))) + "."
                in_flight = (sid, text)
                response = http.post(f"/v1/sessions/{sid}/append", json={"text": text})
                assert response.status_code == 200, response.text
                acked[sid].append(text)
                in_flight = None
                appends += 1
        except httpx.TransportError:
            pass
        assert server.wait() == -signal.SIGKILL
        kills += 1
        server.start()
        check_against_acknowledged()

    model = load_model(ModelOptions(base=tiny_model_dir, config=SMALL))
    with torch.inference_mode():
        for sid in sids:
            got = MemoryState.from_bytes(http.get(f"/v1/sessions/{sid}/state").content).tensors()
            state = model.init_memory(1)
            for text in acked[sid]:
                before, state = state, model.ingest(torch.tensor([encode(tokenizer, text)]), state)
            assert len(acked[sid]) > 2, acked
            want, fewer = state.tensors(), before.tensors()
            assert all(torch.equal(got[k], want[k]) for k in want), sid
            assert not all(torch.equal(got[k], fewer[k]) for k in want)  # a lost append would show
    print(f"{kills} kills, {appends + landed_in_flight} appends acknowledged, {landed_in_flight} landed unanswered")

    # The same folder under a model of another configuration: its sessions are refused, and nothing changes.
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    before = disk(state_dir)
    other = ProcessServer(serve_argv(tiny_model_dir, state_dir, "--chunk-size", "16"), tmp_path / "other.log").start()
    try:
        for method, path, body in (("POST", "/append", {"text": "x"}), ("GET", "/state", None),
                                   ("POST", "/ask", {"question": "x", "max_tokens": 2})):
            response = httpx.request(method, f"{other.url}/v1/sessions/{sids[0]}{path}", json=body, timeout=10)
            error = response.json()["error"]
            assert response.status_code == 409 and error["code"] == "incompatible_state", response.text
            assert "another model or configuration" in error["message"]
    finally:
        other.signal(signal.SIGTERM)
        assert other.wait() == 0
    assert disk(state_dir) == before


def test_sigterm_lets_requests_in_flight_finish(tiny_model_dir, tmp_path):
    state_dir = tmp_path / "sessions"
    log = tmp_path / "server.log"
    server = ProcessServer(serve_argv(tiny_model_dir, state_dir), log).start()
    http = httpx.Client(base_url=server.url, timeout=30)
    sid = http.post("/v1/sessions").json()["id"]
    http.post(f"/v1/sessions/{sid}/append", json={"text": "The parcel left the depot on Monday."})
    events, after_signal = [], 0
    body = {"question": " When did the parcel leave?", "max_tokens": 200, "remember": True, "stream": True}
    with http.stream("POST", f"/v1/sessions/{sid}/ask", json=body) as response:
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            if not events:
                server.signal(signal.SIGTERM)
            elif line != "data: [DONE]":
                after_signal += 1
            events.append(line[6:])
    assert events[-1] == "[DONE]" and after_signal > 1, events[-3:]
    final = json.loads(events[-2])
    assert final["finish_reason"] == "length" and final["session"]["appends"] == 2
    assert server.wait() == 0
    assert "stopped cleanly: 1 sessions on disk" in log.read_text()
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url + "/v1/models", timeout=2)
    server.start()
    try:
        stats = httpx.get(f"{server.url}/v1/sessions/{sid}", timeout=10).json()
        assert stats["appends"] == 2 and stats["tokens_read"] == final["session"]["tokens_read"]
    finally:
        server.signal(signal.SIGTERM)
        assert server.wait() == 0


def test_hash_key_prints_a_keys_file_line(tmp_path, monkeypatch, capsys):
    from cometlm.cli import build_parser, main
    from cometlm.serving.auth import KeyRing

    assert build_parser().parse_args(["serve"]).host == "127.0.0.1"  # loopback unless told otherwise
    monkeypatch.setattr("sys.stdin", io.StringIO("a-long-random-secret-key\n"))
    assert main(["serve", "--hash-key", "alice"]) == 0
    line = capsys.readouterr().out
    assert "secret" not in line
    (tmp_path / "keys").write_text(line)
    assert KeyRing.load(tmp_path / "keys").owner("Bearer a-long-random-secret-key") == "alice"
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["serve", "--hash-key", "alice"]) == 2
