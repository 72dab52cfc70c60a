#!/usr/bin/env python
"""The lm-evaluation-harness backend's generate_until, one request at a time against --batch_size N: the same texts.

Builds `--requests` generate_until requests from windows of the bundled essays of different lengths (evenly spread
from `--min-tokens` to `--max-tokens`), each ending in a question, with one stop sequence ("\\n") and
`--max-gen-toks`, and answers them with the `cometlm` backend (the shipped adapter or `--comet`, greedy) at
batch_size 1 and at `--batch-size`, in one process, one after the other. Prints wall seconds for both and their
ratio, and how many requests got the same text both ways (all of them in float32, where a failure to is an error;
in bfloat16 a batch's products round differently, so a near tie between two tokens can go either way).

    .venv/bin/python benchmarks/harness_generate.py [--requests 8] [--batch-size 8] [--threads 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
import time

import torch
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model

import cometlm.evaluation.harness  # noqa: F401  (registers the backend)
from cometlm.files import write_json
from cometlm.tasks.corpora import corpus_tokens


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comet", default="smollm2-135m-passkey", help="CoMeT adapter (default: the shipped one)")
    parser.add_argument("--requests", type=int, default=8, help="generate_until requests (default 8)")
    parser.add_argument("--batch-size", type=int, default=8, help="the harness's batch_size to compare (default 8)")
    parser.add_argument("--min-tokens", type=int, default=300, help="shortest context (default 300)")
    parser.add_argument("--max-tokens", type=int, default=2000, help="longest context (default 2000)")
    parser.add_argument("--max-gen-toks", type=int, default=32, help="the requests' max_gen_toks (default 32)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "auto"),
                        help="the backbone's dtype (default float32, the harness's default)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.requests < 2 or args.batch_size < 2 or not 1 <= args.min_tokens <= args.max_tokens:
        parser.error("need --requests >= 2, --batch-size >= 2 and 1 <= --min-tokens <= --max-tokens")
    options = f"comet={args.comet},dtype={args.dtype}" + (f",threads={args.threads}" if args.threads else "")

    models = {size: get_model("cometlm").create_from_arg_string(options, {"device": "cpu", "batch_size": size})
              for size in (1, args.batch_size)}
    tokenizer = models[1].tokenizer
    ids = corpus_tokens("essays", tokenizer).tolist()
    lengths = torch.linspace(args.min_tokens, args.max_tokens, args.requests).round().long().tolist()
    starts = range(0, len(ids), len(ids) // args.requests)
    question = "\nQuestion: what is the main point of the text above?\nAnswer:"
    kwargs = {"until": ["\n"], "max_gen_toks": args.max_gen_toks, "do_sample": False}
    requests = [Instance("generate_until", {}, (tokenizer.decode(ids[s : s + n]) + question, kwargs), i)
                for i, (s, n) in enumerate(zip(starts, lengths))]
    models[1].generate_until(requests[:1], disable_tqdm=True)  # warm-up (and the packed weights, where chosen)
    seconds, texts = {}, {}
    for size, lm in models.items():
        start = time.perf_counter()
        texts[size] = lm.generate_until(requests, disable_tqdm=True)
        seconds[size] = time.perf_counter() - start
    same = sum(a == b for a, b in zip(texts[1], texts[args.batch_size]))
    ratio = seconds[1] / seconds[args.batch_size]
    print(f"{args.requests} generate_until requests of {args.min_tokens}-{args.max_tokens} tokens, max_gen_toks "
          f"{args.max_gen_toks}, {args.dtype}, {torch.get_num_threads()} threads: one at a time {seconds[1]:.1f} s, "
          f"batch_size {args.batch_size} {seconds[args.batch_size]:.1f} s ({ratio:.2f}x); the same text for {same} of "
          f"{args.requests} requests")
    for a, b in zip(texts[1], texts[args.batch_size]):
        if a != b:
            print(f"  one at a time {a!r}\n  batched       {b!r}")
    if args.out:
        write_json(args.out, {
            "command": " ".join(sys.argv), "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()} {platform.processor()} {torch.get_num_threads()} threads, torch "
                       f"{torch.__version__}",
            "comet": args.comet, "dtype": args.dtype, "lengths": lengths, "max_gen_toks": args.max_gen_toks,
            "seconds_one_at_a_time": seconds[1], f"seconds_batch_size_{args.batch_size}": seconds[args.batch_size],
            "speedup": ratio, "same_texts": same, "texts_one_at_a_time": texts[1],
            f"texts_batch_size_{args.batch_size}": texts[args.batch_size],
        })
    # float32 must give every request its text exactly; bfloat16 rounds a batch's products differently, so a near tie
    # between two tokens can go the other way
    return 0 if same == args.requests or args.dtype != "float32" else 1


if __name__ == "__main__":
    sys.exit(main())
