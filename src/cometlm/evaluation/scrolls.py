"""SCROLLS (`cometlm eval scrolls`): long-document summarisation, QA and inference, scored as the leaderboard does.

Data: the official task files, read from a local folder (this command never downloads). Each task is a zip
(`gov_report.zip`, ...) holding `TASK/train.jsonl`, `TASK/validation.jsonl` and `TASK/test.jsonl`, one JSON
object per line with `id`, `pid`, `input` and `output` (the Hugging Face dataset `tau/scrolls` has the same
files). An example with several references appears once per reference with the same `id` and `input`; they are
grouped by `id`. Test outputs are withheld (null), so test predictions are for the leaderboard only.

Prompts: the input is the document, or for query tasks the query, a blank line, then the document (QuALITY's
query also holds the (A)-(D) options). The document is streamed through the memory first and the query goes
after it, next to the answer, in the layout of lm-evaluation-harness's SCROLLS tasks for causal models
("{document}\\n\\nQuestion: {query}\\nAnswer:"; ContractNLI: "Hypothesis: ... Conclusion:"; summaries ask "What
is a summary of the preceding text?"). With the "primed" layout the open chunk the answer is generated in holds
that whole question plus `prime_tokens` document tokens before it. Answers are greedy; a QA or classification
answer is its first line.

Metrics, as the official SCROLLS metric (`tau/scrolls` metrics/scrolls.py, rouge.py, f1.py, exact_match.py)
defines them, each averaged over examples and reported x100:
- GovReport, SummScreenFD, QMSum: ROUGE-1, ROUGE-2 and ROUGE-L F-measures from `rouge-score` without stemming,
  each the best over the example's references; the score is their geometric mean. (The official metric also
  reports ROUGE-Lsum after NLTK sentence splitting, which needs NLTK's punkt data; it is not part of the score
  and is not computed here. Sentence splitting does not change ROUGE-1/2/L.)
- Qasper, NarrativeQA: token F1 after SQuAD normalisation (lower case, no punctuation, no articles, single
  spaces), best over references.
- QuALITY, ContractNLI: exact match after the same normalisation, best over references.

Per task, in OUT/TASK/: `predictions.jsonl` (one line per finished example, flushed: a rerun resumes),
`predictions.json` (the submission format: a JSON object mapping each id to its prediction, the file the
official evaluator and prepare_submission.py read) and `summary.json` (config, model, exact command, versions,
seed, scores, time, peak memory). OUT/scrolls.json puts the tasks side by side.
"""

from __future__ import annotations

import functools
import json
import math
import re
import shlex
import string
import sys
import time
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from cometlm.evaluation.settings import DEFAULT_PRIME_TOKENS, DEFAULT_SINK_TOKENS
from cometlm.files import write_json
from cometlm.evaluation.results import (
    RSS_NOTE,
    append_record,
    cost_fields,
    environment,
    load_records,
    peak_rss_over,
    tally,
    utc_now,
)

SPLITS = ("validation", "test", "train")
LOG_FILE = "predictions.jsonl"
SUBMISSION_FILE = "predictions.json"
SUMMARY_FILE = "summary.json"
OVERVIEW_FILE = "scrolls.json"
DOWNLOAD_URL = "https://huggingface.co/datasets/tau/scrolls/resolve/main/{task}.zip"
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
PUNCTUATION = frozenset(string.punctuation)


@dataclass(frozen=True)
class ScrollsTask:
    """One SCROLLS task: its metric, where its query sits in the input, the text after the document."""

    name: str
    metric: str  # "rouge", "f1" or "exact_match"
    query: str  # "none": the input is the document; "first": query, blank line, document; "choices": QuALITY
    cue: str  # what follows the document, with {query}
    max_new_tokens: int  # default answer length (GovReport summaries average ~600 tokens)

    @property
    def one_line(self) -> bool:
        """QA and classification answers are one line; summaries are paragraphs."""
        return self.metric != "rouge"


_QUESTION = "\n\nQuestion: {query}\nAnswer:"
_SUMMARY = "\n\nQuestion: What is a summary of the preceding text?\nAnswer:"
TASKS = {task.name: task for task in (
    ScrollsTask("gov_report", "rouge", "none", _SUMMARY, 1024),
    ScrollsTask("summ_screen_fd", "rouge", "none", _SUMMARY, 256),
    ScrollsTask("qmsum", "rouge", "first", _QUESTION, 256),
    ScrollsTask("qasper", "f1", "first", _QUESTION, 128),
    ScrollsTask("narrative_qa", "f1", "first", _QUESTION, 64),
    ScrollsTask("quality", "exact_match", "choices", _QUESTION, 64),
    ScrollsTask("contract_nli", "exact_match", "first", "\n\nHypothesis: {query}\nConclusion:", 16),
)}


