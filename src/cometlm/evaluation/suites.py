"""The long-context task suites as retrieval grids: `cometlm eval ruler-niah-single`, `babilong-qa1`, `user-qa`, ...

Each `tasks.suite.TaskSpec` becomes an `evaluation.grid.RetrievalTask` on the test split: lengths x depths x trials,
`trials.jsonl`, the summary JSON (`NAME.json`, which `cometlm eval table` reads) and the heatmap, resuming, every
`--method`. A task's options (`--haystack`, `--needles`, `--question`, ...) are bound with `RetrievalTask.bind` and
recorded with every trial. A trial is scored by `tasks.sample.matches`; its record keeps the question type, the
expected answers and where the facts went.
"""

from __future__ import annotations

import random

from cometlm.evaluation.grid import RetrievalTask
from cometlm.tasks.suite import SPECS, TaskSpec

# Evaluation splits -> the generators' split. "test": templates, names and text regions training never reads.
# "validation": the training split's templates, names and text, in prompts drawn from the evaluation seeds (training
# draws its own with `training.data.sample_rng`; see VALIDATION_DRAWS), to watch a run learn without looking at the
# test split.
SPLITS = {"test": "test", "validation": "train"}
# A validation trial's generator draws from its own RNG, seeded from the evaluation's: with the evaluation's RNG
# itself it made the same draws as the test trial of its seed, length, depth and index (the same values, depths and
# structure, other names). Version 2 of the validation draws; results written with the test's draws are refused.
VALIDATION_DRAWS = 2


def _matches(generated: str, sample) -> bool:
    from cometlm.tasks.sample import matches

    return matches(generated, sample)


def _record(sample) -> dict:
    return {"kind": sample.kind, "answers": list(sample.answers), "fact_starts": list(sample.fact_starts),
            "fact_depths": [round(d, 4) for d in sample.depths]}


def grid_task(spec: TaskSpec, split: str = "test") -> RetrievalTask:
    """The retrieval grid of one task suite on ``split`` (a key of ``SPLITS``), bound to its options' defaults (bind
    again to change them). The split is in the summary's config, so results of the two never mix in one folder; so
    is the generator's version from 2 on (`TaskSpec.generator`), so trials of an older one are refused (those of
    version 1 name none: a task whose prompts never changed keeps its stored results)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)} (got {split!r})")

    def build(tokenizer, n_tokens, depth, rng, **options):
        if split == "validation":
            rng = random.Random(f"validation/{rng.getrandbits(64)}")
        return spec.build(tokenizer, n_tokens, depth, rng, split=SPLITS[split], **options)

    return RetrievalTask(
        name=spec.name, title=spec.title, needle=spec.needle, build=build, matches=_matches,
        extra_tokens=spec.extra_tokens, scoring=spec.scoring, help=spec.help, description=spec.description,
        record=_record, config={"split": split, **({"draws": VALIDATION_DRAWS} if split == "validation" else {}),
                                **({"generator": spec.generator} if spec.generator > 1 else {})},
        options=spec.options, depths=spec.depths, check=spec.check,
    ).bind(**spec.defaults())


SUITE_TASKS = tuple(grid_task(spec) for spec in SPECS.values())


def on_split(task: RetrievalTask, split: str) -> RetrievalTask:
    """A suite's grid task (one of ``SUITE_TASKS``, options unbound) on another evaluation split."""
    return task if split == task.config["split"] else grid_task(SPECS[task.name], split)
