"""`cometlm eval niah`: the needle grid, its scoring, resuming, every method, and the eval command line."""

import argparse
import json
import random
import subprocess
import sys

import pytest
import torch
from eval_helpers import Spy, read_jsonl, stable, tiny_text_model

import cometlm.tasks.retrieval as tasks
from cometlm.bundled import encode
from cometlm.cli.eval import register
from cometlm.evaluation.grid import TRIALS_FILE
from cometlm.evaluation.settings import METHODS
from cometlm.evaluation.niah import NIAH, evaluate_niah

GRID = dict(lengths=[150, 300], depths=[0, 100], trials=1, seed=4)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return tiny_text_model()


def trial_records(out_dir) -> list[dict]:
    return read_jsonl(out_dir / TRIALS_FILE)


def run(model, tokenizer, out_dir, **options):
    return evaluate_niah(model, tokenizer, out_dir=out_dir, progress=False, **{**GRID, **options})


def test_grid_prompts_scoring_and_files(tmp_path, model, tokenizer, monkeypatch):
    replies = iter([" eat a sandwich and sit in Dolores Park.", " a SANDWICH in dolores park", " sit in the park",
                    " eat a sandwich"])

    def generate(input_ids, max_new_tokens, **kwargs):
        return torch.cat([input_ids, torch.tensor([encode(tokenizer, next(replies))[:max_new_tokens]])], dim=1)

    monkeypatch.setattr(model, "generate", generate)
    summary = run(model, tokenizer, tmp_path)
    records = trial_records(tmp_path)
    assert [r["correct"] for r in records] == [True, True, False, False]  # both key phrases, any case
    for r in records:
        want = tasks.needle_sample(tokenizer, r["length"], r["depth"] / 100,
                                   random.Random(f"{GRID['seed']}/{r['length']}/{r['depth']}/{r['trial']}"))
        assert r["needle_start"] == want.needle_start and r["read_tokens"] == r["length"]
    assert summary["task"] == "niah" and summary["complete"] and summary["mean_accuracy"] == 0.5
    assert [row["accuracy"] for row in summary["accuracy_by_length"]] == [1.0, 0.0]
    assert json.loads((tmp_path / NIAH.summary_file).read_text())["mean_accuracy"] == 0.5
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([TRIALS_FILE, "niah.json", "niah.png"])


def test_an_interrupted_grid_resumes_to_the_same_results(tmp_path, model, tokenizer, monkeypatch):
    full = run(model, tokenizer, tmp_path / "full")
    monkeypatch.setattr(model, "generate", Spy(model.generate, stop_after=2))
    with pytest.raises(KeyboardInterrupt):
        run(model, tokenizer, tmp_path / "resumed")
    assert len(trial_records(tmp_path / "resumed")) == 2
    monkeypatch.undo()
    spy = Spy(model.generate)
    monkeypatch.setattr(model, "generate", spy)
    resumed = run(model, tokenizer, tmp_path / "resumed")
    assert len(spy.calls) == 2 and stable(resumed) == stable(full)
    assert stable(trial_records(tmp_path / "resumed")) == stable(trial_records(tmp_path / "full"))
    with pytest.raises(ValueError, match="different run .*window: None there, 200 now"):
        run(model, tokenizer, tmp_path / "resumed", method="sliding-window", window=200)


@torch.inference_mode()
def test_every_method_runs_the_same_prompts_with_one_schema(tmp_path, model, tokenizer):
    windows = {"truncated": 200, "sliding-window": 200}
    summaries = {m: run(model, tokenizer, tmp_path / m, method=m, window=windows.get(m)) for m in METHODS}
    records = {m: trial_records(tmp_path / m) for m in METHODS}
    shapes = {(tuple(sorted(s)), tuple(sorted(s["config"])), tuple(sorted(records[m][0]))) for m, s in summaries.items()}
    assert len(shapes) == 1
    assert len({tuple(r["needle_start"] for r in records[m]) for m in METHODS}) == 1
    assert [r["read_tokens"] for r in records["truncated"]] == [150, 150, 200 - 22, 200 - 22]  # window - answer room
    assert [r["read_tokens"] for r in records["sliding-window"]] == [150, 150, 300, 300]
    assert summaries["sliding-window"]["config"]["sink_tokens"] == 4
    assert summaries["comet"]["config"]["reads"] == "primed layout"
    with pytest.raises(ValueError, match="context length 1100 plus the 22-token answer exceeds the backbone's window "
                                         "of 1024 tokens"):
        run(model, tokenizer, tmp_path / "long", method="full", lengths=[150, 1100])
    assert not (tmp_path / "long").exists()


def eval_parser():
    parser = argparse.ArgumentParser(prog="cometlm")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_command_line_and_help_of_every_eval_task(tmp_path, tokenizer, capsys):
    parser = eval_parser()
    tasks_parser = parser._subparsers._group_actions[0].choices["eval"]._subparsers._group_actions[0]
    assert set(tasks_parser.choices) >= {"passkey", "niah", "ppl", "table"}
    for name, task in tasks_parser.choices.items():
        for action in task._actions:
            assert action.help, f"eval {name} {action.option_strings or action.dest} has no help text"

    saved = tmp_path / "tiny"
    tiny_text_model(tokenizer=tokenizer).save_pretrained(saved)
    out = tmp_path / "niah"
    argv = ["eval", "niah", "--comet", str(saved), "--lengths", "200", "--depths", "50", "--trials", "1",
            "--method", "sliding-window", "--window", "64", "--sink-tokens", "2", "--out", str(out), "--no-progress"]
    args = parser.parse_args(argv)
    assert args.run(args) == 0
    shown = capsys.readouterr()
    assert "niah accuracy, sliding-window (2 sink + 64 recent tokens + a 128-token block)" in shown.out and "niah.json" in shown.err
    summary = json.loads((out / "niah.json").read_text())
    assert summary["config"]["window"] == 64 and summary["environment"]["command"]
    with pytest.raises(SystemExit):
        parser.parse_args(argv + ["--method", "rag"])


def test_the_eval_commands_import_no_heavy_library():
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "cometlm.cli", "eval", "ppl", "--help"],
                            capture_output=True, text=True, check=True)
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert {"cometlm.evaluation.niah", "cometlm.evaluation.ppl", "cometlm.evaluation.table"} <= imported
    assert not imported & {"torch", "transformers", "matplotlib", "numpy"}
    assert "--compare" in result.stdout
