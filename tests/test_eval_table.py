"""`cometlm eval table`: one markdown row per method, with the numbers of the result files it was given."""

import argparse
from pathlib import Path

import pytest
import torch
from eval_helpers import tiny_text_model
from cometlm.cli.eval import register
from cometlm.evaluation.niah import evaluate_niah
from cometlm.evaluation.passkey import evaluate_passkey
from cometlm.evaluation.ppl import evaluate_ppl
from cometlm.evaluation.table import format_table, load_results


@pytest.fixture(scope="module")
def results(tmp_path_factory, tokenizer):
    """passkey + niah + ppl for comet, passkey + ppl for sliding-window, ppl for full: one folder per run."""
    model, root = tiny_text_model(), tmp_path_factory.mktemp("results")
    grid = dict(lengths=[150, 200], depths=[50], trials=1, seed=0, progress=False)
    docs = dict(corpus="essays", length=150, documents=1, bucket=64, progress=False)
    out = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.inference_mode():
        for method, window in (("comet", None), ("sliding-window", 64)):
            out[f"passkey-{method}"] = evaluate_passkey(model, tokenizer, out_dir=root / f"passkey-{method}",
                                                        method=method, window=window, **grid)
            out[f"ppl-{method}"] = evaluate_ppl(model, tokenizer, root / f"ppl-{method}", method=method,
                                                window=window, **docs)
        out["niah-comet"] = evaluate_niah(model, tokenizer, out_dir=root / "niah-comet", **{**grid, "lengths": [200]})
        out["ppl-full"] = evaluate_ppl(model, tokenizer, root / "ppl-full", method="full", **docs)
    torch.set_num_threads(threads)
    return root, out


def test_one_row_per_method_with_the_numbers_of_its_results(results):
    root, out = results
    text = format_table(load_results([root / name for name in sorted(out)]))
    lines = text.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["method", "model", "passkey acc. (150 / 200)", "passkey s/trial (longest)", "NIAH acc. (200)",
                      "NIAH s/trial (longest)", "ppl", "ppl tok/s", "peak RSS (MiB)"]
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:5])}
    assert set(rows) == {"comet", "sliding-window (4 sink + 64)", "full (1024)"}

    comet, sliding = rows["comet"], rows["sliding-window (4 sink + 64)"]
    by_length = [f"{row['accuracy']:.2f}" for row in out["passkey-comet"]["accuracy_by_length"]]
    assert comet[2] == " / ".join(by_length) and comet[4] == f"{out['niah-comet']['mean_accuracy']:.2f}"
    assert comet[6] == f"{out['ppl-comet']['ppl']:.3f}" and sliding[6] == f"{out['ppl-sliding-window']['ppl']:.3f}"
    longest = [c for c in out["passkey-sliding-window"]["cells"] if c["length"] == 200]
    assert sliding[3] == f"{longest[0]['seconds']:.1f}" and sliding[4] == "-"
    peak = max(out[k]["cost"]["peak_rss_mib"] for k in ("passkey-comet", "niah-comet", "ppl-comet"))
    assert comet[8] == f"{peak:,.0f}"
    assert rows["full (1024)"][2] == "-" and rows["full (1024)"][6] == f"{out['ppl-full']['ppl']:.3f}"
    notes = [line for line in lines if line.startswith("- ")]
    assert len(notes) == len(out) + 1 and all("command `" in n for n in notes[:-1])
    # the fixture ran with one thread: every record and summary says so, and the notes name it
    assert all(summary["cost"]["threads"] == {"1": 2 if name.startswith("passkey") else 1}
               for name, summary in out.items())
    assert all(n.endswith("torch threads 1 (2 trials)") or n.endswith("torch threads 1 (1 trial)")
               or n.endswith("torch threads 1 (1 document)") for n in notes[:-1])


def test_command_line_writes_the_table_and_refuses_what_it_cannot_tabulate(results, tmp_path, capsys):
    root, out = results
    parser = argparse.ArgumentParser(prog="cometlm")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["eval", "table", str(root / "passkey-comet"), str(root / "ppl-full" / "ppl.json"),
                              "--out", str(tmp_path / "table.md")])
    assert args.run(args) == 0
    printed = capsys.readouterr().out
    assert printed == (tmp_path / "table.md").read_text() and printed.count("\n| ") == 2  # two rows under the header
    with pytest.raises(FileNotFoundError, match="holds no result"):
        load_results([tmp_path])
    # an --out that cannot be written is found before the plot is drawn (it was written, then the table failed)
    (tmp_path / "a-folder").mkdir()
    args = parser.parse_args(["eval", "table", str(root / "passkey-comet"), "--plot", str(tmp_path / "t.png"),
                              "--out", str(tmp_path / "a-folder")])
    with pytest.raises(ValueError, match="--out: .* is a folder"):
        args.run(args)
    assert not (tmp_path / "t.png").exists()
    twice = load_results([root / "passkey-comet", root / "passkey-comet" / "passkey.json"])
    with pytest.raises(ValueError, match="two passkey results for one method and model"):
        format_table(twice)


