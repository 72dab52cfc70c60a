"""`cometlm eval passkey`: the grid, its files, resuming, scoring, the layouts, the baselines and bad input."""

import argparse
import copy
import gc
import json
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import COMMON, assert_states_equal
from eval_helpers import Spy, read_jsonl, stable
from eval_helpers import tiny_text_model as tiny_model
from matplotlib.image import imread

import cometlm.tasks.retrieval as tasks
from cometlm import CometForCausalLM, MemoryState
from cometlm.bundled import encode
from cometlm.cli.eval import register
from cometlm.evaluation.grid import length_label, trials_label, write_heatmap
from cometlm.evaluation.methods.base import backbone_window
from cometlm.evaluation.passkey import HEATMAP_FILE, SUMMARY_FILE, TRIALS_FILE, evaluate_passkey
from cometlm.evaluation.streaming import Snapshot, _digest, read_context
from cometlm.generation import open_chunk

C = 64  # chunk size of the tiny model: the question (11 tokens) and answer (9) fit, a 300-token prompt spans 5
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def run(model, tokenizer, out_dir, lengths=(150, 300), depths=(50,), trials=1, seed=0, **options):
    """One trial at a time unless the test says otherwise: the spies below count generate calls per trial."""
    options.setdefault("batch", False)
    return evaluate_passkey(model, tokenizer, list(lengths), list(depths), trials, seed, out_dir, progress=False,
                            **options)


def trial_records(out_dir) -> list[dict]:
    return read_jsonl(out_dir / TRIALS_FILE)


def sample_of(tokenizer, length, depth, trial=0, seed=0):
    """The documented key schedule: trial t of a cell uses Random(f"{seed}/{length}/{depth}/{t}")."""
    return tasks.passkey_sample(tokenizer, length, depth / 100, random.Random(f"{seed}/{length}/{depth}/{trial}"))


def share_of_pixels_near(png, rgb, tolerance=0.06) -> float:
    image = imread(png)[..., :3]
    return float((np.abs(image - np.array(rgb) / 255).max(axis=-1) < tolerance).mean())


# --------------------------------------------------------------------------------------------------------------


def test_grid_writes_trials_summary_and_heatmap(tmp_path, model, tokenizer):
    summary = run(model, tokenizer, tmp_path, lengths=(300, 150), depths=(100, 0, 50), trials=2, seed=7)
    records = trial_records(tmp_path)
    assert len(records) == 2 * 3 * 2
    assert [(r["length"], r["depth"], r["trial"]) for r in records[:3]] == [(150, 0, 0), (150, 0, 1), (150, 50, 0)]
    for r in records:
        want = sample_of(tokenizer, r["length"], r["depth"], r["trial"], seed=7)
        assert r["key"] == want.answer and r["needle_start"] == want.needle_start
        assert isinstance(r["generated"], str) and r["correct"] == tasks.passkey_matches(r["generated"], r["key"])
        assert r["seconds"] > 0 and r["tokens_per_s"] > 0 and r["peak_rss_mib"] > 0 and r["read_tokens"] == r["length"]
    assert len({r["key"] for r in records}) > 6  # random keys, not one key per cell

    on_disk = json.loads((tmp_path / SUMMARY_FILE).read_text())
    assert stable(on_disk) == stable(summary) and summary["complete"] is True
    assert summary["config"]["lengths"] == [150, 300] and summary["config"]["depths"] == [0, 50, 100]
    assert [(c["length"], c["depth"], c["done"]) for c in summary["cells"]][:2] == [(150, 0, 2), (150, 50, 2)]
    for cell in summary["cells"]:
        mine = [r for r in records if (r["length"], r["depth"]) == (cell["length"], cell["depth"])]
        assert cell["accuracy"] == sum(r["correct"] for r in mine) / 2
        assert cell["seconds"] > 0 and cell["peak_rss_mib"] > 0
    assert [row["length"] for row in summary["accuracy_by_length"]] == [150, 300]
    env = summary["environment"]
    assert set(env["versions"]) == {"python", "torch", "transformers", "cometlm"} and env["written_utc"].endswith("+00:00")
    assert "process" in summary["cost"]["note"]

    png = imread(tmp_path / HEATMAP_FILE)
    assert png.ndim == 3 and png.shape[0] > 200 and png.shape[1] > 300
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([TRIALS_FILE, SUMMARY_FILE, HEATMAP_FILE])

    # Redrawing the heatmap (after every cell of a long grid) leaves no reference cycles for a later collection,
    # which made resident memory grow with every drawing.
    gc.collect()
    gc.disable()
    try:
        write_heatmap(tmp_path / HEATMAP_FILE, summary, "passkey", "key")
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_fewer_trials_at_a_length_are_run_counted_and_named(tmp_path, model, tokenizer):
    summary = run(model, tokenizer, tmp_path, lengths=(150, 300), depths=(0, 100), trials=2, trials_at={300: 1})
    cells = [(r["length"], r["depth"], r["trial"]) for r in trial_records(tmp_path)]
    assert sorted(cells) == [(150, 0, 0), (150, 0, 1), (150, 100, 0), (150, 100, 1), (300, 0, 0), (300, 100, 0)]
    assert summary["complete"] is True and summary["config"]["trials_at"] == {"300": 1}
    assert [c["done"] for c in summary["cells"]] == [2, 2, 1, 1]
    assert trials_label(summary["config"]) == "2 trials (1 at 300)"
    # the same run with one more trial at 300 reads only that trial; trials_at is not part of what the run is
    more = run(model, tokenizer, tmp_path, lengths=(150, 300), depths=(0, 100), trials=2)
    assert len(trial_records(tmp_path)) == 8 and more["complete"] and trials_label(more["config"]) == "2 trials"
    for bad, message in (({500: 1}, "not in the grid: \\[500\\]"), ({300: 0}, "at least 1 \\(got 0\\)")):
        with pytest.raises(ValueError, match=message):
            run(model, tokenizer, tmp_path / "bad", lengths=(150, 300), trials=2, trials_at=bad)
    assert not (tmp_path / "bad").exists()


