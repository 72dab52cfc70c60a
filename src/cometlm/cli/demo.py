"""`cometlm demo`: the main job. SmolLM2 with the shipped adapter finds a passkey in a 32k-token prompt read
chunk by chunk at constant memory (``--task continue``: reads a long bundled text and goes on; ``--task`` with a task
suite's name, e.g. ``user-qa``: one test prompt of that task, answered and scored)."""

from __future__ import annotations

import re
import sys
import time

from cometlm.runtime import peak_rss_mib
from cometlm.tasks.suite import SPECS

from .generate import generate_printed, read_timed, report, split_open_chunk
from .options import add_generation_options, add_model_options, load_model, use_default_adapter

DEMO_TOKENS = {"passkey": 32768, "continue": 16384}  # a task suite's prompt: as the passkey's
DEFAULT_DEMO_TASK = "passkey"  # the shipped adapter (src/cometlm/adapters/smollm2-135m-passkey) at 32k tokens


def register(sub) -> None:
    demo = sub.add_parser(
        "demo", help="the main job: SmolLM2 + CoMeT reads a long input at constant memory and answers",
        description="The main job on bundled defaults. --task passkey: SmolLM2-135M-Instruct with the CoMeT adapter "
        "shipped in this package (or --comet DIR) reads a 32k-token passkey prompt chunk by chunk with a live "
        "progress bar, answers with the key, and prints the key found, the truth, tokens/s and peak memory. "
        "--task continue: streams a long bundled text (the KJV Bible or Paul Graham's essays) and continues it. "
        "--task with the name of a task suite (docs/TASKS.md: ruler-niah-single, babilong-qa1, user-qa, agent-qa, "
        "...): one prompt of that task's test split, answered and scored as `cometlm eval` scores it.",
    )
    demo.add_argument("--task", choices=("passkey", "continue", *SPECS), default=DEFAULT_DEMO_TASK, metavar="TASK",
                      help="passkey: retrieve a random key; continue: read a bundled text and go on; or a task "
                      f"suite: {', '.join(SPECS)} (default {DEFAULT_DEMO_TASK})")
    demo.add_argument("--tokens", type=int, default=None,
                      help="prompt length in tokens (default: " + ", ".join(f"{t} {n}" for t, n in DEMO_TOKENS.items())
                      + f", a task suite {DEMO_TOKENS['passkey']})")
    demo.add_argument("--depth", type=float, default=None,
                      help="passkey or a task suite: where the key fact sits, in percent of the prompt (default: "
                      "random)")
    demo.add_argument("--corpus", choices=("bible", "essays"), default="bible",
                      help="continue: which bundled text (default bible)")
    add_model_options(demo, default_adapter=True)
    add_generation_options(demo, max_new_tokens=48)
    demo.set_defaults(run=cmd_demo)


def cmd_demo(args) -> int:
    """The main job: passkey retrieval with the shipped passkey adapter (default), one prompt of a task suite, or
    reading a long bundled text and going on (--task continue), the last two with the default adapter. --comet DIR
    picks another adapter; --model or a size without --comet runs an untrained memory, as ``generate`` does."""
    from cometlm.bundled import DEFAULT_ADAPTER, SHIPPED_ADAPTER
    from cometlm.saving import CONFIG_FILE

    if args.tokens is None:
        args.tokens = DEMO_TOKENS.get(args.task, DEMO_TOKENS["passkey"])
    if args.depth is not None and not 0 <= args.depth <= 100:
        raise SystemExit(f"error: --depth is a percentage of the prompt, 0 to 100 (got {args.depth:g})")
    if args.task == "continue":
        use_default_adapter(args)
        return _demo_continue(args)
    adapter = SHIPPED_ADAPTER if args.task == "passkey" else DEFAULT_ADAPTER
    if use_default_adapter(args, adapter):  # --model or a size without --comet: an untrained memory, as generate's
        if not (adapter / CONFIG_FILE).is_file():
            raise SystemExit(f"error: the shipped adapter is missing ({adapter}); reinstall cometlm, "
                             "or pass --comet DIR of a trained adapter")
        if args.task != "passkey" and adapter == SHIPPED_ADAPTER:
            print(f"note: the shipped adapter is a passkey specialist and does not answer {args.task} yet "
                  "(docs/STATUS.md); pass --comet DIR of an adapter trained on the task suites.", file=sys.stderr)
    return _demo_passkey(args) if args.task == "passkey" else _demo_suite_task(args)


