"""What kvmtest's pytest markers mean: each marker's signature, and the one function that acts on it.

    modes(*names, **properties)        one test per CPU mode (kvmtest.guest.mode_select)
    requires_cap(name, minimum=1)      skip unless KVM_CHECK_EXTENSION(name) >= minimum
    requires_cpu(feature)              skip unless KVM_GET_SUPPORTED_CPUID reports the feature
    guest_timeout(seconds)             per-KVM_RUN timeout (kvmtest.fixtures.guest_timeout)
    regression(cve=None, commit=None)  the CVE / kernel fix the test pins, carried into every report
    mmu_dependent                      the outcome depends on the host MMU: reports name its mode
    waits                              mostly waits (timers, timeouts): kvmtest run's host shards run it apart

A marker with bad arguments fails collection of its test with one message naming the test and
the argument (BadArgumentError, UnknownModeError), never a silent no-op.
"""

import re

import pytest

from . import fingerprint as fpmod
from .abi.capabilities import CAPABILITY_NAMES
from .cpuid import FEATURES
from .errors import BadArgumentError
from .fixtures import session_kvm
from .guest.mode_select import marker_modes
from .kvm import cap_number

MARKERS = {
    "modes": "modes(*names, **properties): run the test once per CPU mode: names ('all', 'cpl0' or mode "
             "names), then the modes with the properties (paging=, cpl=, code_bits=, long=, protected=, feature=, "
             "sample=, order=; kvmtest.guest.mode_select.select); the test takes a `mode` argument",
    "requires_cap": "requires_cap(name, minimum=1): skip unless KVM_CHECK_EXTENSION(name) >= minimum",
    "requires_cpu": "requires_cpu(feature): skip unless KVM_GET_SUPPORTED_CPUID reports the feature",
    "guest_timeout": "guest_timeout(seconds): per-KVM_RUN timeout for guests made in this test",
    "regression": "regression(cve=None, commit=None): the CVE (CVE-YYYY-NNNN) and/or the kernel commit that "
                  "fixed the bug this test pins; shown in the JUnit, KTAP and HTML reports",
    "mmu_dependent": "mmu_dependent: the outcome depends on how the host's MMU virtualizes guest paging (TDP or "
                     "shadow paging); each report of the test names the host's MMU mode",
    "waits": "waits: the test spends most of its time waiting (a timer to fire, a timeout to pass, a thread to "
             "sleep), not computing; `kvmtest run -j N` on a host runs such tests in one more shard beside the N "
             "(kvmtest.shard_claims), so that no CPU idles while they wait. Changes nothing else",
}

_CVE = re.compile(r"CVE-\d{4}-\d{4,}")
_COMMIT = re.compile(r"[0-9a-f]{4,40}")  # a git commit id, full or abbreviated as git accepts it


def register(config) -> None:
    """Register every marker with its signature (shown by `pytest --markers`)."""
    for text in MARKERS.values():
        config.addinivalue_line("markers", text)


def modes_of(definition, only: list[str]) -> list[str] | None:
    """The CPU modes a test function runs in (its `modes` marker), narrowed to `only` when that is
    not empty (--kvm-modes); None for a test without the marker.

    Raises UnknownModeError or BadArgumentError naming the test for a bad marker."""
    marker = definition.get_closest_marker("modes")
    if marker is None:
        return None
    names = marker_modes(marker.args, marker.kwargs, f"@pytest.mark.modes on {definition.nodeid}")
    return [n for n in names if n in only] if only else names


def waits(definition) -> bool:
    """Whether the test is marked `waits`; BadArgumentError naming the test when the marker has
    arguments (it takes none: a reason or a duration given would mean nothing)."""
    marker = definition.get_closest_marker("waits")
    if marker is not None and (marker.args or marker.kwargs):
        raise BadArgumentError(f"@pytest.mark.waits on {definition.nodeid}: takes no arguments, got "
                               f"args={marker.args!r} kwargs={marker.kwargs!r}")
    return marker is not None


def regression(definition) -> list[tuple[str, str]]:
    """The (regression_commit, ...) and (regression_cve, ...) report properties of a test's
    `regression` marker, empty without one.

    Raises BadArgumentError naming the test for a marker without a valid cve= or commit=."""
    marker = definition.get_closest_marker("regression")
    if marker is None:
        return []
    where = f"@pytest.mark.regression on {definition.nodeid}"
    unknown = set(marker.kwargs) - {"cve", "commit"}
    if marker.args or unknown or not marker.kwargs:
        raise BadArgumentError(f"{where}: takes cve='CVE-YYYY-NNNN' and/or commit='<git commit id>' as keywords, "
                               f"got args={marker.args!r} kwargs={marker.kwargs!r}")
    cve, commit = marker.kwargs.get("cve"), marker.kwargs.get("commit")
    if cve is not None and not (isinstance(cve, str) and _CVE.fullmatch(cve)):
        raise BadArgumentError(f"{where}: cve={cve!r} is not a CVE id such as 'CVE-2021-38198'")
    if commit is not None and not (isinstance(commit, str) and _COMMIT.fullmatch(commit)):
        raise BadArgumentError(f"{where}: commit={commit!r} is not a git commit id (4 to 40 lowercase hex digits)")
    return [(f"regression_{key}", value) for key, value in (("commit", commit), ("cve", cve)) if value]


def check_requirements(item, fp: dict) -> None:
    """Skip `item` unless the host meets its requires_cap and requires_cpu markers, naming what is
    missing. Capabilities come from the fingerprint `fp` (nothing opened); CPU features from the
    session's one KVM device (kvmtest.fixtures.session_kvm) and its cached supported CPUID.
    Where the fingerprint says KVM is unusable, the test's own fixtures report why."""
    if fp.get("kvm") is None:
        return
    for marker in item.iter_markers("requires_cap"):
        _check_cap(fp, *marker.args, **marker.kwargs)
    for marker in item.iter_markers("requires_cpu"):
        _check_cpu(item.config, *marker.args)


def _check_cap(fp, name, minimum=1):
    full = CAPABILITY_NAMES.name(cap_number(name))
    value = fpmod.capability(fp, full)
    if value < minimum:
        pytest.skip(f"needs {full} >= {minimum}; KVM_CHECK_EXTENSION reports {value}")


def _check_cpu(config, feature):
    if feature not in FEATURES:
        raise pytest.UsageError(f"requires_cpu({feature!r}): unknown feature; known: {', '.join(FEATURES)}")
    if not session_kvm(config).has_feature(feature):
        pytest.skip(f"needs CPU feature {FEATURES[feature]}, which KVM_GET_SUPPORTED_CPUID does not report")
