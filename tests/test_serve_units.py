"""The server's small parts on their own: an answer's text as it streams, what a session reads, API keys, the
state cache's byte budget."""

import pytest
import torch

from cometlm.serving.auth import KeyRing, hash_key
from cometlm.serving.cache import StateCache
from cometlm.serving.decoding import TextStream
from cometlm.serving.errors import APIError
from cometlm.serving.rendering import new_turn, render_events, render_messages
from conftest import random_ids, tiny_comet


def stream_text(tokenizer, text, stop=(), max_tokens=1000, eos=()):
    """Pushes the tokens of ``text`` one by one; returns (the pieces sent, the stream)."""
    stream = TextStream(tokenizer, stop, max_tokens, eos)
    pieces = [stream.push(t) for t in tokenizer(text, add_special_tokens=False)["input_ids"]]
    return pieces, stream


def test_streamed_text_is_the_answer_and_never_shows_a_stop_string(tokenizer):
    text = "Order 4821 shipped. END and then more text"
    pieces, stream = stream_text(tokenizer, text, stop=("END",))
    assert "".join(pieces) == stream.text == "Order 4821 shipped. "
    assert stream.finish_reason == "stop"
    pieces, stream = stream_text(tokenizer, text, stop=("ENDING",))  # a prefix of it appears, not the whole
    assert "".join(pieces) == text and stream.finish_reason is None
    pieces, stream = stream_text(tokenizer, text, max_tokens=3)
    assert stream.finish_reason == "length" and len(stream.ids) == 3 and "".join(pieces) == stream.text


def test_a_character_split_over_tokens_is_sent_whole(tokenizer):
    text = "snow ☃ and 日本語 text"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert any(tokenizer.decode(ids[:n]).endswith("\ufffd") for n in range(len(ids)))  # the case arises
    pieces, stream = stream_text(tokenizer, text)
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


def test_end_of_sequence_ends_the_answer(tokenizer):
    stream = TextStream(tokenizer, (), 100, [tokenizer.eos_token_id])
    first = stream.push(tokenizer("Yes", add_special_tokens=False)["input_ids"][0])
    assert stream.push(tokenizer.eos_token_id) == "" and stream.finish_reason == "stop"
    assert stream.text == first == "Yes" and stream.push(5) == ""


def test_events_render_canonically():
    a = render_events([{"type": "order", "item": "tea", "qty": 2, "meta": {"z": 1, "a": "é"}}])
    b = render_events([{"meta": {"a": "é", "z": 1}, "qty": 2, "item": "tea", "type": "order"}])
    assert a == b == '{"item": "tea", "meta": {"a": "é", "z": 1}, "qty": 2, "type": "order"}\n'
    assert render_events([{"a": 1}, {"b": 2}]).count("\n") == 2


def test_a_chat_turn_is_read_once_and_the_default_system_prompt_once(tokenizer):
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
               {"role": "user", "content": "and now?"}]
    assert new_turn(history) == history[2:]
    assert new_turn(history[:1]) == history[:1]
    first = render_messages(tokenizer, history[:1], add_generation_prompt=True, continuing=False)
    later = render_messages(tokenizer, history[2:], add_generation_prompt=True, continuing=True)
    assert "You are a helpful AI assistant" in first  # SmolLM2's template adds its default system prompt
    assert later == "<|im_start|>user\nand now?<|im_end|>\n<|im_start|>assistant\n"
    own = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "x"}]
    assert render_messages(tokenizer, own, False, continuing=True).startswith("<|im_start|>system\nBe brief.")


def test_keys_are_checked_by_hash_and_bad_files_are_explained(tmp_path):
    path = tmp_path / "keys"
    path.write_text(f"# comment\nalice:{hash_key('alice-secret-key')}\n\nbob:{hash_key('bob-secret-key')}  # ops\n")
    ring = KeyRing.load(path)
    assert ring.owner("Bearer alice-secret-key") == "alice" and ring.owner("bearer bob-secret-key") == "bob"
    assert "alice-secret-key" not in path.read_text()
    for header in (None, "", "Bearer", "Basic alice-secret-key", "Bearer alice-secret-kez"):
        with pytest.raises(APIError) as err:
            ring.owner(header)
        assert err.value.status == 401
    for text, match in ((f"alice:{'A' * 64}\n", ":1: expected"), (f"a:{'0' * 64}\na:{'1' * 64}\n", "appears twice"),
                        ("", "at least one"), ("alice:secret\n", ":1: expected")):
        path.write_text(text)
        with pytest.raises(ValueError, match=match):
            KeyRing.load(path)


