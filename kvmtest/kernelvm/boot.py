"""Boot a kernel with virtme-ng on QEMU and watch it: the accelerator, the command line, the watchdog.

virtme-ng (PyPI `virtme-ng`, command `vng`) shares the host's root filesystem read-only with
the VM, so the VM runs the host's kvmtest and venv; `--rwdir` makes the report directory
writable in it. The VM's kernel log (console) arrives on vng's stderr, the command's output on
its stdout; both go to one console log file and through the crash oracle (console.py).
"""

import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import KernelVmError
from .console import Console, ConsoleEvent
from .kernel import Kernel

MARK = "kvmtest-vm:"     # progress lines inner.py prints on the VM's stdout
FATAL_GRACE_S = 5.0       # after a panic/oops, keep reading this long for the rest of the trace


def _yes(value: str) -> bool:
    return value.strip() in ("1", "Y", "y")


def detect_accelerator(sys_module: str = "/sys/module", device: str = "/dev/kvm") -> tuple[str, str]:
    """("kvm", why) when the host's KVM can give a VM SVM/VMX (nested), else ("tcg", why).

    Nested virtualization is on when kvm_amd's or kvm_intel's `nested` parameter is 1/Y;
    other backends (kvm_pvm) offer no SVM/VMX to their guests.
    """
    for module in ("kvm_amd", "kvm_intel"):
        param = Path(sys_module) / module / "parameters" / "nested"
        if param.exists():
            value = param.read_text().strip()
            if not _yes(value):
                return "tcg", f"{module}.nested={value}: no nested virtualization"
            if not os.access(device, os.R_OK | os.W_OK):
                return "tcg", f"{module}.nested={value} but {device} is not read-writable"
            return "kvm", f"{module}.nested={value}"
    loaded = [m for m in ("kvm_pvm", "kvm") if (Path(sys_module) / m).is_dir()]
    if loaded:
        return "tcg", f"{loaded[0]} loaded, no kvm_amd/kvm_intel nested parameter: no nested virtualization"
    return "tcg", "no KVM module loaded"


# Under TCG the VM gets one vCPU unless --vm-cpus says otherwise. With two, QEMU 7.2's multi-threaded
# TCG livelocked Debian's 6.1 kernel in 3 of 6 smoke+ioctl sessions: both vCPUs looped through
# the INT3 handler at a jump-label site whose bytes in memory were already the final JMP (a static key
# flipped by text_poke_bp, which kvm flips as vCPUs without an in-kernel APIC come and go), i.e. QEMU
# kept running a stale translation of the INT3 another vCPU had written; no test was at fault.
TCG_CPUS, KVM_CPUS = 1, 2


def default_cpus(accel: str) -> int:
    """vCPUs of the VM when --vm-cpus is not given: TCG_CPUS under TCG, KVM_CPUS under nested KVM."""
    return TCG_CPUS if accel == "tcg" else KVM_CPUS


def memory_bytes(size: str) -> int:
    """'2G' -> 2 GiB in bytes (QEMU's -m suffixes K, M, G, T; no suffix is MiB, as for QEMU)."""
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    return int(size[:-1]) * scale[size[-1]] if size[-1:] in scale else int(size) << 20