def test_an_interrupted_grid_resumes_with_only_the_missing_trials(tmp_path, model, tokenizer, monkeypatch):
    grid = dict(lengths=(150, 300), depths=(0, 100), trials=1, seed=3)
    full = run(model, tokenizer, tmp_path / "full", **grid)

    monkeypatch.setattr(model, "generate", Spy(model.generate, stop_after=3))
    with pytest.raises(KeyboardInterrupt):
        run(model, tokenizer, tmp_path / "resumed", command="cometlm eval passkey --first", **grid)
    partial = json.loads((tmp_path / "resumed" / SUMMARY_FILE).read_text())
    assert partial["complete"] is False and [c["done"] for c in partial["cells"]] == [1, 1, 1, 0]
    with open(tmp_path / "resumed" / TRIALS_FILE, "a") as f:
        f.write('{"method": "comet", "len')  # a line cut short by a killed process

    monkeypatch.undo()
    spy = Spy(model.generate)
    monkeypatch.setattr(model, "generate", spy)
    resumed = run(model, tokenizer, tmp_path / "resumed", command="cometlm eval passkey --second", **grid)
    assert len(spy.calls) == 1
    # each trial keeps the command that ran it; the summary counts them
    assert resumed["environment"]["commands"] == {"cometlm eval passkey --first": 3, "cometlm eval passkey --second": 1}
    assert stable(resumed) == stable(full) and resumed["complete"] is True
    assert stable(json.loads((tmp_path / "resumed" / SUMMARY_FILE).read_text())) == stable(full)
    assert stable(trial_records(tmp_path / "resumed")) == stable(trial_records(tmp_path / "full"))


def test_a_rerun_that_skips_every_trial_keeps_the_recorded_peak_memory(tmp_path, model, tokenizer):
    run(model, tokenizer, tmp_path, lengths=(150,), depths=(0, 100))
    path = tmp_path / TRIALS_FILE
    records = trial_records(tmp_path)
    records[1]["peak_rss_mib"] = 10**7  # far above this process's peak: as if an earlier run had needed it
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert run(model, tokenizer, tmp_path, lengths=(150,), depths=(0, 100))["cost"]["peak_rss_mib"] == 10**7