def _demo_passkey(args) -> int:
    import random

    from cometlm.evaluation.passkey import EXTRA_TOKENS
    from cometlm.tasks.retrieval import passkey_matches, passkey_sample

    model = load_model(args)
    rng = random.Random(args.seed)
    depth = args.depth / 100 if args.depth is not None else rng.random()
    sample = passkey_sample(model.tokenizer, args.tokens, depth, rng)
    text = _answer(args, model, sample, "passkey prompt", f"the key at {depth:.0%} depth", EXTRA_TOKENS)
    found = next(iter(re.findall(r"\d+", text)), "(no digits)")
    correct = passkey_matches(text, sample.answer)
    print(f"answer    {text.strip()!r}\nkey found {found}\ntruth     {sample.answer}  ->  "
          f"{'correct' if correct else 'WRONG'}")
    return 0


def _demo_suite_task(args) -> int:
    """One prompt of a task suite's test split (``evaluation.suites``' grid draws its trials the same way)."""
    import random

    from cometlm.tasks.sample import matches

    spec = SPECS[args.task]
    model = load_model(args)
    rng = random.Random(args.seed)
    depth = args.depth / 100 if args.depth is not None else rng.random()
    sample = spec.build(model.tokenizer, args.tokens, depth, rng, split="test", **spec.defaults())
    facts = len(sample.facts)
    where = f"{facts} fact{'s' if facts != 1 else ''}, the one that decides the answer at {sample.depth:.0%} depth"
    text = _answer(args, model, sample, f"{spec.name} prompt", where, spec.extra_tokens)
    print(f"answer    {text.strip()!r}\nexpected  {', '.join(sample.answers)}  ->  "
          f"{'correct' if matches(text, sample) else 'WRONG'}")
    return 0


def _answer(args, model, sample, what: str, where: str, extra_tokens: int) -> str:
    """Reads ``sample``'s prompt with its question in the open chunk, answers greedily, prints time and memory;
    returns the answer's text."""
    import torch

    from cometlm.evaluation.methods import build_method
    from cometlm.evaluation.settings import DEFAULT_PRIME_TOKENS

    config = model.comet_config
    print(
        f"CoMeT demo: SmolLM2-135M-Instruct + the CoMeT adapter {args.comet} (C={config.chunk_size}, "
        f"M={config.global_slots}, s={config.temp_stride}, K={config.queue_size}; the backbone in "
        f"{str(model.backbone.dtype).removeprefix('torch.')}) reads a {len(sample.prompt_ids):,}-token {what} chunk "
        f"by chunk at constant memory, {where}, and answers "
        f'"{model.tokenizer.decode(sample.question_ids).strip()}"',
        file=sys.stderr, flush=True,
    )
    start = time.perf_counter()
    with torch.inference_mode():
        generated, _ = build_method("comet", model, "primed", DEFAULT_PRIME_TOKENS).answer(
            sample.prompt_ids, len(sample.question_ids), len(sample.answer_ids) + extra_tokens,
            model.tokenizer.eos_token_id, progress=True,
        )
    seconds = time.perf_counter() - start
    n = len(sample.prompt_ids)
    print(f"read + answer {n:,} tokens in {seconds:.1f} s = {n / seconds:,.0f} tokens/s; peak RSS "
          f"{peak_rss_mib():,.0f} MiB", file=sys.stderr)
    return model.tokenizer.decode(generated, skip_special_tokens=True)


def _demo_continue(args) -> int:
    from cometlm.tasks.corpora import corpus_tokens

    model = load_model(args)
    config = model.comet_config
    ids = corpus_tokens(args.corpus, model.tokenizer, args.tokens).tolist()
    print(
        f"CoMeT demo: SmolLM2-135M-Instruct + CoMeT (C={config.chunk_size}, M={config.global_slots}, "
        f"s={config.temp_stride}, K={config.queue_size}; the backbone in "
        f"{str(model.backbone.dtype).removeprefix('torch.')}) reads the first {len(ids):,} tokens of the {args.corpus} "
        "corpus chunk by chunk at constant memory, then continues the text.",
        file=sys.stderr,
    )
    if not args.comet:
        print("note: the memory modules are untrained (identity adapters, no fine-tuning), so this shows the "
              "mechanics and cost, not long-range recall.", file=sys.stderr)
    context, prompt = split_open_chunk(ids, config.chunk_size)
    state, read_seconds = read_timed(model, context, model.init_memory(1))
    print("\n--- the text read ends with ---\n" + model.tokenizer.decode(prompt[-80:]) + "\n--- continuation ---",
          file=sys.stderr, flush=True)
    out, gen_seconds = generate_printed(model, prompt, state, args)
    report(len(context), read_seconds, len(prompt), out.sequences.shape[1] - len(prompt), gen_seconds, out.memory)
    return 0
