"""A batch of different lengths computes exactly what each input computes alone, its per-row losses included."""

import torch

from conftest import random_ids, tiny_comet


def padded(lengths, width, left=False):
    positions = torch.arange(width)[None]
    lengths = torch.tensor(lengths)[:, None]
    return (positions >= width - lengths if left else positions < lengths).long()


def test_ragged_batch_equals_one_by_one(family):
    comet = tiny_comet(family)
    lengths = [29, 13, 8, 17]
    ids = random_ids(4, 29)
    for left in (False, True):
        mask = padded(lengths, 29, left)
        with torch.no_grad():
            logits = comet(ids, attention_mask=mask).logits
        out = comet(ids, attention_mask=mask, labels=ids)
        with torch.no_grad():  # the same losses with the logits computed everywhere
            with_logits = comet(ids, attention_mask=mask, labels=ids, return_logits=True).row_losses
        total, count = 0.0, 0
        for b, n in enumerate(lengths):
            row = ids[b : b + 1][mask[b : b + 1].bool()][None]
            with torch.no_grad():
                alone = comet(row).logits
            torch.testing.assert_close(logits[b][mask[b].bool()], alone[0], atol=1e-5, rtol=1e-5)
            row_loss = comet(row, labels=row).loss * (n - 1)  # its summed loss over its n - 1 targets
            torch.testing.assert_close(out.row_losses[b], row_loss.detach(), atol=1e-4, rtol=1e-5)
            torch.testing.assert_close(with_logits[b], row_loss.detach(), atol=1e-4, rtol=1e-5)
            total += row_loss
            count += n - 1
        torch.testing.assert_close(out.loss, total / count, atol=1e-5, rtol=1e-5)
        assert not out.row_losses.requires_grad


def test_padding_positions_get_zero_logits_and_no_loss():
    comet = tiny_comet()
    ids = random_ids(2, 12)
    mask = padded([12, 5], 12)
    with torch.no_grad():
        logits = comet(ids, attention_mask=mask).logits
        assert torch.all(logits[1, 5:] == 0)
        other = ids.clone()
        other[1, 5:] = 7  # padding content must not matter
        torch.testing.assert_close(comet(other, attention_mask=mask, labels=other).loss, comet(ids, attention_mask=mask, labels=ids).loss)


@torch.no_grad()
def test_eager_attention_gets_the_same_masks_as_sdpa():
    ids = random_ids(2, 21)
    mask = padded([21, 9], 21, left=True)
    sdpa, eager = tiny_comet(attn="sdpa"), tiny_comet(attn="eager")
    torch.testing.assert_close(eager(ids, attention_mask=mask).logits, sdpa(ids, attention_mask=mask).logits, atol=1e-5, rtol=1e-5)
    prompt = ids[:1, :10]
    kwargs = dict(max_new_tokens=12, eos_token_id=[], return_dict_in_generate=True, output_logits=True)
    a, b = sdpa.generate(prompt, **kwargs), eager.generate(prompt, **kwargs)
    assert torch.equal(a.sequences, b.sequences)
    torch.testing.assert_close(torch.stack(b.logits), torch.stack(a.logits), atol=1e-5, rtol=1e-5)


def test_a_batch_padded_chunks_wider_than_every_row(family):
    """Padding that fills whole chunks before any memory exists (every row ends in the first chunk, e.g. padding to
    a fixed width): those chunks have no row at all to run, and each row still gets what it gets alone."""
    comet = tiny_comet(family)
    chunk = comet.comet_config.chunk_size
    lengths = [chunk - 3, chunk - 5, 1]
    ids = random_ids(3, 3 * chunk)
    for left in (False, True):
        mask = padded(lengths, 3 * chunk, left)
        with torch.no_grad():
            logits = comet(ids, attention_mask=mask).logits
            for b in range(len(lengths)):
                alone = comet(ids[b : b + 1][mask[b : b + 1].bool()][None]).logits
                torch.testing.assert_close(logits[b][mask[b].bool()], alone[0], atol=1e-5, rtol=1e-5)