@dataclass(frozen=True)
class Example:
    id: str
    input: str
    outputs: tuple[str, ...]  # the references; empty for the test split


# --------------------------------------------------------------------------------------------------------------
# Data


def how_to_get(data_dir: Path, task: str, split: str) -> str:
    return (
        f"no SCROLLS data for {task} ({split} split) in {data_dir}. This command runs offline and never downloads; "
        f"get the official task files first:\n"
        f"  - the task's zip: {DOWNLOAD_URL.format(task=task)}\n"
        f"    (the SCROLLS release at scrolls-benchmark.com; the Hugging Face dataset tau/scrolls holds the same\n"
        f"     file: hf download tau/scrolls {task}.zip --repo-type dataset --local-dir {data_dir})\n"
        f"  - put it in {data_dir} as it is ({data_dir}/{task}.zip) or unzipped ({data_dir}/{task}/{split}.jsonl).\n"
        f"Each line of {task}/{split}.jsonl is a JSON object with the fields id, pid, input and output. "
        f"Give the folder with --data-dir."
    )


def _task_lines(data_dir: Path, task: str, split: str) -> tuple[str, list[str]]:
    """(where it came from, the lines of TASK/SPLIT.jsonl) from the unzipped folder or the zip."""
    member = f"{task}/{split}.jsonl"
    if (data_dir / member).is_file():
        return str(data_dir / member), (data_dir / member).read_text(encoding="utf-8").splitlines()
    archive = data_dir / f"{task}.zip"
    if archive.is_file():
        try:
            with zipfile.ZipFile(archive) as z:
                if member in z.namelist():
                    return f"{archive}:{member}", z.read(member).decode("utf-8").splitlines()
        except zipfile.BadZipFile:
            raise ValueError(f"{archive} is not a readable zip file (an interrupted download?); fetch it again") \
                from None
    raise FileNotFoundError(how_to_get(data_dir, task, split))


