"""What ``save_pretrained`` writes and ``from_pretrained`` reads: a full model or a few-MB adapter.

A saved CoMeT is a folder: ``comet_config.json`` (format, kind, CoMeT config, the base model's name and a
description of its weights), ``comet.safetensors`` (CoMeT's own parameters), ``lora.safetensors`` when the
backbone carries LoRA, and for a full model the backbone itself in ``backbone/``. An adapter records which base
it was trained on and refuses to load onto another one. The folder is written atomically.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .config import CometConfig
from .files import atomic_directory
from .lora import has_lora, load_lora, save_lora

SAVE_FORMAT = "cometlm/1"
CONFIG_FILE = "comet_config.json"
WEIGHTS_FILE = "comet.safetensors"
BACKBONE_DIR = "backbone"
LORA_FILE = "lora.safetensors"

FINGERPRINT_TOLERANCE = 0.02  # bfloat16 rounding moved SmolLM2's entries by at most 0.006; another base by far more


def same_base(got: dict, want: dict) -> bool:
    """Whether two `Backbone.describe()` records name the same base weights: equal shapes and fingerprints equal
    up to the rounding of a lower-precision load (an adapter saved in float32 loads onto a bfloat16 base)."""
    if {k: v for k, v in got.items() if k != "fingerprint"} != {k: v for k, v in want.items() if k != "fingerprint"}:
        return False
    a, b = got.get("fingerprint") or [], want.get("fingerprint") or []
    return len(a) == len(b) and all(abs(x - y) <= FINGERPRINT_TOLERANCE for x, y in zip(a, b))


def save(model, directory: str | os.PathLike, adapter: bool = False) -> None:
    """Writes ``model`` (a ``CometForCausalLM``) to ``directory``; see ``CometForCausalLM.save_pretrained``."""
    directory = Path(directory)
    if directory.exists() and not (directory / CONFIG_FILE).is_file() and (
            not directory.is_dir() or any(directory.iterdir())):
        raise ValueError(f"refusing to save into {directory}: it holds files that are not a saved CoMeT model, and "
                         "saving replaces the whole folder; choose a new or empty folder")
    if adapter and not model.base_model:
        raise ValueError(
            "cannot save an adapter: the base model has no name or path to record; wrap a model loaded from "
            "a directory or the bundled name, or save the full model"
        )
    meta = {
        "format": SAVE_FORMAT,
        "kind": "adapter" if adapter else "full",
        "comet": model.comet_config.to_dict(),
        "base_model": model.base_model,
        "base": model.backbone.describe(),
        **({"base_weights": model.backbone.weights_fingerprint()} if adapter else {}),
    }
    with atomic_directory(directory) as tmp:
        save_file(model.comet_state_dict(), tmp / WEIGHTS_FILE, metadata={"format": SAVE_FORMAT})
        lora = has_lora(model)
        if lora:
            save_lora(model, tmp / LORA_FILE)
        if not adapter:
            # peft wraps each LoRA target as `<name>.base_layer`: its weights go back under their own names.
            plain = None if not lora else {
                k.replace(".base_layer.", "."): v for k, v in model.backbone_model.state_dict().items()
                if ".lora_" not in k
            }
            model.backbone_model.save_pretrained(tmp / BACKBONE_DIR, state_dict=plain)
            if model.tokenizer is not None:
                model.tokenizer.save_pretrained(tmp / BACKBONE_DIR)
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def read_meta(directory: Path) -> dict:
    """The checked ``comet_config.json`` of a saved CoMeT folder."""
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{directory} is not a saved CoMeT model (no {CONFIG_FILE})")
    try:
        meta = json.loads(config_path.read_text())
    except (ValueError, RecursionError) as err:
        raise ValueError(f"{config_path} is not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != SAVE_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{config_path} has format {found!r}, expected {SAVE_FORMAT!r}")
    if meta.get("kind") not in ("adapter", "full") or not isinstance(meta.get("comet"), dict):
        raise ValueError(f"{config_path} is not a saved CoMeT model (kind {meta.get('kind')!r}, comet config "
                         f"{type(meta.get('comet')).__name__})")
    if meta["kind"] == "adapter" and not isinstance(meta.get("base"), dict):
        raise ValueError(f"{config_path} is an adapter without the description of its base model ('base')")
    weights = meta.get("base_weights", [])
    if not isinstance(weights, list) or not all(type(v) in (int, float) and math.isfinite(v) for v in weights):
        raise ValueError(f"{config_path}: 'base_weights' must be a list of numbers")
    return meta


def _check_weight_sizes(path: Path, config: CometConfig) -> None:
    """The config's sizes that set parameter shapes agree with the weights file's header, read before any tensor of
    those sizes is made (a config claiming a million memory slots would allocate gigabytes first)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    with safe_open(str(path), framework="pt") as f:
        shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    want = {}
    if config.use_global:
        want["tokens.readouts"] = config.global_slots
        want["layers.0.global_memory.adapter.down.weight"] = config.adapter_rank
    if config.use_temp:
        want["layers.0.temporary_memory.adapter.down.weight"] = config.adapter_rank
    for key, size in want.items():
        if key not in shapes or not shapes[key] or shapes[key][0] != size:
            raise ValueError(f"{path} does not fit its CoMeT config: {key} has shape {shapes.get(key)}, its first "
                             f"size should be {size}")


