#!/usr/bin/env python
"""Streaming prefill throughput, peak memory and decode latency: CoMeT vs plain full attention.

Every (method, length) runs in its own child process (this script again, with a hidden ``--worker`` flag),
because the peak resident set size (``ru_maxrss``) only ever grows within a process. Each worker loads the
model itself, reads the first N tokens of the KJV Bible, measures, and prints one JSON line; the parent prints
each result as soon as it arrives, then one table, the ratios, and a JSON file with everything.

What is timed (model loading excluded, after a short warm-up):
- CoMeT prefill: ``ingest`` of the N tokens (fed in slices, which gives the same state as one call) plus
  ``open_chunk``, which runs the last, still open chunk and yields the next-token logits. Full attention's
  prefill also ends with those logits, so both columns measure "N tokens in, next-token logits out".
- Full-attention prefill: one ``backbone_model(ids, use_cache=False, logits_to_keep=1)`` forward.
- CoMeT decode: greedy steps from the state, exactly as ``generate`` runs them. The context lengths are
  multiples of ``chunk_size``, so the open chunk is full after prefill and the first step closes it (one
  chunk forward plus a fresh open chunk); every later step is one ``extend`` of the open chunk.
- Full-attention decode (optional): greedy steps with the Hugging Face KV cache after a cached prefill.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

RESULT_MARK = "@@PREFILL_DECODE_RESULT@@ "
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "prefill_decode.json"
CORPUS = "bible"


# ----------------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Measure, in one run on real text (KJV Bible), CoMeT's streaming prefill throughput and peak RSS "
            "at several lengths, plain full attention on the same backbone at the lengths it can handle, and "
            "per-token decode latency after short and long contexts. Each configuration runs in a separate "
            "child process so that its peak RSS is its own."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", default="smollm2-135m-instruct",
                        help="backbone: the bundled model's name or a local Hugging Face model directory")
    parser.add_argument("--comet-lengths", type=int, nargs="+", default=[8192, 32768, 131072], metavar="N",
                        help="context lengths (tokens) at which CoMeT's streaming prefill is measured")
    parser.add_argument("--full-lengths", type=int, nargs="*", default=[8192, 32768], metavar="N",
                        help="context lengths for plain full attention (one forward over the whole input). "
                             "SmolLM2 was trained with an 8192-token window: beyond it only the cost is "
                             "meaningful, not the output")
    parser.add_argument("--decode-after", type=int, nargs="*", default=[8192, 131072], metavar="N",
                        help="CoMeT context lengths after which decode latency is measured (in the same worker "
                             "that streamed N tokens); each must be a multiple of --chunk-size so that the "
                             "open chunk is in the same situation at every length")
    parser.add_argument("--full-decode-after", type=int, nargs="*", default=[8192], metavar="N",
                        help="full-attention context lengths after which decode latency with the HF KV cache "
                             "is measured, for comparison (needs a second, cached prefill forward)")
    parser.add_argument("--decode-tokens", type=int, default=64,
                        help="greedy decode steps timed per decode measurement")
    parser.add_argument("--chunk-size", type=int, default=1024, help="CoMeT chunk size C (text tokens per chunk)")
    parser.add_argument("--global-slots", type=int, default=64, help="CoMeT global memory slots M")
    parser.add_argument("--temp-stride", type=int, default=8, help="CoMeT beacon stride s (one beacon per s tokens)")
    parser.add_argument("--temp-capacity", type=int, default=256, help="CoMeT temporary queue capacity K (rows)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads in each worker (0: torch's default)")
    parser.add_argument("--omp-wait-policy", choices=["passive", "active", "inherit"], default="passive",
                        help="OMP_WAIT_POLICY for the workers. 'passive' makes idle OpenMP threads sleep instead of "
                             "spinning: on a machine where other processes also use the cores, spinning barriers "
                             "wait for descheduled threads at every op (measured on a busy 2-core box: 2.3 s vs "
                             "65 ms per decode token). 'inherit' leaves the environment as it is")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="dtype the backbone and the CoMeT modules are loaded in")
    parser.add_argument("--slice-chunks", type=int, default=8,
                        help="CoMeT reads the input in ingest calls of this many chunks, printing a progress "
                             "line (tokens/s, current RSS) after each; the final state is the same as one call")
    parser.add_argument("--no-warmup", action="store_true",
                        help="skip the short untimed warm-up run (one chunk / 512 tokens) before timing")
    parser.add_argument("--heartbeat", type=float, default=30.0,
                        help="seconds between 'still running' lines from a worker (0: none)")
    parser.add_argument("--worker-timeout", type=float, default=0.0,
                        help="kill a worker after this many seconds and report it as failed (0: no limit)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the results as JSON")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is None:
        check_args(parser, args)
    return args


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name in ("comet_lengths", "full_lengths", "decode_after", "full_decode_after"):
        bad = [n for n in getattr(args, name) if n < 1]
        if bad:
            parser.error(f"--{name.replace('_', '-')} takes positive token counts (got {bad})")
    bad = [n for n in args.decode_after if n % args.chunk_size]
    if bad:
        parser.error(
            f"--decode-after lengths must be multiples of --chunk-size {args.chunk_size} so that the open chunk is "
            f"equally full at every length (got {bad})"
        )
    missing = sorted(set(args.full_decode_after) - set(args.full_lengths))
    if missing:
        parser.error(f"--full-decode-after lengths must also be in --full-lengths (missing {missing})")
    if args.decode_tokens < 1:
        parser.error(f"--decode-tokens must be >= 1 (got {args.decode_tokens})")
    if args.slice_chunks < 1:
        parser.error(f"--slice-chunks must be >= 1 (got {args.slice_chunks})")
    try:
        from cometlm import CometConfig

        comet_config(args, CometConfig)
    except ValueError as err:
        parser.error(str(err))


def comet_config(args, CometConfig):
    return CometConfig(
        chunk_size=args.chunk_size, global_slots=args.global_slots, temp_stride=args.temp_stride,
        temp_capacity=args.temp_capacity,
    )


def worker_argv(args: argparse.Namespace, spec: dict) -> list[str]:
    """This script's command line for one worker: the shared options plus the job."""
    return [
        sys.executable, str(Path(__file__).resolve()),
        "--model", args.model,
        "--chunk-size", str(args.chunk_size), "--global-slots", str(args.global_slots),
        "--temp-stride", str(args.temp_stride), "--temp-capacity", str(args.temp_capacity),
        "--threads", str(args.threads), "--dtype", args.dtype, "--decode-tokens", str(args.decode_tokens),
        "--slice-chunks", str(args.slice_chunks), "--heartbeat", str(args.heartbeat),
        *(["--no-warmup"] if args.no_warmup else []),
        "--worker", json.dumps(spec),
    ]


