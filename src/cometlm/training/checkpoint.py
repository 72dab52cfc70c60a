"""Training checkpoints that resume a run exactly, written so that a crash never leaves a half-checkpoint.

Layout under a run's folder::

    checkpoint-<step>/
        trainable.safetensors   the parameters that train, by ``model.named_parameters()`` name
        optimizer.pt            torch.save'd state dicts, read back only with ``weights_only=True``
        scheduler.pt            (tensors and plain containers: nothing executable is unpickled)
        rng.safetensors         torch CPU and CUDA generator states
        state.json              step, data position, config, extra, Python and NumPy RNG states, and the size
                                and sha256 of every file above (so truncation or corruption is caught)
    latest                      the name of the newest complete checkpoint

A checkpoint is written into a hidden temporary sibling and renamed into place, and ``latest`` is replaced
atomically after it, so ``latest`` always names a complete checkpoint. One process writes to a folder at a time.
Saving step ``s`` removes checkpoints of later steps: they belong to a run that this one has replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from cometlm.files import atomic_directory, write_bytes

PREFIX = "checkpoint-"
LATEST = "latest"
STATE_FILE = "state.json"
PARAMS_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
RNG_FILE = "rng.safetensors"
FORMAT = "cometlm-checkpoint/1"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete, corrupted or made for another model."""


_RECOVER = "to resume from another checkpoint, write its folder name (checkpoint-<step>) into the run's 'latest' file"


@dataclass
class CheckpointInfo:
    path: Path
    step: int
    data_position: int
    config: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    run: dict | None = None  # what the model and data were (``save_checkpoint``'s ``run``); None in older checkpoints


# ----------------------------------------------------------------------------------------------------------------
# Random number generators


def capture_rng_state() -> dict:
    """Every generator a training step may draw from, as tensors and JSON-able values."""
    version, state, gauss = random.getstate()
    key, mt, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": [version, list(state), gauss],
        "numpy": {"key": key, "state": mt.tolist(), "pos": pos, "has_gauss": has_gauss, "cached_gaussian": cached},
    }


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    n = state["numpy"]
    mt = np.array(n["state"], dtype=np.uint32)
    np.random.set_state((n["key"], mt, n["pos"], n["has_gauss"], n["cached_gaussian"]))


def _rng_tensors(state: dict) -> dict[str, torch.Tensor]:
    tensors = {"torch": state["torch"]}
    tensors.update({f"cuda.{i}": s for i, s in enumerate(state["cuda"])})
    return tensors


def _rng_from_files(tensors: dict[str, torch.Tensor], saved: dict) -> dict:
    cuda = [tensors[f"cuda.{i}"] for i in range(len(tensors) - 1)]
    return {"torch": tensors["torch"], "cuda": cuda, "python": saved["python"], "numpy": saved["numpy"]}


# ----------------------------------------------------------------------------------------------------------------
# Saving


