"""The ``--data`` sources of ``cometlm train``: files, the bundled corpora and the generated tasks, by name, mixed by
weight (``SPEC@WEIGHT``)."""

from __future__ import annotations

import functools
import random
import sys
from pathlib import Path

from cometlm.tasks.suite import SPECS

DATA_FORMS = {
    "jsonl-text:PATH": 'JSONL with one {"text": ...} per line; long texts are split into --max-length windows',
    "jsonl-chat:PATH": 'JSONL with one {"messages": [{"role", "content"}, ...]} per line; loss on assistant turns',
    "text:PATH": "a UTF-8 text file, or a folder of .txt files, split into --max-length windows",
    "passkey": "generated passkey prompts of --max-length/2 to --max-length tokens; loss on the key and the period after it",
    "needle": "generated needle-in-a-haystack prompts over the bundled essays' training part, with `eval niah`'s "
              "needle and answer (measure with ruler-niah-single instead); loss on the answer",
    "passkey:depth=LOW-HIGH": "passkey (or needle) prompts with the key's depth drawn from LOW..HIGH percent, e.g. "
                              "depth=0-80 to keep keys out of the last chunk",
    "passkey:digits=N": "passkey keys of N digits (default 5), or digits=LOW-HIGH drawn per prompt; options "
                        "combine with commas, e.g. passkey:depth=0-40,digits=5-7",
    "passkey:period=0": "the key alone as the target, without the period after it (the same prompts; how the "
                        "shipped adapter's first three phases were trained)",
    "lm:bible": "random --max-length windows of the bundled KJV Bible; loss on every token",
    "lm:essays": "random --max-length windows of the bundled Paul Graham essays; loss on every token",
    "ruler-niah-single|multikey|multivalue|multiquery, ruler-vt, ruler-cwe, ruler-fwe": "RULER-style prompts "
        "of --max-length/2 to --max-length tokens (answer included), training split; loss on the answer",
    "babilong-qa1 ... babilong-qa5": "BABILong-style stories hidden in the training part of the Bible (or "
        "haystack=essays, noise, file:PATH); loss on the answer",
    "user-qa, agent-qa": "QA over a long shop event log or agent tool-call log (events=PATH, trace=PATH: the "
        "user's own JSONL); loss on the answer",
    "TASK:OPTION=VALUE,...": "a task suite's options, as in `cometlm eval TASK --help` (dashes as underscores), "
        "plus depth=LOW-HIGH in percent, split=train|test (default train) and eos=1 (the end-of-sequence token after "
        "the answer, so the model learns to stop; default 0), e.g. ruler-niah-multikey:needles=6,depth=0-80,eos=1",
}
_FILE_KINDS = ("jsonl-text", "jsonl-chat", "text")
_PASSKEY_ANSWER_EXTRA = 2  # " " and "." around the key's digits: a byte-level tokenizer needs at most a token per byte


def check_mixture(specs: list[str]) -> list[tuple[str, float]]:
    """``--data`` SPEC[@WEIGHT] arguments as (spec, weight) pairs, checked as far as they can be without a tokenizer
    (names, options, weights, that named files exist), so `cometlm train` refuses a bad one before loading a model."""
    parsed = []
    for spec in specs:
        name, at, weight = spec.rpartition("@") if "@" in spec else (spec, "", "1")
        try:
            parsed.append((name, float(weight)))
        except ValueError:
            raise ValueError(f"--data {spec!r}: the weight after '@' must be a number, e.g. passkey@0.8") from None
        kind, _, path = name.partition(":")
        if kind in _FILE_KINDS and path:
            if kind == "text":
                _text_files(path)  # a folder must hold .txt files
            if not Path(path).exists():
                raise FileNotFoundError(f"--data {name!r}: no such file {path!r}")
        elif kind in ("passkey", "needle"):
            _task_options(name, path, kind)
        elif kind in SPECS:
            from .task_data import parse_task_spec

            parse_task_spec(name)
        elif not (kind == "lm" and path in ("bible", "essays")):
            forms = "\n  ".join(DATA_FORMS)
            raise ValueError(f"--data {name!r} is not a data source; use one of:\n  {forms}")
    return parsed


def load_mixture(specs: list[str], tokenizer, max_length: int, on_error: str = "skip", seed: int = 0):
    """One dataset from ``--data`` SPEC[@WEIGHT] arguments: the named dataset, or a ``MixtureDataset`` of several."""
    from .data import MixtureDataset

    datasets, weights, names = [], [], []
    for name, weight in check_mixture(specs):
        names.append(name)
        weights.append(weight)
        datasets.append(load_dataset(name, tokenizer, max_length, on_error, seed))
    if len(datasets) == 1:
        return datasets[0]
    return MixtureDataset(datasets, weights, seed=seed, names=names)