class StopReading:
    """Wraps `model.ingest`, counting calls; raises KeyboardInterrupt once `stop_after` calls ran."""

    def __init__(self, ingest, stop_after=None):
        self.ingest, self.stop_after, self.calls = ingest, stop_after, 0

    def __call__(self, *args, **kwargs):
        if self.stop_after is not None and self.calls == self.stop_after:
            raise KeyboardInterrupt
        self.calls += 1
        return self.ingest(*args, **kwargs)


def test_a_read_interrupted_mid_trial_continues_from_its_snapshot(tmp_path, model, monkeypatch):
    ids, tail = random.Random(1).choices(range(1000, 40000), k=9 * C + 30), 20  # a short chunk of 10, 9 full ones
    want = read_context(model, ids, tail)
    snap = Snapshot(tmp_path / "partial" / "s.safetensors", tag="m1", every=0)

    monkeypatch.setattr(model, "ingest", StopReading(model.ingest, stop_after=6))
    with pytest.raises(KeyboardInterrupt):
        read_context(model, ids, tail, snapshot=snap)
    assert MemoryState.read_notes(snap.path)["next"] == str(10 + 5 * C)  # the short chunk and 5 full ones
    monkeypatch.undo()
    spy = StopReading(model.ingest)
    monkeypatch.setattr(model, "ingest", spy)
    assert_states_equal(read_context(model, ids, tail, snapshot=snap), want)
    assert spy.calls == 4  # only the chunks after the snapshot
    assert snap.resumed_tokens == 10 + 5 * C and snap.resumed_seconds > 0  # what the first run read, and how long

    for other in (Snapshot(snap.path, tag="m2", every=0), snap):  # another model's snapshot; other ids
        saved = snap.path.read_bytes()
        spy.calls = 0
        ids2 = ids if other.tag == "m2" else ids[:-1] + [5]
        assert_states_equal(read_context(model, ids2, tail, snapshot=other), read_context(model, ids2, tail))
        assert spy.calls == 2 * 10  # read from the start, twice
        snap.path.write_bytes(saved)
    snap.path.write_bytes(b"torn")
    assert_states_equal(read_context(model, ids, tail, snapshot=snap), want)
    assert snap.resumed_tokens == 0 and snap.resumed_seconds == 0.0
    state = read_context(model, ids, tail)
    for next_position in ("11", "-64", str(10 + 9 * C), "x"):  # inside a chunk, before the start, at the end
        state.save(snap.path, notes={"ids": _digest(ids), "tail": "20", "chunk_size": str(C), "tag": "m1",
                                     "next": next_position})
        assert_states_equal(read_context(model, ids, tail, snapshot=snap), want)
        assert snap.resumed_tokens == 0


def test_an_interrupted_long_trial_resumes_mid_read(tmp_path, model, tokenizer, monkeypatch):
    grid = dict(lengths=(600,), depths=(0,), trials=1, seed=4, snapshot_every=1e-9)
    straight = StopReading(model.ingest)
    monkeypatch.setattr(model, "ingest", straight)
    full = run(model, tokenizer, tmp_path / "full", **grid)
    assert not (tmp_path / "full" / "partial").exists()
    monkeypatch.undo()

    monkeypatch.setattr(model, "ingest", StopReading(model.ingest, stop_after=5))  # the short chunk and 4 full
    with pytest.raises(KeyboardInterrupt):
        run(model, tokenizer, tmp_path / "resumed", **grid)
    assert len(list((tmp_path / "resumed" / "partial").iterdir())) == 1
    monkeypatch.undo()
    spy = StopReading(model.ingest)
    monkeypatch.setattr(model, "ingest", spy)
    resumed = run(model, tokenizer, tmp_path / "resumed", **grid)
    assert spy.calls == straight.calls - 5  # nothing read twice
    records, full_records = trial_records(tmp_path / "resumed"), trial_records(tmp_path / "full")
    assert full_records[0]["resumed_at"] is None and records[0]["resumed_at"] > 0
    assert stable(records) == stable([{**full_records[0], "resumed_at": records[0]["resumed_at"]}])
    assert stable(resumed) == stable(full) and not (tmp_path / "resumed" / "partial").exists()


