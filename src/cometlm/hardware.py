"""What the machine computes natively, read once: which dtype to run in and which shortcuts pay on it.

Linux's /proc/cpuinfo lists a CPU's instruction-set extensions on its ``flags`` (x86) or ``Features`` (Arm) lines.
Two facts matter here: whether bfloat16 arithmetic is native (AMX-BF16 or AVX512-BF16 on x86, BF16 on Arm: then
bfloat16 is the default dtype), and whether the CPU has AMX matrix units, which make a bfloat16 matrix product's
cost its weights' reading rather than its rows (then cutting a few rows out of a product does not pay).
"""

from __future__ import annotations

import functools
from pathlib import Path

# /proc/cpuinfo flags of native bfloat16 arithmetic: Intel AMX and AVX512-BF16, Arm's BF16 extension.
BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16", "bf16"})
AMX_CPU_FLAGS = frozenset({"amx_bf16"})


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The flags named on a /proc/cpuinfo text's flags or features lines (never words of other lines)."""
    found: set[str] = set()
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip().lower() in ("flags", "features"):
            found.update(value.split())
    return frozenset(found)


@functools.lru_cache(maxsize=1)
def this_cpu_flags() -> frozenset[str]:
    """This machine's CPU flags (empty where /proc/cpuinfo cannot be read, e.g. off Linux)."""
    try:
        return cpu_flags(Path("/proc/cpuinfo").read_text())
    except OSError:
        return frozenset()


@functools.lru_cache(maxsize=1)
def cpu_model_name() -> str:
    """This machine's CPU model as /proc/cpuinfo names it ("" where it cannot be read), for benchmark records."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    for line in lines:
        name, _, value = line.partition(":")
        if name.strip() == "model name":
            return value.strip()
    return ""


def cpu_flags_say_bfloat16(cpuinfo: str) -> bool:
    """Whether a /proc/cpuinfo text lists a native bfloat16 flag (``BF16_CPU_FLAGS``) on a flags or features line."""
    return bool(BF16_CPU_FLAGS & cpu_flags(cpuinfo))


def native_bfloat16(device: str = "cpu") -> bool:
    """Whether ``device`` computes in bfloat16 natively: a CUDA GPU that supports it (not by emulation), or a CPU
    whose flags name AMX-BF16, AVX512-BF16 or Arm's BF16. Elsewhere, or when unreadable, False."""
    import torch

    kind = str(device).split(":")[0]
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    return kind == "cpu" and bool(BF16_CPU_FLAGS & this_cpu_flags())


def cpu_has_amx() -> bool:
    """Whether this machine's CPU has AMX bfloat16 matrix units (Intel Xeon since Sapphire Rapids)."""
    return bool(AMX_CPU_FLAGS & this_cpu_flags())
