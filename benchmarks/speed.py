#!/usr/bin/env python
"""How near the hardware's limit CoMeT reads and answers: every number next to what a user would compare it with.

For each CoMeT configuration (the shipped adapter's, and the default one) and each dtype, in one run:

- reading: CoMeT's ``ingest`` tokens/s over ``--tokens`` of held-out Bible text, against the bare backbone run over
  independent chunks of the same size (no memory: the floor CoMeT can approach). The rows CoMeT adds to a closing
  chunk as queries (beacons, readouts, the sink) cost what text rows cost, so the fair target is the bare
  backbone's time scaled by (C + those rows) / C; the memory rows are only keys and values and should be nearly free.
  ``target ratio`` = CoMeT's time per text token / that target (1.0: as fast as the floor; the goal is <= 1.1).
- decoding: ms/token (p50, p99, mean) over ``--new-tokens`` greedy tokens, chunk roll-overs included, against the
  backbone's own cached decode (Hugging Face ``generate`` with a KV cache) from a prompt as long as CoMeT's largest
  chunk sequence, so both attend to about the same number of rows.
- full attention: the backbone over the whole ``--full-lengths`` prompt at once (tokens/s), what CoMeT replaces.
- the machine: a large matrix product's FLOP/s in each dtype (the matmul peak at this thread count), and the
  fraction of it each reading reaches, from a count of the linear layers' multiply-adds.

Reading and decoding run ``--rounds`` times, interleaved with the bare backbone's; reading reports each side's best
round, decoding the median of the runs' p99/p50, and every round is in the JSON. Everything runs in this process,
one measurement after another; run it on an otherwise quiet machine and say so.
The JSON result records the command, date, machine, thread count and load average.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import statistics
import sys
import time

CONFIGS = {
    "shipped": None,  # the shipped adapter's own configuration and weights
    "default": dict(chunk_size=1024, global_slots=64, temp_stride=8, temp_capacity=256),  # CometConfig's defaults
}


def matmul_peak(dtype, threads: int, size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a size x size matrix product in ``dtype`` (best of ``repeats``)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def linear_macs_per_row(model) -> int:
    """Multiply-adds of every decoder layer's linear layers for one row (attention products not counted)."""
    layer = model.backbone.layers[0]
    macs = sum(m.weight.numel() for m in layer.modules() if hasattr(m, "weight") and getattr(m, "weight", None) is not None
               and m.weight.dim() == 2)
    return macs * model.backbone.num_layers


def load(name: str, dtype: str):
    from cometlm.config import CometConfig
    from cometlm.loading import ModelOptions, load_model

    if CONFIGS[name] is None:
        return load_model(ModelOptions(adapter="smollm2-135m-passkey", dtype=dtype))
    return load_model(ModelOptions(config=CometConfig(**CONFIGS[name]), dtype=dtype))


def text_ids(model, n: int):
    import torch

    from cometlm.tasks.corpora import corpus_tokens

    return torch.as_tensor(corpus_tokens("bible", model.tokenizer, n))[None, :n]


def reading(model, ids, rounds: int) -> dict:
    """CoMeT's ingest and the bare backbone over the same chunks, ``rounds`` times each, interleaved (CoMeT, bare,
    CoMeT, ...) after a warm-up chunk, so that a slow stretch of the machine falls on both. Each side's time is its
    best round (the least disturbed one); every round's seconds are kept."""
    import torch

    c = model.comet_config.chunk_size
    comet_rounds, bare_rounds = [], []
    with torch.inference_mode():
        model.ingest(ids[:, :c])
        for _ in range(rounds):
            start = time.perf_counter()
            model.ingest(ids, progress=False)
            comet_rounds.append(time.perf_counter() - start)
            start = time.perf_counter()
            for a in range(0, ids.shape[1], c):
                model.backbone.hidden_states(ids[:, a : a + c])
            bare_rounds.append(time.perf_counter() - start)
    comet, bare = min(comet_rounds), min(bare_rounds)
    config = model.comet_config
    added = config.beacons_per_chunk + config.global_slots + int(config.attention_sink)  # query rows CoMeT adds
    n = ids.shape[1]
    scale = (c + added) / c
    return {"tokens": n, "rounds": rounds, "comet_s": comet, "comet_tokens_per_s": n / comet, "bare_s": bare,
            "bare_tokens_per_s": n / bare, "ratio_to_bare": bare / comet, "added_query_rows_per_chunk": added,
            "target_ratio": comet / (bare * scale), "comet_s_rounds": comet_rounds, "bare_s_rounds": bare_rounds,
            "target_ratio_rounds": [a / (b * scale) for a, b in zip(comet_rounds, bare_rounds)]}