# ----------------------------------------------------------------------------------------------------------
# Memory probes (Linux)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def rss_split_mib() -> dict:
    """Anonymous vs file-backed resident memory (the safetensors weights are memory-mapped, so file-backed)."""
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f if line.startswith(("RssAnon", "RssFile")))
    return {k: int(v.split()[0]) / 1024 for k, v in fields.items()}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def label(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


# ----------------------------------------------------------------------------------------------------------
# Worker: one configuration in its own process


class Heartbeat:
    """Prints a 'still running' line every few seconds, so that a long single forward is never silent."""

    def __init__(self, name: str, every: float):
        self.name, self.every, self.phase = name, every, "starting"
        self.start = time.perf_counter()
        self._stop = threading.Event()
        if every > 0:
            threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while not self._stop.wait(self.every):
            log(f"[{self.name}] still running: {self.phase}, {time.perf_counter() - self.start:.0f} s in worker, "
                f"RSS {current_rss_mib():.0f} MiB (peak {peak_rss_mib():.0f})")

    def stop(self):
        self._stop.set()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_worker(args: argparse.Namespace) -> int:
    spec = json.loads(args.worker)
    name = spec["method"] if spec["method"] == "prepare" else f"{spec['method']} {label(spec['tokens'])}"
    beat = Heartbeat(name, args.heartbeat)
    result = {"method": spec["method"], "tokens": spec.get("tokens"), "loadavg_start": os.getloadavg()}
    worker_start = time.perf_counter()
    try:
        result.update(measure(args, spec, beat))
        status = 0
    except BaseException as err:  # an out-of-memory error must become a table row, not a lost run
        result["error"] = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300] if str(err).strip() else ''}"
        result["peak_rss_mib_at_failure"] = peak_rss_mib()
        status = 1
    beat.stop()
    result["loadavg_end"] = os.getloadavg()
    result["worker_wall_s"] = time.perf_counter() - worker_start
    print(RESULT_MARK + json.dumps(result), flush=True)
    return status


