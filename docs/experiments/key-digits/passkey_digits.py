"""Does the memory carry a longer number? The passkey test with 5- and 7-digit keys, one adapter.

    python docs/experiments/key-digits/passkey_digits.py ADAPTER [LENGTH] [TRIALS]

Prompts from ``passkey_sample`` (the filler of the passkey the adapters were trained on), the key at 50% depth,
seeds 1000 + trial (never a training seed: the training data draws its own), read with ``generate`` (greedy, 12
new tokens). Prints per digit count the accuracy, the mean number of leading digits right, and each answer.
"""

import random
import sys

import torch

from cometlm import CometForCausalLM
from cometlm.tasks.retrieval import passkey_matches, passkey_sample

adapter = sys.argv[1]
length = int(sys.argv[2]) if len(sys.argv) > 2 else 2048
trials = int(sys.argv[3]) if len(sys.argv) > 3 else 10
torch.set_num_threads(1)
model = CometForCausalLM.from_pretrained(adapter).eval()
tok = model.tokenizer
for digits in (5, 7):
    right, prefix, answers = 0, 0, []
    for trial in range(trials):
        sample = passkey_sample(tok, length, 0.5, random.Random(1000 + trial), key_digits=digits)
        ids = torch.tensor([sample.context_ids + sample.question_ids])
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=12)
        text = tok.decode(out[0, ids.shape[1]:])
        ok = passkey_matches(text, sample.answer)
        got = "".join(ch for ch in text.strip().split(".")[0] if ch.isdigit())
        lead = next((i for i, (a, b) in enumerate(zip(got, sample.answer)) if a != b), min(len(got), digits))
        right, prefix = right + ok, prefix + lead
        answers.append(f"{sample.answer}->{text.strip()[:12]!r}")
    print(f"{adapter} {length} tokens, {digits}-digit keys: accuracy {right / trials:.2f}, "
          f"leading digits right {prefix / trials:.1f} of {digits}; {' '.join(answers)}")