def decoding(model, ids, new_tokens: int, runs: int) -> dict:
    """Per-token latency of CoMeT's generate (roll-overs included) and of the backbone's cached generate, ``runs``
    times each, interleaved. p99/p50 is a tail statistic (with 1,024 tokens, p99 is about the 10th slowest step), so
    every run's is kept and the summary is their median; the backbone's own p99/p50 is the machine's floor."""
    import torch

    def timed(generate):
        stamps = []

        def stop(sequences, scores):
            stamps.append(time.perf_counter())
            return False

        start = time.perf_counter()
        generate(stop)
        gaps = [b - a for a, b in zip([start, *stamps], stamps)][1:]  # the first gap includes reading the prompt
        ms = sorted(g * 1000 for g in gaps)
        return {"p50_ms": statistics.median(ms), "p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))],
                "mean_ms": statistics.mean(ms), "max_ms": ms[-1], "tokens": len(ms) + 1}

    from transformers import StoppingCriteria, StoppingCriteriaList

    class Stamp(StoppingCriteria):
        def __init__(self, stop):
            self.stop = stop

        def __call__(self, input_ids, scores, **kwargs):
            self.stop(input_ids, scores)
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    config = model.comet_config
    prompt = ids[:, : config.chunk_size + 7]
    rows = config.max_positions
    plain = ids[:, :rows]
    hf = model.backbone_model
    comet_runs, backbone_runs = [], []
    with torch.inference_mode():
        for _ in range(runs):
            comet_runs.append(timed(lambda stop: model.generate(prompt, max_new_tokens=new_tokens, eos_token_id=[],
                                                                stopping_criteria=stop)))
            backbone_runs.append(timed(lambda stop: hf.generate(
                plain, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                stopping_criteria=StoppingCriteriaList([Stamp(stop)]), pad_token_id=0)))
    tails = [run["p99_ms"] / run["p50_ms"] for run in comet_runs]
    floors = [run["p99_ms"] / run["p50_ms"] for run in backbone_runs]
    comet_p50 = statistics.median(run["p50_ms"] for run in comet_runs)
    backbone_p50 = statistics.median(run["p50_ms"] for run in backbone_runs)
    # The tail in milliseconds against the backbone's: a ratio to p50 looks worse the faster the median step is.
    comet_p99 = statistics.median(run["p99_ms"] for run in comet_runs)
    backbone_p99 = statistics.median(run["p99_ms"] for run in backbone_runs)
    comet_mean = statistics.median(run["mean_ms"] for run in comet_runs)
    backbone_mean = statistics.median(run["mean_ms"] for run in backbone_runs)
    return {"comet": comet_runs[tails.index(statistics.median_low(tails))], "comet_runs": comet_runs,
            "backbone_cached": backbone_runs[0], "backbone_runs": backbone_runs, "backbone_prompt_rows": rows,
            "p99_over_p50": statistics.median_low(tails), "p99_over_p50_runs": tails,
            "backbone_p99_over_p50": statistics.median_low(floors), "backbone_p99_over_p50_runs": floors,
            "p50_ratio_to_backbone": comet_p50 / backbone_p50, "p99_ratio_to_backbone": comet_p99 / backbone_p99,
            "mean_ratio_to_backbone": comet_mean / backbone_mean}


def full_attention(model, ids, lengths: list[int]) -> dict:
    import torch

    out = {}
    with torch.inference_mode():
        for n in lengths:
            start = time.perf_counter()
            model.backbone_model(ids[:, :n], use_cache=False, logits_to_keep=1)
            seconds = time.perf_counter() - start
            out[str(n)] = {"seconds": seconds, "tokens_per_s": n / seconds}
    return out


def new_record(threads: int) -> dict:
    """What every benchmark record starts with: the command, the date, the machine, the load average."""
    from cometlm.hardware import cpu_has_amx, cpu_model_name

    cpu = (cpu_model_name() or platform.processor()) + (" (AMX)" if cpu_has_amx() else "")
    return {"command": shlex.join([sys.executable, *sys.argv]),
            "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()} {cpu}, {os.cpu_count()} cores, {threads} threads",
            "load_average_at_start": os.getloadavg()}


