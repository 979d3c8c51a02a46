"""Choosing CPU modes by property: a check asks for "every paged mode at CPL3", not a list of names.

A check names what its behaviour depends on (code size, paging form, CPL, long mode, protection,
a CPU feature) and gets every start mode of kvmtest.guest.modes with those properties. A mode
added there joins every selection it matches; no suite changes. Where running every matching
mode would repeat one check without adding coverage, a check draws from a named sample
(SAMPLES), which says why its modes stand for the others.

    select(code_bits=64)                        -> ("long64", "long64-cpl3")
    select(sample="per-code-size", cpl=0)       -> ("real", "pm32", "long64", "compat32")
    select(long=True, order="widest")           -> ("long64", "long64-cpl3", "compat32", "compat32-cpl3")

`@pytest.mark.modes(...)` takes the same keywords (marker_modes); a union of selections is a
sum of tuples: `modes(*select(protected=False) + select(long=True, cpl=0))`.
"""

from dataclasses import dataclass

from ..errors import BadArgumentError
from .modes import ALL_MODES, MODES, CpuMode, get_mode


class _Any:
    """The `feature=ANY` sentinel: no filter on the CPU feature a mode needs."""

    def __repr__(self) -> str:
        return "ANY"


ANY = _Any()

# Paging structure levels per paging form (SDM Vol. 3A 4.1.1): how deep a walk is, for "widest" order.
PAGING_LEVELS = {None: 0, "32": 2, "pae": 3, "4level": 4, "5level": 5}
ORDERS = ("library", "widest")
# select()'s keywords, which @pytest.mark.modes takes too
KEYWORDS = ("paging", "cpl", "code_bits", "long", "protected", "feature", "sample", "order")


@dataclass(frozen=True)
class Sample:
    """A named, hand-picked set of modes: the first mode (in library order) of each combination of
    the `one_per` properties, among the modes `among` selects; `reason` says why they suffice."""

    name: str
    among: tuple[tuple[str, object], ...]
    one_per: tuple[str, ...]
    reason: str

    def modes(self) -> list[CpuMode]:
        """The sample's modes, in library order (feature-gated modes included; select() filters)."""
        seen, picked = set(), []
        for m in _filtered(_start_modes(), dict(self.among), "sample " + self.name):
            key = tuple(getattr(m, p) for p in self.one_per)
            if key not in seen:
                seen.add(key)
                picked.append(m)
        return picked


SAMPLES = {s.name: s for s in (
    Sample("per-code-size", (), ("code_bits", "long", "cpl"),
           "one mode for each way the processor decodes and runs code (16-bit, 32-bit, 64-bit, "
           "compatibility mode) at each CPL, the simplest of each (no paging where there is a choice): "
           "for instruction, exception and exit behaviour that paging does not change, where the paged "
           "variants of 32-bit code would run the same check again"),
    Sample("per-paging-form", (("paging", True),), ("paging", "cpl"),
           "one mode for each page-table format (32-bit, PAE, 4-level, 5-level paging; SDM Vol. 3A "
           "4.1.1) at each CPL: for paging behaviour that the code size does not change"),
)}


def _start_modes() -> list[CpuMode]:
    """Every mode a guest can start in, in library order (`reset` is for mode-switch tests only)."""
    return [MODES[n] for n in ALL_MODES]


def _check(prop: str, wanted, allowed, where: str):
    values = wanted if isinstance(wanted, tuple) else (wanted,)
    if not values:
        raise BadArgumentError(f"{where}: {prop}=() selects nothing; give a value or leave {prop} out")
    for v in values:
        if not any(v is a or (type(v) is type(a) and v == a) for a in allowed):
            raise BadArgumentError(f"{where}: {prop}={v!r} is not one of {', '.join(map(repr, allowed))}")
    return values


def _paging_matches(mode: CpuMode, value) -> bool:
    if value is True:
        return mode.paging is not None
    if value is False:
        return mode.paging is None
    return mode.paging == value


def _filtered(modes, props: dict, where: str) -> list[CpuMode]:
    """`modes` with every property in `props` (a value, or a tuple of values any of which matches)."""
    from ..cpuid import FEATURES

    tests = {
        "paging": ((True, False) + tuple(f for f in PAGING_LEVELS if f), _paging_matches),
        "cpl": ((0, 3), lambda m, v: m.cpl == v),
        "code_bits": ((16, 32, 64), lambda m, v: m.code_bits == v),
        "long": ((True, False), lambda m, v: m.long == v),
        "protected": ((True, False), lambda m, v: m.protected == v),
        "feature": ((None,) + tuple(FEATURES), lambda m, v: m.requires == v),
    }
    for prop, wanted in props.items():
        if prop == "feature" and wanted is ANY:
            continue
        allowed, test = tests[prop]
        values = _check(prop, wanted, allowed, where)
        modes = [m for m in modes if any(test(m, v) for v in values)]
    return list(modes)


