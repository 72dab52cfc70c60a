#!/usr/bin/env python
"""A quick passkey check of a trained CoMeT while training goes on: teacher-forced, no generation.

For each (length, depth), a few passkey prompts with their answers are scored in one forward pass, chunked
right-aligned (a short first chunk, so the question and answer share the last, full chunk, as in training and
in the primed evaluation layout). Prints whether every answer token is the argmax ("exact") and the answer
loss. Much cheaper than `cometlm eval passkey`; use that for reported numbers.

    .venv/bin/python benchmarks/passkey_teacher_forced.py --comet runs/passkey-v2a/final --lengths 512 1024
"""

from __future__ import annotations

import argparse
import random
import sys

import torch

from cometlm import CometForCausalLM
from cometlm.tasks.retrieval import passkey_sample


def right_aligned(n: int, c: int) -> list[int]:
    return ([n % c] if n % c else []) + [c] * (n // c)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comet", required=True, help="a trained CoMeT model or adapter folder")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024], help="prompt lengths in tokens")
    parser.add_argument("--depths", type=float, nargs="+", default=[0, 25, 50, 75, 100], help="key depths in percent")
    parser.add_argument("--n", type=int, default=3, help="prompts per (length, depth)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    model = CometForCausalLM.from_pretrained(args.comet).eval()
    c = model.comet_config.chunk_size
    print(f"{'length':>7} {'depth':>6} {'exact':>6} {'loss':>6}")
    for length in args.lengths:
        for depth in args.depths:
            exact, loss = 0, 0.0
            for t in range(args.n):
                sample = passkey_sample(model.tokenizer, length, depth / 100, random.Random(f"tf/{length}/{depth}/{t}"))
                ids = torch.tensor([sample.prompt_ids + sample.answer_ids])
                k = len(sample.answer_ids)
                labels = torch.full_like(ids, -100)
                labels[0, -k:] = ids[0, -k:]
                plan = torch.tensor([right_aligned(ids.shape[1], c)])
                with torch.inference_mode():
                    out = model(ids, labels=labels, chunk_sizes=plan, return_logits=True)
                exact += int(torch.equal(out.logits[0, -k - 1 : -1].argmax(-1), ids[0, -k:]))
                loss += out.loss.item()
            print(f"{length:>7} {depth:>5g}% {exact:>3}/{args.n} {loss / args.n:>6.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
