"""Training datasets: file sources with honest error reports, generated tasks, determinism, batching."""

import copy
import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoTokenizer

from cometlm.bundled import bundled_model_dir, encode
from cometlm.tasks.corpora import corpus_tokens
from cometlm.tasks.haystack import load_haystack
from cometlm.training.data import (
    IGNORE,
    CorpusLMDataset,
    DataError,
    MixtureDataset,
    NeedleDataset,
    PasskeyDataset,
    Sample,
    collate,
    sample_rng,
)
from cometlm.training.file_data import JsonlChatDataset, JsonlTextDataset, TextFilesDataset
from cometlm.tasks.retrieval import NEEDLE_ANSWER


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(bundled_model_dir())


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def labelled_runs(sample: Sample) -> list[list[int]]:
    """Maximal runs of consecutive labelled tokens."""
    runs, current = [], []
    for token, label in zip(sample.input_ids, sample.labels):
        if label == IGNORE:
            if current:
                runs.append(current)
            current = []
        else:
            assert label == token
            current.append(label)
    return runs + ([current] if current else [])


# ---------------------------------------------------------------------------------------------------------------
# JSONL text

LONG_TEXT = "A fairly long text. " * 20


@pytest.fixture
def text_file(tmp_path):
    return write_lines(
        tmp_path / "texts.jsonl",
        [
            json.dumps({"text": "Hello world. This is fine."}),  # 1
            "{not json",  # 2
            "",  # 3: blank lines hold no record
            json.dumps({"title": "no text"}),  # 4
            json.dumps({"text": 42}),  # 5
            json.dumps({"text": "   "}),  # 6
            json.dumps(["a", "list"]),  # 7
            json.dumps({"text": LONG_TEXT}),  # 8
        ],
    )


def test_jsonl_text_skips_and_reports_bad_records(tokenizer, text_file):
    ds = JsonlTextDataset(text_file, tokenizer, max_tokens=32)
    assert [e.split(": ", 1)[0] for e in ds.errors] == [f"{text_file}:{n}" for n in (2, 4, 5, 6, 7)]
    assert "not JSON" in ds.errors[0]
    assert "no 'text' field (fields: title)" in ds.errors[1]
    assert "'text' is int, not a string" in ds.errors[2]
    assert "empty 'text'" in ds.errors[3]
    assert "not a JSON object (got list)" in ds.errors[4]
    report = ds.report()
    assert "\n" not in report
    assert f"read 7 records from {text_file}" in report
    assert "split 1 texts longer than 32 tokens into windows" in report
    assert f"skipped 5 bad records: {text_file}:2: not JSON" in report


def test_jsonl_text_windows_cover_the_text(tokenizer, text_file):
    ds = JsonlTextDataset(text_file, tokenizer, max_tokens=32)
    first, *windows = [ds[i] for i in range(len(ds))]
    assert first.input_ids == encode(tokenizer, "Hello world. This is fine.")
    assert first.labels == first.input_ids
    assert [tokenizer.decode(first.input_ids[b:]) for b in first.boundaries] == [" This is fine."]
    assert sum((w.input_ids for w in windows), []) == encode(tokenizer, LONG_TEXT)
    assert all(len(w.input_ids) == 32 for w in windows[:-1]) and 0 < len(windows[-1].input_ids) <= 32
    assert ds[-1] == windows[-1]
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_jsonl_text_fail_mode_names_file_and_line(tokenizer, text_file):
    with pytest.raises(DataError, match=f"^{text_file}:2: not JSON"):
        JsonlTextDataset(text_file, tokenizer, max_tokens=32, on_error="fail")


