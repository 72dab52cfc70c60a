"""Diagnostic (session 5, 2026-11-29): log-probabilities of the right and two wrong answers on the one grid prompt
that phases g and h miss (4k tokens, depth 50%, trial 1, key 11024), read in the grid's primed layout.

    python docs/experiments/passkey_miss_margin.py runs/passkey-v2g/final runs/passkey-v2h/final
"""

import random
import sys

import torch

import cometlm.tasks.retrieval as tasks
from cometlm import CometForCausalLM
from cometlm.bundled import encode
from cometlm.evaluation.streaming import read_context, score_continuations

TAIL = 119  # the open chunk's prompt tokens in the grid's primed layout at this length
ANSWERS = (" 11024.", " 10224.", " 11204.")  # the truth, what g and h answer, another swap


def main(paths: list[str]) -> None:
    torch.set_num_threads(1)
    for path in paths:
        model = CometForCausalLM.from_pretrained(path).eval()
        tokenizer = model.tokenizer
        sample = tasks.passkey_sample(tokenizer, 4096, 0.5, random.Random("0/4096/50/1"))  # the grid's key schedule
        ids = sample.context_ids + sample.question_ids
        with torch.inference_mode():
            state = model.ingest(torch.tensor([ids[-TAIL:]]), read_context(model, ids, TAIL))
            answers = [encode(tokenizer, text) for text in ANSWERS]
            scores = score_continuations(model, state, answers)
        for text, (logprobs, greedy) in zip(ANSWERS, scores):
            per_token = [round(float(x), 2) for x in logprobs]
            print(f"{path}  {text!r}: per token {per_token}, total {float(logprobs.sum()):.2f}, greedy {greedy.tolist()}")


if __name__ == "__main__":
    main(sys.argv[1:])
