"""Checks on values callers hand to kvmtest before they reach a deadline or a ctypes field.

ctypes wraps an out-of-range integer silently (2**64 + 5 stored in a __u64 is 5) and a NaN or
infinite timeout makes a stuck guest hang forever, so each is refused here with one error
naming the value and where it came from.
"""

import math
import numbers

from .errors import BadArgumentError, InvalidTimeoutError

# The longest timeout accepted: a day. Past that a "timeout" is no bound a run will ever reach, and
# a stuck guest would hang the run as surely as with none (the brief: every guest run has a timeout).
MAX_TIMEOUT = 86400.0


def timeout_problem(value) -> str | None:
    """Why `value` is not a usable timeout in seconds, or None if it is one.

    A timeout is a real number above 0 and at most MAX_TIMEOUT (a day); bool (True is not
    "1 second"), strings, NaN, infinities, 0, negatives and longer values are refused.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return "not a number of seconds"
    try:
        seconds = float(value)
    except OverflowError:
        return "not a finite number of seconds (too large for a float)"
    if math.isnan(seconds):
        return "not a number of seconds (NaN)"
    if math.isinf(seconds):
        return "not a finite number of seconds"
    if seconds <= 0:
        return "must be more than 0 seconds"
    if seconds > MAX_TIMEOUT:
        return f"more than {MAX_TIMEOUT:g} seconds (a day) is no timeout: a stuck guest would hang the run"
    return None


def timeout(value, where: str) -> float:
    """`value` as float seconds; InvalidTimeoutError naming `where` and the value otherwise."""
    problem = timeout_problem(value)
    if problem:
        raise InvalidTimeoutError(f"{where} = {value!r}: {problem}")
    return float(value)


def uint(value, bits: int, what: str) -> int:
    """`value` if it is an integer that fits an unsigned `bits`-bit field; BadArgumentError otherwise."""
    if not isinstance(value, numbers.Integral):
        raise BadArgumentError(f"{what} = {value!r}: not an integer")
    value = int(value)
    if not 0 <= value < 1 << bits:
        raise BadArgumentError(f"{what} = {value:#x}: outside the {bits}-bit field (0 to {(1 << bits) - 1:#x})")
    return value
