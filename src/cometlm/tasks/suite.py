"""The long-context task suites by name: what `cometlm eval NAME` runs and `cometlm train --data NAME` trains on.

Each `TaskSpec` names a generator (imported when first used, so that listing the tasks stays fast), the
keyword arguments it fixes (the RULER variant, the bAbI task) and the options a user may set (`Option`: a
`--flag` of the eval command and a `name=value` of the `--data` spec). Evaluation builds the test split, training
the train split unless told otherwise. Scoring is `sample.matches` for every task.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GRID_DEPTHS = (0, 25, 50, 75, 100)


@dataclass(frozen=True)
class Option:
    name: str  # keyword of the generator; --name (dashes for underscores) in `cometlm eval`, name= in --data
    default: Any
    help: str
    kind: type = str  # str or int
    choices: tuple = ()  # allowed values; empty: any (checked by the generator)


@dataclass(frozen=True)
class TaskSpec:
    name: str  # "ruler-niah-multikey": the command and the --data name
    title: str  # for the heatmap
    needle: str  # what sits at the grid's depth, for the axis label
    builder: str  # "module:function" under cometlm.tasks, called (tokenizer, n_tokens, depth, rng, split=..., **options)
    scoring: str  # one line for the summary's config
    help: str  # one line for `cometlm eval --help`
    description: str  # the `cometlm eval NAME --help` text
    options: tuple[Option, ...] = ()
    fixed: dict = field(default_factory=dict)  # keyword arguments this task always passes
    extra_tokens: int = 8  # generated beyond the reference answer's length
    depths: tuple = GRID_DEPTHS  # the command's default depths
    # Raised when a change makes other prompts from the same seeds: evaluation records it with every trial from 2
    # on, and refuses a results folder of another version (`evaluation.suites`).
    generator: int = 1

    def defaults(self) -> dict:
        return {o.name: o.default for o in self.options}

    def check(self, options: dict) -> dict:
        """The options with defaults filled in; unknown names, wrong types and values outside the choices raise."""
        known = {o.name: o for o in self.options}
        for name in options:
            if name not in known:
                raise ValueError(f"{self.name} has no option {name!r}; its options are {', '.join(known) or 'none'}")
        values = {**self.defaults(), **options}
        for name, value in values.items():
            option = known[name]
            if isinstance(value, bool) or not isinstance(value, option.kind):
                raise ValueError(f"{self.name} option {name} must be {option.kind.__name__} (got {value!r})")
            if option.choices and value not in option.choices:
                raise ValueError(f"{self.name} option {name} must be one of {', '.join(map(str, option.choices))} "
                                 f"(got {value!r})")
        haystack = values.get("haystack", "")
        if haystack.startswith("file:") and not Path(haystack[5:]).is_file():
            raise FileNotFoundError(f"{self.name} option haystack: no such file {haystack[5:]!r}")
        return values

    def build(self, tokenizer, n_tokens: int, depth: float, rng, split: str = "test", **options):
        """One `sample.TaskSample` of exactly `n_tokens` ids with its key fact at `depth` in [0, 1]."""
        module, _, function = self.builder.partition(":")
        generator = getattr(importlib.import_module(f"cometlm.tasks.{module}"), function)
        return generator(tokenizer, n_tokens, depth, rng, split=split, **self.fixed, **self.check(options))


_HAYSTACK = ("the text the facts hide in: bible, essays (the held-out last 5%% of either in evaluation), noise (the "
             "passkey filler) or file:PATH (a UTF-8 text file)")
_VALUE_TYPES = ("word", "number", "uuid")


def _needle_options(extra: tuple = ()) -> tuple[Option, ...]:
    return (
        Option("haystack", "essays", _HAYSTACK.replace("noise", "needles (distractor needles only), noise")),
        Option("keys", "word", "what the keys are: word (adjective-noun), number (7 digits) or uuid", str, _VALUE_TYPES),
        Option("values", "number", "what the values are: word, number or uuid", str, _VALUE_TYPES),
        *extra,
    )


_NIAH = {
    "single": ("one needle; answer its value", ()),
    "multikey": ("the needle among distractor needles with other keys; answer the asked key's value, naming no other",
                 (Option("needles", 4, "needles in all, the asked one included (default 4)", int),)),
    "multivalue": ("several needles with one key; the answer must name every value",
                   (Option("needles", 4, "values of the key (default 4)", int),)),
    "multiquery": ("several keys asked at once; the answer must name every value",
                   (Option("needles", 4, "keys asked (default 4)", int),)),
}
_SCORE_ALL = "every expected value appears in the answer as a whole word or phrase (any case), and no distractor does"

SPECS: dict[str, TaskSpec] = {}
for _variant, (_what, _extra) in _NIAH.items():
    SPECS[f"ruler-niah-{_variant}"] = TaskSpec(
        name=f"ruler-niah-{_variant}", title=f"RULER-style NIAH, {_variant}", needle="needle",
        builder="ruler:niah_sample", fixed={"variant": _variant}, options=_needle_options(_extra),
        scoring=_SCORE_ALL, help=f"RULER-style needle in a haystack, {_variant}: {_what}",
        description=f"RULER-style needle in a haystack ({_variant}): {_what}. Needles read 'One of the special magic "
        "numbers for KEY is: VALUE.'; the grid's depth places the asked needle, the others go at random depths. "
        "Writes trials.jsonl, the summary JSON and the heatmap to --out; rerunning the same command resumes.",
    )
SPECS["ruler-vt"] = TaskSpec(
    name="ruler-vt", title="RULER-style variable tracking", needle="first assignment", builder="ruler:vt_sample",
    options=(Option("haystack", "noise", _HAYSTACK), Option("hops", 4, "assignments after the first in each chain "
             "(default 4)", int), Option("chains", 2, "chains, the asked one included (default 2)", int)),
    scoring=_SCORE_ALL + " (a variable of another chain)",
    help="RULER-style variable tracking: name every variable a chain of assignments gives the asked value",
    description="Variable tracking: chains 'VAR QWERT = 12345.' 'VAR ZXCVB = VAR QWERT.' ... hidden in the passkey "
    "filler; the answer must name every variable of the asked value's chain and none of another chain. The grid's "
    "depth places the chain's first assignment, the rest follow it. Rerunning the same command resumes.",
)
SPECS["ruler-cwe"] = TaskSpec(
    name="ruler-cwe", title="RULER-style common words", needle="(no needle)", builder="ruler:cwe_sample",
    options=(Option("words", 10, "common words to name (default 10)", int),
             Option("common_freq", 30, "times each common word appears (default 30, fewer on short prompts)", int),
             Option("rare_freq", 3, "times each other word appears at most (default 3)", int)),
    scoring=_SCORE_ALL + " (another word of the list)", depths=(50,), extra_tokens=16,
    help="RULER-style common-word extraction: name the most common words of a long list",
    description="Common-word extraction: a long shuffled list of made-up words in which a few appear far more often "
    "than the rest; the answer must name every common word and no other word of the list. The depth has no "
    "effect (default one column, 50). Rerunning the same command resumes.",
)
SPECS["ruler-fwe"] = TaskSpec(
    name="ruler-fwe", title="RULER-style frequent words", needle="(no needle)", builder="ruler:fwe_sample",
    options=(Option("words", 3, "most frequent words to name (default 3)", int),),
    scoring=_SCORE_ALL + " (another word of the text)", depths=(50,),
    help="RULER-style frequent-word extraction: name the most frequent words of a Zipf-distributed coded text",
    description="Frequent-word extraction: made-up words with Zipf counts (rank r about C/r^2 times); the answer "
    "must name the most frequent ones and no other word of the text. The depth has no effect (default one column, "
    "50). Rerunning the same command resumes.",
)
_QA = {
    "qa1": "single supporting fact: where is a person",
    "qa2": "two supporting facts: where is an object people carry",
    "qa3": "three supporting facts: where was an object before a place",
    "qa4": "two-argument relations: what is north of a place",
    "qa5": "three-argument relations: who gave what to whom",
}
for _task, _what in _QA.items():
    SPECS[f"babilong-{_task}"] = TaskSpec(
        name=f"babilong-{_task}", title=f"BABILong-style {_task}", needle="decisive fact",
        builder="babilong:babilong_sample", fixed={"task": _task},
        options=(Option("haystack", "bible", _HAYSTACK), Option("facts", 0, "sentences of the story (default 0: the "
                 "task's own, 6 / 8 / 10 / 2 / 8 for qa1-qa5)", int)),
        scoring="the one-word answer appears as a whole word (any case), and no other candidate of the story does "
                "unless the question names it",
        help=f"BABILong-style {_task}, {_what}, in long real text",
        description=f"BABILong-style {_task} ({_what}): a bAbI-like story from our own grammar, its sentences hidden "
        "in order in long text, the decisive sentence at the grid's depth. Rerunning the same command resumes.",
    )
SPECS["user-qa"] = TaskSpec(
    name="user-qa", title="User-behaviour QA", needle="fact", builder="user_events:user_qa_sample",
    options=(Option("question", "mixed", "last-purchase, rating, date, returns, or mixed (one drawn per trial)",
                    str, ("mixed", "last-purchase", "rating", "date", "returns")),
             Option("events", "", "a JSONL file of the user's own events to use as the log (default: generated); "
                    "see docs/TASKS.md for the schema")),
    scoring="items: every expected item appears as a whole word or phrase, and no earlier item of the category "
            "does; counts (rating, returns): the answer's first number is the expected one",
    help="user-behaviour QA over a long shop event log: last purchase, rating, what was bought on a date, returns",
    description="User-behaviour QA: a long event log of one shop user (views, carts, purchases, returns, ratings) "
    "and a question answered by one fact or a small count, the fact at the grid's depth. --events uses the "
    "user's own JSONL as the log. Rerunning the same command resumes.",
    # 2: an inserted event is later in time than those inserted before it; with a user's events, a window that wraps
    # is moved later in time, names are compared in any case, and a day's items are named once as the matcher reads them
    generator=2,
)
SPECS["agent-qa"] = TaskSpec(
    name="agent-qa", title="Agent-trajectory QA", needle="tool call", builder="agent_trace:agent_qa_sample",
    options=(Option("question", "mixed", "config, lines, tests, search, or mixed (one drawn per trial)", str,
                    ("mixed", "config", "lines", "tests", "search")),
             Option("trace", "", "a JSONL file of the user's own tool calls to use as the log (default: "
                    "generated); see docs/TASKS.md for the schema")),
    scoring="the expected value appears as a whole word or phrase, and no other value of the same observation does; "
            "counts (lines, tests): the answer's first number is the expected one",
    help="agent-trajectory QA over a long log of tool calls: what did an earlier observation say",
    description="Agent-trajectory QA: a long log of tool calls (file reads, shell commands, searches) and their "
    "observations; the question asks what one call, at the grid's depth, returned. --trace uses the user's own "
    "JSONL of tool calls as the log. Rerunning the same command resumes.",
)
