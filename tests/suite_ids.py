"""The suites' collected test ids, for kvmtest's own tests that hold data files to the suites
(known-issue patterns, the peer coverage map): a pattern there must name a test that exists, so
that renaming or deleting a test cannot leave a dead reference behind."""

import subprocess
import sys
from functools import lru_cache
from pathlib import Path

from kvmtest import known_issues

ROOT = Path(__file__).resolve().parent.parent


@lru_cache(maxsize=4)
def collected(paths: tuple = ("suites",)) -> tuple:
    """Test ids pytest collects from `paths`, once per process. Collection needs no /dev/kvm:
    mode parametrization and markers are resolved without it."""
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                          "-p", "no:xdist", *paths], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         check=False)   # the assertion below reports what went wrong
    ids = tuple(line for line in out.stdout.splitlines() if line.startswith("suites/") and "::" in line)
    assert ids, f"collecting {paths} found nothing:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    return ids


def unmatched(patterns, ids) -> list[str]:
    """The test-id globs (`*` and `?` wildcards, brackets literal, as known-issue files use them)
    that match none of `ids`."""
    return [p for p in patterns if not any(known_issues.glob_to_regex(p).fullmatch(i) for i in ids)]