def _widest_key(mode: CpuMode) -> tuple:
    # 64-bit code first, long mode before legacy, deeper paging first; a CPL3 twin after its base
    return (-mode.code_bits, not mode.long, -PAGING_LEVELS[mode.paging], mode.cpl, ALL_MODES.index(mode.name))


def select(*, paging=None, cpl=None, code_bits=None, long=None, protected=None, feature=None,
           sample: str | None = None, order: str = "library") -> tuple[str, ...]:
    """The names of the start modes with every property given; a property left out (None) is not
    filtered on, except `feature`.

    paging: True (paged), False (not paged), or a form "32", "pae", "4level", "5level" (SDM Vol. 3A
    4.1.1). cpl: 0 or 3. code_bits: 16, 32 or 64 (the code segment's default operand size; 32 in
    compatibility mode). long: IA32_EFER.LMA set. protected: CR0.PE set. Each also takes a tuple
    of values, any of which matches (`paging=(False, "4level")`).
    feature: None (the default) selects only modes every x86-64 host can start; a CPU feature name
    (kvmtest.cpuid.FEATURES, e.g. "la57") only the modes that need it; ANY both. The guest fixture
    skips a mode whose feature KVM does not report.
    sample: draw from that named sample of SAMPLES instead of from every start mode.
    order: "library" (kvmtest.guest.modes order) or "widest" (64-bit code first, then long mode,
    then deeper paging, each CPL3 mode right after its CPL0 twin).

    Raises BadArgumentError for an unknown property value, sample or order, and for a selection
    that matches no mode (a check parametrized with nothing would silently not run).
    """
    where = "mode selection"
    if order not in ORDERS:
        raise BadArgumentError(f"{where}: order={order!r} is not one of {', '.join(map(repr, ORDERS))}")
    if sample is None:
        pool = _start_modes()
    elif sample in SAMPLES:
        pool = SAMPLES[sample].modes()
    else:
        raise BadArgumentError(f"{where}: no sample {sample!r}; kvmtest names {', '.join(SAMPLES)}")
    given = {"paging": paging, "cpl": cpl, "code_bits": code_bits, "long": long, "protected": protected}
    props = {k: v for k, v in given.items() if v is not None}
    props["feature"] = feature
    modes = _filtered(pool, props, where)
    if not modes:
        shown = ", ".join(f"{k}={v!r}" for k, v in props.items()) + (f", sample={sample!r}" if sample else "")
        raise BadArgumentError(f"{where}: no start mode has {shown}")
    if order == "widest":
        modes.sort(key=_widest_key)
    return tuple(m.name for m in modes)


def marker_modes(args: tuple, kwargs: dict, where: str = "@pytest.mark.modes") -> list[str]:
    """The modes `@pytest.mark.modes(*args, **kwargs)` asks for, in order: each positional name
    ("all": every start mode, "cpl0": every CPL0 start mode, or a mode name), then select(**kwargs).
    No arguments at all means "all".

    Raises UnknownModeError for a name kvmtest does not define, BadArgumentError for a bad selection
    or a mode named twice (pytest would run it twice under made-up ids); both name `where`.
    """
    names: list[str] = []
    for arg in args:
        if not isinstance(arg, str):
            raise BadArgumentError(f"{where}: {arg!r} is not a mode name; pass names (unpack a selection "
                                   f"with *) or properties as keywords")
        if arg == "all":
            names += select(feature=ANY)
        elif arg == "cpl0":
            names += select(cpl=0, feature=ANY)
        else:
            names.append(get_mode(arg).name)
    if kwargs:
        unknown = set(kwargs) - set(KEYWORDS)
        if unknown:
            raise BadArgumentError(f"{where}: unknown keyword(s) {', '.join(sorted(unknown))}; a selection takes "
                                   f"{', '.join(KEYWORDS)}")
        try:
            names += select(**kwargs)
        except BadArgumentError as e:
            raise BadArgumentError(f"{where}: {e}") from None
    elif not args:
        names = list(select(feature=ANY))
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise BadArgumentError(f"{where}: mode(s) {', '.join(twice)} selected more than once")
    return names
