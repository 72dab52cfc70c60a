"""`cometlm eval TASK`: the evaluation tasks on the command line, with the options they share.

Every task takes the same method options (`--method`, `--window`, `--sink-tokens`, and for tasks that answer
prompts `--layout`, `--prime-tokens`), the model options of `generate`, `--out` and `--no-progress`. A retrieval
grid (lengths x depths x trials) is one `evaluation.grid.RetrievalTask`: adding one to `GRID_TASKS` gives it a
command. Only light modules are imported here, so `cometlm --help` stays fast.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from cometlm.evaluation import niah, passkey, ppl, scrolls, suites, table
from cometlm.evaluation.settings import (
    DEFAULT_PRIME_TOKENS,
    DEFAULT_SINK_TOKENS,
    DEFAULT_WINDOW,
    LAYOUTS,
    MEMORY_METHODS,
    METHOD_HELP,
    METHODS,
    READ_BLOCK,
    SNAPSHOT_SECONDS,
)
from cometlm.files import write_json

from .options import add_model_options, load_model, model_options, number_type

GRID_TASKS = (passkey.PASSKEY, niah.NIAH, *suites.SUITE_TASKS)


def register(subparsers) -> None:
    """Adds `eval` and its tasks to the `cometlm` subcommands (argparse's `add_subparsers()` object)."""
    evaluate = subparsers.add_parser(
        "eval", help="evaluate long-context reading (passkey, needle, RULER- and BABILong-style suites, user and agent "
        "QA, perplexity, SCROLLS) and tabulate results",
        description="Evaluations that write JSON results and a figure to a folder; long runs resume. Every task "
        "takes --method to compare CoMeT with the baselines on the same backbone.",
    )
    tasks = evaluate.add_subparsers(dest="task", required=True, metavar="TASK")
    for task in GRID_TASKS:
        register_grid_task(tasks, task)
    register_ppl(tasks)
    register_scrolls(tasks)
    register_table(tasks)


def default_out_dir(task: str, method: str, layout: str | None) -> Path:
    """runs/TASK/METHOD-LAYOUT for the CoMeT methods when the layout matters, runs/TASK/METHOD otherwise."""
    name = f"{method}-{layout}" if method in MEMORY_METHODS and layout else method
    return Path("runs") / task / name


def check_method_options(args) -> None:
    """Options the method would ignore are refused (as the lm-eval backend refuses them): --window and
    --sink-tokens are the baselines', --prime-tokens the memory methods' (a default value cannot be told apart)."""
    method = args.method
    if method in MEMORY_METHODS and args.window is not None:
        raise ValueError(f"--window applies to the methods full, truncated and sliding-window, not {method}")
    if method != "sliding-window" and args.sink_tokens != DEFAULT_SINK_TOKENS:
        raise ValueError(f"--sink-tokens applies to the method sliding-window, not {method}")
    if method not in MEMORY_METHODS and getattr(args, "prime_tokens", DEFAULT_PRIME_TOKENS) != DEFAULT_PRIME_TOKENS:
        raise ValueError(f"--prime-tokens applies to the methods comet and no-memory, not {method}")


def add_common_options(parser, task: str, layouts: bool) -> None:
    """The method, output and model options every task takes."""
    group = parser.add_argument_group("method")
    group.add_argument("--method", choices=METHODS, default="comet", help=METHOD_HELP)
    group.add_argument("--window", type=number_type(int, 1), default=None,
                       help="tokens the backbone attends to: for full and truncated (answer included) the default "
                       f"is the backbone's max_position_embeddings (else {DEFAULT_WINDOW}); for sliding-window, the "
                       f"recent tokens kept after the sinks, default that window less the sinks and one {READ_BLOCK}-"
                       "token read block")
    group.add_argument("--sink-tokens", type=number_type(int, 0), default=DEFAULT_SINK_TOKENS,
                       help=f"first tokens sliding-window always keeps as attention sinks (default {DEFAULT_SINK_TOKENS})")
    if layouts:
        group.add_argument("--layout", choices=LAYOUTS, default="primed",
                           help="chunking of the prompt for comet and no-memory. primed (default): the open chunk the "
                           "answer is generated in holds the question, up to --prime-tokens context tokens before it "
                           "and room for the answer; fixed: chunks of --chunk-size from the start, as generate does")
        group.add_argument("--prime-tokens", type=number_type(int, 0), default=DEFAULT_PRIME_TOKENS,
                           help=f"context tokens before the question in the open chunk with --layout primed "
                           f"(default {DEFAULT_PRIME_TOKENS})")
    where = "runs/{task}/METHOD-LAYOUT for comet and no-memory, else runs/{task}/METHOD" if layouts else "runs/{task}/METHOD"
    parser.add_argument("--out", default=None, metavar="DIR",
                        help=f"results folder (default: {where.format(task=task)}); a folder holding results of "
                        "other settings is refused")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_model_options(parser)


def register_grid_task(tasks, task) -> None:
    """Adds a retrieval grid (`evaluation.grid.RetrievalTask`) to the `cometlm eval` tasks."""
    parser = tasks.add_parser(task.name, help=task.help, description=task.description)
    _add_grid_options(parser, task.needle, task.depths)
    if task.options:
        group = parser.add_argument_group("task")
        for option in task.options:
            group.add_argument(f"--{option.name.replace('_', '-')}", dest=option.name, type=option.kind,
                               default=option.default, choices=option.choices or None,
                               help=f"{option.help} (default {option.default!r})" if "default" not in option.help
                               else option.help)
    if task in suites.SUITE_TASKS:
        parser.add_argument("--split", choices=tuple(suites.SPLITS), default="test",
                            help="test: templates, names and text that training never reads (default); validation: "
                            "training's templates, names and text in prompts training never drew, to watch a run learn "
                            "without looking at the test split")
    add_common_options(parser, task.name, layouts=True)
    parser.set_defaults(run=lambda args: run_grid_command(task, args))


def _add_grid_options(parser, needle: str, depths=(0, 25, 50, 75, 100)) -> None:
    """--lengths, --depths, --trials, --seed for a retrieval grid."""
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192, 32768], metavar="N",
                        help="context lengths in tokens, question included (default: 2048 8192 32768)")
    parser.add_argument("--depths", type=float, nargs="+", default=list(depths), metavar="PCT",
                        help=f"where the {needle} sits, in percent of the haystack before it: 0 = start, 100 = end "
                        f"(default: {' '.join(map(str, depths))})")
    parser.add_argument("--trials", type=int, default=3, help="random prompts per (length, depth) cell (default 3)")
    parser.add_argument("--trials-at", type=_length_trials, nargs="+", default=[], metavar="LENGTH=N",
                        help="another number of trials at some lengths, e.g. --trials 5 --trials-at 32768=3")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the prompts; trial t of a cell uses Random('SEED/LENGTH/DEPTH/t') (default 0)")
    parser.add_argument("--snapshot-every", type=float, default=SNAPSHOT_SECONDS, metavar="SECONDS",
                        help="comet and no-memory save the memory of a long trial's read to OUT/partial/ this often, "
                        f"so rerunning the command continues the trial where it stopped (default {SNAPSHOT_SECONDS:g})")


