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

In bfloat16 on a CPU, ``F.linear`` hands each product to oneDNN with the weight in PyTorch's plain layout, which
oneDNN reorders into its blocked one on every call. ``PackedLinear`` reorders it once (oneDNN's packed weight, kept
beside the plain one, which training, saving and LoRA keep using) and computes products without gradients from it:
on the Xeon with AMX (session 34) one SmolLM2-135M layer's seven products ran 1.3-1.45x faster at 1, 2, 161 and 193
rows, with the same results to the bit at 128 rows; in float32 it gained nothing. It is chosen by measurement
too (``packing_pays``). The price is memory: a second copy of every packed weight (about 270 MB for SmolLM2-135M).

``prepare_linears`` gives a model's ``nn.Linear`` modules one of these ``forward``s by changing their class in place:
the weights, their names in the state dict, LoRA wrapped around them and weight tying are unchanged.
"""

from __future__ import annotations

import time
import weakref

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FEW_ROWS", "KERNELS", "FewRowsLinear", "PackedLinear", "few_rows_pays", "packed_bytes", "packing_available",
           "packing_pays", "prepare_linears"]

FEW_ROWS = 4  # at 6 and 8 rows the matrix product was no longer the faster (benchmarks/few_rows_linear.py)
KERNELS = ("auto", "few-rows", "packed", "linear")
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


def packing_available() -> bool:
    """Whether this PyTorch has oneDNN's packed-weight linear operators and bfloat16 support for them."""
    ops = torch.ops.mkldnn
    return (torch.backends.mkldnn.is_available() and hasattr(ops, "_reorder_linear_weight")
            and hasattr(ops, "_linear_pointwise") and bool(ops._is_mkldnn_bf16_supported()))


# Each PackedLinear's packed weight, with the (storage, version) of the plain weight it was made from: kept outside
# the module, which must stay copyable and picklable (an opaque oneDNN tensor is neither).
_packed: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple[int, int], torch.Tensor]]" = weakref.WeakKeyDictionary()


def packed_bytes() -> int:
    """The memory the packed weights of every ``PackedLinear`` in this process take."""
    return sum(weight.numel() * weight.element_size() for _, weight in list(_packed.values()))