def measure(args: argparse.Namespace, spec: dict, beat: Heartbeat) -> dict:
    import torch
    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)
    from cometlm import CometConfig, CometForCausalLM
    from cometlm.tasks.corpora import corpus_tokens

    config = comet_config(args, CometConfig)
    dtype = getattr(torch, args.dtype)
    beat.phase = "loading the model"
    load_start = time.perf_counter()
    model = CometForCausalLM.from_backbone(args.model, config, dtype=dtype).eval()
    n = spec.get("tokens") or max(spec.get("max_tokens", 0), 1)
    ids = corpus_tokens(CORPUS, model.tokenizer, n)[None]  # (1, N)
    load_s = time.perf_counter() - load_start
    rss_mapped = current_rss_mib()
    # The weights are memory-mapped and only become resident when first read; without this the first forward
    # would add ~400 MiB of weight pages to every configuration's "increase over load".
    with torch.inference_mode():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.sum()
    info = {
        "load_s": load_s,
        "rss_after_load_unfaulted_mib": rss_mapped,
        "rss_after_load_mib": current_rss_mib(),
        "rss_after_load_split_mib": rss_split_mib(),
        "peak_rss_after_load_mib": peak_rss_mib(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "attn_implementation": model.backbone_model.config._attn_implementation,
    }
    if spec["method"] == "prepare":  # converts the bundled model and tokenizes the corpus once, untimed
        info["corpus_tokens_available"] = int(corpus_tokens(CORPUS, model.tokenizer).numel())
        return info
    if ids.shape[1] != n:
        raise RuntimeError(f"asked for {n} tokens of {CORPUS}, got {ids.shape[1]}")
    with torch.inference_mode():
        if spec["method"] == "comet":
            info.update(comet_run(model, ids, args, spec, beat))
        else:
            info.update(full_run(model, ids, args, spec, beat))
    return info


def comet_run(model, ids, args, spec, beat) -> dict:
    from cometlm.generation import open_chunk

    c = model.comet_config.chunk_size
    n = ids.shape[1]
    name = f"comet {label(n)}"
    if not args.no_warmup:
        beat.phase = "warm-up"
        warm = model.ingest(ids[:, : min(n, c + 1)])
        open_chunk(model, warm)
        del warm
    rss_before = current_rss_mib()
    beat.phase = "streaming prefill"
    step = c * args.slice_chunks
    trajectory, state = [], None
    cpu_start = cpu_last = cpu_seconds()
    start = last = time.perf_counter()
    for begin in range(0, n, step):
        end = min(begin + step, n)
        state = model.ingest(ids[:, begin:end], state)
        now, cpu_now = time.perf_counter(), cpu_seconds()
        trajectory.append({"tokens": end, "elapsed_s": now - start, "slice_tok_s": (end - begin) / (now - last),
                           "slice_cpu_s": cpu_now - cpu_last, "rss_mib": current_rss_mib(),
                           "peak_rss_mib": peak_rss_mib(), "loadavg1": os.getloadavg()[0]})
        cpu_last = cpu_now
        log(f"[{name}] {end}/{n} tokens ({100 * end / n:.0f}%, {int(state.chunks_closed[0])} chunks closed), {now - start:.1f} s, "
            f"{end / (now - start):.0f} tok/s (this slice {(end - begin) / (now - last):.0f}), "
            f"RSS {current_rss_mib():.0f} MiB (peak {peak_rss_mib():.0f})")
        last = now
    ingest_s = time.perf_counter() - start
    t = time.perf_counter()
    chunk = open_chunk(model, state)
    open_s = time.perf_counter() - t
    prefill_s = ingest_s + open_s
    out = {
        "prefill_s": prefill_s, "prefill_cpu_s": cpu_seconds() - cpu_start, "rss_after_prefill_split_mib": rss_split_mib(), "ingest_s": ingest_s, "open_chunk_s": open_s, "tokens_per_s": n / prefill_s,
        "peak_rss_mib": peak_rss_mib(), "rss_after_prefill_mib": current_rss_mib(), "rss_before_prefill_mib": rss_before,
        "state_bytes": state.nbytes(), "chunks_closed": int(state.chunks_closed[0]),
        "open_chunk_tokens": int(state.pending_len[0]), "trajectory": trajectory,
    }
    log(f"[{name}] prefill done: {n / prefill_s:.0f} tok/s, {prefill_s:.1f} s, peak RSS {out['peak_rss_mib']:.0f} MiB")
    if spec.get("measure_decode"):
        beat.phase = "decoding"
        out["decode"] = comet_decode(model, state, chunk, args.decode_tokens)
        out["peak_rss_with_decode_mib"] = peak_rss_mib()
        log(f"[{name}] decode: median {out['decode']['median_ms']:.1f} ms/token")
    return out


def comet_decode(model, state, chunk, steps: int) -> dict:
    """Greedy decoding as ``generate`` runs it, one timed step per new token.

    A step feeds the previous token and yields the logits of the next: ``extend`` while the open chunk has
    room, otherwise (the open chunk holds C tokens) ``ingest`` closes it and ``open_chunk`` starts a new one.
    """
    import torch
    from cometlm.generation import extend, open_chunk

    c = model.comet_config.chunk_size
    token = chunk.logits.argmax(dim=-1)  # (B,): the first new token comes with the prefill
    generated, since_open, times, kinds = [token], [], [], []
    for _ in range(steps):
        t = time.perf_counter()
        if bool((chunk.n_text == c).all()):  # one stream (B = 1) here
            state = model.ingest(torch.stack(since_open + [token], dim=1), state)
            chunk, since_open, kind = open_chunk(model, state), [], "close"
        else:
            chunk = extend(model, chunk, token)
            since_open.append(token)
            kind = "extend"
        token = chunk.logits.argmax(dim=-1)
        times.append(1000 * (time.perf_counter() - t))
        kinds.append(kind)
        generated.append(token)
    return decode_summary(times, kinds, [int(x) for x in torch.cat(generated)], model.tokenizer)


def full_run(model, ids, args, spec, beat) -> dict:
    import torch

    bm = model.backbone_model
    n = ids.shape[1]
    name = f"full {label(n)}"
    if not args.no_warmup:
        beat.phase = "warm-up"
        bm(ids[:, : min(n, 512)], use_cache=False, logits_to_keep=1)
    rss_before = current_rss_mib()
    beat.phase = f"one full-attention forward over {n} tokens"
    log(f"[{name}] {beat.phase} (no progress inside a single forward; heartbeat lines follow)")
    t, cpu_start = time.perf_counter(), cpu_seconds()
    bm(ids, use_cache=False, logits_to_keep=1)
    prefill_s = time.perf_counter() - t
    out = {"prefill_s": prefill_s, "prefill_cpu_s": cpu_seconds() - cpu_start, "tokens_per_s": n / prefill_s, "peak_rss_mib": peak_rss_mib(),
           "rss_after_prefill_mib": current_rss_mib(), "rss_before_prefill_mib": rss_before}
    log(f"[{name}] prefill done: {n / prefill_s:.0f} tok/s, {prefill_s:.1f} s, peak RSS {out['peak_rss_mib']:.0f} MiB")
    if spec.get("measure_decode"):
        beat.phase = "cached prefill for decoding"
        t = time.perf_counter()
        result = bm(ids, use_cache=True, logits_to_keep=1)
        out["cached_prefill_s"] = time.perf_counter() - t
        cache, token = result.cache, result.logits[:, -1].argmax(dim=-1)
        del result
        beat.phase = "decoding"
        generated, times = [token], []
        for _ in range(args.decode_tokens):
            t = time.perf_counter()
            result = bm(token[:, None], cache=cache, use_cache=True)
            token = result.logits[:, -1].argmax(dim=-1)
            times.append(1000 * (time.perf_counter() - t))
            generated.append(token)
        out["decode"] = decode_summary(times, ["kv-cache"] * len(times), [int(x) for x in torch.cat(generated)],
                                       model.tokenizer)
        out["kv_cache_mib"] = sum(
            t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values)
        ) / 2**20 if hasattr(cache, "layers") else None
        out["peak_rss_with_decode_mib"] = peak_rss_mib()
        log(f"[{name}] decode: median {out['decode']['median_ms']:.1f} ms/token")
    return out


