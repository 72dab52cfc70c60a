"""LoRA on the frozen backbone (METHOD.md section 3): CoMeT's memory modules train in full, the backbone through
LoRA, so a trained CoMeT ships as a few-MB adapter (``save_lora`` / ``load_lora`` write and read its weights).

LoRA is injected in place into ``model.backbone_model`` with peft's ``inject_adapter_in_model``: the wrapped
decoder layers stay where ``Backbone`` finds them, so ``CometForCausalLM`` needs no change, and the LoRA weights
keep peft's own names (``model.layers.0.self_attn.q_proj.lora_A.weight``) so any peft tool can read them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

_ADAPTER = "default"


def freeze_backbone(model) -> nn.Module:
    """Stops gradients to every backbone weight; CoMeT's ``model.memory`` keeps training."""
    for p in model.backbone_model.parameters():
        p.requires_grad_(False)
    return model


def has_lora(model) -> bool:
    return _ADAPTER in getattr(model.backbone_model, "peft_config", {})


def apply_lora(model, rank: int = 8, alpha: float = 16, dropout: float = 0.0, targets=("q_proj", "v_proj")):
    """Freezes the backbone and adds trainable LoRA to the named linear layers of every decoder layer.

    Afterwards only LoRA and CoMeT parameters require grad, so a trained model ships as a few-MB adapter.
    """
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.tuners_utils import cast_adapter_dtype

    if has_lora(model):
        raise ValueError("the model already has LoRA; apply_lora once per model")
    targets = list(targets)
    freeze_backbone(model)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets)
    try:
        inject_adapter_in_model(config, model.backbone_model, adapter_name=_ADAPTER)
    except ValueError as err:
        backbone = model.backbone
        raise ValueError(
            f"cannot put LoRA on {targets}: {str(err).rstrip('.')}. Name linear layers of the backbone's decoder layers; this "
            f"{backbone.config.model_type} model has {', '.join(backbone.linear_names())} (the attention's usual "
            f"targets: {', '.join(backbone.lora_targets)})"
        ) from None
    # peft's own upcast (what get_peft_model does by default): LoRA's weights train in float32 over a bfloat16 base,
    # and each LoRA layer casts its output back to the base layer's dtype.
    cast_adapter_dtype(model.backbone_model, _ADAPTER, autocast_adapter_dtype=True)
    return model


def lora_config(model) -> dict:
    """The settings ``apply_lora`` needs to rebuild the same LoRA layout (stored next to the weights)."""
    config = model.backbone_model.peft_config[_ADAPTER]
    return {
        "rank": config.r,
        "alpha": config.lora_alpha,
        "dropout": config.lora_dropout,
        "targets": sorted(config.target_modules),
    }


def lora_state_dict(model) -> dict[str, torch.Tensor]:
    """The LoRA weights, keyed as peft names them under ``backbone_model`` (adapter name dropped)."""
    from peft import get_peft_model_state_dict

    if not has_lora(model):
        raise ValueError("the model has no LoRA; call apply_lora first")
    state = get_peft_model_state_dict(model.backbone_model, adapter_name=_ADAPTER)
    return {k: v.detach().contiguous() for k, v in state.items()}


def load_lora_state_dict(model, state: dict[str, torch.Tensor]) -> None:
    """Loads weights from ``lora_state_dict`` into a model with the same LoRA layout; any mismatch is an error."""
    from peft import set_peft_model_state_dict

    expected = set(lora_state_dict(model))
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"the LoRA weights do not fit this model's LoRA layout {lora_config(model)}: missing {missing[:4]}, "
            f"unexpected {unexpected[:4]}; apply_lora with the settings the weights were trained with"
        )
    set_peft_model_state_dict(model.backbone_model, state, adapter_name=_ADAPTER)


def save_lora(model, path: str | Path) -> None:
    """Writes the LoRA weights with their layout in the safetensors metadata, so ``load_lora`` needs nothing else."""
    save_file(lora_state_dict(model), str(path), metadata={"lora": json.dumps(lora_config(model))})


def load_lora(model, path: str | Path):
    """Adds the LoRA layout recorded in ``path`` to the model and loads its weights. The layout is checked against
    the file's own tensor shapes first, so a file that claims a huge rank is refused before any layer is built."""
    with safe_open(str(path), framework="pt", device=str(next(model.parameters()).device)) as f:
        metadata = f.metadata() or {}
        if "lora" not in metadata:
            raise ValueError(f"{path} has no LoRA layout in its metadata; it was not written by save_lora")
        layout = _checked_layout(metadata["lora"], path)
        ranks = {f.get_slice(key).get_shape()[0] for key in f.keys() if ".lora_A." in key}
        if ranks != {layout["rank"]}:
            raise ValueError(f"{path}: its LoRA layout says rank {layout['rank']}, its weights have rank "
                             f"{sorted(ranks) or 'none'}")
        state = {key: f.get_tensor(key) for key in f.keys()}
    apply_lora(model, **layout)
    load_lora_state_dict(model, state)
    return model


def _checked_layout(text: str, path) -> dict:
    """``lora_config``'s dict as ``save_lora`` stored it, or a ValueError."""
    try:
        layout = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise ValueError(f"{path}: its LoRA layout is not JSON ({err})") from None
    kinds = {"rank": int, "alpha": (int, float), "dropout": (int, float), "targets": list}
    if (not isinstance(layout, dict) or set(layout) != set(kinds)
            or any(isinstance(layout[k], bool) or not isinstance(layout[k], kind) for k, kind in kinds.items())
            or layout["rank"] < 1 or not 0 <= layout["dropout"] < 1
            or not all(isinstance(t, str) and t for t in layout["targets"])):
        raise ValueError(f"{path}: its LoRA layout is not what save_lora writes: {text[:200]}")
    return layout
