"""Boot a kernel under test in QEMU (through virtme-ng) and run kvmtest inside it.

An orchestrator beside the command line: `kernel.py` finds the kernel (a path or a cached
Debian package, `fetch.py` fetches one through apt), `boot.py` builds the virtme-ng command for
the accelerator underneath (nested KVM or TCG) and watches the VM, `console.py` reads its
console for panics, oopses and QEMU aborts, `inner.py` is what runs inside the VM, and
`runner.py` ties them to `kvmtest run --kernel`. Nothing below the command line knows whether
it runs in a VM, except the fingerprint's "accelerator" field.
"""

from ..errors import KvmtestError


class KernelVmError(KvmtestError):
    """A kernel that cannot be found, fetched or booted; the message says what and why."""