def test_a_snapshot_left_by_a_recorded_trial_is_removed(tmp_path, model, tokenizer):
    grid = dict(lengths=(150,), depths=(0,), trials=1)
    run(model, tokenizer, tmp_path, **grid)
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "150-0-0.safetensors").write_bytes(b"left behind by a kill")
    run(model, tokenizer, tmp_path, **grid)
    assert not (tmp_path / "partial").exists()


def test_resuming_refuses_a_folder_of_a_different_run(tmp_path, model, tokenizer):
    run(model, tokenizer, tmp_path, lengths=(150,), layout="fixed")
    with pytest.raises(ValueError, match="different run .*layout: 'fixed' there, 'primed' now"):
        run(model, tokenizer, tmp_path, lengths=(150,), layout="primed")
    with pytest.raises(ValueError, match="seed: 0 there, 1 now"):
        run(model, tokenizer, tmp_path, lengths=(150,), layout="fixed", seed=1)
    with pytest.raises(ValueError, match="model_id"):
        run(tiny_model(chunk_size=32), tokenizer, tmp_path, lengths=(150,), layout="fixed")
    assert len(trial_records(tmp_path)) == 1


def test_the_same_weights_in_bfloat16_are_another_run(tmp_path, model, tokenizer):
    """float32 results keep the ids they always had (no dtype in them); bfloat16 ones say so and do not mix in."""
    summary = run(model, tokenizer, tmp_path, lengths=(150,))
    assert "dtype" not in summary["model"]
    with pytest.raises(ValueError, match="model_id"):
        run(copy.deepcopy(model).to(torch.bfloat16), tokenizer, tmp_path, lengths=(150,))
    summary = run(copy.deepcopy(model).to(torch.bfloat16), tokenizer, tmp_path / "bf16", lengths=(150,))
    assert summary["model"]["dtype"] == "bfloat16"


@pytest.mark.parametrize(
    "reply, correct",
    [(lambda key: key, True), (lambda key: key + ". Remember", True), (lambda key: "00000", False),
     (lambda key: key + "7", False), (lambda key: key[:-1], False)],
    ids=["key", "key-then-text", "other-key", "one-digit-more", "one-digit-less"],
)
def test_a_trial_is_correct_exactly_when_the_generated_answer_is_the_key(tmp_path, model, tokenizer, monkeypatch,
                                                                          reply, correct):
    samples, passkey_sample = [], tasks.passkey_sample

    def recording_sample(*args, **kwargs):
        samples.append(passkey_sample(*args, **kwargs))
        return samples[-1]

    monkeypatch.setattr(tasks, "passkey_sample", recording_sample)

    def generate(input_ids, max_new_tokens, **kwargs):
        answer = encode(tokenizer, " " + reply(samples[-1].answer))[:max_new_tokens]
        return torch.cat([input_ids, torch.tensor([answer])], dim=1)

    monkeypatch.setattr(model, "generate", generate)
    summary = run(model, tokenizer, tmp_path, depths=(0, 100), trials=2)
    records = trial_records(tmp_path)
    assert all(r["generated"] == " " + reply(r["key"]) for r in records)
    assert all(r["correct"] is correct for r in records)
    assert summary["mean_accuracy"] == float(correct)
    assert all(c["accuracy"] == float(correct) for c in summary["cells"])
    # The heatmap's colour is the accuracy: dark green cells for 1, dark red for 0.
    green, red = share_of_pixels_near(tmp_path / HEATMAP_FILE, (0, 104, 55)), share_of_pixels_near(tmp_path / HEATMAP_FILE, (165, 0, 38))
    assert (green, red)[not correct] > 0.2 and (green, red)[correct] < 0.02


