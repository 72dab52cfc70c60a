"""Agent-trajectory QA: a long log of an agent's tool calls and what they returned, and a question about one of them.

The log holds searches, file reads and shell commands with their outputs; it is generated from the trial's random
generator, or read from a user's own JSONL of tool calls (`TRACE_SCHEMA`). One call, whose input appears nowhere
else in the window, is inserted at the grid's depth (`logs.log_prompt`), and the question asks what it returned:

- config: `read_file` of a settings file with three "name = value" lines. "In the observation of read_file on
  orion/db/settings_tamo.ini, what is the value of retry_limit?" Answer: that value; naming another of the file's
  values as well is wrong.
- lines: `shell` "wc -l orion/data/db_tamo.csv". "How many lines did `wc -l orion/data/db_tamo.csv` report?"
- tests: `shell` "pytest orion/tests/test_db_tamo.py", "12 passed, 3 failed in 4.21s". "How many tests failed when
  `pytest orion/tests/test_db_tamo.py` ran?" Naming the passed count or the seconds as well is wrong.
- search: `search` with a query, three ranked URLs. "What was the first result of the search for "..."?" Naming the
  second or third as well is wrong.
Answers are scored by `sample.matches`: "all" (whole words, no distractor) for config and search, "number" (the
answer's first number) for the counts of lines and tests. With a user's own trace, calls whose
input contains the inserted call's file or query are left out of the window.

Held out (`sample.Pool`): the test split renders calls in the ReAct format ("Action: ... Action input: ...
Observation: ...") and words the questions one way, with the project names and settings of the `.test` pools and
made-up file names of the test split (`ruler.made_up_word`); training renders calls another way, with other
names and wording.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from cometlm.bundled import encode
from cometlm.tasks.retrieval import check_depth
from cometlm.tasks.logs import cycle_from, log_prompt, read_records, split_region
from cometlm.tasks.ruler import made_up_word
from cometlm.tasks.sample import Pool, TaskSample, check_split

QUESTIONS = ("config", "lines", "tests", "search")
MATCH = {"config": "all", "lines": "number", "tests": "number", "search": "all"}  # a count: the first number
TRACE_SCHEMA = (
    'one JSON object per line: {"tool": name, "input": a string or a JSON object of arguments, "output": the '
    "string the tool returned}; other keys are ignored; calls are kept in file order"
)
PROJECTS = Pool(train=("atlas", "beacon", "cinder", "delta", "ember", "falcon", "granite", "helix"),
                test=("orion", "quasar", "nimbus", "pulsar", "vertex", "zephyr"))
MODULES = ("auth", "billing", "cache", "db", "api", "worker", "parser", "metrics", "scheduler", "storage")
SETTINGS = Pool(train=("timeout_seconds", "max_retries", "pool_size", "batch_size", "cache_ttl", "log_every"),
                test=("request_timeout", "retry_limit", "worker_count", "queue_depth", "flush_interval", "page_size"))
TOPICS = Pool(train=("connection reset", "slow query", "memory leak", "deadlock", "timeout error"),
              test=("null pointer", "race condition", "stack overflow", "permission denied", "encoding error"))
CALL_STYLES = Pool(train=("prompt",), test=("react",))
WORDING = {
    "test": dict(
        intro="Below is the log of an agent's tool calls and their observations, in order. Answer the question "
              "after it.",
        config="In the observation of read_file on {path}, what is the value of {setting}?",
        lines="How many lines did `wc -l {path}` report?",
        tests="How many tests failed when `pytest {path}` ran?",
        search='What was the first result of the search for "{query}"?',
    ),
    "train": dict(
        intro="Here is a transcript of the tools an assistant called and what each returned.",
        config="What did {path} set {setting} to?",
        lines="What line count did wc report for {path}?",
        tests="How many failures did the pytest run of {path} show?",
        search='Which URL came first when searching for "{query}"?',
    ),
}


@dataclass(frozen=True)
class ToolCall:
    tool: str
    input: str
    output: str


def render(call: ToolCall, style: str) -> str:
    """One call and its observation, ending in a line break."""
    output = call.output.rstrip("\n")
    if style == "react":
        return f"Action: {call.tool}\nAction input: {call.input}\nObservation: {output}\n"
    return f">>> {call.tool}({call.input})\n{output}\n"


def parse_call(record: dict) -> ToolCall:
    """A `ToolCall` from one JSONL record (`TRACE_SCHEMA`); ValueError says what is wrong."""
    for name in ("tool", "input", "output"):
        if name not in record:
            raise ValueError(f"missing {name!r}")
    tool, given, output = record["tool"], record["input"], record["output"]
    if not isinstance(tool, str) or not tool.strip() or "\n" in tool:
        raise ValueError(f"'tool' must be a non-empty one-line string (got {tool!r})")
    if isinstance(given, dict):
        given = json.dumps(given, ensure_ascii=False)
    if not isinstance(given, str):
        raise ValueError(f"'input' must be a string or a JSON object (got {type(given).__name__})")
    if not isinstance(output, str):
        raise ValueError(f"'output' must be a string (got {type(output).__name__})")
    return ToolCall(tool.strip(), given, output)


def load_trace(path) -> tuple[ToolCall, ...]:
    """A user's tool calls (`TRACE_SCHEMA`), in file order; every bad line is reported (`logs.RecordError`)."""
    return read_records(path, parse_call)


