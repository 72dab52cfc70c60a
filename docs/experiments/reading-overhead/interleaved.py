"""The timing loop the reading-overhead A/B scripts share: every variant once per round, CPU time, best of rounds."""

import time


def interleaved(runs: dict, repeats: int) -> dict:
    """Runs each of ``runs`` (name -> callable) once per round, ``repeats`` rounds; CPU seconds per name."""
    seconds = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.process_time()
            run()
            seconds[name].append(round(time.process_time() - start, 3))
    return seconds


def report(dtype: str, seconds: dict, reference: str) -> None:
    """Prints each variant's times, its best and its best over ``reference``'s best."""
    for name, s in seconds.items():
        print(f"{dtype} {name}: {s} best {min(s):.3f} s ({min(s) / min(seconds[reference]):.3f}x {reference})")
