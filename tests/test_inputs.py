"""Bad input gives a clear error before anything runs."""

import pytest
import torch

from conftest import random_ids, tiny_comet


@pytest.fixture(scope="module")
def comet():
    return tiny_comet()


@pytest.mark.parametrize(
    "ids, error, message",
    [
        (torch.zeros(1, 0, dtype=torch.long), ValueError, "input_ids is empty"),
        (torch.zeros(0, 5, dtype=torch.long), ValueError, "input_ids is empty"),
        (torch.zeros(1, 5), ValueError, "integer token ids"),
        (torch.zeros(5, dtype=torch.long), ValueError, r"shape \(batch, length\)"),
        (torch.zeros(1, 2, 5, dtype=torch.long), ValueError, r"shape \(batch, length\)"),
        (torch.full((1, 5), 10_000), ValueError, "outside the vocabulary"),
        ([[1, 2, 3]], TypeError, "torch.Tensor"),
    ],
)
def test_bad_input_ids(comet, ids, error, message):
    for call in (lambda: comet(ids), lambda: comet.ingest(ids), lambda: comet.generate(ids, max_new_tokens=1)):
        with pytest.raises(error, match=message):
            call()


def test_bad_masks_and_labels(comet):
    ids = random_ids(2, 6)
    with pytest.raises(ValueError, match="attention_mask must have the shape"):
        comet(ids, attention_mask=torch.ones(2, 5))
    with pytest.raises(ValueError, match="only 0"):
        comet(ids, attention_mask=torch.full((2, 6), 2))
    with pytest.raises(ValueError, match="all-zero row"):
        comet(ids, attention_mask=torch.tensor([[1] * 6, [0] * 6]))
    with pytest.raises(ValueError, match="labels must have the shape"):
        comet(ids, labels=ids[:, :3])


def test_bad_memory_argument(comet):
    with pytest.raises(TypeError, match="MemoryState"):
        comet.ingest(random_ids(1, 4), state={"not": "a state"})
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        comet.init_memory(0)