def test_jsonl_with_no_usable_record_is_an_error(tokenizer, tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", ["nope", json.dumps({"text": ""})])
    with pytest.raises(DataError, match=r"no usable records .*skipped 2 bad records"):
        JsonlTextDataset(path, tokenizer, max_tokens=32)


def test_jsonl_reports_invalid_utf8(tokenizer, tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps({"text": "ok"}).encode() + b"\n" + '{"text": "café"}'.encode("latin-1") + b"\n")
    ds = JsonlTextDataset(path, tokenizer, max_tokens=32)
    assert ds.errors == [f"{path}:2: not UTF-8"]


def test_bad_arguments(tokenizer, text_file):
    with pytest.raises(ValueError, match="on_error must be one of"):
        JsonlTextDataset(text_file, tokenizer, max_tokens=32, on_error="ignore")
    with pytest.raises(ValueError, match="max_tokens must be at least 1"):
        JsonlTextDataset(text_file, tokenizer, max_tokens=0)


def test_many_errors_are_counted_in_the_report(tokenizer, tmp_path):
    path = write_lines(tmp_path / "many.jsonl", ["x"] * 9 + [json.dumps({"text": "fine"})])
    report = JsonlTextDataset(path, tokenizer, max_tokens=8).report()
    assert "skipped 9 bad records" in report and "and 4 more (see .errors)" in report


# ---------------------------------------------------------------------------------------------------------------
# JSONL chat

CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And the capital of France?\nBe brief."},
    {"role": "assistant", "content": "Paris, of course.\nIt has been since 987."},
]
NO_SYSTEM_CHAT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"}]


@pytest.fixture
def chat_file(tmp_path):
    return write_lines(
        tmp_path / "chats.jsonl",
        [
            json.dumps({"messages": CHAT}),  # 1
            json.dumps({"messages": NO_SYSTEM_CHAT}),  # 2
            json.dumps({"text": "no messages"}),  # 3
            json.dumps({"messages": [{"role": "bot", "content": "hi"}]}),  # 4
            json.dumps({"messages": [{"role": "user", "content": "anyone?"}]}),  # 5
            json.dumps({"messages": ["just a string"]}),  # 6
            json.dumps({"messages": [{"role": "assistant", "content": "I start."}]}),  # 7
        ],
    )