def load(cls, directory: Path, base_model=None, dtype=None):
    """Builds a ``cls`` (``CometForCausalLM``) from a saved folder; see ``CometForCausalLM.from_pretrained``."""
    meta = read_meta(directory)
    config = CometConfig.from_dict(meta["comet"])
    _check_weight_sizes(directory / WEIGHTS_FILE, config)
    if meta["kind"] == "full":
        model = cls.from_backbone(str(directory / BACKBONE_DIR), config, dtype=dtype)
        model.base_model = meta.get("base_model")
    else:
        base = base_model if base_model is not None else meta.get("base_model")
        model = cls.from_backbone(base, config, dtype=dtype)
        if has_lora(model):  # a loaded base_model another adapter's LoRA was put into: it would read with both
            raise ValueError(
                "the given base model already carries LoRA (an adapter loaded onto it earlier put it there); load "
                "each adapter onto its own copy of the base (copy.deepcopy) or onto its name or directory"
            )
        got, want = model.backbone.describe(), meta["base"]
        if "base_weights" in meta:  # adapters saved before it was recorded are checked by the embeddings alone
            want = {**want, "fingerprint": list(want.get("fingerprint") or []) + list(meta["base_weights"] or [])}
            # recorded on bfloat16-rounded weights since session 42; before, on the weights as held
            embeddings = got["fingerprint"]
            got = {**got, "fingerprint": embeddings + model.backbone.weights_fingerprint(rounded=True)}
            if not same_base(got, want):  # summed the second way only when the first does not match
                got = {**got, "fingerprint": embeddings + model.backbone.weights_fingerprint(rounded=False)}
        if not same_base(got, want):
            raise ValueError(
                f"the adapter in {directory} was trained on base model {meta.get('base_model')!r} {want}, "
                f"but the given base is {got}; load it onto the base it was trained on"
            )
    weights = load_file(directory / WEIGHTS_FILE, device=str(model.backbone.device))
    broken = [key for key, value in weights.items() if value.is_floating_point() and not bool(value.isfinite().all())]
    if broken:
        raise ValueError(f"{directory / WEIGHTS_FILE} holds values that are not finite numbers in {broken[:4]}")
    try:
        missing, unexpected = model.memory.load_state_dict(weights, strict=False)
    except RuntimeError as err:  # a tensor of another shape
        raise ValueError(f"{directory / WEIGHTS_FILE} does not fit this CoMeT config: {err}") from None
    if missing or unexpected:
        raise ValueError(f"{directory / WEIGHTS_FILE} does not fit this CoMeT config: missing {missing}, unexpected {unexpected}")
    if (directory / LORA_FILE).is_file():  # an adapter trained with LoRA on the backbone
        load_lora(model, directory / LORA_FILE)
    return model
