"""The passkey grid (`cometlm eval passkey`): context lengths x key depths x trials with random keys.

Each trial builds a passkey prompt of exactly `length` tokens with the key at `depth` percent of the haystack
(`tasks.retrieval.passkey_sample`, the format training uses), reads it with the chosen method
(`evaluation.methods`), generates greedily the key's length plus three tokens, and scores the text with
`passkey_matches` (the first run of digits must be the key, so "482139" does not pass for "48213").

Two layouts for the CoMeT methods: "fixed" cuts chunks of C from the start, as `generate(prompt)` does, so the
question may start a fresh chunk; "primed" (METHOD.md section 4) closes a short first chunk so that the open
chunk the answer is generated in holds the prompt's last tokens, the whole question and room for the answer.
The grid, its files and resuming are `evaluation.grid`'s: `trials.jsonl`, `passkey.json`, `passkey.png`.
"""

from __future__ import annotations

from cometlm.evaluation.grid import TRIALS_FILE, RetrievalTask, evaluate_grid

EXTRA_TOKENS = 3  # generated beyond the key, so that a key followed by more digits is caught


def _sample(tokenizer, n_tokens, depth, rng):
    from cometlm.tasks import retrieval as tasks

    return tasks.passkey_sample(tokenizer, n_tokens, depth, rng)


def _matches(generated: str, sample) -> bool:
    from cometlm.tasks.retrieval import passkey_matches

    return passkey_matches(generated, sample.answer)


PASSKEY = RetrievalTask(
    name="passkey", title="Passkey", needle="key", build=_sample, matches=_matches, extra_tokens=EXTRA_TOKENS,
    scoring="first run of digits in the generated text equals the key", record=lambda sample: {"key": sample.answer},
    help="passkey retrieval over a grid of context lengths x key depths x trials",
    description="The passkey test over a grid of context lengths x key depths x trials with random 5-digit "
    "keys, scored by whether the generated answer starts with the key. Writes trials.jsonl (one line per "
    "trial), passkey.json (config, versions, machine, accuracy per cell and per length, time, peak RSS) and "
    "passkey.png (accuracy heatmap) to --out, after every cell. Rerunning the same command resumes: finished "
    "trials are skipped. Compare --method comet with the baselines to see what the memory adds.",
)
SUMMARY_FILE, HEATMAP_FILE = PASSKEY.summary_file, PASSKEY.heatmap_file
__all__ = ["PASSKEY", "SUMMARY_FILE", "HEATMAP_FILE", "TRIALS_FILE", "evaluate_passkey"]


def evaluate_passkey(model, tokenizer, lengths, depths, trials: int, seed: int, out_dir, **options) -> dict:
    """Runs the passkey grid on a `CometForCausalLM` and returns the summary that `passkey.json` holds.

    `depths` are percentages (0 = key at the start of the haystack, 100 = at its end); trial t of a cell uses
    `random.Random(f"{seed}/{length}/{depth}/{t}")`, so a cell's keys do not depend on the rest of the grid.
    `options` are those of `grid.evaluate_grid`: method, layout, prime_tokens, window, sink_tokens, progress,
    model_name, command.
    """
    return evaluate_grid(PASSKEY, model, tokenizer, lengths, depths, trials, seed, out_dir, **options)
