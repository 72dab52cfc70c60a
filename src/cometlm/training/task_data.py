"""Training on the long-context task suites: `cometlm train --data ruler-niah-multikey`, `babilong-qa2`, `user-qa`, ...

A `--data` spec is a task's name (`tasks.suite.SPECS`), optionally followed by comma-separated options:
`depth=LOW-HIGH` (percent; where the key fact goes, default 0-100), `split=train|test` (default train: the
templates, names and text regions evaluation never sees) and any option of the task, e.g.
`ruler-niah-multikey:needles=6,haystack=bible,depth=0-80` or `user-qa:question=rating,events=my_events.jsonl`.
Samples are the prompt plus the reference answer, with the loss on the answer only; with `eos=1` the target also
holds the tokenizer's end-of-sequence token after the answer, so a trained model stops there (generation ends at it)
instead of running on past the value (default 0: the answer alone, as the general adapter's phases g1-g3 trained).
"""

from __future__ import annotations

import random

from cometlm.tasks.sample import SPLITS
from cometlm.tasks.suite import SPECS, TaskSpec
from cometlm.training.data import RetrievalDataset, Sample

_SHRINK_TRIES = 3


class TaskDataset(RetrievalDataset):
    """Prompts of one task suite, `max_tokens // 2` to `max_tokens` tokens with the answer, the key fact at a random
    depth in `depth_range`; the loss is on the answer. A prompt whose answer would overflow `max_tokens` is built
    again with the same draws and a haystack shorter by the overflow."""

    def __init__(self, tokenizer, spec: TaskSpec, max_tokens: int, seed: int = 0, size: int = 1_000_000,
                 depth_range: tuple[float, float] = (0.0, 1.0), split: str = "train", options: dict | None = None,
                 eos: bool = False):
        super().__init__(tokenizer, (max(1, max_tokens // 2), max_tokens), seed, size, depth_range)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)} (got {split!r})")
        if eos:
            if getattr(tokenizer, "eos_token_id", None) is None:
                raise ValueError(f"{spec.name}: eos=1 needs a tokenizer with an end-of-sequence token")
            self.answer_end = [tokenizer.eos_token_id]
        self.spec, self.split, self.max_tokens = spec, split, max_tokens
        self.options = spec.check(dict(options or {}))

    def _make(self, rng: random.Random) -> Sample:
        n_tokens = rng.randint(*self.lengths)
        depth = rng.uniform(*self.depth_range)
        state = rng.getstate()
        for _ in range(_SHRINK_TRIES):
            task = self.spec.build(self.tokenizer, n_tokens, depth, rng, split=self.split, **self.options)
            over = len(task.prompt_ids) + len(task.answer_ids) + len(self.answer_end) - self.max_tokens
            if over <= 0:
                return self._sample(task)
            n_tokens -= over
            rng.setstate(state)
        raise RuntimeError(f"{self.spec.name}: no prompt with its answer fits in {self.max_tokens} tokens")


def parse_task_spec(spec: str) -> dict:
    """A `--data` spec that names a task suite, checked without a tokenizer: the `TaskDataset` keywords it gives
    (``spec``, ``options``, ``depth_range``, ``split``, ``eos``). Bad names, values and missing haystack files raise
    here, so `cometlm train` refuses them before it loads a model."""
    name, _, text = spec.partition(":")
    task = SPECS[name]
    kinds = {o.name: o.kind for o in task.options}
    options, depth, split, eos, seen = {}, (0.0, 1.0), "train", False, set()
    usage = (f"--data {spec!r}: options are comma-separated name=value, e.g. {name}:depth=0-80,split=train,eos=1; "
             f"{name}'s own are {', '.join(kinds) or 'none'}")
    for item in filter(None, text.split(",")):
        key, eq, value = item.partition("=")
        if not eq or key in seen or (key not in kinds and key not in ("depth", "split", "eos")):
            raise ValueError(usage)
        seen.add(key)
        try:
            if key == "depth":
                low, _, high = value.partition("-")
                depth = (float(low) / 100, float(high or low) / 100)
            elif key == "split":
                split = value
            elif key == "eos":
                if value not in ("0", "1"):
                    raise ValueError(usage)
                eos = value == "1"
            else:
                options[key] = kinds[key](value)
        except ValueError:
            raise ValueError(usage) from None
    if not 0.0 <= depth[0] <= depth[1] <= 1.0:
        raise ValueError(f"--data {spec!r}: the depths must satisfy 0 <= LOW <= HIGH <= 100")
    if split not in SPLITS:
        raise ValueError(f"--data {spec!r}: split must be one of {', '.join(SPLITS)} (got {split!r})")
    return dict(spec=task, options=task.check(options), depth_range=depth, split=split, eos=eos)


def load_task_dataset(spec: str, tokenizer, max_length: int, seed: int = 0) -> TaskDataset:
    """The dataset of a `--data` spec that names a task suite (module docstring)."""
    parsed = parse_task_spec(spec)
    task, split = parsed["spec"], parsed["split"]
    dataset = TaskDataset(tokenizer, max_tokens=max_length, seed=seed, **parsed)
    try:
        dataset[0]
        task.build(tokenizer, dataset.lengths[0], 0.5, random.Random(seed), split=split, **dataset.options)
    except ValueError as err:
        raise ValueError(f"--max-length {max_length} is too short for {spec} (its prompts are half of --max-length "
                         f"to --max-length tokens): {err}") from None
    return dataset
