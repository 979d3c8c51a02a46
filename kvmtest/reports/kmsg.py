"""Kernel log lines about KVM that appeared during a test (/dev/kmsg, where readable), attributed
to the test's process.

A time window alone mixes processes: other pytest-xdist workers and any other VMM log KVM lines at
the same time. KVM names the task in most of its lines: upstream's `kvm_pr_unimpl()` and
`vcpu_unimpl()` print "kvm [TGID]: vcpuN, ...", kvm_pvm prints "kvm-pvm: pid TID vcpuN: ...". A line
is this test's when the id it names is this process or one of its threads; a line naming another
live process is dropped; a line naming no task (ratelimit notes, kvm_pvm's emulation errors), or a
task that is gone, cannot be attributed: it is counted, never shown as the test's.
"""

import errno
import os
import re

KEYWORDS = ("kvm", "pvm", "vmx", "svm")
MAX_RECORDS = 100_000  # per drain: a kernel logging faster than we read must not keep us here
# "kvm [1234]: vcpu0, guest rIP: ..." (upstream), "kvm-pvm: pid 1234 vcpu0: ..." (kvm_pvm)
TASK_ID = re.compile(r"\bkvm(?:-\w+)? \[(\d+)\]|\bpid (\d+)\b")


def _own_tasks() -> set[int]:
    try:
        return {int(t) for t in os.listdir("/proc/self/task")} | {os.getpid()}
    except OSError:
        return {os.getpid()}


def _tgid(task: int) -> int | None:
    """The process a live task belongs to (/proc/TID/status works for any thread id), None if gone."""
    try:
        with open(f"/proc/{task}/status") as f:
            for line in f:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def attribute(lines: list[tuple[float, str]], own: set[int]) -> tuple[list[str], list[float]]:
    """(this process's lines, the timestamps of the lines that name no live task) from (time, text)."""
    mine, unattributed = [], []
    for stamp, text in lines:
        m = TASK_ID.search(text)
        task = int(m.group(1) or m.group(2)) if m else None
        if task is not None and (task in own or _tgid(task) == os.getpid()):
            mine.append(text)
        elif task is None or _tgid(task) is None:
            unattributed.append(stamp)
        # else: a live task of another process (another xdist worker, another VMM): not this test's
    return mine, unattributed


def _records(chunk: str) -> list[tuple[float, str]]:
    """(seconds since boot, text) of each record in what one read returned (one record from
    /dev/kmsg; a stand-in may return several). Lines starting with a space continue a record
    with its dictionary (" KEY=value"), not its text."""
    out = []
    for line in chunk.split("\n"):
        if not line or line.startswith(" "):
            continue
        head, _, text = line.partition(";")
        try:
            stamp = int(head.split(",")[2]) / 1e6
        except (IndexError, ValueError):
            stamp = 0.0
        out.append((stamp, text.strip()))
    return out


class KernelLog:
    """Remembers where the kernel log ended; `test_section()` tells what KVM logged for this process since."""

    def __init__(self, path: str = "/dev/kmsg"):
        self.fd: int | None = None
        self.tasks: set[int] = set()
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            os.lseek(self.fd, 0, os.SEEK_END)
        except OSError:
            self.fd = None

    @property
    def available(self) -> bool:
        return self.fd is not None

    def mark(self) -> None:
        if self.fd is not None:
            self.tasks = _own_tasks()  # threads that ended before the report are still known as ours
            self._drain()

    def _drain(self) -> list[tuple[float, str]]:
        """(seconds since boot, text) of each record; devices/kmsg: 'level,seq,usec,flags;text'."""
        lines: list[tuple[float, str]] = []
        if self.fd is None:  # /dev/kmsg could not be opened: nothing to read
            return lines
        for _ in range(MAX_RECORDS):
            try:
                record = os.read(self.fd, 8192)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.EPIPE:  # records were overwritten; the next read goes on
                    continue
                break  # any other error would repeat on every read
            if not record:
                break
            lines += _records(record.decode(errors="replace"))
        return lines

    def _kvm_lines(self) -> list[tuple[float, str]]:
        if self.fd is None:
            return []
        return [(t, line) for t, line in self._drain() if any(k in line.lower() for k in KEYWORDS)]

    def new_lines(self) -> list[str]:
        """Every KVM line since the mark, whoever logged it."""
        return [line for _, line in self._kvm_lines()]

    def test_section(self, limit: int = 50) -> str:
        """The KVM lines this process caused since the mark, and how many could not be attributed."""
        mine, unattributed = attribute(self._kvm_lines(), self.tasks | _own_tasks())
        text = mine[-limit:]
        if len(mine) > limit:
            text.insert(0, f"({len(mine) - limit} earlier lines left out)")
        if unattributed:
            text.append(f"({len(unattributed)} KVM log lines between {min(unattributed):.6f} and "
                        f"{max(unattributed):.6f} s since boot name no task of a live process, so they cannot be "
                        "attributed to this test; left out, see dmesg)")
        return "\n".join(text)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