def test_lengths_that_share_a_label_are_written_out(results):
    root, out = results
    summaries = load_results([root / "passkey-comet", root / "passkey-sliding-window"])
    for summary, length in zip(summaries, (8000, 8192)):  # both would be "8k"
        summary["config"]["lengths"] = [length]
        summary["accuracy_by_length"] = [{**summary["accuracy_by_length"][0], "length": length}]
        summary["cells"] = [{**summary["cells"][0], "length": length}]
    header = format_table(summaries).splitlines()[0]
    assert "passkey acc. (8000 / 8192)" in header


def test_a_shorter_grid_or_document_says_its_length(results, monkeypatch, tmp_path):
    root, out = results
    summaries = load_results([root / "passkey-comet", root / "ppl-comet", root / "ppl-full"])
    summaries[0]["config"]["lengths"] = [150]  # comet's grid now stops below the table's longest column...
    summaries[0]["accuracy_by_length"] = summaries[0]["accuracy_by_length"][:1]
    summaries[0]["cells"] = summaries[0]["cells"][:1]
    summaries[1]["config"]["length"] = 128  # ... and its documents are shorter than full's
    summaries[0]["model"]["name"] = summaries[1]["model"]["name"] = str(tmp_path / "adapters" / "mine")
    summaries.append(load_results([root / "passkey-sliding-window"])[0])
    monkeypatch.chdir(tmp_path)
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")]
                                          for line in format_table(summaries).splitlines()[2:5])}
    comet = rows["comet"]
    assert comet[1] == str(Path("adapters") / "mine")
    assert comet[3] == f"{summaries[0]['cells'][0]['seconds']:.1f} (150)"
    assert comet[4] == f"{out['ppl-comet']['ppl']:.3f} (128)"  # no NIAH columns: ppl is the fifth
    assert rows["full (1024)"][4] == f"{out['ppl-full']['ppl']:.3f} (150)"
    assert "(" not in rows["sliding-window (4 sink + 64)"][3]  # its grid reaches the longest column


def test_lengths_named_in_cells_are_exact_when_labels_would_collide(results):
    root, out = results
    summaries = load_results([root / "ppl-comet", root / "ppl-full"])
    summaries[0]["config"]["length"], summaries[1]["config"]["length"] = 8000, 8192  # both "8k"
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in format_table(summaries).splitlines()[2:4]]
    assert [row[2] for row in rows] == [f"{out['ppl-comet']['ppl']:.3f} (8000)", f"{out['ppl-full']['ppl']:.3f} (8192)"]


def test_perplexities_of_other_texts_say_which(results):
    """Two perplexities read on other documents (another corpus, count or seed) are not the same measurement: each
    cell names its text, as it names its length."""
    root, out = results
    summaries = load_results([root / "ppl-comet", root / "ppl-full"])
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in format_table(summaries).splitlines()[2:4]]
    assert rows[0][2] == f"{out['ppl-comet']['ppl']:.3f}"  # the same text: nothing to say
    summaries[1]["config"]["seed"] = summaries[0]["config"]["seed"] + 1
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in format_table(summaries).splitlines()[2:4]]
    for row, summary in zip(rows, summaries):
        config = summary["config"]
        assert f"{config['corpus']}, {config['documents']} document" in row[2] and f"seed {config['seed']}" in row[2]


def test_grids_with_other_numbers_of_trials_say_how_many(results):
    root, out = results
    summaries = load_results([root / "passkey-comet", root / "passkey-sliding-window", root / "niah-comet"])
    summaries[1]["config"]["trials"] = 10
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")]
                                          for line in format_table(summaries).splitlines()[2:4])}
    assert rows["comet"][2].endswith(" (1 trial)") and rows["sliding-window (4 sink + 64)"][2].endswith(" (10 trials)")
    assert "trials" not in rows["comet"][4]  # the NIAH column has one grid: nothing to tell apart


def test_peak_memory_is_the_largest_of_the_summary_and_its_cells(results):
    """An older summary kept only the last process's peak; a cell written by an earlier process can be higher."""
    root, out = results
    summaries = load_results([root / "passkey-comet"])
    summaries[0]["cells"][0]["peak_rss_mib"] = summaries[0]["cost"]["peak_rss_mib"] + 500.4
    row = [c.strip() for c in format_table(summaries).splitlines()[2].strip("|").split("|")]
    assert row[-1] == f"{summaries[0]['cost']['peak_rss_mib'] + 500.4:,.0f}"