@torch.no_grad()
def test_the_state_cache_stays_within_its_budget_and_drops_the_least_recently_used():
    comet = tiny_comet()
    files = {f"s{i}": comet.ingest(random_ids(1, 3 + i, seed=i)).to_bytes({"i": str(i)}) for i in range(4)}
    size = max(len(data) for data in files.values())
    cache = StateCache(budget_bytes=2 * size + size // 2)
    for key, data in files.items():
        cache.put(key, data)
        cache.get("s0")  # keeps being used
        assert cache.nbytes <= cache.budget_bytes
    assert cache.get("s0") == files["s0"] and cache.get("s3") == files["s3"]
    assert cache.get("s1") is None and cache.get("s2") is None and len(cache) == 2
    cache.drop("s0")
    assert cache.get("s0") is None and cache.nbytes == len(files["s3"])
    StateCache(budget_bytes=0).put("big", files["s0"])  # larger than the budget: not kept, no error


def test_the_server_process_can_bound_its_malloc_arenas():
    """`cometlm serve` calls this first (docs/experiments/serve-rss): on glibc the arena limit takes."""
    import platform

    from cometlm.runtime import limit_heap_fragmentation

    assert limit_heap_fragmentation() is (platform.libc_ver()[0] == "glibc")


def test_a_write_whose_index_row_fails_is_read_from_its_file(tmp_path, monkeypatch):
    """The state file is written before the index row: when the row fails, the session must not go on being
    served from an older cached copy while its file holds the newer state (which a restart would count)."""
    from cometlm.serving.store import SessionStore

    model = tiny_comet()
    store = SessionStore(tmp_path, model, cache_bytes=1 << 20)
    try:
        empty = model.init_memory(1)
        info = store.write("sess_" + "a" * 32, "alice", 0, empty, appends=0)
        store.load(info)  # now cached
        with torch.inference_mode():
            read = model.ingest(random_ids(1, 40), empty)

        def broken(row):
            raise OSError("disk full")

        monkeypatch.setattr(store.index, "put", broken)
        with pytest.raises(OSError, match="disk full"):
            store.write(info.id, "alice", 0, read, appends=1)
        monkeypatch.undo()
        assert int(store.load(info).pending_len[0]) == int(read.pending_len[0]) > 0  # the file's, not the cache's
        assert store.recover()["caught_up"] == 1  # and a restart counts it
        assert store.index.get(info.id).appends == 1
    finally:
        store.close()


def test_a_state_file_without_an_index_row_is_set_aside_not_deleted(tmp_path):
    """A creation that was never answered leaves a file with no row; so would a lost index, for every session: the
    files go to orphans/, out of service but kept."""
    from cometlm.serving.store import SessionStore

    model = tiny_comet()
    store = SessionStore(tmp_path, model, cache_bytes=1 << 20)
    try:
        kept = store.write("sess_" + "b" * 32, "alice", 0, model.init_memory(1), appends=0)
        lost = store.write("sess_" + "c" * 32, "bob", 0, model.init_memory(1), appends=0)
        data = store.path(lost.id).read_bytes()
        store.index.delete(lost.id)
        assert store.recover()["unacknowledged"] == 1
        assert [info.id for info in store.index.list()] == [kept.id] and store.path(kept.id).is_file()
        assert not store.path(lost.id).exists()
        assert (tmp_path / "orphans" / f"{lost.id}.safetensors").read_bytes() == data
    finally:
        store.close()


def test_a_delete_cut_short_by_a_crash_never_leaves_the_memories_behind(tmp_path, monkeypatch):
    """A crash between a deletion's two steps (the file, the index row) used to leave the file without a row, which
    recovery keeps in orphans/: the deleted session's memories stayed on disk. Now the session is gone either way."""
    import cometlm.serving.store as store_module
    from cometlm.serving.store import SessionStore

    model = tiny_comet()
    store = SessionStore(tmp_path, model, cache_bytes=1 << 20)
    try:
        info = store.write("sess_" + "d" * 32, "alice", 0, model.init_memory(1), appends=0)
        steps = []

        def step(real):
            def counted(*args, **kwargs):
                steps.append(real)
                if len(steps) == 2:
                    raise KeyboardInterrupt("the process dies here")
                return real(*args, **kwargs)
            return counted

        monkeypatch.setattr(store.index, "delete", step(store.index.delete))
        monkeypatch.setattr(store_module, "remove_file", step(store_module.remove_file))
        with pytest.raises(KeyboardInterrupt):
            store.delete(info)
        monkeypatch.undo()
        store.recover()
        assert store.index.list() == [] and not store.path(info.id).exists()
        assert not (tmp_path / "orphans").exists()
    finally:
        store.close()


def test_a_new_state_folder_is_private_to_the_server(tmp_path):
    """Users' memories: a state folder the server creates, and its states/, are its own user's alone (0700), whatever
    the umask makes of the files inside."""
    from cometlm.serving.store import SessionStore

    store = SessionStore(tmp_path / "new" / "sessions", tiny_comet(), cache_bytes=1 << 20)
    try:
        assert (tmp_path / "new" / "sessions").stat().st_mode & 0o777 == 0o700
        assert store.states.stat().st_mode & 0o777 == 0o700
    finally:
        store.close()


def test_a_sampled_answer_keeps_every_token_without_top_k(tokenizer):
    """The OpenAI API has no top-k: a request without one samples from the whole distribution (the library's
    `generate` would take the model's generation_config's top-k, Hugging Face's 50, if the server passed None)."""
    import asyncio

    from cometlm.serving.scheduler import Generation, Sampling, Scheduler
    from eval_helpers import tiny_text_model

    model = tiny_text_model(16, tokenizer)
    prompt = tokenizer("Once upon a time", add_special_tokens=False)["input_ids"]
    sampling = Sampling(temperature=1.5, seed=7)
    scheduler = Scheduler(model, window_ms=0)
    scheduler.start()
    try:
        answer = asyncio.run(scheduler.generate(model.init_memory(1), Generation(prompt, sampling, 12)))
    finally:
        scheduler.stop()

    def draw(**top_k):
        out = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=True, temperature=1.5,
                             top_p=1.0, eos_token_id=scheduler.eos_ids, generator=torch.Generator().manual_seed(7),
                             **top_k)
        return tokenizer.decode(out[0, len(prompt):], skip_special_tokens=True)

    assert answer.text == draw(top_k=0) != draw()
