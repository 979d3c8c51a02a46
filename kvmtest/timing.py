"""Two readings of a guest or KVM clock, bracketed by the host's CLOCK_MONOTONIC.

Rate checks (the guest TSC at KVM_GET_TSC_KHZ, kvmclock, KVM_GET_CLOCK, the APIC timer) compare
how far a clock moved between two readings with how far the host's clock moved: at least the
interval between the end of the first reading and the start of the second (`inner_ns`), at most
the interval from the start of the first to the end of the second (`outer_ns`).
"""

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Bracketed:
    """`first` and `second` as `read` returned them; host intervals in nanoseconds."""

    first: Any
    second: Any
    inner_ns: int  # end of the first reading -> start of the second: the least the host saw
    outer_ns: int  # start of the first reading -> end of the second: the most the host saw


def bracketed_pair(read: Callable[[], Any], gap_s: float) -> Bracketed:
    """Call `read` twice, `gap_s` seconds apart, timing each call with CLOCK_MONOTONIC."""
    t0 = time.monotonic_ns()
    first = read()
    t1 = time.monotonic_ns()
    time.sleep(gap_s)
    t2 = time.monotonic_ns()
    second = read()
    t3 = time.monotonic_ns()
    return Bracketed(first, second, t2 - t1, t3 - t0)