def decode_summary(times: list[float], kinds: list[str], token_ids: list[int], tokenizer) -> dict:
    steady = [t for t, k in zip(times, kinds) if k != "close"] or times
    return {
        "steps": len(times), "median_ms": statistics.median(times), "mean_ms": statistics.fmean(times),
        "steady_mean_ms": statistics.fmean(steady), "min_ms": min(times), "max_ms": max(times),
        "first_step_ms": times[0], "step_kinds": kinds, "step_ms": times, "token_ids": token_ids,
        "text": tokenizer.decode(token_ids) if tokenizer is not None else None,
    }


# ----------------------------------------------------------------------------------------------------------
# Parent: schedule workers, print results as they come, then the table and ratios


def jobs(args) -> list[dict]:
    comet = sorted(set(args.comet_lengths) | set(args.decode_after))
    out = [{"method": "comet", "tokens": n, "measure_decode": n in args.decode_after} for n in comet]
    out += [{"method": "full", "tokens": n, "measure_decode": n in args.full_decode_after} for n in sorted(set(args.full_lengths))]
    return out


def run_job(args, spec: dict) -> dict:
    """Runs one worker; its stderr (progress) passes straight through, its stdout carries the result line."""
    start = time.perf_counter()
    env = dict(os.environ)
    if args.omp_wait_policy != "inherit":
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()
    proc = subprocess.Popen(worker_argv(args, spec), stdout=subprocess.PIPE, text=True, env=env)
    try:
        stdout, _ = proc.communicate(timeout=args.worker_timeout or None)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {**spec, "error": f"timed out after {args.worker_timeout:.0f} s", "worker_wall_s": time.perf_counter() - start}
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    lines = [line[len(RESULT_MARK):] for line in stdout.splitlines() if line.startswith(RESULT_MARK)]
    if lines:
        result = {**spec, **json.loads(lines[-1])}
    elif proc.returncode < 0:
        sig = signal.Signals(-proc.returncode).name
        why = " (probably the kernel's out-of-memory killer)" if sig == "SIGKILL" else ""
        result = {**spec, "error": f"killed by {sig}{why}"}
    else:
        result = {**spec, "error": f"exited with status {proc.returncode} and no result (see the log above)"}
    result["returncode"] = proc.returncode
    result["worker_wall_s"] = result.get("worker_wall_s", time.perf_counter() - start)
    return result


def fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def one_line(r: dict) -> str:
    head = f"{r['method']:>5} {label(r['tokens']):>5}"
    if "error" in r:
        return f"{head}: failed: {r['error']}"
    line = (f"{head}: {r['tokens_per_s']:.0f} tok/s, prefill {r['prefill_s']:.1f} s ({r['prefill_cpu_s']:.0f} CPU-s), peak RSS {r['peak_rss_mib']:.0f} MiB "
            f"(+{r['peak_rss_mib'] - r['rss_after_load_mib']:.0f} over load)")
    if "decode" in r:
        d = r["decode"]
        line += f", decode {d['median_ms']:.1f} ms/token median ({d['mean_ms']:.1f} mean, first step {d['first_step_ms']:.0f} ms)"
    return line


TABLE_COLUMNS = [
    ("method", 6), ("tokens", 7), ("prefill tok/s", 13), ("wall s", 8), ("peak RSS MiB", 12),
    ("RSS +load MiB", 13), ("decode ms/tok med", 17), ("mean", 7), ("1st step ms", 11), ("load1", 5),
]


def table(results: list[dict]) -> str:
    header = " | ".join(f"{name:>{width}}" for name, width in TABLE_COLUMNS)
    rows = [header, "-+-".join("-" * width for _, width in TABLE_COLUMNS)]
    for r in results:
        cells = [r["method"], str(r["tokens"])]
        if "error" in r:
            rows.append(" | ".join(f"{c:>{w}}" for c, (_, w) in zip(cells, TABLE_COLUMNS)) + f" | failed: {r['error']}")
            continue
        d = r.get("decode", {})
        cells += [
            fmt(r["tokens_per_s"], ".0f"), fmt(r["prefill_s"], ".1f"), fmt(r["peak_rss_mib"], ".0f"),
            fmt(r["peak_rss_mib"] - r["rss_after_load_mib"], ".0f"), fmt(d.get("median_ms"), ".1f"),
            fmt(d.get("mean_ms"), ".1f"), fmt(d.get("first_step_ms"), ".0f"),
            fmt(max(r["loadavg_start"][0], r["loadavg_end"][0]), ".1f"),
        ]
        rows.append(" | ".join(f"{c:>{w}}" for c, (_, w) in zip(cells, TABLE_COLUMNS)))
    return "\n".join(rows)


