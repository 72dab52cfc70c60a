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