class PackedLinear(nn.Linear):
    """``nn.Linear`` that computes bfloat16 products on a CPU without gradients from its weight packed once for
    oneDNN (module docstring); everything else (gradients on, other dtypes or devices, a non-contiguous input) is
    ``F.linear``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        if (torch.is_grad_enabled() or x.dtype != torch.bfloat16 or weight.dtype != torch.bfloat16
                or x.device.type != "cpu" or weight.device.type != "cpu" or not x.is_contiguous()
                or (bias is not None and bias.dtype != torch.bfloat16) or weight.is_inference()):
            # (a weight made under inference mode has no version counter to say when it changed)
            return F.linear(x, weight, bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight(), bias, "none", [], "")

    def packed_weight(self) -> torch.Tensor:
        """The weight in oneDNN's packed layout, packed again whenever the plain weight was replaced or changed in
        place (a LoRA merge, ``load_state_dict``)."""
        made_from = (self.weight.data_ptr(), self.weight._version)
        held = _packed.get(self)
        if held is None or held[0] != made_from:
            with torch.no_grad():
                held = _packed[self] = (made_from, torch.ops.mkldnn._reorder_linear_weight(self.weight.detach()))
        return held[1]


_decisions: dict[tuple, bool] = {}
PACKED_ROWS = (1, 128)  # rows of a decoding step and of a chunk the packing is timed at


def _measured_layers(linears: list[nn.Linear], dtype: torch.dtype) -> list[nn.Linear]:
    """The first ``MEASURED_BYTES`` of ``linears`` whose weights are ``dtype`` on a CPU."""
    timed, size = [], 0
    for layer in linears:
        if layer.weight.dtype == dtype and layer.weight.device.type == "cpu" and size < MEASURED_BYTES:
            timed.append(layer)
            size += layer.weight.numel() * layer.weight.element_size()
    return timed


def _pays(name: str, timed: list[nn.Linear], rows: tuple[int, ...], dtype: torch.dtype, forward, repeats: int) -> bool:
    """Whether ``forward(layer, x)`` computes ``rows`` rows through ``timed`` in at most ``MARGIN`` of ``F.linear``'s
    time (best of ``repeats``, the two interleaved), remembered per process for the same kernel, shapes and threads."""
    key = (name, torch.get_num_threads(), tuple(tuple(layer.weight.shape) for layer in timed))
    if key not in _decisions:
        best = {"linear": float("inf"), name: float("inf")}
        with torch.inference_mode():
            inputs = {n: torch.randn(max(rows), n, dtype=dtype) for n in {layer.in_features for layer in timed}}
            for _ in range(repeats):
                for kernel in best:
                    start = time.perf_counter()
                    for count in rows:
                        for layer in timed:
                            x = inputs[layer.in_features][:count]
                            if kernel == "linear":
                                F.linear(x, layer.weight, layer.bias)
                            else:  # the very forward the layer would run (a plain nn.Linear has its attributes)
                                forward(layer, x)
                    best[kernel] = min(best[kernel], time.perf_counter() - start)
        _decisions[key] = best[name] <= MARGIN * best["linear"]
    return _decisions[key]


def few_rows_pays(linears: list[nn.Linear], repeats: int = 3) -> bool:
    """Whether ``W @ x.T`` computes one and two float32 rows through ``linears`` (CPU weights) in at most ``MARGIN``
    of ``F.linear``'s time on this machine at the current thread count, measured on the layers themselves (the
    first ``MEASURED_BYTES`` of them, best of ``repeats``, the kernels interleaved; about 0.1 s for SmolLM2-135M).
    Remembered per process for the same shapes and threads. False where none is a float32 CPU layer."""
    timed = _measured_layers(linears, torch.float32)
    return bool(timed) and _pays("few-rows", timed, (1, 2), torch.float32, FewRowsLinear.forward, repeats)


def packing_pays(linears: list[nn.Linear], repeats: int = 3) -> bool:
    """Whether ``PackedLinear`` computes ``PACKED_ROWS`` bfloat16 rows through ``linears`` (CPU weights) in at most
    ``MARGIN`` of ``F.linear``'s time, measured as ``few_rows_pays`` measures. False where none is a bfloat16 CPU
    layer or this PyTorch cannot pack."""
    timed = _measured_layers(linears, torch.bfloat16)
    if not timed or not packing_available():
        return False

    def packed(layer, x):
        return torch.ops.mkldnn._linear_pointwise(x, PackedLinear.packed_weight(layer), layer.bias, "none", [], "")

    try:
        return _pays("packed", timed, PACKED_ROWS, torch.bfloat16, packed, repeats)
    finally:  # packed again at their first product without gradients: a model that only trains never holds them
        for layer in timed:
            _packed.pop(layer, None)


def prepare_linears(model: nn.Module, kernel: str = "auto") -> int:
    """Gives every plain ``nn.Linear`` in ``model`` a faster ``forward`` by changing its class: ``"few-rows"`` makes
    them all ``FewRowsLinear``, ``"packed"`` all ``PackedLinear``; ``"auto"`` makes the float32 CPU ones
    ``FewRowsLinear`` where ``few_rows_pays`` measures it faster on them and the bfloat16 CPU ones ``PackedLinear``
    where ``packing_pays`` does; ``"linear"`` leaves them as they are. Returns how many it changed."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)} (got {kernel!r})")
    linears = [module for module in model.modules() if type(module) is nn.Linear]
    if kernel == "linear":
        return 0
    if kernel == "packed" and not packing_available():
        raise ValueError("this PyTorch cannot pack bfloat16 weights (it lacks oneDNN's packed linear operators or "
                         "their bfloat16 support): use the kernel 'auto' or 'linear'")
    if kernel != "auto":
        chosen = {module: FewRowsLinear if kernel == "few-rows" else PackedLinear for module in linears}
    else:
        chosen = {}
        for dtype, kind, pays in ((torch.float32, FewRowsLinear, few_rows_pays),
                                  (torch.bfloat16, PackedLinear, packing_pays)):
            group = [m for m in linears if m.weight.dtype == dtype and m.weight.device.type == "cpu"]
            if group and pays(group):
                chosen.update(dict.fromkeys(group, kind))
    for module, kind in chosen.items():
        module.__class__ = kind
    return len(chosen)
