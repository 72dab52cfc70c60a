#!/usr/bin/env python
"""Ships an ablation trained with the passkey recipe the way the CoMeT adapter is shipped: its three files in
`src/cometlm/adapters/smollm2-135m-passkey-VARIANT/`, a model card with its training and its results next to the
shipped adapter's, and its loss curve next to the shipped adapter's on the same samples (`loss.png`).

    .venv/bin/python docs/experiments/ship_ablation.py global-only --status "..." [--trained "..."]

Reads the model from `runs/abl-VARIANT/passkey-v2g/final` (`--model`), the training metrics from
`runs/abl-VARIANT/{phase}/metrics.jsonl` (`--metrics`), and its evaluation results from
`docs/results/compare/{passkey,niah,ppl}/comet-VARIANT` next to the shipped adapter's `comet` rows (`--results`).
`--status` is the card's verdict, written by a person who read the numbers; the script writes only measured numbers
and the commands that produced them. Refuses a model whose switches are not the variant's. The training metrics are
kept in `docs/experiments/ablations/VARIANT/` (`carry.py` stops carrying a shipped ablation's runs).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

import recipe_runs  # docs/experiments/recipe_runs.py

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_ADAPTER = "src/cometlm/adapters/smollm2-135m-passkey"
SHIPPED_METRICS = "docs/experiments/2026-11-29-{phase}-metrics.jsonl"
WHAT = {
    "global-only": ("the global memory alone", "no temporary memory: no beacons and no FIFO queue of compressed "
                    "recent states (`--temp-stride 0 --temp-capacity 0`)",
                    lambda c: c["temp_capacity"] == 0 and c["global_slots"] > 0 and c["gate"]),
    "temp-only": ("the temporary memory alone", "no global memory slots (`--global-slots 0`)",
                  lambda c: c["global_slots"] == 0 and c["temp_capacity"] > 0),
    "no-gate": ("both memories, no gate", "the global memory's update overwrites its slots instead of blending "
                "them through the learned gate (`--no-gate`)",
                lambda c: not c["gate"] and c["global_slots"] > 0 and c["temp_capacity"] > 0),
}
FILES = ("comet.safetensors", "lora.safetensors", "comet_config.json")
KEPT_METRICS = "docs/experiments/ablations/{variant}/{phase}-metrics.jsonl"


def summaries(results: Path, name: str) -> dict[str, dict]:
    found = {}
    for task in ("passkey", "niah", "ppl"):
        file = results / task / name / f"{task}.json"
        if file.is_file():
            found[task] = json.loads(file.read_text())
    return found


def accuracy(summary: dict | None) -> list[str]:
    if summary is None:
        return ["not run"] * 4
    by_length = {r["length"]: r["accuracy"] for r in summary["accuracy_by_length"]}
    return ["-" if by_length.get(n) is None else f"{by_length[n]:.2f}" for n in (1024, 4096, 16384, 32768)]


def cost(summary: dict) -> str:
    longest = max(summary["config"]["lengths"])
    cells = [c for c in summary["cells"] if c["length"] == longest and c["done"]]
    seconds = sum(c["seconds"] for c in cells) / max(1, sum(c["done"] for c in cells))
    return f"{seconds:.0f} s per {longest // 1024}k trial, peak RSS {summary['cost']['peak_rss_mib']:,.0f} MiB"


def card(variant: str, args, config: dict, size: float, training: str, mine: dict, shipped: dict) -> str:
    title, what, _ = WHAT[variant]
    base = json.loads((ROOT / SHIPPED_ADAPTER / "comet_config.json").read_text())["comet"]
    config_table = "\n".join(["| setting | this ablation | shipped adapter |", "|---|---|---|"] + [
        f"| `{key}` | {config.get(key)} | {base.get(key)}{'' if config.get(key) == base.get(key) else ' (differs)'} |"
        for key in base])
    rows = ["| | 1k | 4k | 16k | 32k |", "|---|---:|---:|---:|---:|"]
    for task, label in (("passkey", "passkey"), ("niah", "needle (NIAH)")):
        rows.append(f"| **{label}, this ablation** | " + " | ".join(accuracy(mine.get(task))) + " |")
        rows.append(f"| {label}, shipped CoMeT adapter | " + " | ".join(accuracy(shipped.get(task))) + " |")
    ppl = [f"{s['ppl']:.2f}" if (s := d.get("ppl")) else "not run" for d in (mine, shipped)]
    commands = "\n".join(f"    {shown(c, s)}" for s in mine.values() for c in s["environment"].get("commands", {})
                         if c != "unknown") or "    (none yet)"
    costs = "; ".join(f"{task}: {cost(s)}" for task, s in mine.items() if task != "ppl") or "not measured yet"
    complete = all(s["complete"] for s in mine.values()) and len(mine) == 3
    return f"""# CoMeT ablation for SmolLM2-135M-Instruct: {title}

