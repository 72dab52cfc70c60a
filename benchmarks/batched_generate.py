#!/usr/bin/env python
"""Batched generation against one prompt at a time: prompts of different lengths, the same greedy tokens.

Cuts `--batch` windows of different lengths (evenly spread from `--min-tokens` to `--max-tokens`) from the bundled
essays, then runs `generate` (reading the prompt, then `--new-tokens` greedy tokens, no early stop) on each prompt
alone and on the whole padded batch, with the shipped adapter (or `--comet DIR`). Prints wall seconds and new
tokens/s for both and their ratio, and checks that every stream's new tokens are the same both ways.

    .venv/bin/python benchmarks/batched_generate.py [--batch 8] [--new-tokens 64] [--threads 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
import time

import torch

from cometlm import CometForCausalLM
from cometlm.bundled import SHIPPED_ADAPTER
from cometlm.tasks.corpora import corpus_tokens
from cometlm.files import output_file_problem, write_json


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comet", default=str(SHIPPED_ADAPTER), help="CoMeT model or adapter folder (default: shipped)")
    parser.add_argument("--batch", type=int, default=8, help="prompts (default 8)")
    parser.add_argument("--min-tokens", type=int, default=300, help="shortest prompt (default 300)")
    parser.add_argument("--max-tokens", type=int, default=2000, help="longest prompt (default 2000)")
    parser.add_argument("--new-tokens", type=int, default=64, help="greedy tokens generated per prompt (default 64)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.out and (problem := output_file_problem(args.out)):
        parser.error(f"--out: {problem}")
    if args.batch < 2 or not 1 <= args.min_tokens <= args.max_tokens or args.new_tokens < 1:
        parser.error("need --batch >= 2, 1 <= --min-tokens <= --max-tokens and --new-tokens >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)

    model = CometForCausalLM.from_pretrained(args.comet).eval()
    ids = corpus_tokens("essays", model.tokenizer).tolist()
    lengths = torch.linspace(args.min_tokens, args.max_tokens, args.batch).round().long().tolist()
    starts = range(0, len(ids), len(ids) // args.batch)
    prompts = [ids[s : s + n] for s, n in zip(starts, lengths)]
    width = max(lengths)
    batch = torch.zeros(args.batch, width, dtype=torch.long)
    mask = torch.zeros(args.batch, width, dtype=torch.long)
    for b, p in enumerate(prompts):  # left padding, as for transformers' decoder-only generation
        batch[b, width - len(p) :] = torch.tensor(p)
        mask[b, width - len(p) :] = 1
    options = dict(max_new_tokens=args.new_tokens, do_sample=False, eos_token_id=[])

    with torch.inference_mode():
        model.generate(torch.tensor([prompts[0][:64]]), max_new_tokens=4, eos_token_id=[])  # warm-up
        start = time.perf_counter()
        alone = [model.generate(torch.tensor([p]), **options)[0, len(p) :] for p in prompts]
        alone_s = time.perf_counter() - start
        start = time.perf_counter()
        together = model.generate(batch, attention_mask=mask, **options)[:, width:]
        together_s = time.perf_counter() - start
    same = all(torch.equal(together[b], alone[b]) for b in range(args.batch))
    new = args.batch * args.new_tokens
    config = model.comet_config
    print(f"{args.batch} prompts of {lengths[0]}-{lengths[-1]} tokens (C={config.chunk_size}), {args.new_tokens} new "
          f"tokens each, {torch.get_num_threads()} threads")
    print(f"one at a time  {alone_s:8.1f} s  {new / alone_s:7.1f} new tokens/s")
    print(f"batched        {together_s:8.1f} s  {new / together_s:7.1f} new tokens/s  ({alone_s / together_s:.2f}x)")
    print(f"same new tokens for every prompt: {same}")
    record = {
        "command": " ".join(sys.argv), "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}",
        "comet": args.comet, "prompt_tokens": lengths, "new_tokens": args.new_tokens,
        "one_at_a_time_s": alone_s, "batched_s": together_s, "speedup": alone_s / together_s, "same_tokens": same,
    }
    if args.out:
        write_json(args.out, record)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