def trainable_state_dict(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(
    directory, model, optimizer, scheduler, step: int, data_position: int, rng_state: dict, extra: dict | None = None,
    config: dict | None = None, keep: int = 2, run: dict | None = None,
) -> Path:
    """Writes ``checkpoint-<step>`` under ``directory``, points ``latest`` at it, and keeps the newest ``keep``.
    ``run`` (JSON) says what the model and data were; ``load_checkpoint`` refuses to resume another."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1 so that a checkpoint survives (got {keep})")
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    for leftover in root.glob(f".{PREFIX}*"):  # from a writer that was killed mid-save
        shutil.rmtree(leftover, ignore_errors=True)
    name = f"{PREFIX}{step}"
    with atomic_directory(root / name) as tmp:
        save_file(trainable_state_dict(model), tmp / PARAMS_FILE)
        torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        torch.save(scheduler.state_dict(), tmp / SCHEDULER_FILE)
        save_file(_rng_tensors(rng_state), tmp / RNG_FILE)
        files = {f: _describe(tmp / f) for f in (PARAMS_FILE, OPTIMIZER_FILE, SCHEDULER_FILE, RNG_FILE)}
        state = {
            "format": FORMAT,
            "step": step,
            "data_position": data_position,
            "config": config or {},
            "extra": extra or {},
            "files": files,
            "rng": {"python": rng_state["python"], "numpy": rng_state["numpy"]},
            **({"run": run} if run is not None else {}),
        }
        write_bytes(tmp / STATE_FILE, json.dumps(state, indent=1).encode(), durable=True)
    write_bytes(root / LATEST, f"{name}\n".encode(), durable=True)
    _prune(root, keep, step)
    return root / name


def _describe(path: Path) -> dict:
    with open(path, "rb") as f:
        os.fsync(f.fileno())
    return {"bytes": path.stat().st_size, "sha256": _sha256(path)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def start_afresh(root: Path) -> None:
    """Leaves ``root`` with no checkpoint to resume: a run that starts over must not leave the old run's checkpoints
    beside its new metrics (a crash before its first checkpoint would resume the old run with them). ``latest``
    goes first, so an interrupted clearing is refused by a plain rerun rather than resumed."""
    (root / LATEST).unlink(missing_ok=True)
    for path in _steps(root).values():
        shutil.rmtree(path)


def _steps(root: Path) -> dict[int, Path]:
    found = {}
    for path in root.glob(f"{PREFIX}*"):
        suffix = path.name[len(PREFIX):]
        if path.is_dir() and suffix.isdigit():
            found[int(suffix)] = path
    return found


def _prune(root: Path, keep: int, step: int) -> None:
    """Keeps the newest ``keep`` checkpoints up to ``step``. Later ones belong to a timeline this run has left (it
    resumed from an earlier checkpoint, or started afresh), so they go too."""
    steps = _steps(root)
    stale = [s for s in steps if s > step] + sorted(s for s in steps if s <= step)[:-keep]
    for s in stale:
        shutil.rmtree(steps[s], ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------------
# Loading


def latest_checkpoint(directory) -> Path | None:
    """The checkpoint ``latest`` names in ``directory``, or None when the folder holds no checkpoint yet."""
    root = Path(directory)
    pointer = root / LATEST
    if not pointer.is_file():
        if _steps(root):
            raise CheckpointError(f"{root} has checkpoint folders but no '{LATEST}' file; {_RECOVER}")
        return None
    name = pointer.read_text().strip()
    if not name.startswith(PREFIX) or Path(name).name != name or not (root / name).is_dir():
        raise CheckpointError(f"{pointer} names {name!r}, which is not a checkpoint folder in {root}; {_RECOVER}")
    return root / name


def load_checkpoint(directory_or_checkpoint, model, optimizer=None, scheduler=None, run: dict | None = None
                    ) -> CheckpointInfo:
    """Restores parameters, optimizer, scheduler and every RNG from a checkpoint folder, or from the one ``latest``
    names when given a run's folder; returns the step, data position, config and extra saved with it.

    ``run``: what the model and data are now (as ``save_checkpoint`` takes it); a checkpoint that recorded another
    is refused before anything is restored, naming what differs (a checkpoint without a record is not checked)."""
    path = Path(directory_or_checkpoint)
    if not (path / STATE_FILE).exists():
        path = latest_checkpoint(path) or path
    state = _read_state(path)
    saved = state.get("run")
    if run is not None and saved is not None:
        now = json.loads(json.dumps(run))
        changed = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
        if changed:
            raise CheckpointError(
                f"{path} was written by a run with another {', '.join(changed)}: resuming it would continue that "
                "run on other weights or data without a word. Rerun the command that started it, or train into "
                "another --output-dir (--comet a checkpoint's model to continue from it)"
            )
    _load_parameters(path, model)
    if optimizer is not None:
        optimizer.load_state_dict(_torch_load(path / OPTIMIZER_FILE))
    if scheduler is not None:
        scheduler.load_state_dict(_torch_load(path / SCHEDULER_FILE))
    restore_rng_state(_rng_from_files(load_file(path / RNG_FILE), state["rng"]))
    return CheckpointInfo(path, state["step"], state["data_position"], state["config"], state["extra"], saved)


def read_checkpoint_config(checkpoint) -> dict:
    """The training config a checkpoint folder was saved with, restoring nothing."""
    return _read_state(Path(checkpoint))["config"]


def _read_state(path: Path) -> dict:
    """The checkpoint's state.json, after checking that every file it lists is whole."""
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise CheckpointError(f"{path} is not a complete checkpoint (no {STATE_FILE}); {_RECOVER}")
    try:
        state = json.loads(state_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{state_file} is corrupted ({err}); {_RECOVER}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{state_file} is not a {FORMAT} checkpoint")
    files = state.get("files")
    needed = (PARAMS_FILE, OPTIMIZER_FILE, SCHEDULER_FILE, RNG_FILE)
    if (not isinstance(files, dict) or set(files) != set(needed)
            or not all(isinstance(v, dict) and isinstance(v.get("bytes"), int) and isinstance(v.get("sha256"), str)
                       for v in files.values())):
        raise CheckpointError(f"{state_file} does not list its files ({', '.join(needed)}) with sizes and sha256")
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint {path} is incomplete: {name} is missing; {_RECOVER}")
        size = file.stat().st_size
        if size != expected["bytes"]:
            raise CheckpointError(
                f"checkpoint {path} is truncated: {name} has {size} bytes, expected {expected['bytes']}; {_RECOVER}"
            )
        if _sha256(file) != expected["sha256"]:
            raise CheckpointError(f"checkpoint {path} is corrupted: {name} fails its sha256 check; {_RECOVER}")
    return state


def _load_parameters(path: Path, model) -> None:
    saved = load_file(path / PARAMS_FILE)
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(params.keys() - saved.keys()), sorted(saved.keys() - params.keys())
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} was saved from a model with other trainable parameters (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}); resume with the same model, mode and LoRA settings"
        )
    with torch.no_grad():
        for name, p in params.items():
            if saved[name].shape != p.shape:
                raise CheckpointError(
                    f"checkpoint {path}: {name} has shape {tuple(saved[name].shape)} but the model's is "
                    f"{tuple(p.shape)}; resume with the same model and LoRA settings"
                )
            p.copy_(saved[name])


def _torch_load(path: Path):
    """Only tensors and plain containers: a checkpoint can never run code when it is loaded."""
    return torch.load(path, map_location="cpu", weights_only=True)