def test_the_plot_draws_each_row_in_every_task_it_has_with_one_colour(results, tmp_path):
    from matplotlib.image import imread

    from cometlm.evaluation.table import comparison_figure

    root, out = results
    summaries = load_results([root / name for name in sorted(out)])
    axes = comparison_figure(summaries).get_axes()
    panels = {ax.get_title().split(":")[0]: {line.get_label(): line for line in ax.get_lines()} for ax in axes}
    assert [len(panels[t]) for t in ("passkey", "NIAH", "held-out perplexity")] == [2, 1, 3]
    comet = next(label for label in panels["passkey"] if label.startswith("comet"))
    accuracy = [r["accuracy"] for r in out["passkey-comet"]["accuracy_by_length"]]
    assert list(panels["passkey"][comet].get_ydata()) == accuracy
    assert list(panels["passkey"][comet].get_xdata()) == [150, 200]
    buckets = [b["loss"] for b in out["ppl-comet"]["buckets"]]
    assert list(panels["held-out perplexity"][comet].get_ydata()) == buckets
    assert len({panel[comet].get_color() for panel in panels.values()}) == 1  # the row's colour in every panel
    assert len({panel[comet].get_marker() for panel in panels.values()}) == 1  # and its marker
    assert len({line.get_marker() for line in panels["held-out perplexity"].values()}) == 3  # one per row

    parser = argparse.ArgumentParser(prog="cometlm")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["eval", "table", str(root / "passkey-comet"), str(root / "ppl-comet"),
                              "--plot", str(tmp_path / "table.png")])
    assert args.run(args) == 0
    assert imread(tmp_path / "table.png").shape[1] > 800  # two panels side by side


def test_a_result_made_by_several_commands_names_each_with_its_count(results):
    root, out = results
    (summary,) = load_results([root / "passkey-comet"])
    summary["environment"]["commands"] = {"cometlm eval passkey --threads 1": 1, "cometlm eval passkey --threads 2": 1}
    summary["cost"]["threads"] = {"1": 1, "2": 1}
    note = next(line for line in format_table([summary]).splitlines() if line.startswith("- comet"))
    assert note.endswith("; commands `cometlm eval passkey --threads 1` (1 trial), `cometlm eval passkey --threads 2` "
                         "(1 trial); torch threads 1 (1 trial), 2 (1 trial)")
    summary["environment"]["commands"] = {"unknown": 2}  # results from before each trial kept its command
    note = next(line for line in format_table([summary]).splitlines() if line.startswith("- comet"))
    assert f"; last command `{summary['environment']['command']}`;" in note


def test_a_baseline_read_with_an_adapters_lora_says_so(results):
    from cometlm.evaluation.table import comparison_figure

    root, out = results
    summaries = load_results([root / "ppl-full", root / "ppl-comet"])
    for summary in summaries:
        summary["model"]["lora_checksum"] = 1.5  # as recorded when the backbone carries a LoRA
    rows = [line.split("|")[1].strip() for line in format_table(summaries).splitlines()[2:4]]
    assert sorted(rows) == ["comet", "full (1024) + LoRA"]  # CoMeT's own LoRA is part of CoMeT
    labels = [line.get_label() for line in comparison_figure(summaries).get_axes()[0].get_lines()]
    assert sorted(label.split(",")[0] for label in labels) == ["comet", "full (1024) + LoRA"]


def test_the_plot_tells_apart_models_whose_folders_share_a_name(results):
    """Ablations trained with one recipe all end in passkey-v2g/final: their legend entries keep the whole path."""
    from cometlm.evaluation.table import comparison_figure

    root, out = results
    (first,) = load_results([root / "passkey-comet"])
    (second,) = load_results([root / "passkey-comet"])
    first["model"]["name"], second["model"]["name"] = "runs/abl-a/passkey-v2g/final", "runs/abl-b/passkey-v2g/final"
    labels = [line.get_label() for line in comparison_figure([first, second]).get_axes()[0].get_lines()]
    assert labels == ["comet, runs/abl-a/passkey-v2g/final", "comet, runs/abl-b/passkey-v2g/final"]
    (alone,) = load_results([root / "passkey-comet"])
    label = comparison_figure([alone]).get_axes()[0].get_lines()[0].get_label()
    assert label == f"comet, {Path(alone['model']['name']).name}"


def test_validation_results_are_a_row_of_their_own_and_say_so(results):
    """A task suite's validation-split result never shares a row with, or passes for, a test-split result."""
    import copy

    root, out = results
    test = load_results([root / "passkey-comet"])
    validation = copy.deepcopy(test)
    for summary in validation:
        summary["config"]["split"] = "validation"  # as a suite's `--split validation` records it
        summary["_file"] = "validation/" + str(summary["_file"])
    text = format_table(test + validation)
    rows = [line.split("|")[1].strip() for line in text.splitlines()[2:4]]
    assert sorted(rows) == ["comet", "comet [validation split]"]
    assert sum(", validation split" in line for line in text.splitlines() if line.startswith("- ")) == 1