def ratios(results: list[dict]) -> list[str]:
    ok = [r for r in results if "error" not in r]
    comet = {r["tokens"]: r for r in ok if r["method"] == "comet"}
    full = {r["tokens"]: r for r in ok if r["method"] == "full"}
    lines = []
    if len(comet) >= 2:
        lo, hi = comet[min(comet)], comet[max(comet)]
        a, b = label(hi["tokens"]), label(lo["tokens"])
        inc_hi = hi["peak_rss_mib"] - hi["rss_after_load_mib"]
        inc_lo = lo["peak_rss_mib"] - lo["rss_after_load_mib"]
        lines.append(f"CoMeT peak RSS {a} vs {b}: {hi['peak_rss_mib']:.0f} / {lo['peak_rss_mib']:.0f} MiB = "
                     f"{hi['peak_rss_mib'] / lo['peak_rss_mib']:.3f}x (increase over load {inc_hi:.0f} vs {inc_lo:.0f} MiB)")
        lines.append(f"CoMeT prefill tokens/s {a} vs {b}: {hi['tokens_per_s']:.0f} / {lo['tokens_per_s']:.0f} = "
                     f"{hi['tokens_per_s'] / lo['tokens_per_s']:.3f}x; per CPU-second (less sensitive to other load) "
                     f"{cpu_rate(hi):.0f} / {cpu_rate(lo):.0f} = {cpu_rate(hi) / cpu_rate(lo):.3f}x")
        lines.append(f"CoMeT memory state size {a} vs {b}: {hi['state_bytes'] / 2**20:.2f} / {lo['state_bytes'] / 2**20:.2f} MiB")
    decoded = {n: r for n, r in comet.items() if "decode" in r}
    if len(decoded) >= 2:
        lo, hi = decoded[min(decoded)], decoded[max(decoded)]
        dl, dh = lo["decode"], hi["decode"]
        lines.append(f"CoMeT decode ms/token {label(hi['tokens'])} vs {label(lo['tokens'])}: median {dh['median_ms']:.1f} / "
                     f"{dl['median_ms']:.1f} = {dh['median_ms'] / dl['median_ms']:.3f}x, mean {dh['mean_ms']:.1f} / "
                     f"{dl['mean_ms']:.1f} = {dh['mean_ms'] / dl['mean_ms']:.3f}x")
    for n in sorted(set(comet) & set(full)):
        c, f = comet[n], full[n]
        lines.append(f"CoMeT vs full attention at {label(n)}: prefill speed {c['tokens_per_s']:.0f} / {f['tokens_per_s']:.0f} "
                     f"tok/s = {c['tokens_per_s'] / f['tokens_per_s']:.3f}x (per CPU-second {cpu_rate(c) / cpu_rate(f):.3f}x), peak RSS {c['peak_rss_mib']:.0f} / "
                     f"{f['peak_rss_mib']:.0f} MiB = {c['peak_rss_mib'] / f['peak_rss_mib']:.3f}x")
        if "decode" in c and "decode" in f:
            lines.append(f"CoMeT vs full attention decode at {label(n)}: median {c['decode']['median_ms']:.1f} / "
                         f"{f['decode']['median_ms']:.1f} ms/token = {c['decode']['median_ms'] / f['decode']['median_ms']:.3f}x")
    if len(full) >= 2:
        lo, hi = full[min(full)], full[max(full)]
        lines.append(f"Full attention prefill tokens/s {label(hi['tokens'])} vs {label(lo['tokens'])}: "
                     f"{hi['tokens_per_s']:.0f} / {lo['tokens_per_s']:.0f} = {hi['tokens_per_s'] / lo['tokens_per_s']:.3f}x; "
                     f"peak RSS {hi['peak_rss_mib']:.0f} / {lo['peak_rss_mib']:.0f} MiB")
    return lines


