"""Loading a CoMeT model by name: the one function the command line, the trainer, the evaluations, the
lm-evaluation-harness backend and the server all call.

``ModelOptions`` says which model: a base (the bundled SmolLM2 or a local Hugging Face folder), optionally a trained
CoMeT (a saved folder, or the name of an adapter shipped in the package), and otherwise the ``CometConfig`` of an
untrained CoMeT on that base; plus dtype, device and CPU threads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import CometConfig
from .hardware import native_bfloat16

DTYPES = ("float32", "bfloat16")
AUTO = "auto"  # bfloat16 where the device computes it natively, else float32 (``resolve_dtype``)


def resolve_dtype(dtype: str, device: str = "cpu") -> str:
    """The dtype a model is loaded in: ``"auto"`` is bfloat16 where ``native_bfloat16(device)``, else float32."""
    if dtype == AUTO:
        return "bfloat16" if native_bfloat16(device) else "float32"
    return dtype


@dataclass(frozen=True)
class ModelOptions:
    """base     the bundled model's name (default ``bundled.BUNDLED_MODEL``) or a local Hugging Face model folder;
                with an adapter, the base to load it onto (default: the base it records).
    adapter  a saved CoMeT folder (``save_pretrained``) or the name of an adapter shipped with cometlm
             (``bundled.shipped_adapters()``); its own config is used and ``config`` is ignored.
    config   the CometConfig of an untrained CoMeT (identity adapters) on ``base``, when there is no adapter.
    dtype    "float32", "bfloat16" or "auto" (``resolve_dtype``): the dtype the backbone's weights are held and run
             in (CoMeT's own parameters, the gate, the blend and the global state stay float32).
    device   where the model runs ("cpu", "cuda", "cuda:1", ...).
    threads  torch's CPU threads (None: torch's choice).
    """

    base: str | None = None
    adapter: str | None = None
    config: CometConfig = field(default_factory=CometConfig)
    dtype: str = "float32"
    device: str = "cpu"
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.dtype not in (*DTYPES, AUTO):
            raise ValueError(f"dtype must be one of {', '.join((*DTYPES, AUTO))} (got {self.dtype!r})")
        if not isinstance(self.config, CometConfig):
            raise TypeError(f"config must be a CometConfig (got {type(self.config).__name__})")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise ValueError(f"threads must be a positive int or None (got {self.threads!r})")

    @property
    def name(self) -> str:
        """What results are labelled with: the adapter, else the base."""
        from .bundled import BUNDLED_MODEL

        return self.adapter or self.base or BUNDLED_MODEL


def load_model(options: ModelOptions = ModelOptions()):
    """The ``CometForCausalLM`` that ``options`` names, in eval mode, on its device."""
    import torch

    from .bundled import BUNDLED_MODEL
    from .model import CometForCausalLM

    if options.threads:
        torch.set_num_threads(options.threads)
    dtype = getattr(torch, resolve_dtype(options.dtype, options.device))
    if options.adapter:
        model = CometForCausalLM.from_pretrained(options.adapter, base_model=options.base, dtype=dtype)
    else:
        model = CometForCausalLM.from_backbone(options.base or BUNDLED_MODEL, options.config, dtype=dtype)
    return model.to(options.device).eval()
