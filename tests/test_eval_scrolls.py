"""`cometlm eval scrolls`: the official metrics on hand-computed fixtures, the data files, and a run end to end."""

import json
import shlex
import subprocess
import sys
import zipfile

import pytest
import torch
from eval_helpers import read_jsonl, tiny_text_model

from cometlm import CometForCausalLM
from cometlm.bundled import encode
from cometlm.cli import build_parser, main
from cometlm.evaluation.scrolls import (
    LOG_FILE,
    OVERVIEW_FILE,
    SUBMISSION_FILE,
    SUMMARY_FILE,
    TASKS,
    Example,
    build_prompt,
    clean_answer,
    load_examples,
    normalize_answer,
    score_predictions,
    split_input,
    token_f1,
)

C = 32  # chunk size of the tiny model: a fixture document of ~150 tokens spans several chunks


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, tokenizer):
    """A tiny random CoMeT model over SmolLM2's tokenizer, saved as a full model."""
    path = tmp_path_factory.mktemp("model") / "tiny"
    tiny_text_model(C, tokenizer).save_pretrained(path)
    return path


# --------------------------------------------------------------------------------------------------------------
# Metrics against numbers worked out by hand


def test_rouge_is_the_geometric_mean_of_per_metric_best_references():
    task = TASKS["gov_report"]
    predictions = ["the cat sat on the mat", "alpha beta gamma delta"]
    references = [["the cat lay on the mat"], ["alpha beta", "delta gamma beta alpha"]]
    # Example 1 (tokens: the cat sat on the mat / the cat lay on the mat, 6 each):
    #   ROUGE-1: 5 shared unigrams (the x2, cat, on, mat) -> P = R = 5/6 -> F = 83.3333
    #   ROUGE-2: shared bigrams "the cat", "on the", "the mat" of 5 each -> F = 3/5 = 60
    #   ROUGE-L: LCS "the cat on the mat" = 5 -> F = 5/6 = 83.3333
    # Example 2, against "alpha beta": R1 P = 2/4, R = 1 -> 2/3; R2 1 of 3 bigrams, R = 1 -> 1/2; RL LCS 2 -> 2/3
    #            against "delta gamma beta alpha": R1 4/4 -> 1; R2 no shared bigram -> 0; RL LCS 1 of 4 -> 1/4
    #   best per metric (from different references): R1 100, R2 50, RL 66.6667
    # Means: R1 (83.3333 + 100) / 2 = 91.6667, R2 (60 + 50) / 2 = 55, RL (83.3333 + 66.6667) / 2 = 75
    # Geometric mean: (91.6667 * 55 * 75) ** (1/3) = 378125 ** (1/3) = 72.3122 (72.3122^3 = 378124.6)
    scores = score_predictions(task, predictions, references)
    assert scores["rouge/rouge1"] == pytest.approx(91.6667, abs=1e-4)
    assert scores["rouge/rouge2"] == pytest.approx(55.0, abs=1e-4)
    assert scores["rouge/rougeL"] == pytest.approx(75.0, abs=1e-4)
    assert scores["rouge/geometric_mean"] == pytest.approx(72.3122, abs=1e-4)
    assert scores["scrolls_score"] == scores["rouge/geometric_mean"]
    # ROUGE's tokenizer drops case and punctuation, and SCROLLS does not stem ("sitting" is not "sit"):
    assert score_predictions(task, ["The CAT, sat!"], [["the cat sat"]])["rouge/rouge1"] == 100.0
    assert score_predictions(task, ["cats sitting"], [["cat sit"]])["rouge/rouge1"] == 0.0


