"""Application processors of a multi-vCPU guest with an in-kernel local APIC: a vCPU made
runnable and run until it reports in, and the shape most IPI checks share, APs that wait on their
own threads while vCPU 0 runs.

A vCPU created with an in-kernel local APIC, other than the boot one, starts in
KVM_MP_STATE_UNINITIALIZED and waits for INIT and SIPI (api.rst 4.38 KVM_GET_MP_STATE); the checks
make it KVM_MP_STATE_RUNNABLE instead (4.39), so it starts at its entry point at once.
"""

from ..abi import constants as C


def ready_ap(g, ap, ready: int = 2):
    """Make vCPU `ap` (from g.add_vcpu) runnable and run it to its first GUEST_SYNC, which must be
    `ready` (it set itself up, e.g. enabled its APIC); GuestFailure otherwise. Returns `ap`."""
    ap.set_mp_state(C.KVM_MP_STATE_RUNNABLE)
    got = g.expect_sync(vcpu=ap)
    if got != ready:
        raise g.failure(f"{ap.name} made KVM_MP_STATE_RUNNABLE reported GUEST_SYNC {got:#x}, expected {ready:#x} "
                        "(ready)", vcpu=ap)
    return ap


def run_with_waiting_aps(g, count: int, entry: str = "ap", *, ready: int = 2, bsp_ready: int = 1,
                         timeout: float = 20) -> dict[int, list[int]]:
    """Add `count` APs at `entry`, each run by ready_ap to its GUEST_SYNC `ready` and then on its own
    thread (typically to wait in HLT for an IPI); then run vCPU 0 to its GUEST_SYNC `bsp_ready`
    (GuestFailure for another value) and on to GUEST_DONE. Returns each vCPU's GUEST_SYNC values
    after those by vCPU id, vCPU 0's included."""
    aps = [ready_ap(g, g.add_vcpu(entry), ready) for _ in range(count)]
    threads = [g.in_thread(ap, timeout=timeout) for ap in aps]
    got = g.expect_sync()
    if got != bsp_ready:
        raise g.failure(f"vCPU 0 reported GUEST_SYNC {got:#x}, expected {bsp_ready:#x} before its IPIs")
    syncs = {0: g.run_to_done()}
    syncs.update({ap.id: t.join(timeout + 10) for ap, t in zip(aps, threads, strict=True)})
    return syncs