def load_dataset(spec: str, tokenizer, max_length: int, on_error: str = "skip", seed: int = 0):
    """The dataset a ``--data`` SPEC names (see ``DATA_FORMS``); file datasets print what they read and skipped."""
    from ..bundled import encode
    from ..tasks import retrieval as tasks
    from . import data, file_data

    kind, _, path = spec.partition(":")
    files = {"jsonl-text": file_data.JsonlTextDataset, "jsonl-chat": file_data.JsonlChatDataset,
             "text": file_data.TextFilesDataset}
    if kind in files and path:
        dataset = files[kind](_text_files(path) if kind == "text" else path, tokenizer, max_length, on_error)
        print(dataset.report(), file=sys.stderr)
        return dataset
    if kind in ("passkey", "needle"):
        options = _task_options(spec, path, kind)
        if kind == "passkey":
            digits = options.get("digits", (5, 5))
            build = functools.partial(tasks.passkey_sample, key_digits=digits[1])  # the longest key checks the length
            answer = digits[1] + _PASSKEY_ANSWER_EXTRA
            end = "." if options.get("period", 1) else ""
            make = functools.partial(data.PasskeyDataset, key_digits=digits, answer_end=end)
        else:
            build, make = tasks.needle_sample, data.NeedleDataset
            answer = len(encode(tokenizer, " " + tasks.NEEDLE_ANSWER))
        lengths = (max_length // 2, max_length - answer)
        try:
            build(tokenizer, lengths[0], 0.5, random.Random(seed))  # the shortest prompt, before training starts
        except ValueError as err:
            raise ValueError(
                f"--max-length {max_length} is too short for {spec}: its shortest prompts ({lengths[0]} tokens, half "
                f"of --max-length) fail with: {err}"
            ) from None
        return make(tokenizer, lengths, seed=seed, depth_range=options.get("depth", (0.0, 1.0)))
    if kind in SPECS:
        from .task_data import load_task_dataset

        return load_task_dataset(spec, tokenizer, max_length, seed)
    if kind == "lm" and path in ("bible", "essays"):
        return data.CorpusLMDataset(tokenizer, path, max_length, seed=seed)
    forms = "\n  ".join(DATA_FORMS)
    raise ValueError(f"--data {spec!r} is not a data source; use one of:\n  {forms}")


def _task_options(spec: str, options: str, kind: str) -> dict[str, tuple]:
    """A generated task's comma-separated options: ``depth=LOW-HIGH`` in percent, as fractions, and (passkey only)
    ``digits=N`` or ``digits=LOW-HIGH``, as (low, high) counts, and ``period=0`` or ``1`` (the target's period)."""
    allowed = ("depth", "digits", "period") if kind == "passkey" else ("depth",)
    usage = "depth=LOW-HIGH in percent" + (", digits=N or digits=LOW-HIGH and period=0 or 1" if kind == "passkey"
                                           else "")
    example = "passkey:depth=0-80,digits=5-7" if kind == "passkey" else f"{kind}:depth=0-80"
    parsed = {}
    for option in filter(None, options.split(",")):
        name, _, value = option.partition("=")
        low, dash, high = value.partition("-")
        try:
            if name not in allowed or name in parsed:
                raise ValueError
            if name == "depth":
                parsed[name] = (float(low) / 100, float(high) / 100)
            elif name == "period":
                if value not in ("0", "1"):
                    raise ValueError
                parsed[name] = int(value)
            else:
                parsed[name] = (int(low), int(high) if dash else int(low))
        except ValueError:
            raise ValueError(f"--data {spec!r}: the options are {usage}, comma-separated, e.g. {example}") from None
    first, last = parsed.get("depth", (0.0, 1.0))
    if not 0.0 <= first <= last <= 1.0:
        raise ValueError(f"--data {spec!r}: the depths must satisfy 0 <= LOW <= HIGH <= 100")
    low, high = parsed.get("digits", (5, 5))
    if not 1 <= low <= high:
        raise ValueError(f"--data {spec!r}: the digits must satisfy 1 <= LOW <= HIGH")
    return parsed


def _text_files(path: str) -> list[Path]:
    folder = Path(path)
    if not folder.is_dir():
        return [folder]
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise FileNotFoundError(f"{folder} holds no .txt files")
    return files
