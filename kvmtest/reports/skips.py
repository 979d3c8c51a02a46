"""Skip reasons folded into groups a reader takes in at once ("592 skipped: KVM does not report
CPU feature smap (279), pdpe1gb (220), smep (93)") instead of one line per test or per site.

Used by the terminal summary and the HTML report, so both say the same thing."""

import re
from collections import Counter
from collections.abc import Iterable

# The forms kvmtest's skips take when KVM lacks a CPU feature:
#   "needs CPU feature CPUID.0x7.0:EBX[20] (smap), which KVM_GET_SUPPORTED_CPUID does not report"
#   "CR4.SMAP needs the smap CPUID bit, which KVM does not report"
#   "needs CPUID.0x80000001.0:EDX[27] (rdtscp), which neither KVM_GET_SUPPORTED_CPUID nor
#    KVM_GET_EMULATED_CPUID reports"
_NOT_REPORTED = re.compile(r"(?:\((?P<paren>\w+)\)|the (?P<bit>\w+) CPUID bit), which (?:neither )?KVM[\w ]*?"
                           r"(?:does not report|reports)\.?$")
FEATURE_GROUP = "KVM does not report CPU feature"


def clean(reason: str) -> str:
    """pytest's skip text without its 'Skipped: ' prefix."""
    return (reason or "").strip().removeprefix("Skipped: ").strip() or "no reason given"


def missing_feature(reason: str) -> str | None:
    """The CPU feature a skip says KVM does not report, or None for any other skip."""
    m = _NOT_REPORTED.search(clean(reason))
    return (m.group("paren") or m.group("bit")) if m else None


def group_skips(reasons: Iterable[str]) -> list[tuple[int, str]]:
    """(count, text) per group, largest first: every missing-CPU-feature skip in one group naming
    each feature with its count, every other reason on its own."""
    features: Counter[str] = Counter()
    others: Counter[str] = Counter()
    for reason in reasons:
        feature = missing_feature(reason)
        if feature:
            features[feature] += 1
        else:
            others[clean(reason)] += 1
    groups = [(n, text) for text, n in others.items()]
    if features:
        named = ", ".join(f"{name} ({n})" for name, n in features.most_common())
        groups.append((sum(features.values()), f"{FEATURE_GROUP} {named}"))
    return sorted(groups, key=lambda g: (-g[0], g[1]))