def _length_trials(text: str) -> tuple[int, int]:
    length, eq, count = text.partition("=")
    try:
        return int(length), int(count)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LENGTH=N, e.g. 32768=3 (got {text!r})") from None


def run_grid_command(task, args) -> int:
    """`cometlm eval passkey|niah|ruler-...|babilong-...|user-qa|agent-qa`: loads the model, runs the grid (with the
    task's options bound), prints the table."""
    from cometlm.evaluation.grid import TRIALS_FILE, check_grid, evaluate_grid, format_table, method_label

    trials_at = dict(args.trials_at)
    if len(trials_at) < len(args.trials_at):
        raise ValueError("--trials-at names a length twice")
    check_grid(args.lengths, args.depths, args.trials, trials_at)  # before the model loads
    if getattr(args, "split", "test") != "test":
        task = suites.on_split(task, args.split)
    if task.options:
        task = task.bind(**{option.name: getattr(args, option.name) for option in task.options})
    out = Path(args.out) if args.out else default_out_dir(task.name, args.method, args.layout)
    check_method_options(args)  # before the model loads
    model = load_model(args)
    try:
        summary = evaluate_grid(
            task, model, model.tokenizer, args.lengths, args.depths, args.trials, args.seed, out, method=args.method,
            layout=args.layout, prime_tokens=args.prime_tokens, window=args.window, sink_tokens=args.sink_tokens,
            progress=not args.no_progress, model_name=model_options(args).name,
            command=shlex.join(sys.argv), snapshot_every=args.snapshot_every, trials_at=trials_at,
        )
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished trials are in {out / TRIALS_FILE}; run the same command again to resume",
              file=sys.stderr)
        return 130
    print(f"{task.name} accuracy, {method_label(summary)}, {summary['model']['name']}")
    print(format_table(summary))
    print(f"results in {out}: {task.summary_file}, {task.heatmap_file}, {TRIALS_FILE}", file=sys.stderr)
    return 0