def agent_qa_sample(tokenizer, n_tokens: int, depth: float, rng, *, split: str = "test", question: str = "mixed",
                    trace: str = "") -> TaskSample:
    """An agent-trajectory QA prompt of exactly `n_tokens` ids (module docstring). `question`: one of `QUESTIONS`
    or "mixed" (drawn per prompt); `trace`: a user's JSONL of tool calls to use as the log instead of generated
    ones."""
    check_depth(depth)
    check_split(split)
    if question not in (*QUESTIONS, "mixed"):
        raise ValueError(f"question must be one of {', '.join(QUESTIONS)} or mixed (got {question!r})")
    kind = rng.choice(QUESTIONS) if question == "mixed" else question
    style = rng.choice(CALL_STYLES.of(split))
    project, module, name = rng.choice(PROJECTS.of(split)), rng.choice(MODULES), made_up_word(rng, split)
    if kind == "config":
        path = f"{project}/{module}/settings_{name}.ini"
        settings = rng.sample(SETTINGS.of(split), 3)
        values = [str(v) for v in rng.sample(range(2, 500), 3)]
        call = ToolCall("read_file", path, "\n".join(f"{s} = {v}" for s, v in zip(settings, values)))
        asked = rng.randrange(3)
        fields, answer, wrong, unique = dict(path=path, setting=settings[asked]), values[asked], values, path
    elif kind == "lines":
        path = f"{project}/data/{module}_{name}.csv"
        count = str(rng.randint(10, 99999))
        call = ToolCall("shell", f"wc -l {path}", f"{count} {path}")
        fields, answer, wrong, unique = dict(path=path), count, [], path
    elif kind == "tests":
        path = f"{project}/tests/test_{module}_{name}.py"
        passed, failed = rng.sample(range(0, 60), 2)
        seconds = f"{rng.uniform(0.2, 30):.2f}"
        call = ToolCall("shell", f"pytest {path}", f"{passed} passed, {failed} failed in {seconds}s")
        fields, answer, wrong, unique = dict(path=path), str(failed), [str(passed), seconds], path
    else:
        query = f"{project} {module} {rng.choice(TOPICS.of(split))} {name}"
        urls = [f"https://{site}/{module}/{name}-{rng.randint(100, 999)}" for site in rng.sample(_SITES, 3)]
        call = ToolCall("search", json.dumps({"query": query}), "\n".join(f"{i}. {u}" for i, u in enumerate(urls, 1)))
        fields, answer, wrong, unique = dict(query=query), urls[0], urls[1:], name
    if trace:
        region = [c for c in split_region(load_trace(trace), split) if unique not in c.input]
        if not region:
            raise ValueError(f"{trace}: no tool calls in the {split} split")
        stream = cycle_from(region, rng)
    else:
        stream = _generated_calls(rng, split, avoid=unique)
    text = "Question: " + WORDING[split][kind].format(**fields) + "\nAnswer:"
    log = log_prompt(tokenizer, n_tokens, stream, lambda c: render(c, style), intro=WORDING[split]["intro"],
                     facts=[lambda before, after, previous: call], depths=[depth], question=lambda made: text,
                     what=f"a {kind} question")
    return TaskSample(
        context_ids=log.context_ids, question_ids=log.question_ids, answer_ids=encode(tokenizer, " " + answer),
        answers=(answer,), facts=tuple(t.rstrip("\n") for t in log.fact_texts), fact_starts=tuple(log.fact_starts),
        depths=(depth,), depth=depth, key=0, distractors=tuple(w for w in wrong if w != answer), match=MATCH[kind],
        kind=kind, split=split,
    )


_SITES = ("docs.python.org", "stackoverflow.com", "github.com", "man7.org", "wiki.example.org", "forum.example.net")


def _generated_calls(rng, split: str, avoid: str):
    """An agent's calls forever: reads of settings files, line counts, test runs, searches and directory listings
    of the split's projects, none whose input contains `avoid` (the inserted call's file or query)."""
    projects = PROJECTS.of(split)
    while True:
        project, module, name = rng.choice(projects), rng.choice(MODULES), made_up_word(rng, split)
        roll = rng.random()
        if roll < 0.25:
            path = f"{project}/{module}/settings_{name}.ini"
            body = "\n".join(f"{s} = {rng.randint(2, 499)}" for s in rng.sample(SETTINGS.of(split), 3))
            call = ToolCall("read_file", path, body)
        elif roll < 0.45:
            path = f"{project}/data/{module}_{name}.csv"
            call = ToolCall("shell", f"wc -l {path}", f"{rng.randint(10, 99999)} {path}")
        elif roll < 0.65:
            passed, failed = rng.randint(0, 59), rng.randint(0, 59)
            call = ToolCall("shell", f"pytest {project}/tests/test_{module}_{name}.py",
                            f"{passed} passed, {failed} failed in {rng.uniform(0.2, 30):.2f}s")
        elif roll < 0.85:
            query = f"{project} {module} {rng.choice(TOPICS.of(split))} {name}"
            urls = [f"https://{site}/{module}/{name}-{rng.randint(100, 999)}" for site in rng.sample(_SITES, 3)]
            call = ToolCall("search", json.dumps({"query": query}), "\n".join(f"{i}. {u}" for i, u in enumerate(urls, 1)))
        else:
            files = sorted({f"{made_up_word(rng, split)}.py" for _ in range(rng.randint(2, 6))})
            call = ToolCall("shell", f"ls {project}/{module}", "  ".join(files))
        if avoid not in call.input:
            yield call