def mem_available(meminfo: str = "/proc/meminfo") -> int:
    """The host's MemAvailable in bytes (0 when unreadable)."""
    try:
        for line in Path(meminfo).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def default_shards(accel: str, cpus: int, memory: str, host_cpus: int | None = None,
                   available: int | None = None) -> int:
    """VMs one configuration is split over when --vm-shards is not given. Under TCG as many as the
    host has CPUs for (each VM's vCPUs run on host threads of their own; one VM is limited to
    TCG_CPUS, see above) and memory for; under nested KVM one VM, whose vCPUs run pytest-xdist workers."""
    if accel != "tcg":
        return 1
    host_cpus = host_cpus if host_cpus is not None else os.cpu_count() or 1
    available = available if available is not None else mem_available()
    by_memory = available // memory_bytes(memory) if available else 1
    return max(1, min(host_cpus // max(cpus, 1), by_memory))


def find_tools() -> dict[str, str]:
    """vng (beside this Python first: the venv's bin need not be on PATH), QEMU, busybox."""
    venv_vng = Path(sys.executable).parent / "vng"
    tools = {"vng": str(venv_vng) if venv_vng.exists() else shutil.which("vng"),
             "qemu": shutil.which("qemu-system-x86_64"), "busybox": shutil.which("busybox")}
    hints = {"vng": "pip install virtme-ng", "qemu": "apt-get install qemu-system-x86",
             "busybox": "apt-get install busybox-static"}
    missing = [f"{name} ({hints[name]})" for name, path in tools.items() if not path]
    if missing:
        raise KernelVmError(f"kvmtest run --kernel needs {', '.join(missing)}")
    return {name: path for name, path in tools.items() if path}  # every one, after the check above


def vng_command(vng: str, kernel: Kernel, accel: str, exec_cmd: str, *, rwdirs=(), append=(),
                cpus: int = 2, memory: str = "2G", name: str = "kvmtest-vm") -> list[str]:
    """The vng command line. TCG: --disable-kvm and `-cpu max` (AMD SVM with nested paging);
    KVM: vng's own `-cpu host`, which passes the host's SVM/VMX on when nested is enabled."""
    if accel not in ("tcg", "kvm"):
        raise KernelVmError(f"accelerator {accel!r}: expected 'tcg' or 'kvm'")
    cmd = [vng, "--run", str(kernel.image), "--verbose", "--name", name, "--cpus", str(cpus), "--memory", memory]
    for d in rwdirs:
        cmd += ["--rwdir", str(d)]
    # printk.time=1: console.py trusts only timestamped lines as kernel lines
    fixed = ["printk.time=1"]
    if accel == "tcg":
        # QEMU's TSC follows the host's clock, but a starved TCG vCPU reads the HPET late and the
        # clocksource watchdog then marks the TSC unstable (seen 33 min into a whole-suite run:
        # "hpet read-back delay of 455790ns ... Marking TSC unstable"); from then on KVM rewrites
        # each vCPU's TSC offset on every load (x86.c kvm_arch_vcpu_load, unstable-TSC catch-up),
        # and every TSC-offset check after it fails for the VM's reason, not the kernel's.
        fixed.append("tsc=reliable")
    for a in (*fixed, *append):
        cmd += ["--append", a]
    if accel == "tcg":
        cmd += ["--disable-kvm", "--qemu-opts=-cpu max"]
    return cmd + ["--exec", exec_cmd]


@dataclass
class VmRun:
    """What one boot did, as seen from the host."""

    returncode: int | None = None
    ended_by: str = ""            # "", "timeout", "stall" or a fatal console event's kind
    fatal: ConsoleEvent | None = None
    events: list[ConsoleEvent] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)  # inner.py's progress marks -> seconds since start
    tail: list[str] = field(default_factory=list)
    in_flight: str = ""           # the unfinished last stdout line (the running test without xdist)
    seconds: float = 0.0


_LIVE: set[subprocess.Popen] = set()  # the VMs being watched, by every thread (shards of a configuration)


def kill_all() -> None:
    """Stop every VM still being watched (a signal reaches the main thread only; the shards' VMs
    are watched by other threads and run in sessions of their own)."""
    for proc in list(_LIVE):
        _kill(proc)


def _kill(proc: subprocess.Popen) -> None:
    """The whole process group: vng, virtme-run, QEMU."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def watch(cmd: list[str], log_path: Path, *, timeout_s: float, stall_s: float, echo=None, env=None,
          clock=time.monotonic) -> VmRun:
    """Run the VM to its end, killing it on a fatal console event, a stall or the hard timeout."""
    console, run = Console(), VmRun()
    start = clock()
    partial = {"out": b"", "err": b""}
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, env=env)
    _LIVE.add(proc)
    try:
        _read_console(proc, log_path, run, console, timeout_s, stall_s, echo, clock, start, partial)
    except BaseException:  # Ctrl-C or a bug here: the VM runs in its own session and would outlive us
        _kill(proc)
        raise
    finally:
        _LIVE.discard(proc)
    if proc.poll() is None:
        _kill(proc)
    run.returncode = proc.wait()
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:  # both are pipes (Popen above)
            pipe.close()
    run.in_flight = partial["out"].decode("utf-8", "replace").strip()
    run.events, run.tail, run.seconds = list(console.events), console.last(25), clock() - start
    return run


def _read_console(proc, log_path, run, console, timeout_s, stall_s, echo, clock, start, partial) -> None:
    last_output = start
    fatal_at = None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, "out")
    sel.register(proc.stderr, selectors.EVENT_READ, "err")
    with sel, open(log_path, "w", errors="replace") as log:
        while sel.get_map():
            now = clock()
            if fatal_at is not None and now - fatal_at > FATAL_GRACE_S:
                break
            if now - start > timeout_s:
                run.ended_by = "timeout"
                break
            if now - last_output > stall_s:
                run.ended_by = "stall"
                break
            for key, _ in sel.select(timeout=1.0):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                last_output = clock()
                stream = key.data
                data = partial[stream] + chunk
                *lines, partial[stream] = data.split(b"\n")
                for raw in lines:
                    line = raw.decode("utf-8", "replace").rstrip("\r")
                    log.write(line + "\n")
                    event = console.feed(line)
                    if stream == "out" and line.startswith(MARK):
                        run.marks[line[len(MARK):].split()[0]] = last_output - start
                    if echo is not None and (stream == "out" or event is not None):
                        echo(line)
                    if event is not None and event.fatal and run.fatal is None:
                        run.fatal, run.ended_by, fatal_at = event, event.kind, clock()
            log.flush()
        for rest in partial.values():
            if rest:
                line = rest.decode("utf-8", "replace")
                log.write(line + "\n")
                console.feed(line)