def finish_record(record: dict, out: str | None) -> None:
    """Adds the load average at the end and writes the record as JSON to ``out`` (if given)."""
    record["load_average_at_end"] = os.getloadavg()
    if out:
        from cometlm.files import write_json

        write_json(out, record)
        print(f"results in {out}", file=sys.stderr)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--dtypes", nargs="+", choices=("float32", "bfloat16"), default=["float32", "bfloat16"])
    parser.add_argument("--tokens", type=int, default=8192, help="tokens read per measurement (default 8192)")
    parser.add_argument("--new-tokens", type=int, default=1024, help="tokens generated per decode (default 1024)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="readings and decodes of each configuration, interleaved with the bare backbone's (default 3)")
    parser.add_argument("--full-lengths", type=int, nargs="*", default=[8192, 32768],
                        help="prompt lengths of the full-attention forward (default 8192 32768; none to skip)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    from cometlm.files import output_file_problem

    if args.out and (problem := output_file_problem(args.out)):
        parser.error(f"--out: {problem}")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    import torch

    torch.set_num_threads(args.threads)
    record = {**new_record(args.threads), "matmul_peak_gflops": {}, "runs": []}
    for dtype in args.dtypes:
        peak = matmul_peak(getattr(torch, dtype), args.threads)
        record["matmul_peak_gflops"][dtype] = peak / 1e9
        print(f"matmul peak ({dtype}, {args.threads} threads): {peak / 1e9:.0f} GFLOP/s", flush=True)
        longest = max([args.tokens, *args.full_lengths])
        for name in args.configs:
            model = load(name, dtype)
            ids = text_ids(model, longest)
            read = reading(model, ids[:, : args.tokens], args.rounds)
            rows_per_token = (model.comet_config.chunk_size + read["added_query_rows_per_chunk"]) / model.comet_config.chunk_size
            achieved = 2 * linear_macs_per_row(model) * rows_per_token * read["comet_tokens_per_s"]
            read["fraction_of_matmul_peak"] = achieved / peak
            decode = decoding(model, ids, args.new_tokens, args.rounds)
            run = {"config": name, "comet_config": model.comet_config.to_dict(), "dtype": dtype, "reading": read,
                   "decoding": decode}
            if name == args.configs[0] and args.full_lengths:
                run["full_attention"] = full_attention(model, ids, args.full_lengths)
            record["runs"].append(run)
            rounds = ", ".join(f"{r:.2f}" for r in read["target_ratio_rounds"])
            tails = ", ".join(f"{r:.2f}" for r in decode["p99_over_p50_runs"])
            floors = ", ".join(f"{r:.2f}" for r in decode["backbone_p99_over_p50_runs"])
            print(f"[{name}, {dtype}] reading {read['comet_tokens_per_s']:.0f} tok/s vs bare chunks "
                  f"{read['bare_tokens_per_s']:.0f} (ratio {read['ratio_to_bare']:.2f}; target ratio "
                  f"{read['target_ratio']:.2f} from the best of {args.rounds} rounds, per round {rounds}; <= 1.1 is "
                  f"the goal); {read['fraction_of_matmul_peak']:.0%} of the matmul peak; decode p50 "
                  f"{decode['comet']['p50_ms']:.1f} ms, p99 {decode['comet']['p99_ms']:.1f} ms (p99/p50 "
                  f"{decode['p99_over_p50']:.2f}, median of runs {tails}; the backbone's own {floors}) vs the "
                  f"backbone's cached decode p50 {decode['backbone_cached']['p50_ms']:.1f} ms (medians over runs: "
                  f"p50 {decode['p50_ratio_to_backbone']:.2f}x, p99 {decode['p99_ratio_to_backbone']:.2f}x, mean "
                  f"{decode['mean_ratio_to_backbone']:.2f}x the backbone's)", flush=True)
            for n, full in run.get("full_attention", {}).items():
                print(f"[full attention, {dtype}] {n} tokens: {full['tokens_per_s']:.0f} tok/s "
                      f"(CoMeT reads {read['comet_tokens_per_s'] / full['tokens_per_s']:.2f}x as fast)", flush=True)
    finish_record(record, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