def register_ppl(tasks) -> None:
    """Adds `ppl` to the `cometlm eval` tasks (argparse's `add_subparsers()` object)."""
    parser = tasks.add_parser(
        "ppl", help="long-document perplexity on held-out text, by position in the document",
        description="Next-token loss on held-out windows of a bundled corpus (the last 5% of the KJV Bible or the "
        "Paul Graham essays, never used by `cometlm train`), summed per position bucket so the plot shows whether "
        "later tokens gain from earlier context. Writes documents.jsonl (one line per document), ppl.json (config, "
        "versions, machine, loss and perplexity per bucket and overall, time, peak RSS) and ppl.png (loss by "
        "position) to --out, after every document. Rerunning the same command resumes.",
    )
    parser.add_argument("--corpus", choices=ppl.CORPORA, default="bible",
                     help="held-out text: bible (last 5%% of the KJV, about 57k tokens) or essays (last 5%%, about 7.7k "
                     "tokens) (default bible)")
    parser.add_argument("--length", type=int, default=8192, help="tokens per document (default 8192)")
    parser.add_argument("--documents", type=int, default=4,
                     help="documents to score: random windows of the held-out split (they may overlap), drawn with "
                     "--seed; a rerun with more documents adds to the finished ones (default 4)")
    parser.add_argument("--bucket", type=int, default=1024, help="tokens per position bucket of the plot (default 1024)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the document windows (default 0)")
    parser.add_argument("--compare", nargs="+", default=[], metavar="RESULT",
                     help="other ppl results (folders or ppl.json files) of the same documents to draw in ppl.png "
                     "and print side by side, e.g. the baselines' folders")
    add_common_options(parser, "ppl", layouts=False)
    parser.set_defaults(run=cmd_eval_ppl)


def cmd_eval_ppl(args) -> int:
    ppl.check_settings(args.corpus, args.length, args.documents, args.bucket, args.seed)  # before the model loads
    others = [ppl.load_summary(p) for p in args.compare]
    out = Path(args.out) if args.out else default_out_dir("ppl", args.method, None)
    check_method_options(args)  # before the model loads
    model = load_model(args)
    try:
        summary = ppl.evaluate_ppl(
            model, model.tokenizer, out, corpus=args.corpus, length=args.length, documents=args.documents,
            bucket=args.bucket, seed=args.seed, method=args.method, window=args.window, sink_tokens=args.sink_tokens,
            compare=args.compare, progress=not args.no_progress, model_name=model_options(args).name,
            command=shlex.join(sys.argv),
        )
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished documents are in {out / ppl.DOCUMENTS_FILE}; run the same command again to "
              "resume", file=sys.stderr)
        return 130
    print(f"held-out {args.corpus} loss per position, {summary['model']['name']}")
    print(ppl.format_buckets([summary, *others]))
    print(f"results in {out}: {ppl.SUMMARY_FILE}, {ppl.PLOT_FILE}, {ppl.DOCUMENTS_FILE}", file=sys.stderr)
    return 0