def test_token_f1_uses_squad_normalisation_and_the_best_reference():
    task = TASKS["narrative_qa"]
    # "The Eiffel Tower, in Paris!" -> lower, no punctuation, no articles -> eiffel tower in paris (4 tokens)
    assert normalize_answer("The Eiffel Tower, in Paris!") == "eiffel tower in paris"
    # vs "Eiffel tower" (2): 2 shared -> P = 2/4, R = 2/2 -> F = 2 * 0.5 * 1 / 1.5 = 0.6667
    # vs "the tower in Paris France" -> tower in paris france (4): 3 shared -> P = R = 3/4 -> F = 0.75 (the best)
    # "no" vs "yes": nothing shared -> 0.   Mean: (75 + 0) / 2 = 37.5
    scores = score_predictions(task, ["The Eiffel Tower, in Paris!", "no"],
                               [["Eiffel tower", "the tower in Paris France"], ["yes"]])
    assert scores == {"f1": 37.5, "scrolls_score": 37.5}
    # a repeated token counts once per occurrence in the reference: "paris paris" vs "paris" -> P 1/2, R 1 -> 2/3
    assert token_f1("paris paris", "paris") == pytest.approx(2 / 3)
    assert token_f1("", "paris") == 0.0 and token_f1("the", "a") == 0.0  # only articles: nothing left to share
    assert score_predictions(TASKS["qasper"], ["Unanswerable"], [["unanswerable"]])["f1"] == 100.0


def test_exact_match_after_normalisation():
    task = TASKS["contract_nli"]
    # "Entailment." == "entailment" after normalisation (1); "Not mentioned" != "Contradiction" (0);
    # "An answer" == "answer" (articles go), best of two references (1); "The answer is B" != "B" (0)
    # Mean: 2 of 4 -> 50
    scores = score_predictions(task, ["Entailment.", "Not mentioned", "An answer", "The answer is B"],
                               [["entailment"], ["Contradiction"], ["Something else", "answer"], ["B"]])
    assert scores == {"exact_match": 50.0, "scrolls_score": 50.0}
    assert score_predictions(TASKS["quality"], ["(C) Ten"], [["Ten"]])["exact_match"] == 0.0  # no option letters
    with pytest.raises(ValueError, match="2 predictions for 1"):
        score_predictions(task, ["a", "b"], [["a"]])


# --------------------------------------------------------------------------------------------------------------
# Data and prompts


DOCUMENT = ("In the spring the committee met twice. The first meeting set the budget for the bridge, and the second "
            "chose the builder. The bridge opened in the autumn, three weeks late. ") * 3


def rows(task):
    """The fixture examples of a task in the official schema (one row per reference)."""
    if task == "qasper":
        q1, q2 = "When did the bridge open?", "Who chose the builder?"
        return [
            {"id": "q-1", "pid": "q-1_0", "input": f"{q1}\n\n{DOCUMENT}", "output": "in the autumn"},
            {"id": "q-1", "pid": "q-1_1", "input": f"{q1}\n\n{DOCUMENT}", "output": "autumn, three weeks late"},
            {"id": "q-2", "pid": "q-2_0", "input": f"{q2}\n\n{DOCUMENT}", "output": "the committee"},
        ]
    if task == "gov_report":
        return [{"id": "g-1", "pid": "g-1_0", "input": DOCUMENT, "output": "A committee built a bridge late."}]
    if task == "quality":
        text = "How late was the bridge?\n\n (A) One day (B) Three weeks (C) A year (D) Not at all\n\n" + DOCUMENT
        return [{"id": "u-1", "pid": "u-1_0", "input": text, "output": "Three weeks"}]
    raise KeyError(task)


def write_task(root, task, split="validation", zipped=False, rows_=None):
    text = "".join(json.dumps(r) + "\n" for r in (rows_ if rows_ is not None else rows(task)))
    if zipped:
        with zipfile.ZipFile(root / f"{task}.zip", "w") as z:
            z.writestr(f"{task}/{split}.jsonl", text)
    else:
        (root / task).mkdir(parents=True, exist_ok=True)
        (root / task / f"{split}.jsonl").write_text(text)


def test_examples_group_references_by_id_from_folders_and_zips(tmp_path):
    write_task(tmp_path, "qasper")
    write_task(tmp_path, "quality", zipped=True)
    qasper = load_examples(tmp_path, "qasper", "validation")
    assert [e.id for e in qasper] == ["q-1", "q-2"]
    assert qasper[0].outputs == ("in the autumn", "autumn, three weeks late")
    assert qasper[1].outputs == ("the committee",)
    assert load_examples(tmp_path, "quality", "validation")[0].outputs == ("Three weeks",)

    test_rows = [dict(r, output=None) for r in rows("gov_report")]  # the test split withholds references
    write_task(tmp_path, "gov_report", split="test", rows_=test_rows)
    assert load_examples(tmp_path, "gov_report", "test")[0].outputs == ()