def load_examples(data_dir, task: str, split: str) -> list[Example]:
    """The task's examples in file order, references grouped by id (as the official evaluator groups them)."""
    if task not in TASKS:
        raise ValueError(f"unknown SCROLLS task {task!r}; the tasks are {', '.join(TASKS)}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)} (got {split!r})")
    where, lines = _task_lines(Path(data_dir), task, split)
    inputs: dict[str, str] = {}
    outputs: dict[str, list[str]] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            id_, text, output = row["id"], row["input"], row["output"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{where} line {number}: not a SCROLLS record with id, input and output ({err})") from None
        if not isinstance(id_, str) or not isinstance(text, str) or not isinstance(output, (str, type(None))):
            raise ValueError(f"{where} line {number}: id and input must be strings and output a string or null")
        if inputs.setdefault(id_, text) != text:
            raise ValueError(f"{where} line {number}: id {id_!r} appears with two different inputs")
        outputs.setdefault(id_, [])
        if output:
            outputs[id_].append(output)
    if not inputs:
        raise ValueError(f"{where} holds no examples")
    return [Example(id_, text, tuple(outputs[id_])) for id_, text in inputs.items()]


def split_input(task: ScrollsTask, text: str) -> tuple[str, str]:
    """(document, query) of an input; the query is "" for tasks without one."""
    if task.query == "none":
        return text, ""
    end = text.find("\n\n")
    if task.query == "choices" and "(D)" in text:
        end = text.find("\n\n", text.find("(D)"))  # QuALITY: question, blank line, options, blank line, story
    if end < 0:
        raise ValueError(f"a {task.name} input must hold its query, a blank line, then the document")
    return text[end + 2 :], text[:end].strip()


def build_prompt(task: ScrollsTask, example: Example, tokenizer, chat: bool = False) -> tuple[list[int], int]:
    """(token ids, how many of the last ones are the question): the document first, the question last.

    With `chat`, document and question form one user turn of the tokenizer's chat template, and the question
    part runs to the end of the template (up to where the assistant's answer begins).
    """
    from cometlm.bundled import encode

    document, query = split_input(task, example.input)
    question = task.cue.format(query=query)
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("--chat needs a tokenizer with a chat template; this one has none")
        text = tokenizer.apply_chat_template([{"role": "user", "content": document + question}], tokenize=False,
                                             add_generation_prompt=True)
        cut = text.index(document) + len(document)
        document, question = text[:cut], text[cut:]
    question_ids = encode(tokenizer, question)
    return encode(tokenizer, document) + question_ids, len(question_ids)


def clean_answer(task: ScrollsTask, generated: str) -> str:
    """The prediction from the generated text: stripped, and for QA and classification its first line."""
    text = generated.strip()
    return text.split("\n", 1)[0].strip() if task.one_line else text


# --------------------------------------------------------------------------------------------------------------
# Metrics (the official definitions; see the module docstring)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, punctuation removed, articles removed, whitespace collapsed."""
    text = "".join(ch for ch in text.lower() if ch not in PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, reference: str) -> float:
    """Token-level F1 of the normalised texts (0 when they share no token, as SQuAD's f1_score)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


@functools.lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=False)


def rouge(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1/2/L F-measures (0..1) with rouge-score's tokenizer and no stemming, as SCROLLS computes them."""
    scores = _rouge_scorer().score(reference, prediction)
    return {key: scores[key].fmeasure for key in ROUGE_TYPES}


def example_scores(task: ScrollsTask, prediction: str, references) -> dict[str, float]:
    """One example's metric values (x100), each the best over its references."""
    if not references:
        raise ValueError("an example without references cannot be scored (test split?)")
    if task.metric == "rouge":
        per_reference = [rouge(prediction, r) for r in references]
        return {key: 100 * max(s[key] for s in per_reference) for key in ROUGE_TYPES}
    metric = token_f1 if task.metric == "f1" else exact_match
    return {task.metric: 100 * max(metric(prediction, r) for r in references)}


def aggregate(task: ScrollsTask, per_example: list[dict[str, float]]) -> dict[str, float]:
    """Means over examples, the ROUGE geometric mean, and `scrolls_score`; rounded to 4 places as officially."""
    if not per_example:
        return {}
    means = {key: sum(s[key] for s in per_example) / len(per_example) for key in per_example[0]}
    if task.metric == "rouge":
        means = {f"rouge/{k}": v for k, v in means.items()}
        means["rouge/geometric_mean"] = math.prod(means[f"rouge/{k}"] for k in ROUGE_TYPES) ** (1 / 3)
        key = "rouge/geometric_mean"
    else:
        key = task.metric
    result = {k: round(v, 4) for k, v in means.items()}
    result["scrolls_score"] = result[key]
    return result


def score_predictions(task: ScrollsTask, predictions: list[str], references: list) -> dict[str, float]:
    """The task's official scores for aligned lists of predictions and reference lists."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} reference lists")
    return aggregate(task, [example_scores(task, p, r) for p, r in zip(predictions, references)])


# --------------------------------------------------------------------------------------------------------------
# Running


def evaluate_scrolls_task(
    model,
    tokenizer,
    task: str,
    examples: list[Example],
    out_dir,
    split: str = "validation",
    method: str = "comet",
    layout: str = "primed",
    prime_tokens: int = DEFAULT_PRIME_TOKENS,
    window: int | None = None,
    sink_tokens: int = DEFAULT_SINK_TOKENS,
    max_new_tokens: int | None = None,
    chat: bool = False,
    seed: int = 0,
    progress: bool = True,
    model_name: str | None = None,
    command: str | None = None,
) -> dict:
    """Answers `examples` of one task with a `CometForCausalLM` and returns the summary `summary.json` holds.

    `method` is one of `methods.METHODS` (comet, the baselines on the same backbone); `layout` and
    `prime_tokens` apply to comet and no-memory, `window` and `sink_tokens` to the backbone methods (see
    `methods.build_method`). With "primed", the room kept for the answer in the open chunk is capped at what the
    question leaves, so a summary longer than that rolls over into the next chunk. Predictions already in
    `out_dir/predictions.jsonl` are kept; a log from a run with other settings is refused.
    """
    import torch
    from tqdm.auto import tqdm

    from cometlm.runtime import peak_rss_mib
    from cometlm.evaluation.methods import build_method, model_info
    from cometlm.generation import end_token_ids

    spec = TASKS[task]
    max_new = spec.max_new_tokens if max_new_tokens is None else max_new_tokens
    if isinstance(max_new, bool) or not isinstance(max_new, int) or max_new < 1:
        raise ValueError(f"max_new_tokens must be a positive integer (got {max_new!r})")
    reader = build_method(method, model, layout, prime_tokens, window, sink_tokens)
    info = model_info(model, reader, model_name)
    # What makes two predictions comparable: a log holding predictions with other values belongs to another run.
    run = {"task": task, "split": split, "method": method, **reader.settings(), "max_new_tokens": max_new,
           "chat": chat, "model_id": info["id"]}
    scored = all(e.outputs for e in examples)
    config = {**{k: v for k, v in run.items() if k != "model_id"}, "examples": len(examples), "seed": seed,
              "greedy": True, "metric": spec.metric, "prompt_cue": spec.cue}
    env = environment(command if command is not None else shlex.join(sys.argv), reader.device)
    eos = end_token_ids(model, tokenizer)

    for example in examples:  # every prompt fits the method before a file is written (a document too long for
        ids, question_tokens = build_prompt(spec, example, tokenizer, chat)  # full attention, a question for C)
        room = max(0, min(max_new, model.comet_config.chunk_size - question_tokens))
        reader.check_prompt(len(ids), question_tokens, max_new, answer_room=room)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / LOG_FILE
    done = {id_: record for (id_,), record in load_records(log_path, run, ("id",), "SCROLLS prediction").items()}

    def write_outputs() -> dict:
        finished = [done[e.id] for e in examples if e.id in done]
        write_json(out_dir / SUBMISSION_FILE, {r["id"]: r["prediction"] for r in finished})
        summary = {
            "task": "scrolls", "scrolls_task": task, "method": method, "describe": reader.describe(),
            "complete": len(finished) == len(examples), "done": len(finished), "config": config, "model": info,
            "scores": aggregate(spec, [r["scores"] for r in finished]) if scored else None,
            "scores_note": None if scored else f"the {split} split has no references: submit {SUBMISSION_FILE}",
            "cost": {"seconds": round(sum(r["seconds"] for r in finished), 3),
                     "read_tokens": sum(r["read_tokens"] for r in finished),
                     "peak_rss_mib": peak_rss_over(finished, peak_rss_mib()), "threads": tally(finished, "threads"),
                     "note": RSS_NOTE},
            "environment": {**env, "written_utc": utc_now(), "commands": tally(finished, "command")},
            "files": {"log": LOG_FILE, "submission": SUBMISSION_FILE},
        }
        write_json(out_dir / SUMMARY_FILE, summary)
        return summary

    torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    finished = [done[e.id] for e in examples if e.id in done]
    bar = tqdm(total=len(examples), initial=len(finished), desc=task, unit="doc", disable=not progress,
               dynamic_ncols=True)
    try:
        for example in examples:
            if example.id in done:
                continue
            ids, question_tokens = build_prompt(spec, example, tokenizer, chat)
            room = max(0, min(max_new, model.comet_config.chunk_size - question_tokens))
            reader.check_prompt(len(ids), question_tokens, max_new, answer_room=room)
            start = time.perf_counter()
            with torch.inference_mode():
                new_ids, facts = reader.answer(ids, question_tokens, max_new, eos, progress, answer_room=room)
            seconds = time.perf_counter() - start
            generated = tokenizer.decode(new_ids, skip_special_tokens=True)
            prediction = clean_answer(spec, generated)
            record = {
                **run, "id": example.id, "prediction": prediction, "generated": generated,
                "scores": example_scores(spec, prediction, example.outputs) if scored else None,
                "prompt_tokens": len(ids), "question_tokens": question_tokens, **facts,
                "new_tokens": len(new_ids), **cost_fields(seconds, facts["read_tokens"], env["command"]),
            }
            append_record(log_path, record)
            done[example.id] = record
            finished.append(record)
            if scored:
                bar.set_postfix_str(f"score {aggregate(spec, [r['scores'] for r in finished])['scrolls_score']:.2f}, "
                                    f"{record['tokens_per_s']:,.0f} tok/s", refresh=False)
            bar.update()
    finally:
        bar.close()
        model.train(was_training)
        summary = write_outputs()  # also after an interrupt: it shows every finished example
    return summary


def overview(summaries: dict[str, dict]) -> dict:
    """The tasks side by side, with the mean score over the tasks that are complete and scored."""
    rows = {task: {"done": s["done"], "examples": s["config"]["examples"], "complete": s["complete"],
                   "scrolls_score": (s["scores"] or {}).get("scrolls_score")} for task, s in summaries.items()}
    complete = [r["scrolls_score"] for r in rows.values() if r["complete"] and r["scrolls_score"] is not None]
    return {"tasks": rows, "mean_score": round(sum(complete) / len(complete), 4) if complete else None,
            "mean_over": len(complete),
            "note": "the SCROLLS score is the mean over all seven tasks on the test split (from the leaderboard)"}


def format_table(summaries: dict[str, dict]) -> str:
    lines = [f"{'task':<16}{'done':>12}  {'score':>8}  metric"]
    for task, s in summaries.items():
        score = (s["scores"] or {}).get("scrolls_score")
        metric = "ROUGE-1/2/L geometric mean" if TASKS[task].metric == "rouge" else TASKS[task].metric
        lines.append(f"{task:<16}{s['done']:>6}/{s['config']['examples']:<5}  "
                     f"{'-' if score is None else f'{score:.2f}':>8}  {metric}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# Command line
