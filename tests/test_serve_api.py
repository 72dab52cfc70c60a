"""`cometlm serve` over real HTTP on loopback (a tiny random model, a server in a thread of this process): the
official openai client, memory sessions, keys, limits, every kind of bad request, and concurrency."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

from cometlm import MemoryState
from cometlm.bundled import encode
from cometlm.loading import ModelOptions, load_model
from cometlm.serving import ServerSettings, build_app
from cometlm.serving.auth import hash_key
from cometlm.serving.rendering import render_events, render_messages
from conftest import SMALL, assert_states_equal
from serve_helpers import ThreadServer, disk

KEYS = {"alice": "alice-key-0123456789", "bob": "bob-key-0123456789ab", "carol": "carol-key-0123456789"}
LIMITS = dict(max_body_bytes=64 << 10, max_append_tokens=200, max_new_tokens=40, max_sessions_per_key=100)
TEXT = "The shop opened at nine. A customer bought green tea and asked about the loyalty card. " * 2


class Server:
    def __init__(self, tiny_model_dir, tmp_path):
        self.model = load_model(ModelOptions(base=tiny_model_dir, config=SMALL))
        keys = tmp_path / "keys.txt"
        keys.write_text("".join(f"{name}:{hash_key(key)}\n" for name, key in KEYS.items()))
        self.state_dir = tmp_path / "sessions"
        self.settings = ServerSettings(state_dir=self.state_dir, api_keys=keys, batch_window_ms=2, **LIMITS)
        self.app = build_app(self.model, self.settings, "tiny")
        self.thread = ThreadServer(self.app)
        self.url = self.thread.url
        self.tokenizer = self.model.tokenizer
        self.eos = self.app.state.scheduler.eos_ids

    def client(self, who: str = "alice") -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, headers={"Authorization": f"Bearer {KEYS[who]}"})

    def session(self, http, text: str | None = None) -> str:
        sid = http.post("/v1/sessions").json()["id"]
        if text is not None:
            assert http.post(f"/v1/sessions/{sid}/append", json={"text": text}).status_code == 200
        return sid

    def exported(self, http, sid) -> MemoryState:
        response = http.get(f"/v1/sessions/{sid}/state")
        assert response.status_code == 200
        return MemoryState.from_bytes(response.content)

    @torch.inference_mode()
    def reference(self, *texts: str) -> MemoryState:
        """A memory that read ``texts`` one request at a time, as the library reads them."""
        state = self.model.init_memory(1)
        for text in texts:
            state = self.model.ingest(torch.tensor([encode(self.tokenizer, text)]), state)
        return state

    @torch.inference_mode()
    def answer(self, prompt: str, memory: MemoryState | None = None, max_new_tokens: int = 8):
        """The greedy answer the library gives (text, memory after)."""
        ids = torch.tensor([encode(self.tokenizer, prompt)])
        out = self.model.generate(ids, memory=memory, max_new_tokens=max_new_tokens, eos_token_id=self.eos,
                                  return_dict_in_generate=True)
        return self.tokenizer.decode(out.sequences[0, ids.shape[1]:], skip_special_tokens=True), out.memory


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the server's batches of one then compute exactly what the library does here
    server = Server(tiny_model_dir, tmp_path_factory.mktemp("serve"))
    yield server
    server.thread.stop()
    torch.set_num_threads(threads)


def equal_states(a: MemoryState, b: MemoryState) -> bool:
    ta, tb = a.tensors(), b.tensors()
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_the_official_openai_client_works_unchanged(server):
    from openai import BadRequestError, NotFoundError, OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key=KEYS["alice"], max_retries=0, timeout=60)
    assert [m.id for m in client.models.list()] == ["tiny"]
    prompt = "Once upon a time"
    done = client.completions.create(model="tiny", prompt=prompt, max_tokens=6, temperature=0)
    assert done.choices[0].text == server.answer(prompt, max_new_tokens=6)[0]
    assert done.usage.prompt_tokens == len(encode(server.tokenizer, prompt)) and done.usage.completion_tokens <= 6
    pieces = client.completions.create(model="tiny", prompt=prompt, max_tokens=6, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in pieces) == done.choices[0].text

    messages = [{"role": "user", "content": "What did the customer buy?"}]
    chat = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6, temperature=0)
    rendered = render_messages(server.tokenizer, messages, add_generation_prompt=True, continuing=False)
    assert chat.choices[0].message.content == server.answer(rendered, max_new_tokens=6)[0]
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=6, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == chat.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens

    # A chat client gets memory through one extra field or header; each turn stays in the session.
    http = server.client()
    sid = server.session(http, TEXT)
    client.chat.completions.create(model="tiny", messages=messages, max_tokens=4, extra_body={"session_id": sid})
    client.chat.completions.create(model="tiny", messages=messages, max_tokens=4, extra_headers={"X-Session-Id": sid})
    assert http.get(f"/v1/sessions/{sid}").json()["appends"] == 3
    with pytest.raises(NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=messages)
    with pytest.raises(BadRequestError):
        client.chat.completions.create(model="tiny", messages=messages, temperature=5)
    with pytest.raises(NotFoundError):
        client.chat.completions.create(model="tiny", messages=messages, extra_body={"session_id": "sess_" + "0" * 32})


def test_answers_come_from_the_sessions_memory(server):
    """A restored memory that is silently not used would answer as a fresh one: the answers differ here."""
    http = server.client()
    sid = server.session(http, TEXT)
    question = " What did the customer buy?"
    want, after = server.answer(question, server.reference(TEXT))
    assert want != server.answer(question)[0]  # the memory changes the answer, so this test can tell
    body = http.post(f"/v1/sessions/{sid}/ask", json={"question": question, "max_tokens": 8}).json()
    assert body["answer"] == want and body["session"]["appends"] == 1  # not remembered
    assert equal_states(server.exported(http, sid), server.reference(TEXT))
    body = http.post(f"/v1/sessions/{sid}/ask", json={"question": question, "max_tokens": 8, "remember": True}).json()
    assert body["answer"] == want and body["session"]["appends"] == 2
    assert equal_states(server.exported(http, sid), after)
    streamed = []
    with http.stream("POST", f"/v1/sessions/{sid}/ask", json={"question": question, "max_tokens": 8,
                                                               "stream": True}) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                streamed.append(json.loads(line[6:]))
    continued = server.answer(question, after)[0]
    assert "".join(e.get("delta", "") for e in streamed) == continued
    assert streamed[-1]["finish_reason"] in ("length", "stop") and streamed[-1]["session"]["appends"] == 2
    stop = continued.split()[1]
    cut = http.post(f"/v1/sessions/{sid}/ask", json={"question": question, "max_tokens": 8, "stop": stop}).json()
    assert cut["answer"] == continued[: continued.index(stop)] and cut["finish_reason"] == "stop"
    # a tiny temperature samples what greedy decoding picks (unshifted, the scores overflowed to inf: a 500)
    tiny = http.post(f"/v1/sessions/{sid}/ask", json={"question": question, "max_tokens": 8, "temperature": 1e-300,
                                                      "seed": 3})
    assert tiny.status_code == 200 and tiny.json()["answer"] == continued, tiny.text


def test_session_lifecycle_fork_export_import_delete(server, caplog):
    http = server.client()
    with caplog.at_level(logging.INFO, logger="cometlm.serve"):
        sid = server.session(http)
    assert any(f"POST /v1/sessions 201" in r.getMessage() and "key=alice" in r.getMessage() for r in caplog.records)
    fresh = http.get(f"/v1/sessions/{sid}").json()
    assert (fresh["appends"], fresh["tokens_read"], fresh["chunks_closed"]) == (0, 0, 0) and fresh["bytes"] > 0
    n = len(encode(server.tokenizer, TEXT))
    stats = http.post(f"/v1/sessions/{sid}/append", json={"text": TEXT}).json()
    assert (stats["appends"], stats["tokens_read"], stats["chunks_closed"]) == (1, n, (n - 1) // SMALL.chunk_size)
    assert stats["bytes"] == (server.state_dir / "states" / f"{sid}.safetensors").stat().st_size
    assert stats["created"] <= stats["last_used"]

    fork = http.post(f"/v1/sessions/{sid}/fork").json()
    assert fork["id"] != sid and fork["appends"] == 1
    assert equal_states(server.exported(http, fork["id"]), server.reference(TEXT))
    http.post(f"/v1/sessions/{fork['id']}/append", json={"text": " More."})
    assert equal_states(server.exported(http, fork["id"]), server.reference(TEXT, " More."))
    assert equal_states(server.exported(http, sid), server.reference(TEXT))  # the original is untouched

    data = http.get(f"/v1/sessions/{sid}/state").content
    imported = http.post("/v1/sessions/import", content=data,
                         headers={"Content-Type": "application/octet-stream"}).json()
    assert imported["tokens_read"] == n and equal_states(server.exported(http, imported["id"]), server.reference(TEXT))
    listed = {s["id"] for s in http.get("/v1/sessions").json()["data"]}
    assert {sid, fork["id"], imported["id"]} <= listed

    assert http.delete(f"/v1/sessions/{fork['id']}").json()["deleted"] is True
    assert http.get(f"/v1/sessions/{fork['id']}").status_code == 404
    assert not (server.state_dir / "states" / f"{fork['id']}.safetensors").exists()
    assert fork["id"] not in {s["id"] for s in http.get("/v1/sessions").json()["data"]}


def test_messages_and_events_are_read_as_rendered_text(server):
    http = server.client()
    a, b, c = server.session(http), server.session(http), server.session(http)
    events = [{"day": "Mon", "type": "order", "item": "green tea", "qty": 2}, {"day": "Tue", "type": "return"}]
    shuffled = [{"qty": 2, "item": "green tea", "type": "order", "day": "Mon"}, {"type": "return", "day": "Tue"}]
    http.post(f"/v1/sessions/{a}/append", json={"events": events})
    http.post(f"/v1/sessions/{b}/append", json={"events": shuffled})
    assert equal_states(server.exported(http, a), server.exported(http, b))
    assert equal_states(server.exported(http, a), server.reference(render_events(events)))
    messages = [{"role": "user", "content": "I prefer oolong."}, {"role": "assistant", "content": "Noted."}]
    http.post(f"/v1/sessions/{c}/append", json={"messages": messages})
    first = render_messages(server.tokenizer, messages, add_generation_prompt=False, continuing=False)
    more = [{"role": "user", "content": [{"type": "text", "text": "And milk."}]}]
    http.post(f"/v1/sessions/{c}/append", json={"messages": more})
    later = render_messages(server.tokenizer, [{"role": "user", "content": "And milk."}], False, continuing=True)
    assert "You are a helpful" in first and "You are a helpful" not in later
    assert equal_states(server.exported(http, c), server.reference(first, later))


def test_each_key_sees_only_its_own_sessions(server):
    alice, bob = server.client("alice"), server.client("bob")
    sid = server.session(alice, TEXT)
    before = disk(server.state_dir)
    for method, path, body in [("GET", "", None), ("POST", "/append", {"text": "x"}), ("POST", "/ask", {"question": "x"}),
                               ("POST", "/fork", None), ("GET", "/state", None), ("DELETE", "", None)]:
        response = bob.request(method, f"/v1/sessions/{sid}{path}", json=body)
        assert response.status_code == 404 and response.json()["error"]["code"] == "session_not_found", path
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "session_id": sid}
    assert bob.post("/v1/chat/completions", json=chat).status_code == 404
    assert sid not in {s["id"] for s in bob.get("/v1/sessions").json()["data"]}
    for headers in ({}, {"Authorization": "Bearer not-a-key-at-all"}, {"Authorization": KEYS["alice"]}):
        response = httpx.get(f"{server.url}/v1/sessions/{sid}", headers=headers)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert disk(server.state_dir) == before
    assert alice.get(f"/v1/sessions/{sid}").status_code == 200


def bad_requests(sid: str, foreign_state: bytes, good_state: bytes, endless_state: bytes):
    """(method, path, request keywords, status, error code, param) for each kind of bad request."""
    append, ask = f"/v1/sessions/{sid}/append", f"/v1/sessions/{sid}/ask"
    json_type = {"Content-Type": "application/json"}
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
    return [
        ("POST", append, dict(content=b'{"text": "a"', headers=json_type), 400, "invalid_json", None),
        ("POST", append, dict(content=b'{"text": NaN}', headers=json_type), 400, "invalid_json", None),
        ("POST", append, dict(content=b"[" * 20_000, headers=json_type), 400, "invalid_json", None),
        ("POST", append, dict(content=b'{"text": "a", "expect_appends": 1e999}', headers=json_type), 400,
         "invalid_json", None),
        ("POST", append, dict(content=b'{"text": "caf\xe9"}', headers=json_type), 400, "invalid_utf8", None),
        ("POST", append, dict(content=b'{"text": "\\ud800"}', headers=json_type), 400, "invalid_utf8", None),
        ("POST", append, dict(content=b'{"text": "a"}', headers={"Content-Type": "text/plain"}), 415,
         "unsupported_media_type", None),
        ("POST", append, dict(json={"text": "a", "colour": "red"}), 400, "extra_forbidden", "colour"),
        ("POST", append, dict(json={"text": 5}), 400, "string_type", "text"),
        ("POST", append, dict(json=["text"]), 400, "model_attributes_type", None),
        ("POST", append, dict(json={"text": "a", "expect_appends": -1}), 400, "greater_than_equal", "expect_appends"),
        ("POST", append, dict(json={"text": "a", "expect_appends": 1.0}), 400, "int_type", "expect_appends"),
        ("POST", append, dict(json={}), 400, "value_error", None),
        ("POST", append, dict(json={"text": "a", "events": [{"a": 1}]}), 400, "value_error", None),
        ("POST", append, dict(json={"events": [1, 2]}), 400, "dict_type", "events.0"),
        ("POST", append, dict(json={"text": ""}), 400, "empty_append", None),
        ("POST", append, dict(json={"text": "word " * 300}), 400, "too_many_tokens", "text"),
        ("POST", append, dict(json={"text": "x" * (70 << 10)}), 413, "request_too_large", None),
        ("POST", append, dict(json={"text": "a", "expect_appends": 999}), 409, "appends_mismatch", "expect_appends"),
        ("POST", "/v1/sessions/sess_" + "0" * 32 + "/append", dict(json={"text": "a"}), 404, "session_not_found",
         "session_id"),
        ("POST", "/v1/sessions/../../etc/append", dict(json={"text": "a"}), 404, None, None),
        ("GET", "/v1/sessions/not-a-session-id", {}, 404, "session_not_found", "session_id"),
        ("POST", ask, dict(json={"question": "q", "max_tokens": -1}), 400, "greater_than_equal", "max_tokens"),
        ("POST", ask, dict(json={"question": "q", "max_tokens": 10**30}), 400, "less_than_equal", "max_tokens"),
        ("POST", ask, dict(json={"question": "q", "max_tokens": 41}), 400, "too_many_tokens", "max_tokens"),
        ("POST", ask, dict(json={"question": "q", "temperature": "0"}), 400, "float_type", "temperature"),
        ("POST", ask, dict(json={"question": "q", "temperature": -0.5}), 400, "greater_than_equal", "temperature"),
        ("POST", ask, dict(json={"question": "q", "top_p": 0}), 400, "greater_than", "top_p"),
        ("POST", ask, dict(json={"question": "q", "stream": 1}), 400, "bool_type", "stream"),
        ("POST", ask, dict(json={"question": "q", "stop": ["a"] * 5}), 400, "value_error", "stop"),
        ("POST", ask, dict(json={"question": ""}), 400, "empty_prompt", "prompt"),
        ("POST", "/v1/completions", dict(json={"model": "nope", "prompt": "a"}), 404, "model_not_found", "model"),
        ("POST", "/v1/completions", dict(json={"model": "tiny", "prompt": "a", "n": 2}), 400, "less_than_equal", "n"),
        ("POST", "/v1/completions", dict(json={"model": "tiny", "prompt": ["a"]}), 400, "string_type", "prompt"),
        ("POST", "/v1/completions", dict(json={"model": "tiny", "prompt": "a", "remember": True}), 400,
         "invalid_value", "remember"),
        ("POST", "/v1/chat/completions", dict(json={**chat, "messages": [{"role": "robot", "content": "x"}]}), 400,
         "literal_error", "messages.0.role"),
        ("POST", "/v1/chat/completions", dict(json={**chat, "messages": []}), 400, "too_short", "messages"),
        ("POST", "/v1/chat/completions", dict(json={**chat, "session_id": sid},
                                              headers={"X-Session-Id": "sess_" + "1" * 32}), 400, "invalid_value",
         "session_id"),
        ("POST", "/v1/chat/completions", dict(json={**chat, "frequency_penalty": 0.5}), 400, "less_than_equal",
         "frequency_penalty"),
        ("POST", "/v1/sessions/import", dict(content=good_state[: len(good_state) // 2]), 400, "invalid_state", None),
        ("POST", "/v1/sessions/import", dict(content=b"\x80\x04\x95pickle"), 400, "invalid_state", None),
        ("POST", "/v1/sessions/import", dict(content=foreign_state), 400, "incompatible_state", None),
        ("POST", "/v1/sessions/import", dict(content=endless_state), 400, "invalid_state", None),
        ("POST", "/v1/sessions/import", dict(content=good_state + b"\0" * (4 << 20)), 413, "request_too_large", None),
        ("GET", "/v1/nothing-here", {}, 404, "not_found", None),
        ("DELETE", "/v1/models", {}, 405, "method_not_allowed", None),
    ]


def test_every_bad_request_gets_an_openai_error_and_changes_nothing(server):
    http = server.client()
    sid = server.session(http, TEXT)
    good = http.get(f"/v1/sessions/{sid}/state").content
    other = dataclasses.replace(SMALL, chunk_size=16)  # a state of another configuration, as our server writes one
    foreign = server.state_dir.parent / "foreign.safetensors"
    MemoryState.empty(other, 1, 2, 32, torch.float32, "cpu").save(foreign, notes={"model": "0123456789abcdef"})
    # our own state, saying it has read more than SQLite's integers hold (2**62 chunks)
    endless = MemoryState.from_bytes(good)
    endless = dataclasses.replace(endless, chunks_closed=torch.full_like(endless.chunks_closed, 2**62))
    endless = endless.to_bytes(MemoryState.read_notes(good))
    before = disk(server.state_dir)
    for method, path, kwargs, status, code, param in bad_requests(sid, foreign.read_bytes(), good, endless):
        response = http.request(method, path, **kwargs)
        body = response.json()
        assert response.status_code == status, (path, kwargs, body)
        assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
        assert body["error"]["message"], body
        if code is not None:
            assert (body["error"]["code"], body["error"]["param"]) == (code, param), (kwargs, body)
    assert disk(server.state_dir) == before


def test_crafted_state_files_are_refused_with_a_400(server):
    """Uploads that pass as state files but are not what a server writes: an open chunk wider than what it holds
    (it broke every request batched with it), a tensor a state does not have, scalars, JSON nested past Python's
    recursion limit, a layer number in the millions, a config number beyond a float. Each is a 400 and nothing is
    written; the server goes on serving."""
    import safetensors.torch

    http = server.client()
    sid = server.session(http, TEXT)
    good = http.get(f"/v1/sessions/{sid}/state").content
    metadata = json.loads(good[8 : 8 + int.from_bytes(good[:8], "little")])["__metadata__"]
    tensors = MemoryState.from_bytes(good).tensors()
    padded = dict(tensors, pending=torch.cat([tensors["pending"], torch.full((1, 1), 6)], dim=1))
    crafted = [safetensors.torch.save(padded, metadata),
               safetensors.torch.save({**tensors, "evil": torch.ones(1)}, metadata),
               safetensors.torch.save(dict(tensors, pending=torch.tensor(5)), metadata),
               safetensors.torch.save(tensors, {**metadata, "notes": "[" * 100_000}),
               safetensors.torch.save(tensors, {**metadata, "config": "[" * 100_000}),
               safetensors.torch.save({"layers.2999999.temp": torch.zeros(1)}, metadata),  # 2 GiB to refuse
               safetensors.torch.save(tensors, {**metadata, "config": json.dumps(  # OverflowError: a 500
                   {**json.loads(metadata["config"]), "gate_bias": [1, 10**400]})})]
    before = disk(server.state_dir)
    for data in crafted:
        response = http.post("/v1/sessions/import", content=data)
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_state", response.json()
    assert disk(server.state_dir) == before
    assert http.post(f"/v1/sessions/{sid}/append", json={"text": " More."}).status_code == 200


def test_sessions_per_key_are_limited(server):
    service = server.app.state.service
    carol = server.client("carol")
    service.settings = dataclasses.replace(server.settings, max_sessions_per_key=2)
    try:
        first = carol.post("/v1/sessions").json()["id"]
        carol.post(f"/v1/sessions/{first}/fork")
        before = disk(server.state_dir)
        for response in (carol.post("/v1/sessions"), carol.post(f"/v1/sessions/{first}/fork")):
            assert response.status_code == 429 and response.json()["error"]["code"] == "too_many_sessions"
        assert disk(server.state_dir) == before
        assert server.client("bob").post("/v1/sessions").status_code == 201  # another key's count is its own
    finally:
        service.settings = server.settings


def test_appends_to_one_session_are_serialised(server):
    """Concurrent appends to one session all land, each once, in the order the server acknowledged them."""
    http = server.client()
    sid = server.session(http)
    texts = [f" Note {i}: the parcel for order {1000 + i} left the depot." for i in range(6)]
    with ThreadPoolExecutor(len(texts)) as pool:
        replies = list(pool.map(lambda t: server.client().post(f"/v1/sessions/{sid}/append", json={"text": t}), texts))
    assert all(r.status_code == 200 for r in replies)
    order = sorted(range(len(texts)), key=lambda i: replies[i].json()["appends"])
    assert [replies[i].json()["appends"] for i in order] == list(range(1, len(texts) + 1))
    assert equal_states(server.exported(http, sid), server.reference(*(texts[i] for i in order)))
    # A retry that names the count it expects lands at most once.
    with ThreadPoolExecutor(2) as pool:
        codes = sorted(pool.map(lambda _: server.client().post(f"/v1/sessions/{sid}/append", json={
            "text": " once", "expect_appends": len(texts)}).status_code, range(2)))
    assert codes == [200, 409]


def test_concurrent_first_chat_turns_carry_the_default_prompt_once(server, monkeypatch):
    """Two chat turns sent together to a session that has read nothing: only the one read first carries the
    template's default system prompt (the rendering is chosen under the session's lock, not before it)."""
    http = server.client()
    sid = server.session(http)
    scheduler = server.app.state.scheduler
    read = scheduler.read

    async def slow_read(state, ids):  # holds the session's lock long enough for the other request to arrive
        await asyncio.sleep(0.5)
        return await read(state, ids)

    monkeypatch.setattr(scheduler, "read", slow_read)
    turns = [[{"role": "user", "content": f"My order number is {n}."}] for n in (4471, 9023)]
    with ThreadPoolExecutor(2) as pool:
        replies = list(pool.map(lambda m: server.client().post(f"/v1/sessions/{sid}/append", json={"messages": m}),
                                turns))
    assert all(r.status_code == 200 for r in replies)
    first, second = sorted(range(2), key=lambda i: replies[i].json()["appends"])
    texts = [render_messages(server.tokenizer, turns[first], False, continuing=False),
             render_messages(server.tokenizer, turns[second], False, continuing=True)]
    assert "You are a helpful" in texts[0] and "You are a helpful" not in texts[1]
    assert equal_states(server.exported(http, sid), server.reference(*texts))


def test_requests_to_different_sessions_are_batched(server):
    """Appends and greedy answers of different sessions meet in one batch and get what each would get alone."""
    http = server.client()
    texts = [TEXT[: 40 + 17 * i] for i in range(4)]
    sids = [server.session(http) for _ in texts]
    scheduler = server.app.state.scheduler
    window = scheduler.window
    scheduler.window, gate = 0.25, threading.Barrier(len(sids))
    scheduler.batch_sizes.clear()

    def append(i):
        gate.wait(timeout=30)
        return server.client().post(f"/v1/sessions/{sids[i]}/append", json={"text": texts[i]})

    def ask(i):
        gate.wait(timeout=30)
        return server.client().post(f"/v1/sessions/{sids[i]}/ask", json={"question": " Why?", "max_tokens": 6})

    try:
        with ThreadPoolExecutor(len(sids)) as pool:
            assert all(r.status_code == 200 for r in pool.map(append, range(len(sids))))
            answers = [r.json()["answer"] for r in pool.map(ask, range(len(sids)))]
    finally:
        scheduler.window = window
    assert max(scheduler.batch_sizes) > 1, scheduler.batch_sizes
    for sid, text, answer in zip(sids, texts, answers):
        alone = server.reference(text)
        assert_states_equal(server.exported(http, sid), alone)
        assert answer == server.answer(" Why?", alone, max_new_tokens=6)[0]


def test_one_state_folder_serves_one_server(server):
    with pytest.raises(ValueError, match="another server is using the state folder"):
        build_app(server.model, server.settings, "tiny")
    assert httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {KEYS['bob']}"}).status_code == 200


def test_openapi_schema_lists_the_api(server):
    paths = httpx.get(server.url + "/openapi.json").json()["paths"]
    for path in ("/v1/models", "/v1/completions", "/v1/chat/completions", "/v1/sessions", "/v1/sessions/import",
                 "/v1/sessions/{session_id}", "/v1/sessions/{session_id}/append", "/v1/sessions/{session_id}/ask",
                 "/v1/sessions/{session_id}/fork", "/v1/sessions/{session_id}/state"):
        assert path in paths, path
    for page in ("/docs", "/redoc"):  # FastAPI's pages load scripts from a CDN into this API's origin: not served
        assert httpx.get(server.url + page).status_code == 404


def test_web_pages_of_other_origins_and_rebound_names_are_refused(server):
    """A browser sends a form's text or an upload of any type to any address without asking, and a page whose
    domain is made to resolve to 127.0.0.1 (DNS rebinding) reads the answers: a request with another origin, or a
    Host header that is not this machine's, is refused before anything runs; the server's own origin is not."""
    http = server.client()
    sid = server.session(http, TEXT)
    state = http.get(f"/v1/sessions/{sid}/state").content
    own = server.url  # http://127.0.0.1:PORT
    port = own.rpartition(":")[2]
    before = disk(server.state_dir)
    refused = [
        (dict(headers={"Origin": "http://attacker.example"}), "POST", "/v1/sessions", {}, 403, "cross_origin"),
        (dict(headers={"Origin": "http://attacker.example", "Content-Type": "text/plain"}), "POST",
         "/v1/sessions/import", dict(content=state), 403, "cross_origin"),
        (dict(headers={"Origin": "null"}), "POST", "/v1/sessions", {}, 403, "cross_origin"),
        (dict(headers={"Origin": f"http://127.0.0.1:{int(port) + 1}"}), "POST", "/v1/sessions", {}, 403,
         "cross_origin"),  # another server on this machine is another origin
        (dict(headers={"Host": f"attacker.example:{port}"}), "GET", f"/v1/sessions/{sid}/state", {}, 400,
         "invalid_host"),
        (dict(headers={"Host": f"attacker.example:{port}"}), "DELETE", f"/v1/sessions/{sid}", {}, 400,
         "invalid_host"),
    ]
    for extra, method, path, kwargs, status, code in refused:
        headers = {**http.headers, **extra["headers"]}
        response = httpx.request(method, own + path, headers=headers, timeout=60, **kwargs)
        assert (response.status_code, response.json()["error"]["code"]) == (status, code), (extra, path)
    assert disk(server.state_dir) == before
    same = httpx.post(own + "/v1/sessions", headers={**http.headers, "Origin": own}, timeout=60)
    assert same.status_code == 201
    named = httpx.get(own.replace("127.0.0.1", "localhost") + f"/v1/sessions/{sid}", headers=http.headers,
                      timeout=60)
    assert named.status_code == 200


def test_a_server_answers_to_its_own_names():
    from cometlm.cli.serve import allowed_hosts

    loopback = ("localhost", "127.0.0.1", "::1")
    assert allowed_hosts("127.0.0.1", None) == allowed_hosts("::1", None) == loopback
    assert allowed_hosts("127.0.0.1", ["box.lan"]) == (*loopback, "box.lan")
    assert allowed_hosts("0.0.0.0", None) is None  # reached by names the server cannot know
    assert allowed_hosts("0.0.0.0", ["box.lan"]) == (*loopback, "box.lan")
    assert allowed_hosts("10.0.0.5", ["box.lan"]) == (*loopback, "10.0.0.5", "box.lan")
    assert ServerSettings(state_dir="s", allowed_hosts=["[::1]", "Box.LAN"]).allowed_hosts == ("::1", "box.lan")
    for bad in ((), ("a b",), ("",), "localhost"):
        with pytest.raises(ValueError, match="allowed_hosts"):
            ServerSettings(state_dir="s", allowed_hosts=bad)
