"""Comparison of two runs (kernel A vs kernel B, yesterday vs today): what regressed, what got
fixed, what is new, removed, skipped differently, or flaky across repeats.

A regression is a test that now fails, or lost coverage: a test that ran in the base run and is
skipped or missing in the new one (a run without /dev/kvm skips everything and must not compare
clean). "Fixed" means it failed and now runs clean (passed, xfailed or xpassed); a failure that is
now skipped was not fixed, it went untested."""

from collections import defaultdict
from dataclasses import dataclass, field

from .results import BAD, RAN, Result

GOOD = ("passed", "xfailed", "xpassed")


def _verdict(statuses: list[str]) -> str:
    """One status for a test that may have run several times on one side."""
    bad = any(s in BAD for s in statuses)
    good = any(s in GOOD for s in statuses)
    if bad and good:
        return "flaky"
    if bad:
        return next(s for s in statuses if s in BAD)
    if good:
        return next(s for s in GOOD if s in statuses)
    return statuses[0]


@dataclass
class Comparison:
    base_hosts: list[str]
    new_hosts: list[str]
    new_failures: list[tuple[str, str, str]] = field(default_factory=list)  # (id, before, after)
    fixed: list[tuple[str, str, str]] = field(default_factory=list)
    still_failing: list[str] = field(default_factory=list)
    new_tests: list[tuple[str, str]] = field(default_factory=list)
    removed_tests: list[tuple[str, str]] = field(default_factory=list)
    skip_changes: list[tuple[str, str, str]] = field(default_factory=list)
    flaky: list[tuple[str, str]] = field(default_factory=list)  # (id, which side)
    lost_coverage: list[tuple[str, str, str]] = field(default_factory=list)  # (id, before, "skipped"/"absent")
    messages: dict[str, str] = field(default_factory=dict)

    @property
    def regressed(self) -> bool:
        return bool(self.new_failures or self.lost_coverage)

    def as_dict(self) -> dict:
        return {
            "base_hosts": self.base_hosts, "new_hosts": self.new_hosts, "regressed": self.regressed,
            "new_failures": [{"id": i, "before": b, "after": a, "message": self.messages.get(i, "")}
                             for i, b, a in self.new_failures],
            "fixed": [{"id": i, "before": b, "after": a} for i, b, a in self.fixed],
            "still_failing": self.still_failing,
            "new_tests": [{"id": i, "status": s} for i, s in self.new_tests],
            "removed_tests": [{"id": i, "status": s} for i, s in self.removed_tests],
            "skip_changes": [{"id": i, "before": b, "after": a} for i, b, a in self.skip_changes],
            "flaky": [{"id": i, "side": s} for i, s in self.flaky],
            "lost_coverage": [{"id": i, "before": b, "after": a} for i, b, a in self.lost_coverage],
        }

    def text(self) -> str:
        lines = [f"base: {', '.join(self.base_hosts) or 'unknown host'}",
                 f"new:  {', '.join(self.new_hosts) or 'unknown host'}"]
        if set(self.base_hosts) != set(self.new_hosts):
            lines.append("note: the two runs come from different hosts")

        def section(title, rows):
            lines.append(f"{title}: {len(rows)}")
            lines.extend(f"  {row}" for row in rows)

        section("NEW FAILURES", [f"{i}: {b} -> {a}" + (f"  ({self.messages[i]})" if self.messages.get(i) else "")
                                 for i, b, a in self.new_failures])
        section("LOST COVERAGE (ran before, not now)", [f"{i}: {b} -> {a}" for i, b, a in self.lost_coverage])
        section("fixed", [f"{i}: {b} -> {a}" for i, b, a in self.fixed])
        section("still failing", self.still_failing)
        section("new tests", [f"{i} ({s})" for i, s in self.new_tests])
        section("removed tests", [f"{i} (was {s})" for i, s in self.removed_tests])
        section("skip changes", [f"{i}: {b} -> {a}" for i, b, a in self.skip_changes])
        section("flaky", [f"{i} (in {s})" for i, s in self.flaky])
        lines.append("REGRESSED" if self.regressed else "no regressions")
        return "\n".join(lines)


def compare(base: list[Result], new: list[Result]) -> Comparison:
    def group(results):
        by_id = defaultdict(list)
        for r in results:
            by_id[r.id].append(r)
        return by_id

    b, n = group(base), group(new)
    cmp = Comparison(sorted({r.host for r in base if r.host}), sorted({r.host for r in new if r.host}))
    for test_id in sorted(set(b) | set(n)):
        before = _verdict([r.status for r in b[test_id]]) if test_id in b else None
        after = _verdict([r.status for r in n[test_id]]) if test_id in n else None
        for side, verdict in (("base", before), ("new", after)):
            if verdict == "flaky":
                cmp.flaky.append((test_id, side))
        if before is None:
            assert after is not None  # test_id comes from b or n, and it is not in b
            cmp.new_tests.append((test_id, after))
            if after in BAD or after == "flaky":
                cmp.new_failures.append((test_id, "absent", after))
            continue
        if after is None:
            cmp.removed_tests.append((test_id, before))
            if before in RAN or before == "flaky":
                cmp.lost_coverage.append((test_id, before, "absent"))
            continue
        bad_before, bad_after = before in BAD or before == "flaky", after in BAD or after == "flaky"
        if bad_after and not bad_before:
            cmp.new_failures.append((test_id, before, after))
            cmp.messages[test_id] = next((r.message for r in n[test_id] if r.status in BAD), "")
        elif bad_before and after in GOOD:
            cmp.fixed.append((test_id, before, after))
        elif bad_before and bad_after:
            cmp.still_failing.append(test_id)
        if (before == "skipped") != (after == "skipped"):
            cmp.skip_changes.append((test_id, before, after))
        if after == "skipped" and (before in RAN or before == "flaky"):
            cmp.lost_coverage.append((test_id, before, after))
    return cmp