def test_chat_labels_cover_exactly_assistant_content_and_end_of_turn(tokenizer, chat_file):
    ds = JsonlChatDataset(chat_file, tokenizer, max_tokens=512)
    for sample, messages in zip((ds[0], ds[1]), (CHAT, NO_SYSTEM_CHAT)):
        assert sample.input_ids == encode(tokenizer, tokenizer.apply_chat_template(messages, tokenize=False))
        runs = [tokenizer.decode(run) for run in labelled_runs(sample)]
        assert runs == [m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant"]


def test_chat_boundaries_are_turn_starts(tokenizer, chat_file):
    sample = JsonlChatDataset(chat_file, tokenizer, max_tokens=512)[0]
    im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert list(sample.boundaries) == [i for i, t in enumerate(sample.input_ids) if t == im_start and i > 0]
    assert len(sample.boundaries) == len(CHAT) - 1


def test_chat_bad_records(tokenizer, chat_file):
    ds = JsonlChatDataset(chat_file, tokenizer, max_tokens=512)
    assert len(ds) == 2
    where_reason = [e.split(": ", 1) for e in ds.errors]
    reasons = {where.rsplit(":", 1)[1]: reason for where, reason in where_reason}
    assert sorted(reasons) == ["3", "4", "5", "6", "7"]
    assert "'messages' must be a non-empty list" in reasons["3"]
    assert "unknown role 'bot'" in reasons["4"]
    assert "no assistant turn" in reasons["5"]
    assert "message 0 is not an object" in reasons["6"]
    assert "starts with an assistant turn" in reasons["7"]
    with pytest.raises(DataError, match=f"^{chat_file}:3: 'messages'"):
        JsonlChatDataset(chat_file, tokenizer, max_tokens=512, on_error="fail")


def test_chat_template_that_rewrites_earlier_turns_is_reported(tokenizer, chat_file):
    """A template that drops earlier turns (as some reasoning models' templates do) cannot be labelled by turns."""
    last_turn_only = copy.copy(tokenizer)
    last_turn_only.chat_template = (
        "{% for m in messages %}{% if loop.last %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.raises(DataError, match=f"^{chat_file}:1: the chat template does not render this conversation turn by turn"):
        JsonlChatDataset(chat_file, last_turn_only, max_tokens=512, on_error="fail")
    assert tokenizer.chat_template != last_turn_only.chat_template


def test_long_chats_are_truncated_and_counted(tokenizer, chat_file):
    full = JsonlChatDataset(chat_file, tokenizer, max_tokens=512)[0]
    second_answer = full.labels.index(encode(tokenizer, "Paris")[0])
    ds = JsonlChatDataset(chat_file, tokenizer, max_tokens=second_answer + 2)
    assert ds[0].input_ids == full.input_ids[: second_answer + 2]
    assert ds[0].labels == full.labels[: second_answer + 2]
    assert "truncated 1 conversations longer than" in ds.report()
    with pytest.raises(DataError, match="no assistant token within the first 10 tokens"):
        JsonlChatDataset(chat_file, tokenizer, max_tokens=10, on_error="fail")


# ---------------------------------------------------------------------------------------------------------------
# Text files


def test_text_files(tokenizer, tmp_path):
    a = tmp_path / "a.txt"
    a.write_text("First sentence. Second one? Yes! A new line\nfollows here.", encoding="utf-8")
    b = tmp_path / "b.txt"
    b.write_text("Short file.", encoding="utf-8")
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n", encoding="utf-8")
    broken = tmp_path / "broken.txt"
    broken.write_bytes(b"line one\nline two \xff\n")
    ds = TextFilesDataset([a, b, empty, broken], tokenizer, max_tokens=8)
    assert ds.errors == [f"{empty}: empty file", f"{broken}:2: not UTF-8 (byte 18)"]
    samples = [ds[i] for i in range(len(ds))]
    ids_a = encode(tokenizer, a.read_text())
    assert sum((s.input_ids for s in samples[:-1]), []) == ids_a
    assert samples[-1].input_ids == encode(tokenizer, "Short file.")
    starts = [tokenizer.decode(s.input_ids[b:]).split()[0] for s in samples for b in s.boundaries]
    assert set(starts) <= {"Second", "Yes!", "A", "follows"}
    assert "read 4 files" in ds.report() and "split 1 files longer than 8 tokens" in ds.report()
    with pytest.raises(DataError, match=f"^{empty}: empty file"):
        TextFilesDataset([a, empty], tokenizer, max_tokens=8, on_error="fail")


def test_text_file_boundaries_at_sentence_and_line_starts(tokenizer, tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("First sentence. Second one? Yes! A new line\nfollows here.", encoding="utf-8")
    sample = TextFilesDataset(path, tokenizer, max_tokens=100)[0]
    assert [tokenizer.decode(sample.input_ids[b:]).split()[0] for b in sample.boundaries] == ["Second", "Yes!", "A", "follows"]


# ---------------------------------------------------------------------------------------------------------------
# Generated tasks


def test_passkey_dataset(tokenizer):
    ds = PasskeyDataset(tokenizer, lengths=(100, 300), seed=3, size=50)
    assert len(ds) == 50
    for i in range(10):
        sample = ds[i]
        answer = labelled_runs(sample)
        assert len(answer) == 1 and sample.input_ids[-len(answer[0]) :] == answer[0]
        text = tokenizer.decode(answer[0])
        assert text.startswith(" ") and text.endswith(".") and text[1:-1].isdigit() and len(text) == 7
        assert 100 <= len(sample.input_ids) - len(answer[0]) <= 300
        assert all(0 < b < len(sample.input_ids) for b in sample.boundaries)
    with_context = PasskeyDataset(tokenizer, lengths=(100, 300), seed=3, size=50, context_loss=True)[0]
    assert with_context.labels == with_context.input_ids == ds[0].input_ids
    bare = PasskeyDataset(tokenizer, lengths=(100, 300), seed=3, size=50, answer_end="")[0]
    assert bare.input_ids == ds[0].input_ids[:-1] and tokenizer.decode(labelled_runs(bare)[0]).strip().isdigit()


def test_generated_datasets_are_deterministic(tokenizer):
    a = PasskeyDataset(tokenizer, lengths=(80, 200), seed=5, size=1000)
    b = PasskeyDataset(tokenizer, lengths=(80, 200), seed=5, size=1000)
    other = PasskeyDataset(tokenizer, lengths=(80, 200), seed=6, size=1000)
    assert [a[i] for i in (0, 7, 999)] == [b[i] for i in (999, 7, 0)][::-1]
    assert a[7] == a[7] and a[-1] == a[999]
    assert [a[i].input_ids for i in range(5)] != [other[i].input_ids for i in range(5)]
    with pytest.raises(IndexError):
        a[1000]


def test_sample_rng_is_the_same_in_a_fresh_process():
    """Resuming in a new process must reproduce samples, whatever the process's hash salt."""
    code = "from cometlm.training.data import sample_rng; print(sample_rng(3, 7).random())"
    env = {"PYTHONHASHSEED": "12345", "PATH": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert float(out.stdout) == sample_rng(3, 7).random()
    assert sample_rng(3, 7).random() != sample_rng(3, 8).random() != sample_rng(4, 7).random()


def test_needle_dataset(tokenizer):
    ds = NeedleDataset(tokenizer, lengths=(200, 400), seed=1, size=10, depth_range=(0.2, 0.8))
    sample = ds[3]
    assert tokenizer.decode(labelled_runs(sample)[0]) == " " + NEEDLE_ANSWER
    assert ds[3] == NeedleDataset(tokenizer, lengths=(200, 400), seed=1, size=10, depth_range=(0.2, 0.8))[3]


def test_needle_training_never_reads_the_held_out_essays(tokenizer):
    """The essays' last 5% are the evaluations' essays haystack and `eval ppl`'s text: no training needle prompt
    holds any 12 tokens in a row of it (400 prompts, which before the fix read it in 17)."""
    held_out = load_haystack("essays", tokenizer, "test").ids.tolist()
    grams = {tuple(held_out[i : i + 12]) for i in range(len(held_out) - 11)}
    ds = NeedleDataset(tokenizer, lengths=(1024, 2048), seed=0, size=400)
    for i in range(len(ds)):
        ids = ds[i].input_ids
        assert not any(tuple(ids[j : j + 12]) in grams for j in range(len(ids) - 11)), i


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lengths=(300, 100)), "lengths must be"),
        (dict(lengths=(100, 200), depth_range=(0.5, 1.5)), "depth_range must be"),
        (dict(lengths=(100, 200), size=0), "size must be at least 1"),
    ],
)
def test_retrieval_dataset_arguments(tokenizer, kwargs, message):
    with pytest.raises(ValueError, match=message):
        PasskeyDataset(tokenizer, **kwargs)


