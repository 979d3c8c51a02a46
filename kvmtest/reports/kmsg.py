"""Kernel log lines about KVM that appeared during a test (/dev/kmsg, where readable)."""

import errno
import os

KEYWORDS = ("kvm", "pvm", "vmx", "svm")
MAX_RECORDS = 100_000  # per drain: a kernel logging faster than we read must not keep us here


class KernelLog:
    """Remembers where the kernel log ended; `new_lines()` returns the KVM lines since then."""

    def __init__(self, path: str = "/dev/kmsg"):
        self.fd = None
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
            self._drain()

    def _drain(self) -> list[str]:
        lines = []
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
            text = record.decode(errors="replace")
            lines.append(text.split(";", 1)[-1].strip())
        return lines

    def new_lines(self) -> list[str]:
        if self.fd is None:
            return []
        return [line for line in self._drain() if any(k in line.lower() for k in KEYWORDS)]

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
