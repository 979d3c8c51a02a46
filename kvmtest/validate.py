"""Checks on values callers hand to kvmtest before they reach a deadline or a ctypes field.

ctypes wraps an out-of-range integer silently (2**64 + 5 stored in a __u64 is 5) and a NaN or
infinite timeout makes a stuck guest hang forever, so each is refused here with one error
naming the value and where it came from.
"""

import math
import numbers
from collections.abc import Iterable, Mapping

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
    if type(value) is int and 0 <= value < 1 << bits:  # the usual case, without the ABC check below
        return value
    if not isinstance(value, numbers.Integral):
        raise BadArgumentError(f"{what} = {value!r}: not an integer")
    value = int(value)
    if not 0 <= value < 1 << bits:
        raise BadArgumentError(f"{what} = {value:#x}: outside the {bits}-bit field (0 to {(1 << bits) - 1:#x})")
    return value


def _show(value, small: bool) -> str:
    return str(value) if small else f"{value:#x}"


def int_in(value, low: int, high: int, what: str, *, decimal: bool | None = None) -> int:
    """`value` if it is an integer from `low` to `high` (inclusive); BadArgumentError naming `what`
    otherwise. For limits the field's width does not give (an IDT vector, a handler address in
    16-bit code). bool is refused: True is no vector or address. The message gives the numbers
    in hex unless `decimal` (default: decimal when `high` is at most 4096)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise BadArgumentError(f"{what} = {value!r}: not an integer")
    value = int(value)
    if not low <= value <= high:
        small = high <= 0x1000 if decimal is None else decimal
        raise BadArgumentError(f"{what} = {_show(value, small)}: outside {_show(low, small)} to {_show(high, small)}")
    return value


def uints(values, bits: int, what: str, *, indexed: bool = False) -> list[int]:
    """`values` (any iterable of integers but a string, bytes or a mapping) as a list, each fitting
    an unsigned `bits`-bit field; the error names `what` (with `[i]` if `indexed`) and the first
    bad entry."""
    if isinstance(values, (str, bytes, bytearray, Mapping)) or not isinstance(values, Iterable):
        raise BadArgumentError(f"{what}: expected a list of integers, got {_brief(values)}")
    return [uint(v, bits, f"{what}[{i}]" if indexed else what) for i, v in enumerate(values)]


def mapping(values, what: str) -> Mapping:
    """`values` if it is a mapping (a dict); BadArgumentError otherwise."""
    if not isinstance(values, Mapping):
        raise BadArgumentError(f"{what}: expected a dict, got {_brief(values)}")
    return values


def instance(value, kind, what: str):
    """`value` if it is an instance of `kind` (a UAPI struct type, or a tuple of types); otherwise
    BadArgumentError, before ctypes hands KVM a pointer to an object of another size or layout."""
    if not isinstance(value, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise BadArgumentError(f"{what}: expected a {names}, got {_brief(value)}")
    return value


def data(value, what: str) -> bytes:
    """`value` (bytes, bytearray, memoryview, a ctypes array or struct: anything with the buffer
    protocol) as bytes; a str, int or None is refused, not encoded or turned into zero bytes."""
    try:
        return bytes(memoryview(value))
    except TypeError:
        raise BadArgumentError(f"{what}: expected bytes, got {_brief(value)}") from None


def _brief(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
