"""The backbone's linear layers on a CPU in float32 when they see a few rows at a time, as in decoding.

``torch.nn.functional.linear`` on one float32 row (``x @ W.T``) runs PyTorch's matrix-vector kernel, which on a
2-core AMD EPYC (session 27) used one thread and read the weights at about 19 GB/s; on two to four rows it ran a
matrix product that was slower still (a decoding step that appends a beacon took 1.35x an ordinary one). The same
product written ``W @ x.T`` with ``x`` in row-major order is a kernel that used both threads and took about half the
time there (30 decoder layers of SmolLM2-135M: 22.4 ms for one row, 30.9 for two with ``F.linear``; 12.8 and 12.5 this
way). On the 2-core Xeon with AMX (session 30) it is the other way round: ``F.linear`` 22.3 / 23.5 ms, ``W @ x.T`` 58.1
/ 58.2 (``benchmarks/few_rows_linear.py``). So which kernel is faster is measured, once per process and shape set, when
a model's linears are prepared (``few_rows_pays``), and ``FewRowsLinear`` computes a float32 product of up to
``FEW_ROWS`` rows on a CPU as ``W @ x.T`` only where that measured faster, one row given twice (a single column is the
matrix-vector kernel again), and everything else (training, bfloat16, where ``F.linear`` is the faster, other
devices, more rows) with ``F.linear``. The result differs from ``F.linear``'s only by the order of the sums' rounding.

``prepare_linears`` gives a model's ``nn.Linear`` modules this ``forward`` by changing their class in place: the
weights, their names in the state dict, LoRA wrapped around them and weight tying are unchanged.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FEW_ROWS", "FewRowsLinear", "few_rows_pays", "prepare_linears"]

FEW_ROWS = 4  # at 6 and 8 rows the matrix product was no longer the faster (benchmarks/few_rows_linear.py)
KERNELS = ("auto", "few-rows", "linear")
MEASURED_BYTES = 64 << 20  # weights timed per decision: more than a CPU's caches hold, so they are read from memory
MARGIN = 0.9  # ``W @ x.T`` is chosen only where it takes at most this share of ``F.linear``'s time


class FewRowsLinear(nn.Linear):
    """``nn.Linear`` that computes a few float32 rows on a CPU as ``W @ x.T`` (module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features if self.in_features else 0
        if (not 0 < rows <= FEW_ROWS or x.dtype != torch.float32 or self.weight.dtype != torch.float32
                or x.device.type != "cpu" or torch.is_grad_enabled()):
            return F.linear(x, self.weight, self.bias)
        flat = x.reshape(rows, self.in_features).contiguous()  # row-major: x.T is then the fast operand
        if rows == 1:
            flat = flat.expand(2, -1).contiguous()
        out = (self.weight @ flat.T).T[:rows]
        if self.bias is not None:
            out = out + self.bias
        return out.contiguous().reshape(*x.shape[:-1], self.out_features)


_decisions: dict[tuple, bool] = {}


def few_rows_pays(linears: list[nn.Linear], repeats: int = 3) -> bool:
    """Whether ``W @ x.T`` computes one and two float32 rows through ``linears`` (CPU weights) in at most ``MARGIN``
    of ``F.linear``'s time on this machine at the current thread count, measured on the layers themselves (the
    first ``MEASURED_BYTES`` of them, best of ``repeats``, the kernels interleaved; about 0.1 s for SmolLM2-135M).
    Remembered per process for the same shapes and threads. False where none is a float32 CPU layer."""
    timed, size = [], 0
    for layer in linears:
        if layer.weight.dtype == torch.float32 and layer.weight.device.type == "cpu" and size < MEASURED_BYTES:
            timed.append(layer)
            size += layer.weight.numel() * 4
    if not timed:
        return False
    key = (torch.get_num_threads(), tuple(tuple(layer.weight.shape) for layer in timed))
    if key not in _decisions:
        best = {"linear": float("inf"), "few-rows": float("inf")}
        with torch.inference_mode():
            inputs = {n: torch.randn(2, n) for n in {layer.in_features for layer in timed}}
            for _ in range(repeats):
                for kernel in best:
                    start = time.perf_counter()
                    for rows in (1, 2):
                        for layer in timed:
                            x = inputs[layer.in_features][:rows]
                            if kernel == "linear":
                                F.linear(x, layer.weight, layer.bias)
                            else:  # the very forward the layer would run (a plain nn.Linear has its attributes)
                                FewRowsLinear.forward(layer, x)
                    best[kernel] = min(best[kernel], time.perf_counter() - start)
        _decisions[key] = best["few-rows"] <= MARGIN * best["linear"]
    return _decisions[key]


def prepare_linears(model: nn.Module, kernel: str = "auto") -> int:
    """Makes every plain ``nn.Linear`` in ``model`` a ``FewRowsLinear`` where ``kernel`` is ``"few-rows"``, or
    ``"auto"`` and ``few_rows_pays`` measures it faster on the model's own layers; ``"linear"`` leaves them as they
    are. Returns how many it changed."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)} (got {kernel!r})")
    linears = [module for module in model.modules() if type(module) is nn.Linear]
    if kernel == "linear" or (kernel == "auto" and not few_rows_pays(linears)):
        return 0
    for module in linears:
        module.__class__ = FewRowsLinear
    return len(linears)
