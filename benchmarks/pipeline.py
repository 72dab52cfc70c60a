#!/usr/bin/env python
"""Pipeline parallelism on this CPU: the wavefront and the naive schedule with P = 2 ranks (one thread each)
against one process (one thread), side by side in one run.

One training step = forward and backward of one sample (LoRA + CoMeT trainable, as ``cometlm train`` does by
default), plus the gradient sum over the ranks; no optimizer update. Each configuration runs in fresh spawned
processes (the peak resident set only ever grows within a process): first one process, then two ranks with the
wavefront, then two ranks with the naive hand-off. For every rank it reports:

- step time: after ``--warmup`` untimed steps, the median over ``--steps`` of the slowest rank's time from a
  common barrier to the end of its step; and each rank's CPU-seconds per step (all its threads), which moves
  less than wall time when other jobs share the cores;
- peak RSS, and RSS after loading (every weight read once), so their difference is what training added;
- saved activations: bytes of the distinct tensors autograd saved for the backward pass during the forward
  (weights excluded). This counts activations outside checkpointed regions only, so with
  ``--checkpointing`` it shows the loss head and glue, and the RSS columns are the measure to read;
- step RSS: the largest rise of the RSS over its value at the start of a step (sampled every 5 ms).

    python benchmarks/pipeline.py                     # SmolLM2-135M, 2048 tokens: about 4 minutes on 2 idle cores
    python benchmarks/pipeline.py --tiny --tokens 256 --chunk-size 32 --steps 1 --out /tmp/pipeline-smoke.json

Timings are only meaningful on otherwise idle cores: the report records the load average before and after.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import queue
import resource
import shlex
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "pipeline.json"
CONFIGS = (("single process", 1, None), ("wavefront", 2, "wavefront"), ("naive", 2, "naive"))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct",
                        help="backbone: the bundled model's name or a local Hugging Face model directory")
    parser.add_argument("--tiny", action="store_true",
                        help="a tiny random Llama and random tokens instead of --model and the Bible (smoke test)")
    parser.add_argument("--tokens", type=int, default=2048, help="tokens in the sample (of the KJV Bible)")
    parser.add_argument("--chunk-size", type=int, default=256, help="C")
    parser.add_argument("--global-slots", type=int, default=16, help="M")
    parser.add_argument("--temp-stride", type=int, default=8, help="s")
    parser.add_argument("--temp-capacity", type=int, default=64, help="K")
    parser.add_argument("--mode", choices=("lora", "memory", "full"), default="lora",
                        help="what trains (as cometlm train --mode)")
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing per (layer, chunk)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--worker-timeout", type=float, default=900, help="seconds before a configuration fails")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON report")
    args = parser.parse_args(argv)
    if args.tokens < 2 or args.steps < 1 or args.warmup < 0:
        parser.error("need --tokens >= 2, --steps >= 1 and --warmup >= 0")
    return args


# ----------------------------------------------------------------------------------------------------------------
# Worker (one rank)


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _RssSampler:
    """The RSS on entry, and the largest RSS seen until exit (a thread reads /proc/self/statm every 5 ms)."""

    def __enter__(self):
        self.start = self.peak = _rss_mib()
        self._running = True
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while self._running:
            self.peak = max(self.peak, _rss_mib())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._running = False
        self._thread.join()
        self.peak = max(self.peak, _rss_mib())


def _build(args):
    import torch

    from cometlm import CometConfig, CometForCausalLM

    config = CometConfig(chunk_size=args.chunk_size, global_slots=args.global_slots, temp_stride=args.temp_stride,
                         temp_capacity=args.temp_capacity)
    if args.tiny:
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        backbone = LlamaForCausalLM(LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128,
                                                num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2))
        model = CometForCausalLM.from_backbone(backbone, config)
        ids = torch.randint(0, 512, (1, args.tokens), generator=torch.Generator().manual_seed(0))
    else:
        from cometlm.tasks.corpora import corpus_tokens

        model = CometForCausalLM.from_backbone(args.model, config)
        ids = corpus_tokens("bible", model.tokenizer, args.tokens)[None]
    return model, ids


def _worker(rank: int, world: int, port: int, schedule: str, args, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch
    import torch.distributed as dist

    from cometlm.parallel.distributed import sum_gradients
    from cometlm.parallel.schedule import Pipeline, Stage
    from cometlm.runtime import release_free_memory
    from cometlm.training.config import TrainConfig
    from cometlm.training.loop import prepare_model

    torch.set_num_threads(1)
    if world > 1:
        from datetime import timedelta

        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=args.worker_timeout))
    model, ids = _build(args)
    prepare_model(model, TrainConfig(output_dir="unused", mode=args.mode, gradient_checkpointing=args.checkpointing))
    with torch.no_grad():
        for p in model.parameters():  # read every weight once: memory-mapped weights become resident now
            p.sum()
    release_free_memory()
    rss_loaded = _rss_mib()
    params = [p for p in model.parameters() if p.requires_grad]
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    pipeline = Pipeline(Stage(rank, tuple(range(world))), schedule) if world > 1 else None
    times, cpu_times, saved_bytes, step_rss = [], [], [], []
    for step in range(args.warmup + args.steps):
        seen: dict[int, int] = {}

        def pack(t):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in weights:
                seen[ptr] = t.untyped_storage().nbytes()
            return t

        release_free_memory()
        if world > 1:
            dist.barrier()
        with _RssSampler() as sampler:
            start, cpu_start = time.perf_counter(), time.process_time()
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                if pipeline is None:
                    loss = model(ids, labels=ids).loss
                else:
                    loss = pipeline.loss(model, model.split_chunks(ids, labels=ids))
            loss.backward()
            if pipeline is not None:
                pipeline.wait()
                sum_gradients(params)
            seconds = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
            cpu = time.process_time() - cpu_start
        if world > 1:
            dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
        model.zero_grad(set_to_none=True)
        del loss
        if step >= args.warmup:
            times.append(float(seconds))
            cpu_times.append(cpu)
            saved_bytes.append(sum(seen.values()))
            step_rss.append(sampler.peak - sampler.start)
    results.put({
        "rank": rank,
        "step_s": times,
        "step_cpu_s": cpu_times,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_loaded_mib": rss_loaded,
        "saved_activations_mib": max(saved_bytes) / 2**20,
        "step_rss_rise_mib": max(step_rss),
        "chunks": -(-args.tokens // args.chunk_size),
        "layers": model.backbone.num_layers,
    })
    if world > 1:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------------------------
# Parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_config(name: str, world: int, schedule: str, args) -> dict:
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    port = _free_port()
    processes = [context.Process(target=_worker, args=(r, world, port, schedule, args, results)) for r in range(world)]
    started = time.perf_counter()
    for p in processes:
        p.start()
    ranks = []
    try:
        while len(ranks) < world:
            if time.perf_counter() - started > args.worker_timeout:
                raise TimeoutError(f"{name}: no result after {args.worker_timeout:.0f} s")
            if any(p.exitcode not in (None, 0) for p in processes):
                raise RuntimeError(f"{name}: a rank failed (exit codes {[p.exitcode for p in processes]})")
            try:
                ranks.append(results.get(timeout=1.0))
            except queue.Empty:
                continue
    finally:
        for p in processes:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    ranks.sort(key=lambda r: r["rank"])
    step = statistics.median(ranks[0]["step_s"])  # identical on every rank (the slowest rank's time)
    print(f"{name}: {step:.3f} s/step; " + "; ".join(
        f"rank {r['rank']}: peak RSS {r['peak_rss_mib']:,.0f} MiB (+{r['peak_rss_mib'] - r['rss_loaded_mib']:,.0f} "
        f"over loaded), saved activations {r['saved_activations_mib']:,.1f} MiB" for r in ranks),
        file=sys.stderr, flush=True)
    return {"name": name, "ranks": world, "schedule": schedule, "step_s": step,
            "wall_s": time.perf_counter() - started, "per_rank": ranks}


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep instead of spinning
    os.environ["OMP_NUM_THREADS"] = "1"
    load_before = os.getloadavg()[0]
    rows = [_run_config(name, world, schedule, args) for name, world, schedule in CONFIGS]
    load_after = os.getloadavg()[0]
    single, wavefront, naive = rows
    layers, chunks = single["per_rank"][0]["layers"], single["per_rank"][0]["chunks"]

    print(f"\n{'tiny random Llama' if args.tiny else args.model}: {layers} layers, {args.tokens} tokens in {chunks} "
          f"chunks of {args.chunk_size} (M={args.global_slots}, s={args.temp_stride}, K={args.temp_capacity}), mode "
          f"{args.mode}{', checkpointing' if args.checkpointing else ''}; one thread per process; load average "
          f"{load_before:.2f} before, {load_after:.2f} after, {os.cpu_count()} CPUs\n")
    print("| configuration | rank | s/step | CPU-s/step | peak RSS MiB | RSS over loaded MiB | step RSS rise MiB | "
          "saved activations MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        for r in row["per_rank"]:
            print(f"| {row['name']} | {r['rank']} | {row['step_s']:.3f} | {statistics.median(r['step_cpu_s']):.3f} | "
                  f"{r['peak_rss_mib']:,.0f} | "
                  f"{r['peak_rss_mib'] - r['rss_loaded_mib']:,.0f} | {r['step_rss_rise_mib']:,.0f} | "
                  f"{r['saved_activations_mib']:,.1f} |")
    ratios = {
        "wavefront_over_naive": naive["step_s"] / wavefront["step_s"],
        "wavefront_over_single": single["step_s"] / wavefront["step_s"],
        "ideal_wavefront_over_naive": 2 * layers / (layers + 1),
        "saved_activations_rank_over_single": max(r["saved_activations_mib"] for r in wavefront["per_rank"])
        / single["per_rank"][0]["saved_activations_mib"],
    }
    print(f"\nwavefront over naive {ratios['wavefront_over_naive']:.2f}x (ideal 2L/(L+1) = "
          f"{ratios['ideal_wavefront_over_naive']:.2f}x); wavefront over one process {ratios['wavefront_over_single']:.2f}x; "
          f"largest rank's saved activations / one process's: {ratios['saved_activations_rank_over_single']:.2f}")
    print(f"\ncalibrate the simulator: python benchmarks/pipeline_sim.py --measured-layers {layers} --measured-chunks "
          f"{chunks} --measured-single {single['step_s']:.3f} --measured-wavefront {wavefront['step_s']:.3f} "
          f"--measured-naive {naive['step_s']:.3f}")
    import torch

    report = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "load_average_before_after": [load_before, load_after],
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "configurations": rows,
        "ratios": ratios,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, args.out)
    print(f"report: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
