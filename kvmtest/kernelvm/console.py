"""The crash oracle's eyes: what the VM's console and QEMU say, line by line.

Kernel lines carry a printk timestamp ("[   18.000051] ..."; the VM boots with printk.time=1),
so kernel patterns are matched only there and a test's own output cannot fake a panic. QEMU
writes its own fatal errors on the same stream without one ("qemu: fatal: invalid tss type").
"""

import re
from collections import deque
from dataclasses import dataclass

_STAMP = re.compile(r"^(?:<\d>)?\[\s*\d+\.\d+\]\s?")

# (kind, fatal, pattern) in the order they are tried; `fatal` events stop the VM.
KERNEL_PATTERNS = (
    ("panic", True, re.compile(r"^Kernel panic - not syncing")),
    # a soft lockup leaves the kernel running, and under TCG on a busy host a vCPU thread starved of
    # CPU time reads as one; a VM that really hangs is caught by the host's --vm-stall watchdog
    ("soft-lockup", False, re.compile(r"(?:^|: )BUG: soft lockup")),
    ("bug", True, re.compile(r"^kernel BUG at |(?:^|: )BUG: ")),         # BUG(), "BUG: unable to handle ..."
    ("oops", True, re.compile(r"^Oops: |: [0-9a-f]{4} \[#\d+\]")),      # "general protection fault, ...: 0000 [#1] SMP"
    ("warn", False, re.compile(r"^WARNING: (?:CPU: \d+ PID: \d+ )?at ")),
    ("hung-task", False, re.compile(r"^INFO: task \S+ blocked for more than")),
    ("rcu-stall", False, re.compile(r"rcu: INFO: \S+ detected (?:expedited )?stalls")),
)
QEMU_PATTERNS = (
    ("qemu-abort", True, re.compile(r"^qemu(?:-system-\w+)?: (?:fatal:|.*[Aa]ssertion .* failed)")),
    ("qemu-abort", True, re.compile(r"^qemu: uncaught target signal")),
)

WHAT = {"panic": "kernel panic in the VM", "bug": "kernel BUG in the VM", "oops": "kernel oops in the VM",
        "warn": "kernel WARNING in the VM",
        "soft-lockup": "soft lockup in the VM", "hung-task": "hung task in the VM", "rcu-stall": "RCU stall in the VM",
        "qemu-abort": "QEMU aborted"}


@dataclass(frozen=True)
class ConsoleEvent:
    """Something a console line showed: its `kind` (a key of WHAT: panic, oops, BUG, WARNING, soft
    lockup, hung task, RCU stall, QEMU abort), whether it is `fatal` to the VM, and the `line`."""
    kind: str    # one of WHAT's keys
    fatal: bool  # the VM cannot be trusted to go on (or is already gone)
    line: str    # the console line that showed it, timestamp removed

    def describe(self) -> str:
        """The event for messages: what happened, then the console line ("kernel panic in the VM: ...")."""
        return f"{WHAT[self.kind]}: {self.line}"


def classify(line: str) -> ConsoleEvent | None:
    """The event a console line shows, if any."""
    line = line.rstrip("\r\n")
    m = _STAMP.match(line)
    if m:
        text = line[m.end():]
        for kind, fatal, pattern in KERNEL_PATTERNS:
            if pattern.search(text):
                return ConsoleEvent(kind, fatal, text.strip())
        return None
    for kind, fatal, pattern in QEMU_PATTERNS:
        if pattern.search(line):
            return ConsoleEvent(kind, fatal, line.strip())
    return None


class Console:
    """The last lines of the VM's console and every event seen on it."""

    def __init__(self, keep: int = 40):
        self.tail: deque[str] = deque(maxlen=keep)
        self.events: list[ConsoleEvent] = []

    def feed(self, line: str) -> ConsoleEvent | None:
        """Take one console line: keep it in the tail and return the event it shows (also kept in
        `events`), or None."""
        self.tail.append(line.rstrip("\r\n"))
        event = classify(line)
        if event is not None:
            self.events.append(event)
        return event

    @property
    def fatal(self) -> ConsoleEvent | None:
        """The first fatal event seen (the one that ends the VM), or None."""
        return next((e for e in self.events if e.fatal), None)

    def last(self, n: int = 20) -> list[str]:
        """The last `n` console lines (at most the `keep` the Console was made with)."""
        return list(self.tail)[-n:]