def register_scrolls(tasks) -> None:
    """Adds `scrolls` to the `cometlm eval` tasks (argparse's `add_subparsers()` object)."""
    parser = tasks.add_parser(
        "scrolls", help="SCROLLS long-document tasks from local files, scored with the official metrics",
        description="Answers the SCROLLS tasks (GovReport, SummScreenFD, QMSum, Qasper, NarrativeQA, QuALITY, "
        "ContractNLI) from the official task files in --data-dir, streaming each document through the memory and "
        "generating after the question; scores with the official metrics (ROUGE-1/2/L geometric mean, token F1, "
        "exact match) when the split has references, and writes the leaderboard's prediction files. In OUT/SPLIT/"
        "TASK/: predictions.jsonl (resumable log), predictions.json (id -> prediction) and summary.json; "
        "OUT/SPLIT/scrolls.json puts the tasks side by side. Rerunning the same command resumes.",
    )
    parser.add_argument("--data-dir", default="data/scrolls", metavar="DIR",
                         help="folder with the task files: TASK.zip as released, or TASK/SPLIT.jsonl unzipped "
                         "(default data/scrolls); the command says how to get them when they are missing")
    parser.add_argument("--tasks", nargs="+", choices=list(scrolls.TASKS), default=list(scrolls.TASKS), metavar="TASK",
                         help=f"tasks to run, in order (default all: {' '.join(scrolls.TASKS)})")
    parser.add_argument("--split", choices=scrolls.SPLITS, default="validation",
                         help="which split (default validation; test has no references: predictions only)")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                         help="only the first N examples of each task (for a quick look; default all)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                         help="answer length in tokens (default per task: " + ", ".join(
                             f"{t.name} {t.max_new_tokens}" for t in scrolls.TASKS.values()) + ")")
    parser.add_argument("--chat", action="store_true",
                         help="wrap document and question in one user turn of the tokenizer's chat template")
    parser.add_argument("--seed", type=int, default=0,
                         help="torch seed, recorded with the results (decoding is greedy)")
    add_common_options(parser, "scrolls", layouts=True)
    parser.set_defaults(run=cmd_eval_scrolls)


def cmd_eval_scrolls(args) -> int:
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1 (got {args.limit})")
    data = {task: scrolls.load_examples(args.data_dir, task, args.split)[: args.limit] for task in args.tasks}  # before loading
    out = (Path(args.out) if args.out else default_out_dir("scrolls", args.method, args.layout)) / args.split
    check_method_options(args)  # before the model loads
    model = load_model(args)
    name = model_options(args).name
    summaries = {}
    try:
        for task, examples in data.items():
            summaries[task] = scrolls.evaluate_scrolls_task(
                model, model.tokenizer, task, examples, out / task, split=args.split, method=args.method,
                layout=args.layout, prime_tokens=args.prime_tokens, window=args.window, sink_tokens=args.sink_tokens,
                max_new_tokens=args.max_new_tokens, chat=args.chat, seed=args.seed, progress=not args.no_progress,
                model_name=name, command=shlex.join(sys.argv),
            )
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished examples are in {out}/TASK/{scrolls.LOG_FILE}; run the same command again to resume",
              file=sys.stderr)
        return 130
    write_json(out / scrolls.OVERVIEW_FILE, scrolls.overview(summaries))
    described = next(iter(summaries.values()))["describe"]
    print(f"SCROLLS {args.split}, {args.method} ({described}), {name}")
    print(scrolls.format_table(summaries))
    print(f"results in {out}: TASK/{scrolls.SUBMISSION_FILE} (submission format), TASK/{scrolls.SUMMARY_FILE}, {scrolls.OVERVIEW_FILE}",
          file=sys.stderr)
    return 0


def register_table(tasks) -> None:
    """Adds `table` to the `cometlm eval` tasks (argparse's `add_subparsers()` object)."""
    parser = tasks.add_parser(
        "table", help="a markdown table comparing methods from the results of the grid tasks and ppl",
        description="Reads result folders (or their TASK.json: passkey.json, niah.json, ruler-niah-single.json, "
        "babilong-qa1.json, user-qa.json, ..., ppl.json) and prints a markdown table with one row per method and "
        "model: accuracy per context length of every grid task, perplexity, time and peak memory, with the grid "
        "and command of every result below it.",
    )
    parser.add_argument("results", nargs="+", metavar="RESULT", help="result folders or JSON files")
    parser.add_argument("--out", default=None, metavar="FILE", help="also write the table to this markdown file")
    parser.add_argument("--plot", default=None, metavar="PNG", help="also draw the rows: accuracy by context length "
                       "(passkey, NIAH; rows drawn a little apart so equal scores stay visible) and loss per position bucket "
                       "(perplexity); dotted lines are not complete")
    parser.set_defaults(run=cmd_eval_table)


def cmd_eval_table(args) -> int:
    from cometlm.files import output_file_problem, write_figure, write_text

    for option, path in (("--out", args.out), ("--plot", args.plot)):  # neither written unless both can be
        if path and (problem := output_file_problem(path)):
            raise ValueError(f"{option}: {problem}")
    summaries = table.load_results(args.results)
    text = table.format_table(summaries)
    if args.plot:
        write_figure(Path(args.plot), lambda: table.comparison_figure(summaries))
    if args.out:  # before printing, so that a closed pipe (`| head`) cannot stop the file being written
        out = Path(args.out)
        write_text(out, text + "\n")
    print(text)
    return 0
