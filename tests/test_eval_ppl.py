"""`cometlm eval ppl`: held-out documents, bucket arithmetic against a direct computation, resuming, comparing."""

import argparse
import json
import math

import pytest
import torch
import torch.nn.functional as F
from matplotlib.image import imread
from eval_helpers import read_jsonl, stable, tiny_text_model

import cometlm.evaluation.methods as methods
from cometlm.tasks.corpora import corpus_tokens
from cometlm.cli.eval import register
from cometlm.evaluation.ppl import DOCUMENTS_FILE, PLOT_FILE, SUMMARY_FILE, bucket_sums, evaluate_ppl
from cometlm.training.data import CorpusLMDataset

DOCS = dict(corpus="essays", length=150, documents=3, bucket=64, seed=2)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return tiny_text_model()


def run(model, tokenizer, out_dir, **options):
    return evaluate_ppl(model, tokenizer, out_dir, progress=False, **{**DOCS, **options})


def records(out_dir) -> list[dict]:
    return read_jsonl(out_dir / DOCUMENTS_FILE)


def test_bucket_sums_match_a_direct_count():
    losses = torch.rand(99, generator=torch.Generator().manual_seed(0))  # targets 1..99 of a 100-token document
    sums, counts = bucket_sums(losses, 32)
    assert counts == [31, 32, 32, 4]  # target i in bucket i // 32; token 0 is never a target
    for b in range(4):
        want = sum(float(losses[i - 1]) for i in range(1, 100) if i // 32 == b)
        assert math.isclose(sums[b], want, rel_tol=1e-6)
    assert bucket_sums(losses, 1000)[1] == [99]


@torch.inference_mode()
def test_held_out_documents_scored_and_bucketed_as_a_direct_computation(tmp_path, model, tokenizer):
    summary = run(model, tokenizer, tmp_path, method="full")
    data = CorpusLMDataset(tokenizer, "essays", 150, seed=2, size=3, split="heldout")
    ids = corpus_tokens("essays", tokenizer)
    assert data.span[0] == int(len(ids) * 0.95) and summary["config"]["heldout_tokens"] == list(data.span)
    sums, counts = [0.0] * 3, [0] * 3
    for i, record in enumerate(records(tmp_path)):
        begin, end = data.window(i)
        assert (record["document"], record["start"], record["end"]) == (i, begin, end) and begin >= data.span[0]
        doc = ids[begin:end][None]
        logits = model.backbone_model(doc).logits[0, :-1].float()  # the whole document at once
        direct = F.cross_entropy(logits, doc[0, 1:], reduction="none")
        for b in range(3):
            part = direct[max(0, 64 * b - 1) : 64 * (b + 1) - 1]  # targets 64b .. 64b+63 (target 0 does not exist)
            assert math.isclose(record["loss_sum"][b], float(part.sum()), rel_tol=1e-5)
            assert record["count"][b] == part.numel()
            sums[b] += float(part.sum())
            counts[b] += part.numel()
    assert [b["targets"] for b in summary["buckets"]] == counts == [63 * 3, 64 * 3, 22 * 3]
    assert [(b["start"], b["end"]) for b in summary["buckets"]] == [(0, 64), (64, 128), (128, 150)]
    for b, bucket in enumerate(summary["buckets"]):
        assert math.isclose(bucket["loss"], sums[b] / counts[b], rel_tol=1e-6)
        assert math.isclose(bucket["ppl"], math.exp(bucket["loss"]), rel_tol=1e-9)
    assert math.isclose(summary["mean_loss"], sum(sums) / sum(counts), rel_tol=1e-6) and summary["complete"]
    assert json.loads((tmp_path / SUMMARY_FILE).read_text())["mean_loss"] == summary["mean_loss"]
    assert imread(tmp_path / PLOT_FILE).shape[1] > 500


def test_an_interrupted_run_resumes_to_the_same_results(tmp_path, model, tokenizer, monkeypatch):
    full = run(model, tokenizer, tmp_path / "full")
    calls, token_losses = [], methods.Method.token_losses

    def stop_on_second(self, ids, progress=False):
        if len(calls) == 1:
            raise KeyboardInterrupt
        calls.append(len(ids))
        return token_losses(self, ids, progress)

    monkeypatch.setattr(methods.Method, "token_losses", stop_on_second)
    with pytest.raises(KeyboardInterrupt):
        run(model, tokenizer, tmp_path / "resumed")
    partial = json.loads((tmp_path / "resumed" / SUMMARY_FILE).read_text())
    assert partial["documents_done"] == 1 and not partial["complete"]
    calls.clear()
    monkeypatch.setattr(methods.Method, "token_losses", lambda self, ids, progress=False:
                        (calls.append(len(ids)), token_losses(self, ids, progress))[1])
    resumed = run(model, tokenizer, tmp_path / "resumed")
    assert calls == [150, 150]  # only the two missing documents
    assert stable(resumed) == stable(full)
    assert stable(records(tmp_path / "resumed")) == stable(records(tmp_path / "full"))
    with pytest.raises(ValueError, match="different run .*bucket: 64 there, 32 now"):
        run(model, tokenizer, tmp_path / "resumed", bucket=32)


def test_a_rerun_that_skips_every_document_keeps_the_recorded_peak_memory(tmp_path, model, tokenizer):
    run(model, tokenizer, tmp_path, documents=2)
    done = records(tmp_path)
    done[0]["peak_rss_mib"] = 10**7  # far above this process's peak: as if an earlier run had needed it
    (tmp_path / DOCUMENTS_FILE).write_text("".join(json.dumps(r) + "\n" for r in done))
    assert run(model, tokenizer, tmp_path, documents=2)["cost"]["peak_rss_mib"] == 10**7


@torch.inference_mode()
def test_methods_side_by_side_and_what_cannot_be_compared(tmp_path, model, tokenizer, capsys):
    run(model, tokenizer, tmp_path / "full", method="full", documents=1)
    run(model, tokenizer, tmp_path / "no-memory", method="no-memory", documents=1)
    other = run(model, tokenizer, tmp_path / "longer", method="full", documents=1, length=200)
    with pytest.raises(ValueError, match="cannot compare with .*longer: it scored other documents \\(length: 200 there, "
                                         "150 here\\)"):
        run(model, tokenizer, tmp_path / "sliding", method="sliding-window", window=40, documents=1,
            compare=[tmp_path / "longer"])
    assert other["config"]["length"] == 200 and not (tmp_path / "sliding").exists()
    with pytest.raises(ValueError, match=r"reading 1999 tokens \(a document of 2000, whose last token is only predicted\) "
                                         "exceeds the backbone's window of 1024"):
        run(model, tokenizer, tmp_path / "long", method="full", length=2000)

    parser = argparse.ArgumentParser(prog="cometlm")
    register(parser.add_subparsers(dest="command", required=True))
    argv = ["eval", "ppl", "--corpus", "essays", "--length", "150", "--documents", "1", "--bucket", "64", "--seed", "2",
            "--method", "sliding-window", "--window", "40", "--out", str(tmp_path / "sliding"), "--no-progress",
            "--compare", str(tmp_path / "full"), str(tmp_path / "no-memory" / SUMMARY_FILE)]
    saved = tmp_path / "tiny"
    tiny_text_model(tokenizer=tokenizer).save_pretrained(saved)
    args = parser.parse_args(argv + ["--comet", str(saved)])
    assert args.run(args) == 0
    table = capsys.readouterr().out.splitlines()
    assert "sliding-window (4 sink + 40 recent tokens + a 128-token block)" in table[1] and "no-memory (fixed layout)" in table[1]
    assert len(table) == 2 + 3 + 1  # title, header, three buckets, ppl
    result = json.loads((tmp_path / "sliding" / SUMMARY_FILE).read_text())
    assert result["method"] == "sliding-window" and result["config"]["reads"] == "4 sink + 40 recent tokens + a 128-token block"