The shipped passkey adapter (`src/cometlm/adapters/smollm2-135m-passkey`) with one part of CoMeT taken away: {what}.
Trained with the same recipe and budget (`recipes/passkey-smollm2.sh OUT {variant}`: the same seven phases, data,
seeds, steps, learning rates and LoRA), so that its results, next to the shipped adapter's, say what that part
contributes. {size:.1f} MiB: `comet.safetensors`, `lora.safetensors`, `comet_config.json`; `loss.png` is its
training loss next to the shipped adapter's on the same samples. It loads by name, like the adapter:
`CometForCausalLM.from_pretrained("smollm2-135m-passkey-{variant}")`, `--comet smollm2-135m-passkey-{variant}`.

    cometlm eval passkey --comet smollm2-135m-passkey-{variant} --lengths 1024 4096 16384 32768

**Status:** {args.status}

## Configuration

{config_table}

## Training

{args.trained}

    recipes/passkey-smollm2.sh runs/abl-{variant} {variant} -- --threads 1

Per phase (the loss columns: mean over the phase's last 100 passkey steps, on the key and the period after it where
the phase has one, and over its last 100 language-model steps; `docs/experiments/recipe_runs.py`; every step's
metrics are in `docs/experiments/ablations/{variant}/`):

{training}

## Evaluation

The comparison's grids and documents (`recipes/compare-smollm2.sh runs/compare MODEL --models-only`, results in
`docs/results/compare/*/comet-{variant}/`): 3 trials per (length, depth) at depths 0, 25, 50, 75, 100%, seed 0 (the
prompts every method of the comparison answers), greedy answers; perplexity on 2 held-out Bible windows of 32,768
tokens.{'' if complete else ' **Not complete yet**: the missing cells are marked.'}

{chr(10).join(rows)}

Held-out perplexity: {ppl[0]} (the shipped adapter: {ppl[1]}). Cost: {costs}.

The commands (each result's JSON keeps them with the versions and seeds). They ran in float32; `cometlm eval` now
defaults to `--dtype auto` (bfloat16 on CPUs that compute it natively), so `--dtype float32` is added here to
reproduce them:

{commands}
"""


def shown(command: str, summary: dict) -> str:
    """A result's command as a reader reruns it: ``cometlm`` from PATH, and ``--dtype float32`` where the command
    predates the ``auto`` default and the result is float32 (its model id names no other dtype)."""
    words = shlex.split(command)
    if words and words[0].endswith("/cometlm"):
        words[0] = "cometlm"
    if "--dtype" not in words and "dtype" not in summary.get("model", {}):
        at = words.index("--out") if "--out" in words else len(words)
        words[at:at] = ["--dtype", "float32"]
    return shlex.join(words)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", choices=sorted(WHAT))
    parser.add_argument("--status", required=True, help="the card's verdict, written after reading the numbers")
    parser.add_argument("--trained", default="On this project's 2-core CPU (x86_64, no GPU), torch 2.13.0+cpu, float32, "
                        "one thread, next to another one-thread job.", help="where and how it was trained")
    parser.add_argument("--model", help="default runs/abl-VARIANT/passkey-v2g/final")
    parser.add_argument("--metrics", help="default runs/abl-VARIANT/{phase}/metrics.jsonl")
    parser.add_argument("--results", default="docs/results/compare", help="the comparison's results folder")
    parser.add_argument("--out", help="default src/cometlm/adapters/smollm2-135m-passkey-VARIANT")
    args = parser.parse_args(argv)
    variant = args.variant
    model = ROOT / (args.model or f"runs/abl-{variant}/passkey-v2g/final")
    metrics = args.metrics or f"runs/abl-{variant}/{{phase}}/metrics.jsonl"
    out = ROOT / (args.out or f"src/cometlm/adapters/smollm2-135m-passkey-{variant}")
    if not (model / "comet_config.json").is_file():
        parser.error(f"{model} is not a finished model (no comet_config.json): train it first")
    config = json.loads((model / "comet_config.json").read_text())["comet"]
    if not WHAT[variant][2](config):
        parser.error(f"{model} does not have the {variant} switches: {config}")

    runs = {"shipped CoMeT": recipe_runs.load(SHIPPED_METRICS), variant: recipe_runs.load(metrics)}
    if any(not records for records in runs[variant].values()):
        parser.error(f"{metrics}: a phase has no metrics; the card needs the whole recipe")
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))  # complete before it replaces `out`
    try:
        for name in FILES:
            shutil.copyfile(model / name, staged / name)
        recipe_runs.plot(runs, staged / "loss.png")
        size = sum((staged / name).stat().st_size for name in FILES) / 2**20
        results = ROOT / args.results
        text = card(variant, args, config, size, recipe_runs.tables(runs), summaries(results, f"comet-{variant}"),
                    summaries(results, "comet"))
        (staged / "README.md").write_text(text, encoding="utf-8")
        staged.chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        staged.rename(out)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    for phase in recipe_runs.PHASES:
        kept = ROOT / KEPT_METRICS.format(variant=variant, phase=phase)
        source = Path(metrics.format(phase=phase))
        source = source if source.is_absolute() else ROOT / source
        if source.resolve() != kept.resolve():
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, kept)
    print(f"shipped {variant} in {out} ({size:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