@pytest.mark.parametrize("layout", ["primed", "fixed"])
@torch.inference_mode()
def test_layout_of_the_chunks_the_prompt_is_read_in(tmp_path, model, tokenizer, monkeypatch, layout):
    lengths = (100, 119, 120, 300)  # after the primed tail of 55: a short first chunk only, none, 1 token, 53
    spy = Spy(model.generate)
    monkeypatch.setattr(model, "generate", spy)
    run(model, tokenizer, tmp_path, lengths=lengths, layout=layout)
    run(model, tokenizer, tmp_path / "short_prime", lengths=(300,), layout=layout, prime_tokens=5)
    question = sample_of(tokenizer, 300, 50).question_ids
    for i, (length, (input_ids, kwargs)) in enumerate(zip(lengths + (300,), spy.calls, strict=True)):
        prompt = sample_of(tokenizer, length, 50).prompt_ids
        state = model.ingest(input_ids, kwargs["memory"])  # what generate reads before its first token
        tail = int(state.pending_len)
        assert state.pending[0].tolist() == prompt[-tail:]
        first = (length - tail) % C
        plan = [first] * bool(first) + [C] * ((length - tail) // C) + [tail]
        assert int(state.chunks_closed) == len(plan) - 1
        # The open chunk ends the same plan of chunks as forward reads teacher-forced.
        want = model(torch.tensor([prompt]), chunk_sizes=torch.tensor([plan])).logits[:, -1]
        torch.testing.assert_close(open_chunk(model, state).logits, want, atol=1e-5, rtol=1e-5)
        if layout == "fixed":
            assert plan[:-1] == [C] * (len(plan) - 1)  # chunks of C from the start, as generate(prompt) cuts
            continue
        # No chunk boundary inside the question, room for the whole answer, as much context as was asked for.
        assert tail >= len(question) and tail + kwargs["max_new_tokens"] <= C
        prime = 5 if i == len(lengths) else 256
        assert tail == min(length, len(question) + prime, C - kwargs["max_new_tokens"])


@torch.inference_mode()
def test_the_three_methods_run_with_one_schema(tmp_path, model, tokenizer, monkeypatch):
    METHODS = ("comet", "no-memory", "truncated")  # every method: test_eval_methods.py
    calls, generate = [], CometForCausalLM.generate

    def spy(self, input_ids, **kwargs):
        calls.append((self, input_ids, kwargs))
        return generate(self, input_ids, **kwargs)

    monkeypatch.setattr(CometForCausalLM, "generate", spy)
    summaries = {m: run(model, tokenizer, tmp_path / m, method=m, window=128) for m in METHODS}
    records = {m: trial_records(tmp_path / m) for m in METHODS}

    assert {m: s["method"] for m, s in summaries.items()} == {m: m for m in METHODS}
    shapes = {m: (sorted(s), sorted(s["config"]), sorted(s["cells"][0]), sorted(records[m][0])) for m, s in summaries.items()}
    assert shapes["comet"] == shapes["no-memory"] == shapes["truncated"]
    assert [r["key"] for r in records["comet"]] == [r["key"] for r in records["truncated"]]

    # truncated: the plain backbone on the last window - answer tokens (CoMeT's generate is never called).
    assert [r["read_tokens"] for r in records["truncated"]] == [128 - 9, 128 - 9]
    assert summaries["truncated"]["config"]["window"] == 128 and summaries["truncated"]["config"]["layout"] is None
    assert backbone_window(model, None) == COMMON["max_position_embeddings"]
    assert len(calls) == 4

    # no-memory: the same backbone with no memory rows, so only the open chunk matters (and only it is read:
    # test_eval_methods.py checks that equals reading everything); comet's memory does matter.
    _, (_, comet_ids, comet_call), _, (bare, bare_ids, bare_call) = calls
    assert bare.backbone_model is model.backbone_model and bare.comet_config.max_positions == C
    assert not bare_call["memory"].layers[0].row_valid().any() and int(bare_call["memory"].chunks_closed) == 0
    assert [r["read_tokens"] for r in records["no-memory"]] == [r["open_chunk_tokens"] for r in records["comet"]]
    with_memory = open_chunk(model, model.ingest(comet_ids, comet_call["memory"])).logits
    assert not torch.allclose(with_memory, open_chunk(model, model.ingest(comet_ids)).logits, atol=1e-4)


def test_bad_arguments_fail_before_anything_is_written(tmp_path, model, tokenizer):
    cases = [
        (dict(depths=[150]), "depths are percentages .* 0 \\(start\\) to 100 \\(end\\) \\(got 150\\)"),
        (dict(depths=[-5]), "depths are percentages"),
        (dict(lengths=[40]), "context length 40: .*too short for a passkey prompt; use at least 68"),
        (dict(lengths=[]), "at least one context length"),
        (dict(trials=0), "trials must be an integer of at least 1 \\(got 0\\)"),
        (dict(method="rag"), "method must be one of comet, no-memory, full, truncated, sliding-window"),
        (dict(layout="left"), "layout must be one of primed, fixed"),
        (dict(prime_tokens=-1), "prime_tokens must be an integer >= 0"),
        (dict(method="truncated", window=8), "window must exceed the answer's 9 tokens"),
    ]
    for change, message in cases:
        options = dict(lengths=[150], depths=[50], trials=1) | change
        with pytest.raises(ValueError, match=message):
            evaluate_passkey(model, tokenizer, seed=0, out_dir=tmp_path / "out", progress=False, **options)
    with pytest.raises(ValueError, match="question \\(11 tokens\\) and the answer \\(9 tokens\\) in one chunk, but the "
                                         "chunk size is 16; use a larger chunk size or layout 'fixed'"):
        run(tiny_model(chunk_size=16), tokenizer, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    run(tiny_model(chunk_size=16), tokenizer, tmp_path / "out", layout="fixed")  # fixed chunks need no room


def test_command_line(tmp_path, tokenizer, capsys):
    saved = tmp_path / "tiny"
    tiny_model(tokenizer=tokenizer).save_pretrained(saved)
    parser = argparse.ArgumentParser(prog="cometlm")
    register(parser.add_subparsers(dest="command", required=True))
    passkey = parser._subparsers._group_actions[0].choices["eval"]._subparsers._group_actions[0].choices["passkey"]
    for action in passkey._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{action.option_strings} has no help text"

    out = tmp_path / "runs"
    argv = ["eval", "passkey", "--comet", str(saved), "--lengths", "600", "150", "--depths", "0", "100",
            "--trials", "1", "--seed", "2", "--out", str(out), "--method", "comet", "--layout", "primed"]
    args = parser.parse_args(argv)
    assert args.run(args) == 0  # with progress bars, and a nested reading bar for the 600-token prompt
    shown = capsys.readouterr()
    assert "depth %" in shown.out and "150" in shown.out and "results in" in shown.err and "passkey" in shown.err
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["complete"] and summary["model"]["name"] == str(saved) and summary["config"]["depths"] == [0, 100]
    assert (out / HEATMAP_FILE).is_file() and len(trial_records(out)) == 4

    args = parser.parse_args(argv)
    assert args.run(args) == 0  # everything done: nothing runs again
    assert len(trial_records(out)) == 4
    with pytest.raises(ValueError, match="depths are percentages"):  # before the model is loaded
        args = parser.parse_args(argv[:-6] + ["--depths", "101"])
        args.run(args)
    with pytest.raises(SystemExit):
        parser.parse_args(argv + ["--method", "rag"])


def test_registering_the_command_imports_no_heavy_library():
    code = ("import argparse; from cometlm.cli.eval import register; "
            "register(argparse.ArgumentParser().add_subparsers())")
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, check=True)
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "cometlm.evaluation.passkey" in imported
    assert not imported & {"torch", "transformers", "matplotlib", "numpy"}


@pytest.mark.parametrize("n, label", [(150, "150"), (2048, "2k"), (32768, "32k"), (2**20, "1M"), (32000, "32k"),
                                      (10**6, "1M"), (1500, "1500")])
def test_length_labels(n, label):
    assert length_label(n) == label


@pytest.mark.parametrize("method", ["comet", "no-memory"])
@torch.inference_mode()
def test_a_cell_read_as_one_batch_gives_every_trial_the_answer_it_gets_alone(tmp_path, model, tokenizer, method):
    alone = run(model, tokenizer, tmp_path / "alone", depths=(0, 60), trials=3, method=method)
    batched = run(model, tokenizer, tmp_path / "batched", depths=(0, 60), trials=3, method=method, batch=True)
    one, many = trial_records(tmp_path / "alone"), trial_records(tmp_path / "batched")
    assert [r["batch"] for r in one] == [1] * 12 and [r["batch"] for r in many] == [3] * 12
    fields = ("length", "depth", "trial", "key", "generated", "correct", "first_chunk_tokens", "open_chunk_tokens")
    assert [{f: r[f] for f in fields} for r in one] == [{f: r[f] for f in fields} for r in many]
    assert [c["accuracy"] for c in alone["cells"]] == [c["accuracy"] for c in batched["cells"]]
