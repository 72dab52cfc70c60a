"""cometlm: CoMeT (Collaborative Memory Transformer) for Hugging Face decoder LLMs.

Heavy imports (torch, transformers) happen on first use, so ``cometlm --help`` stays fast.
"""

__version__ = "0.1.0"

_EXPORTS = {
    "CometConfig": "cometlm.config",
    "CometForCausalLM": "cometlm.model",
    "MemoryState": "cometlm.state",
    "LayerState": "cometlm.state",
    "ChunkLayout": "cometlm.layout",
    "SUPPORTED_FAMILIES": "cometlm.backbone",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cometlm' has no attribute {name!r}")
