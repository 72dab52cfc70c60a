#!/usr/bin/env python
"""Carries the measurements and training runs in progress from one working session to the next.

Each session here starts on a fresh machine with a fresh checkout: `runs/` (git-ignored) is gone, and with it every
training checkpoint and evaluation trial that was not committed. An ablation's training takes 6-7 hours on one CPU
thread, longer than a session, so its state is committed at the end of a session and restored at the start of the
next:

    .venv/bin/python docs/experiments/carry.py save       # runs/ -> the repository
    .venv/bin/python docs/experiments/carry.py restore    # the repository -> runs/ (never overwrites a file)

Evaluations: `runs/compare/` <-> `docs/results/compare/` (every finished trial and document is kept in its
`trials.jsonl`, `documents.jsonl`, so a restored evaluation resumes where it stopped); `save` also redraws the
comparison table there. Training: `runs/abl-VARIANT/` <-> `docs/experiments/carry/abl-VARIANT/`, keeping only what
`recipes/passkey-smollm2.sh` needs to resume: each phase's metrics, the model of the last finished phase, and the
latest checkpoint of the phase in progress. Earlier phases keep their `final/comet_config.json` alone (the recipe
skips a phase that has one); their weights are not needed any more. The general recipe keeps the models of its last
two finished phases, since the two arms of an A/B (g10c and g10x) start from the same phase's model and the phase
after them from the first arm's. An ablation is shipped
(`docs/experiments/ship_ablation.py`) once its evaluation is complete; from then on `save` deletes its carry folder.

The same for the task suites' comparison (issue 22, `recipes/suites-compare-smollm2.sh runs/suites`):
`runs/suites/` <-> `docs/results/suites/`, and for the general adapter's training (issue 23,
`recipes/general-smollm2.sh runs/general`): `runs/general/` <-> `docs/experiments/carry/general/`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNS = ROOT / "runs"
RESULTS = ROOT / "docs/results/compare"
CARRY = ROOT / "docs/experiments/carry"
# the general recipe's phases in the order they finish (recipes/general-smollm2.sh; g8's rule runs one of g9 and g9m,
# g9m's one of g10 and g9g, which may be followed by g10g; g10's rule runs g11, or g10c and g10x, then g11c or g11s;
# a passed g11s runs g12)
GENERAL_PHASES = ("general-g1", "general-g2", "general-g3", "general-g4", "general-g5", "general-g6",
                  "general-g7", "general-g8", "general-g9", "general-g9m", "general-g10", "general-g9g", "general-g10g",
                  "general-g11", "general-g10c", "general-g10x", "general-g11c", "general-g11s", "general-g12")
SUITES = ROOT / "docs/results/suites"
# the recipe's phases in order (recipes/passkey-smollm2.sh)
PHASES = ("passkey-v1", "passkey-v2a", "passkey-v2b", "passkey-v2d", "passkey-v2e", "passkey-v2f", "passkey-v2g")
SMALL_FILES = ("metrics.jsonl", "metrics-sources.jsonl", "latest")
# what a killed atomic write leaves (`cometlm.files.atomic_path`: `.NAME.RANDOM.tmp.EXT`): never a result
TEMPORARY = ".*.tmp*"


def copy_missing(source: Path, target: Path) -> int:
    """Copies every file under ``source`` that ``target`` lacks; returns how many. Each file is copied under a
    temporary name and renamed, so an interrupted restore leaves no part of a file that a rerun would take as
    copied."""
    copied = 0
    for file in sorted(source.rglob("*")):
        if file.is_file():
            to = target / file.relative_to(source)
            if not to.exists():
                to.parent.mkdir(parents=True, exist_ok=True)
                partial = to.with_name(f".{to.name}.partial")
                shutil.copy2(file, partial)
                os.replace(partial, to)
                copied += 1
    return copied


def save_training(run: Path, carry: Path, phases=PHASES, models: int = 1) -> list[str]:
    """Copies the resumable part of one recipe run (``runs/abl-VARIANT``, ``runs/general``) into ``carry``,
    replacing what was there: the model of the last ``models`` finished phases. The new carry is built beside the
    old one and swapped in at the end, so an interrupted save (or a checkpoint pruned while it is copied) leaves the
    last complete carry as it was."""
    building = carry.with_name(f".{carry.name}.building")
    if building.exists():
        shutil.rmtree(building)
    building.mkdir(parents=True)
    try:
        said = _copy_training(run, building, phases, models)
    except BaseException:  # nothing half-built is left where `git add` would find it
        shutil.rmtree(building, ignore_errors=True)
        raise
    old = carry.with_name(f".{carry.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if carry.exists():
        carry.rename(old)
    building.rename(carry)
    shutil.rmtree(old, ignore_errors=True)
    return said


def _copy_training(run: Path, carry: Path, phases, models: int) -> list[str]:
    if (run / "variant").is_file():
        shutil.copy2(run / "variant", carry / "variant")
    finished = [p for p in phases if (run / p / "final" / "comet_config.json").is_file()]
    said = []
    for phase in phases:
        source = run / phase
        if not source.is_dir():
            continue
        target = carry / phase
        target.mkdir()
        for name in SMALL_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, target / name)
        if phase in finished:
            if phase in finished[-models:]:
                shutil.copytree(source / "final", target / "final")
                said.append(f"{phase}: done, model kept")
            else:
                (target / "final").mkdir()
                shutil.copy2(source / "final" / "comet_config.json", target / "final" / "comet_config.json")
                said.append(f"{phase}: done")
        elif (source / "latest").is_file():
            latest = (source / "latest").read_text().strip()
            shutil.copytree(source / latest, target / latest)
            said.append(f"{phase}: in progress, {latest} kept")
        start = run / f"{phase}-start"  # the adapter a phase starts from when the recipe made it (reset_gates.py)
        if phase not in finished and start.is_dir():  # its buffers are not in the checkpoint: resuming needs it
            shutil.copytree(start, carry / start.name)
            said.append(f"{phase}: its start adapter kept")
    return said


def save() -> None:
    if (RUNS / "compare").is_dir():
        # runs/compare holds everything the repository had (restore) and what was measured since
        shutil.copytree(RUNS / "compare", RESULTS, dirs_exist_ok=True, ignore=shutil.ignore_patterns(TEMPORARY))
        print(f"evaluations: runs/compare -> {RESULTS.relative_to(ROOT)}")
        # paths relative to the repository, as the table's notes show them; an evaluation that has just started
        # has no summary yet; in the order recipes/compare-smollm2.sh writes the table in, so that the two agree
        table = [str(p.relative_to(ROOT)) for task in ("passkey", "niah", "ppl")
                 for p in sorted((RESULTS / task).glob("*")) if (p / f"{task}.json").is_file()]
        out = RESULTS.relative_to(ROOT)
        subprocess.run([sys.executable, "-m", "cometlm", "eval", "table", *table, "--out", str(out / "table.md"),
                        "--plot", str(out / "table.png")], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    if (RUNS / "suites").is_dir():
        shutil.copytree(RUNS / "suites", SUITES, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("partial", TEMPORARY))
        print(f"task suites: runs/suites -> {SUITES.relative_to(ROOT)}")
        out = SUITES.relative_to(ROOT)
        for family, pattern in (("ruler", "ruler-*"), ("babilong", "babilong-*"), ("logs", "*-qa")):
            table = [str(p.relative_to(ROOT)) for p in sorted(SUITES.glob(f"{pattern}/*"))
                     if (p / f"{p.parent.name}.json").is_file()]
            if table:  # one table per family: fourteen tasks side by side would not be readable
                subprocess.run([sys.executable, "-m", "cometlm", "eval", "table", *table, "--out",
                                str(out / f"table-{family}.md"), "--plot", str(out / f"table-{family}.png")],
                               check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    if (RUNS / "general").is_dir():
        for line in save_training(RUNS / "general", CARRY / "general", GENERAL_PHASES, models=2):
            print(f"general {line}")
    for run in sorted(RUNS.glob("abl-*")):
        if not (run / "variant").is_file():
            continue
        shipped = ROOT / "src/cometlm/adapters" / f"smollm2-135m-passkey-{(run / 'variant').read_text().strip()}"
        if shipped.is_dir():  # shipped once evaluated (ship_ablation.py): its training state is not needed any more
            shutil.rmtree(CARRY / run.name, ignore_errors=True)
            print(f"{run.name}: shipped in {shipped.relative_to(ROOT)}, not carried")
            continue
        for line in save_training(run, CARRY / run.name):
            print(f"{run.name} {line}")


def restore() -> None:
    if RESULTS.is_dir():
        n = copy_missing(RESULTS, RUNS / "compare")
        print(f"evaluations: {RESULTS.relative_to(ROOT)} -> runs/compare ({n} files)")
    if SUITES.is_dir():
        n = copy_missing(SUITES, RUNS / "suites")
        print(f"task suites: {SUITES.relative_to(ROOT)} -> runs/suites ({n} files)")
    for carry in sorted([*CARRY.glob("abl-*"), CARRY / "general"]):
        if not carry.is_dir():
            continue
        n = copy_missing(carry, RUNS / carry.name)
        print(f"{carry.name}: -> runs/{carry.name} ({n} files)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("save", "restore"))
    args = parser.parse_args(argv)
    save() if args.action == "save" else restore()


if __name__ == "__main__":
    main()
