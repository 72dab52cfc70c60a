"""The one progress bar of the package (tqdm): reading, generating, scoring, training and evaluation grids.

Long work shows a live bar by default; ``enabled=False`` hides it (``--no-progress`` on the command line, logs).
A nested bar (a long read inside an evaluation cell) sits on the line below its parent and disappears when done.
"""

from __future__ import annotations

from tqdm.auto import tqdm


def progress_bar(iterable=None, *, total: int | None = None, desc: str, unit: str, enabled: bool = True,
                 nested: bool = False, initial: int = 0, unit_scale: bool = False):
    """A tqdm bar over ``iterable`` (or ``total`` units updated by hand); a no-op bar when not ``enabled``."""
    return tqdm(iterable, total=total, initial=initial, desc=desc, unit=unit, unit_scale=unit_scale,
                position=1 if nested else None, leave=not nested, dynamic_ncols=True, disable=not enabled)