def test_corpus_heldout_split_never_overlaps_training(tokenizer):
    corpus = corpus_tokens("essays", tokenizer)
    train = CorpusLMDataset(tokenizer, corpus="essays", length=64, seed=0, size=10**6, split="train")
    heldout = CorpusLMDataset(tokenizer, corpus="essays", length=64, seed=0, size=10**6, split="heldout")
    cut = int(len(corpus) * 0.95)
    assert train.span == (0, cut) and heldout.span == (cut, len(corpus))
    train_windows = [train.window(i) for i in range(2000)]
    heldout_windows = [heldout.window(i) for i in range(2000)]
    assert max(end for _, end in train_windows) <= cut <= min(start for start, _ in heldout_windows)
    assert max(end for _, end in heldout_windows) <= len(corpus)
    for ds, (start, end), i in ((train, train_windows[5], 5), (heldout, heldout_windows[9], 9)):
        assert ds[i].input_ids == ds[i].labels == corpus[start:end].tolist()
    with pytest.raises(ValueError, match="length must lie in"):
        CorpusLMDataset(tokenizer, corpus="essays", length=len(corpus), split="heldout")


def test_mixture(tokenizer):
    passkey = PasskeyDataset(tokenizer, lengths=(80, 120), seed=0, size=100)
    lm = CorpusLMDataset(tokenizer, corpus="essays", length=32, seed=0, size=100)
    never = CorpusLMDataset(tokenizer, corpus="essays", length=16, seed=0, size=100)
    mix = MixtureDataset([passkey, lm, never], weights=[3, 1, 0], seed=2, size=10_000)
    picks = [mix.component(i) for i in range(4000)]
    share = sum(k == 0 for k, _ in picks) / len(picks)
    assert abs(share - 0.75) < 0.03
    assert all(k != 2 and 0 <= j < 100 for k, j in picks)
    k, j = mix.component(11)
    assert mix[11] == (passkey, lm)[k][j]
    assert mix[11] == MixtureDataset([passkey, lm, never], weights=[3, 1, 0], seed=2, size=10_000)[11]
    for weights in ([1, -1, 1], [0, 0, 0], [1, 1]):
        with pytest.raises(ValueError):
            MixtureDataset([passkey, lm, never], weights=weights, seed=0)


# ---------------------------------------------------------------------------------------------------------------
# Batching


def test_collate_right_pads():
    samples = [Sample([5, 6, 7], [IGNORE, 6, 7]), Sample([8], [8])]
    batch = collate(samples, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]
    assert all(t.dtype == torch.long for t in batch.values())
    with pytest.raises(ValueError, match="labels must match input_ids"):
        Sample([1, 2], [1])
