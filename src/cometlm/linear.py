"""The backbone's linear layers on a CPU in float32 when they see a few rows at a time, as in decoding.

``torch.nn.functional.linear`` on one float32 row (``x @ W.T``) runs PyTorch's matrix-vector kernel, which on a
2-core AMD EPYC (session 27) used one thread and read the weights at about 19 GB/s; on two to four rows it ran a
matrix product that was slower still (a decoding step that appends a beacon took 1.35x an ordinary one). The same
product written ``W @ x.T`` with ``x`` in row-major order is a kernel that used both threads and took about half the
time (30 decoder layers of SmolLM2-135M: 22.4 ms for one row, 30.9 for two with ``F.linear``; 12.8 and 12.5 this way,
``benchmarks/few_rows_linear.py``; not yet measured on the project's usual Xeon). So ``FewRowsLinear`` computes a
float32 product of up to ``FEW_ROWS`` rows on a CPU that way, one row given twice (a single column is the
matrix-vector kernel again), and everything else (training, bfloat16, where ``F.linear`` is the faster, other
devices, more rows) with ``F.linear``. The result differs from ``F.linear``'s only by the order of the sums' rounding.

``prepare_linears`` gives a model's ``nn.Linear`` modules this ``forward`` by changing their class in place: the
weights, their names in the state dict, LoRA wrapped around them and weight tying are unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FEW_ROWS", "FewRowsLinear", "prepare_linears"]

FEW_ROWS = 4  # at 6 and 8 rows the matrix product was no longer the faster (benchmarks/few_rows_linear.py)


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


def prepare_linears(model: nn.Module) -> int:
    """Makes every plain ``nn.Linear`` in ``model`` a ``FewRowsLinear``; returns how many it changed."""
    changed = 0
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = FewRowsLinear
            changed += 1
    return changed
