"""`cometlm eval ruler-* | babilong-* | user-qa | agent-qa`: every family end to end on a tiny random model, options
bound and recorded, resuming, the baselines, and their rows in `cometlm eval table`."""

import argparse
import json
import random

import pytest
import torch
from eval_helpers import Spy, read_jsonl, stable, tiny_text_model

from cometlm.bundled import encode
from cometlm.cli.eval import GRID_TASKS, register
from cometlm.evaluation.grid import TRIALS_FILE, evaluate_grid
from cometlm.evaluation.suites import SUITE_TASKS, on_split
from cometlm.evaluation.table import format_table, load_results
from cometlm.tasks.suite import SPECS

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = ["--chunk-size", "128", "--global-slots", "4", "--temp-capacity", "16", "--no-progress"]
GRID = ["--lengths", "400", "--depths", "0", "100", "--trials", "1"]


def cometlm_eval(*argv) -> int:
    parser = argparse.ArgumentParser(prog="cometlm")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["eval", *argv])
    return args.run(args)


def test_every_suite_has_a_command():
    names = {task.name for task in GRID_TASKS}
    assert set(SPECS) <= names and {"passkey", "niah"} <= names
    assert len(names) == len(GRID_TASKS)


@pytest.mark.parametrize("task, options", [
    ("ruler-niah-multikey", ["--needles", "3", "--haystack", "noise", "--keys", "uuid"]),
    ("babilong-qa2", ["--facts", "5"]),
    ("user-qa", ["--question", "date"]),
    ("agent-qa", []),
])
def test_each_family_runs_from_the_command_line(tmp_path, tiny_model_dir, tokenizer, capsys, task, options):
    out = tmp_path / task
    assert cometlm_eval(task, "--model", tiny_model_dir, *TINY, *GRID, *options, "--out", str(out)) == 0
    assert f"{task} accuracy, comet (primed layout)" in capsys.readouterr().out
    summary = json.loads((out / f"{task}.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == sorted([TRIALS_FILE, f"{task}.json", f"{task}.png"])
    bound = SPECS[task].check(dict(zip([o.lstrip("-").replace("-", "_") for o in options[::2]],
                                       [int(v) if v.isdigit() else v for v in options[1::2]])))
    assert summary["complete"] and summary["config"]["options"] == bound and summary["config"]["split"] == "test"
    for record in read_jsonl(out / TRIALS_FILE):
        assert record["task_options"] == bound and record["read_tokens"] == 400
        want = SPECS[task].build(tokenizer, 400, record["depth"] / 100,
                                 random.Random(f"0/400/{record['depth']}/{record['trial']}"), **bound)
        assert record["answers"] == list(want.answers) and record["needle_start"] == want.needle_start
        assert record["kind"] == want.kind and isinstance(record["correct"], bool)


def test_the_validation_split_reads_the_training_templates_and_is_kept_apart(tmp_path, tiny_model_dir, tokenizer):
    spec, val = SPECS["babilong-qa1"], on_split(next(t for t in SUITE_TASKS if t.name == "babilong-qa1"), "validation")
    sample = val.build(tokenizer, 400, 0.5, random.Random("0/400/50/0"))
    rng = random.Random("0/400/50/0")
    train = spec.build(tokenizer, 400, 0.5, random.Random(f"validation/{rng.getrandbits(64)}"), split="train")
    assert sample.context_ids == train.context_ids  # the training's templates, names and text
    # draws of its own: a validation trial is not the test trial of the same seed with other names
    niah = {split: on_split(next(t for t in SUITE_TASKS if t.name == "ruler-niah-single"), split)
            for split in ("test", "validation")}
    values = {split: [task.build(tokenizer, 400, 0.5, random.Random(f"0/400/50/{t}")).answers for t in range(10)]
              for split, task in niah.items()}
    assert sum(a == b for a, b in zip(values["test"], values["validation"])) == 0
    out = tmp_path / "qa1"
    assert cometlm_eval("babilong-qa1", "--model", tiny_model_dir, *TINY, *GRID, "--split", "validation",
                        "--out", str(out)) == 0
    assert json.loads((out / "babilong-qa1.json").read_text())["config"]["split"] == "validation"
    with pytest.raises(ValueError, match="different run"):  # test results never land in a validation folder
        cometlm_eval("babilong-qa1", "--model", tiny_model_dir, *TINY, *GRID, "--out", str(out))
    with pytest.raises(ValueError, match="different run .*task: 'babilong-qa1' there, 'babilong-qa2' now"):
        cometlm_eval("babilong-qa2", "--model", tiny_model_dir, *TINY, *GRID, "--split", "validation", "--out",
                     str(out))  # nor another task's, whose options may be the same
    old = tmp_path / "old"  # trials written before records named their split are the test split's
    assert cometlm_eval("babilong-qa1", "--model", tiny_model_dir, *TINY, *GRID, "--out", str(old)) == 0
    records = read_jsonl(old / TRIALS_FILE)
    assert {r.pop("split") for r in records} == {"test"} and {r.pop("task") for r in records} == {"babilong-qa1"}
    (old / TRIALS_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))
    assert cometlm_eval("babilong-qa1", "--model", tiny_model_dir, *TINY, *GRID, "--out", str(old)) == 0
    with pytest.raises(ValueError, match="different run .*split: 'test' there, 'validation' now"):
        cometlm_eval("babilong-qa1", "--model", tiny_model_dir, *TINY, *GRID, "--split", "validation", "--out",
                     str(old))
    records = read_jsonl(out / TRIALS_FILE)  # validation trials of the test's draws (before draws 2) are refused
    assert {r.pop("draws") for r in records} == {2}
    (out / TRIALS_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(ValueError, match="different run .*draws: None there, 2 now"):
        cometlm_eval("babilong-qa1", "--model", tiny_model_dir, *TINY, *GRID, "--split", "validation", "--out",
                     str(out))
    with pytest.raises(ValueError, match="split must be one of"):
        on_split(SUITE_TASKS[0], "train")


@pytest.fixture(scope="module")
def model():
    return tiny_text_model(chunk_size=128)


def test_scoring_and_resuming_with_other_options_refused(tmp_path, model, tokenizer, monkeypatch):
    task = next(t for t in SUITE_TASKS if t.name == "ruler-niah-multivalue").bind(needles=2, haystack="essays",
                                                                                     keys="word", values="number")
    grid = dict(lengths=[300, 400], depths=[50], trials=1, seed=5, progress=False)
    samples = [task.build(tokenizer, n, 0.5, random.Random(f"5/{n}/50/0")) for n in (300, 400)]
    replies = iter([" " + " and ".join(samples[0].answers), " " + samples[1].answers[0]])  # every value; one of two

    def generate(input_ids, max_new_tokens, **kwargs):
        return torch.cat([input_ids, torch.tensor([encode(tokenizer, next(replies))])], dim=1)

    def run(**options):
        return evaluate_grid(task, model, tokenizer, out_dir=tmp_path, **{**grid, **options})

    monkeypatch.setattr(model, "generate", Spy(generate, stop_after=1))
    with pytest.raises(KeyboardInterrupt):
        run()
    assert [r["correct"] for r in read_jsonl(tmp_path / TRIALS_FILE)] == [True]
    spy = Spy(generate)
    monkeypatch.setattr(model, "generate", spy)
    resumed = run()
    records = read_jsonl(tmp_path / TRIALS_FILE)
    assert len(spy.calls) == 1 and [r["correct"] for r in records] == [True, False]
    assert [r["answers"] for r in records] == [list(s.answers) for s in samples]
    assert resumed["mean_accuracy"] == 0.5 and resumed["config"]["options"]["needles"] == 2
    assert stable(run()) == stable(resumed) and len(spy.calls) == 1  # nothing left to do
    with pytest.raises(ValueError, match="different run .*task_options"):
        evaluate_grid(task.bind(needles=3), model, tokenizer, out_dir=tmp_path, **grid)


def test_a_grid_that_fails_before_its_first_trial_writes_nothing(tmp_path, model, tokenizer, monkeypatch):
    """A trial's prompt can fail where the up-front probe passed (question lengths vary by draw): the grid used to
    leave an empty summary and heatmap behind, which read as a finished run of nothing."""
    task = next(t for t in SUITE_TASKS if t.name == "babilong-qa1").bind(haystack="essays", facts=4)
    grid = dict(lengths=[300], depths=[0, 100], trials=2, seed=1, progress=False, batch=False)

    def refuses(*args, **kwargs):
        raise ValueError("the primed layout needs the question")

    monkeypatch.setattr(model, "generate", refuses)
    with pytest.raises(ValueError, match="primed layout"):
        evaluate_grid(task, model, tokenizer, out_dir=tmp_path / "new", **grid)
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()  # a folder the user made is left, empty, as it was
    with pytest.raises(ValueError, match="primed layout"):
        evaluate_grid(task, model, tokenizer, out_dir=tmp_path / "mine", **grid)
    assert list((tmp_path / "mine").iterdir()) == []


def test_user_qa_trials_of_an_older_generator_are_refused_and_other_tasks_resume(tmp_path, model, tokenizer):
    """user-qa's generator 2 builds other prompts from the same seeds than the first one did (facts later in time
    than earlier ones, a user's events in time order and in any case): a folder of trials recorded before, which
    name no generator, is refused rather than mixed. Other tasks' trials name none, so their stored results resume."""
    tasks = {t.name: t for t in SUITE_TASKS}
    assert on_split(tasks["user-qa"], "validation").config["generator"] == 2
    grid = dict(lengths=[400], depths=[0], trials=1, seed=0, progress=False)
    for name in ("user-qa", "agent-qa"):
        out = tmp_path / name
        summary = evaluate_grid(tasks[name], model, tokenizer, out_dir=out, **grid)
        records = read_jsonl(out / TRIALS_FILE)
        version = 2 if name == "user-qa" else None
        assert summary["config"].get("generator") == version and [r.get("generator") for r in records] == [version]
        for record in records:
            record.pop("generator", None)
        (out / TRIALS_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))
        if name == "user-qa":
            with pytest.raises(ValueError, match=r"user-qa trials of a different run \(generator: None there, 2 now\)"
                                                 r"; .*another version of the user-qa generator"):
                evaluate_grid(tasks[name], model, tokenizer, out_dir=out, **grid)
        else:
            assert stable(evaluate_grid(tasks[name], model, tokenizer, out_dir=out, **grid)) == stable(summary)


def test_an_interrupted_suite_resumes_to_the_same_results(tmp_path, model, tokenizer, monkeypatch):
    task = next(t for t in SUITE_TASKS if t.name == "babilong-qa1").bind(haystack="essays", facts=4)
    grid = dict(lengths=[300], depths=[0, 100], trials=2, seed=1, progress=False, batch=False)  # spies count trials
    full = evaluate_grid(task, model, tokenizer, out_dir=tmp_path / "full", **grid)
    monkeypatch.setattr(model, "generate", Spy(model.generate, stop_after=3))
    with pytest.raises(KeyboardInterrupt):
        evaluate_grid(task, model, tokenizer, out_dir=tmp_path / "resumed", **grid)
    monkeypatch.undo()
    spy = Spy(model.generate)
    monkeypatch.setattr(model, "generate", spy)
    resumed = evaluate_grid(task, model, tokenizer, out_dir=tmp_path / "resumed", **grid)
    assert len(spy.calls) == 1 and stable(resumed) == stable(full)
    assert stable(read_jsonl(tmp_path / "resumed" / TRIALS_FILE)) == stable(read_jsonl(tmp_path / "full" / TRIALS_FILE))


def test_baselines_and_the_comparison_table(tmp_path, model, tokenizer, capsys):
    tasks = {t.name: t for t in SUITE_TASKS}
    grid = dict(lengths=[300], depths=[50], trials=1, seed=0, progress=False)
    for method, window in (("comet", None), ("sliding-window", 64)):
        for name, options in (("ruler-vt", dict(haystack="noise", hops=2, chains=2)), ("agent-qa", {})):
            task = tasks[name].bind(**{**SPECS[name].defaults(), **options})
            evaluate_grid(task, model, tokenizer, out_dir=tmp_path / f"{name}-{method}", method=method,
                          window=window, **grid)
    text = format_table(load_results(sorted(tmp_path.iterdir())))
    header = [c.strip() for c in text.splitlines()[0].strip("|").split("|")]
    assert header == ["method", "model", "agent-qa acc. (300)", "agent-qa s/trial (longest)", "ruler-vt acc. (300)",
                      "ruler-vt s/trial (longest)", "peak RSS (MiB)"]
    rows = [line for line in text.splitlines()[2:] if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows] == ["comet", "sliding-window (4 sink + 64)"]
    assert "(haystack noise, hops 2, chains 2)" in text and "(question mixed, trace '')" in text
    assert cometlm_eval("table", str(tmp_path / "ruler-vt-comet"), str(tmp_path / "agent-qa-comet" / "agent-qa.json")) == 0
    assert capsys.readouterr().out.count("\n| ") == 1  # one row under the header: two results of one method
