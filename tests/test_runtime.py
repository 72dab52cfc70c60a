"""runtime.PeriodicTrim: a loop over chunks gives freed memory back at most once per interval."""

from cometlm.runtime import PeriodicTrim


def test_periodic_trim_trims_first_then_once_per_interval():
    now = [100.0]
    trim = PeriodicTrim(2.0, clock=lambda: now[0])
    done = []
    for _ in range(9):  # one call every 0.5 s: trims at 0, 2, 4 s
        done.append(trim())
        now[0] += 0.5
    assert done == [True, False, False, False, True, False, False, False, True]


def test_periodic_trim_with_no_interval_trims_every_call():
    trim = PeriodicTrim(0.0, clock=lambda: 5.0)
    assert [trim() for _ in range(3)] == [True, True, True]


def test_a_long_run_checks_its_output_file_first(tmp_path):
    """Benchmarks ran for minutes, then lost their numbers to a --out in a folder that did not exist (a traceback)."""
    import subprocess
    import sys
    from pathlib import Path

    from cometlm.files import output_file_problem

    assert output_file_problem(tmp_path / "result.json") is None
    assert "is a folder" in output_file_problem(tmp_path)
    assert "does not exist" in output_file_problem(tmp_path / "missing" / "result.json")
    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    for name in ("batched_generate", "state_sizes", "heldout_loss", "methods_speed", "speed"):
        result = subprocess.run([sys.executable, str(benchmarks / f"{name}.py"), "--out",
                                 str(tmp_path / "missing" / "r.json")], capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and "--out:" in result.stderr, (name, result.stderr[-300:])


def test_files_written_atomically_have_the_usual_permissions(tmp_path):
    """Temporary files and folders are private to their owner; renamed into place, results and saved models stayed
    so (0600, 0700) where every other file of the run was readable (0644 under the usual umask)."""
    import os

    from cometlm.files import atomic_directory, write_json

    mask = os.umask(0o022)
    os.umask(mask)
    write_json(tmp_path / "result.json", {"a": 1})
    with atomic_directory(tmp_path / "model") as folder:
        (folder / "weights").write_bytes(b"0")
    assert (tmp_path / "result.json").stat().st_mode & 0o777 == 0o666 & ~mask
    assert (tmp_path / "model").stat().st_mode & 0o777 == 0o777 & ~mask
