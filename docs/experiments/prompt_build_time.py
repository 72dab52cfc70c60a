"""Seconds and peak resident memory to build one long prompt of each named task (test split, depth 0.5).

    .venv/bin/python docs/experiments/prompt_build_time.py --tokens 1000000 babilong-qa1 ruler-fwe
"""

import argparse
import random
import resource
import time

from transformers import AutoTokenizer

from cometlm import bundled
from cometlm.tasks import suite


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tasks", nargs="+", choices=sorted(suite.SPECS))
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--depth", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(bundled.bundled_model_dir())
    for name in args.tasks:
        start = time.perf_counter()
        sample = suite.SPECS[name].build(tokenizer, args.tokens, args.depth, random.Random(args.seed), split="test")
        seconds = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        print(f"{name}: {len(sample.prompt_ids):,} tokens in {seconds:.1f} s, peak resident {peak} MiB", flush=True)


if __name__ == "__main__":
    main()
