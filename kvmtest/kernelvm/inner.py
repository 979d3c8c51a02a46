"""What runs inside the VM: load the vendor KVM module, check /dev/kvm, run `kvmtest run`.

`python -m kvmtest.kernelvm.inner SPEC.json` (the spec sits in the shared report directory;
the kernel command line is too short for pytest arguments). Progress goes to stdout as
`kvmtest-vm: <mark> ...` lines the host times; the verdict goes to the spec's status file,
which the host reads after the VM is gone. Module parameters (kvm_amd.npt=0) come from the
kernel command line, where modprobe finds them.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from . import progress
from .boot import MARK


def mark(name: str, text: str = "") -> None:
    """Print a `kvmtest-vm: NAME TEXT` progress line on the VM's stdout (the host times the boot by
    these; boot.MARK)."""
    print(f"{MARK} {name} {text}".rstrip(), flush=True)


def uptime() -> float:
    """Seconds since the VM's kernel booted (/proc/uptime), or -1.0 when unreadable."""
    try:
        return float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return -1.0


def vendor_module(cpuinfo: str) -> str | None:
    """kvm_amd for a CPU with svm, kvm_intel for vmx (the first processor's flags)."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            return "kvm_amd" if "svm" in flags else "kvm_intel" if "vmx" in flags else None
    return None


def load_kvm(device: str = "/dev/kvm") -> tuple[str | None, str]:
    """(module, "") when KVM is usable, else (None, why not)."""
    module = vendor_module(Path("/proc/cpuinfo").read_text())
    if module is None:
        return None, "the VM's CPU offers neither svm nor vmx (no nested virtualization underneath?)"
    proc = subprocess.run(["modprobe", module], capture_output=True, text=True)
    if proc.returncode != 0:
        return None, f"modprobe {module} failed (exit {proc.returncode}): {proc.stderr.strip()}"
    try:
        os.close(os.open(device, os.O_RDWR | os.O_CLOEXEC))
    except OSError as e:
        return None, f"{module} loaded but {device} cannot be opened: {e.strerror}"
    return module, ""


def main(argv: list[str]) -> int:
    """Inside the VM: load the vendor KVM module, then run each `kvmtest run` session of the spec
    file `argv[0]` (JSON: status file, progress log, accelerator, sessions' arguments), writing the
    stage reached (booted, kvm or no-kvm, done with pytest's exit status) to the status file. Returns
    0: the verdict is in the status file and the reports, not in the VM's exit."""
    spec = json.loads(Path(argv[0]).read_text())
    status_path = Path(spec["status"])

    def status(**kw):
        status_path.write_text(json.dumps({"release": os.uname().release, **kw}, indent=2) + "\n")

    mark("booted", f"{os.uname().release} uptime {uptime():.1f}s")
    status(stage="booted")
    module, why = load_kvm()
    if module is None:
        mark("no-kvm", why)
        status(stage="no-kvm", error=why)
        return 0
    params = sorted(p.name + "=" + p.read_text().strip() for p in Path(f"/sys/module/{module}/parameters").iterdir()
                    if p.name in ("npt", "ept", "nested", "avic", "enable_apicv"))
    mark("kvm", f"{module} {' '.join(params)}")
    status(stage="kvm", module=module)
    # hypothesis keeps a cache of constants it found in kvmtest's sources under its storage directory,
    # by default .hypothesis/ in the checkout: read-only here and 9p besides, so the VM's own tmpfs
    env = {**os.environ, "KVMTEST_ACCELERATOR": spec["accelerator"], "PYTHONUNBUFFERED": "1",
           "PYTHONDONTWRITEBYTECODE": "1", progress.ENV: spec["progress"],
           "HYPOTHESIS_STORAGE_DIRECTORY": "/tmp/kvmtest-hypothesis"}
    if spec.get("asm_cache"):  # the host's assembly cache, shared writable (vmrun.shared_asm_cache)
        env["KVMTEST_CACHE_DIR"] = spec["asm_cache"]
    if spec.get("pycache"):  # the host's bytecode, shared writable (vmrun.shared_pycache)
        env["PYTHONPYCACHEPREFIX"] = spec["pycache"]
        del env["PYTHONDONTWRITEBYTECODE"]
    started = time.monotonic()
    for run_args in spec["sessions"]:  # suspects of an earlier crash one at a time first, then the rest
        code = subprocess.call([sys.executable, "-m", "kvmtest.cli", "run", *run_args], env=env)
    mark("done", f"pytest exit {code} after {time.monotonic() - started:.1f}s")
    status(stage="done", pytest_exit=code, module=module, seconds=round(time.monotonic() - started, 1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
