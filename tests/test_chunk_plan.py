"""Per-stream chunk plans (training augmentation) in forward."""

import pytest
import torch

from cometlm import CometConfig, CometForCausalLM
from conftest import random_ids, tiny_backbone, tiny_comet


@torch.no_grad()
def test_fixed_plan_is_the_default():
    comet = tiny_comet()
    ids = random_ids(2, 21)
    plan = torch.tensor([[8, 8, 5], [8, 8, 5]])
    torch.testing.assert_close(comet(ids, chunk_sizes=plan).logits, comet(ids).logits, atol=0, rtol=0)


@torch.no_grad()
def test_planned_chunks_without_memory_equal_the_backbone_on_each_chunk():
    backbone = tiny_backbone()
    comet = CometForCausalLM.from_backbone(backbone, CometConfig(chunk_size=8, global_slots=0, temp_stride=0))
    ids = random_ids(1, 17)
    sizes = [3, 8, 6]  # right-aligned: a short first chunk
    logits = comet(ids, chunk_sizes=torch.tensor([sizes])).logits
    start = 0
    for size in sizes:
        torch.testing.assert_close(logits[:, start : start + size], backbone(ids[:, start : start + size]).logits, atol=1e-5, rtol=0)
        start += size


def test_batch_of_different_plans_equals_one_by_one():
    comet = tiny_comet()
    ids = random_ids(2, 19)
    mask = torch.tensor([[1] * 19, [1] * 12 + [0] * 7])
    plan = torch.tensor([[5, 8, 6], [7, 5, 0]])
    batch = comet(ids, attention_mask=mask, chunk_sizes=plan, labels=ids, return_logits=True)
    total = 0.0
    for b, n in enumerate((19, 12)):
        alone = comet(ids[b : b + 1, :n], chunk_sizes=plan[b : b + 1, plan[b] > 0], labels=ids[b : b + 1, :n], return_logits=True)
        torch.testing.assert_close(batch.logits[b, :n], alone.logits[0], atol=1e-5, rtol=1e-5)
        total = total + alone.loss * (n - 1)
    torch.testing.assert_close(batch.loss, total / (18 + 11), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "plan, message",
    [
        ([[8, 8, 6]], "must sum to the input lengths"),
        ([[9, 8, 4]], "must lie in 0..chunk_size"),
        ([[8, 0, 8, 5]], "empty chunk before a non-empty one"),
        ([8, 8, 5], r"\(batch, chunks\) tensor"),
    ],
)
def test_bad_plans(plan, message):
    comet = tiny_comet()
    with pytest.raises(ValueError, match=message):
        comet(random_ids(1, 21), chunk_sizes=torch.tensor(plan))