def test_bad_or_missing_data_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError) as missing:
        load_examples(tmp_path, "qmsum", "validation")
    message = str(missing.value)
    assert "qmsum.zip" in message and "tau/scrolls" in message and "qmsum/validation.jsonl" in message
    assert "id, pid, input and output" in message and "--data-dir" in message
    write_task(tmp_path, "qasper", rows_=[*rows("qasper"), {"id": "q-3", "text": "no input field"}])
    with pytest.raises(ValueError, match=r"qasper/validation.jsonl line 4"):
        load_examples(tmp_path, "qasper", "validation")
    clash = rows("qasper")[:2]
    clash[1] = dict(clash[1], input="another document")
    write_task(tmp_path, "qasper", rows_=clash)
    with pytest.raises(ValueError, match="two different inputs"):
        load_examples(tmp_path, "qasper", "validation")
    (tmp_path / "narrative_qa.zip").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable zip"):
        load_examples(tmp_path, "narrative_qa", "validation")


def test_the_command_fails_cleanly_without_data(tmp_path, capsys):
    assert main(["eval", "scrolls", "--data-dir", str(tmp_path), "--tasks", "contract_nli"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no SCROLLS data for contract_nli") and "contract_nli.zip" in err
    assert not (tmp_path / "runs").exists()


def test_help_is_fast_and_explains_every_option():
    for command in (["eval", "scrolls", "--help"], ["--help"]):
        result = subprocess.run([sys.executable, "-X", "importtime", "-m", "cometlm.cli", *command],
                                capture_output=True, text=True, check=True)
        imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "import time:" in line}
        assert "cometlm.evaluation.scrolls" in imported and "cometlm.cli.lm_eval" in imported
        assert not imported & {"torch", "transformers", "rouge_score", "lm_eval"}
    assert "lm-eval" in result.stdout and "scrolls" not in result.stdout  # scrolls sits under `eval`
    evaluate = build_parser()._subparsers._group_actions[0].choices["eval"]
    scrolls = evaluate._subparsers._group_actions[0].choices["scrolls"]
    for action in scrolls._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{action.option_strings} has no help text"


def test_prompts_put_the_document_first_and_the_question_last(tokenizer):
    example = load_examples_from(rows("quality"))[0]
    document, query = split_input(TASKS["quality"], example.input)
    assert document == DOCUMENT
    assert query == "How late was the bridge?\n\n (A) One day (B) Three weeks (C) A year (D) Not at all"
    ids, question_tokens = build_prompt(TASKS["quality"], example, tokenizer)
    question = f"\n\nQuestion: {query}\nAnswer:"
    assert ids == encode(tokenizer, DOCUMENT) + encode(tokenizer, question)
    assert question_tokens == len(encode(tokenizer, question))
    summary = load_examples_from(rows("gov_report"))[0]
    assert split_input(TASKS["gov_report"], summary.input) == (DOCUMENT, "")
    ids, question_tokens = build_prompt(TASKS["gov_report"], summary, tokenizer, chat=True)
    text = tokenizer.decode(ids)
    assert text.index(DOCUMENT.strip()) < text.index("What is a summary of the preceding text?")
    assert tokenizer.decode(ids[-question_tokens:]).startswith("\n\nQuestion: What is a summary")
    assert text.endswith(tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False,
                                                       add_generation_prompt=True).rsplit("x", 1)[1])
    assert clean_answer(TASKS["qasper"], "  \n autumn \n and more") == "autumn"
    assert clean_answer(TASKS["gov_report"], " Line one.\nLine two. ") == "Line one.\nLine two."


def load_examples_from(task_rows):
    return [Example(r["id"], r["input"], (r["output"],)) for r in task_rows]


# --------------------------------------------------------------------------------------------------------------
# End to end