def cpu_rate(r: dict) -> float:
    return r["tokens"] / r["prefill_cpu_s"]


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def run_parent(args) -> int:
    run_start = time.perf_counter()
    from cometlm import CometConfig

    command = shlex.join([sys.executable, *sys.argv])
    report = {
        "command": command,
        "cwd": os.getcwd(),
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "machine": platform.machine(),
                    "python": platform.python_version(), "cpu_count": os.cpu_count(),
                    "memory_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30},
        "corpus": CORPUS, "model": args.model, "dtype": args.dtype, "threads_option": args.threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY") if args.omp_wait_policy == "inherit" else args.omp_wait_policy.upper(),
        "comet_config": comet_config(args, CometConfig).to_dict(),
        "decode_tokens": args.decode_tokens, "warmup": not args.no_warmup, "slice_chunks": args.slice_chunks,
        "results": [],
    }
    todo = jobs(args)
    print(f"# {command}", flush=True)
    print(f"# {report['date_utc']}  {report['machine']['platform']}  {os.cpu_count()} CPUs  dtype {args.dtype}", flush=True)
    print(f"# CometConfig {report['comet_config']}", flush=True)
    print(f"# OMP_WAIT_POLICY={report['omp_wait_policy']}, load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs "
          "(other processes on the same cores slow every configuration)", flush=True)
    print("# preparing: converting the bundled model and tokenizing the corpus if not cached (untimed)", flush=True)
    prep = run_job(args, {"method": "prepare", "max_tokens": max(s["tokens"] for s in todo)})
    if "error" in prep:
        print(f"# prepare failed: {prep['error']}", flush=True)
        report["prepare"] = prep
        write_json(args.out, report)
        return 1
    report["prepare"] = prep
    report["machine"].update(torch_version=prep["torch_version"], transformers_version=prep["transformers_version"],
                             torch_num_threads=prep["torch_threads"])
    print(f"# torch {prep['torch_version']} ({prep['torch_threads']} threads), transformers {prep['transformers_version']}, "
          f"attention {prep['attn_implementation']}, corpus has {prep['corpus_tokens_available']} tokens", flush=True)
    for i, spec in enumerate(todo, 1):
        result = run_job(args, spec)
        report["results"].append(result)
        write_json(args.out, report)
        print(f"[{i}/{len(todo)}] {one_line(result)}", flush=True)
    report["wall_s"] = time.perf_counter() - run_start
    report["table"] = table(report["results"])
    report["ratios"] = ratios(report["results"])
    write_json(args.out, report)
    print()
    print(report["table"])
    print()
    for line in report["ratios"]:
        print(line)
    print(f"\nwhole run {report['wall_s'] / 60:.1f} min; results in {args.out}", flush=True)
    return 0 if all("error" not in r for r in report["results"]) else 1


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        return run_worker(args)
    return run_parent(args)


if __name__ == "__main__":
    sys.exit(main())