def test_command_end_to_end_resumes_and_matches_generate(tmp_path, saved_model, tokenizer, capsys):
    data = tmp_path / "data"
    write_task(data, "qasper")
    write_task(data, "gov_report", zipped=True)
    out = tmp_path / "runs"
    argv = ["eval", "scrolls", "--data-dir", str(data), "--tasks", "qasper", "gov_report", "--comet", str(saved_model),
            "--max-new-tokens", "5", "--prime-tokens", "8", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    shown = capsys.readouterr()
    assert "qasper" in shown.out and "gov_report" in shown.out and "predictions.json" in shown.err

    model = CometForCausalLM.from_pretrained(saved_model).eval()
    for task, examples in (("qasper", 2), ("gov_report", 1)):
        records = read_jsonl(out / "validation" / task / LOG_FILE)
        summary = json.loads((out / "validation" / task / SUMMARY_FILE).read_text())
        submission = json.loads((out / "validation" / task / SUBMISSION_FILE).read_text())
        assert len(records) == examples and submission == {r["id"]: r["prediction"] for r in records}
        references = [list(e.outputs) for e in load_examples(data, task, "validation")]
        assert summary["scores"] == score_predictions(TASKS[task], [r["prediction"] for r in records], references)
        assert summary["complete"] and summary["config"]["layout"] == "primed" and summary["config"]["seed"] == 0
        assert summary["environment"]["command"] == shlex.join(sys.argv)  # this process's exact command line
        assert summary["environment"]["versions"]["torch"] == torch.__version__
        for r in records:
            # the primed open chunk: the question plus the 8 document tokens before it
            assert r["open_chunk_tokens"] == r["question_tokens"] + 8 and r["new_tokens"] == 5
            assert r["prediction"] == clean_answer(TASKS[task], r["generated"])
    overview = json.loads((out / "validation" / OVERVIEW_FILE).read_text())
    assert set(overview["tasks"]) == {"qasper", "gov_report"} and overview["mean_over"] == 2

    # Interrupted after the first qasper example: the rerun generates only the missing one, identically.
    log = out / "validation" / "qasper" / LOG_FILE
    first, second = log.read_text().splitlines()
    log.write_text(first + "\n" + second[:40])  # the second line was cut short by the kill
    assert main(argv) == 0
    assert read_jsonl(log)[1]["prediction"] == json.loads(second)["prediction"] and len(read_jsonl(log)) == 2
    capsys.readouterr()
    assert main(argv + ["--max-new-tokens", "6"]) == 2  # a log of other settings is refused, not mixed in
    assert "holds SCROLLS predictions of a different run (max_new_tokens: 5 there, 6 now)" in capsys.readouterr().err

    # With the fixed layout the prompt is read exactly as generate(prompt) reads it.
    fixed = tmp_path / "fixed"
    assert main(argv[:-3] + ["--out", str(fixed), "--layout", "fixed", "--tasks", "qasper", "--no-progress"]) == 0
    fixed_records = read_jsonl(fixed / "validation" / "qasper" / LOG_FILE)
    for example, record in zip(load_examples(data, "qasper", "validation"), fixed_records, strict=True):
        ids, _ = build_prompt(TASKS["qasper"], example, tokenizer)
        with torch.inference_mode():
            out_ids = model.generate(torch.tensor([ids]), max_new_tokens=5, eos_token_id=tokenizer.eos_token_id)
        assert record["generated"] == tokenizer.decode(out_ids[0, len(ids):], skip_special_tokens=True)
        assert record["open_chunk_tokens"] == (len(ids) % C or C)

    # A baseline on the same backbone: the truncated backbone reads the prompt's last --window tokens.
    base = tmp_path / "truncated"
    baseline = [a for i, a in enumerate(argv[:-3]) if "--prime-tokens" not in argv[i - 1: i + 1]]  # comet's alone
    assert main(baseline + ["--out", str(base), "--method", "truncated", "--window", "40", "--tasks", "qasper",
                            "--no-progress"]) == 0
    summary = json.loads((base / "validation" / "qasper" / SUMMARY_FILE).read_text())
    assert summary["config"]["method"] == "truncated" and summary["config"]["window"] == 40
    assert summary["config"]["layout"] is None and summary["describe"] == "last 40 tokens"
    assert all(r["read_tokens"] == 40 - 5 for r in read_jsonl(base / "validation" / "qasper" / LOG_FILE))
    # A document full attention cannot hold is found before anything is written (an empty submission file was left)
    full = tmp_path / "full"
    assert main(baseline + ["--out", str(full), "--method", "full", "--window", "40", "--tasks", "qasper",
                            "--no-progress"]) == 2
    assert "exceeds" in capsys.readouterr().err and not (full / "validation" / "qasper").exists()
