"""Demand paging through userfaultfd while vCPUs run (selftests demand_paging_test): vCPUs run
kvmtest.guest.page_loops' page checker over their shares of a slot whose host memory is registered
with a userfaultfd, and user space resolves each first touch while they wait inside KVM_RUN.

api.rst 4.35: a slot's memory is the user memory at userspace_addr, so KVM reaches it as any access
by the process would; the kernel's userfaultfd (Documentation/admin-guide/mm/userfaultfd.rst) holds
each first access to a page of a registered range and reports it once, as one fault for that page,
flagged a write when the access was, until user space resolves it.
"""

from dataclasses import dataclass

from .page_loops import set_page_range

PAGE = 0x1000


@dataclass
class ServedRun:
    """What a served run saw: the userfaultfd faults in the order they came, and each vCPU's
    GUEST_SYNC values (the page checker's count of pages holding GPA ^ magic)."""

    faults: list
    found: list[list[int]]


def run_checkers_serving_faults(g, vcpus, first: int, pages: int, uffd, resolve, timeout: float) -> ServedRun:
    """Give each of `vcpus` an equal share of the `pages` pages from GPA `first` (in order), run
    their page checkers on threads, and meanwhile read `pages` faults from `uffd`, answering each
    with `resolve(fault)` (e.g. UFFDIO_COPY or UFFDIO_CONTINUE); waits at most `timeout` seconds
    for each fault and each vCPU."""
    share = pages // len(vcpus)
    for i, vcpu in enumerate(vcpus):
        set_page_range(vcpu, first + i * share * PAGE, first + (i + 1) * share * PAGE)
    threads = [g.in_thread(vcpu, timeout=timeout) for vcpu in vcpus]
    faults = []
    for _ in range(pages):
        fault = uffd.read_fault(timeout=timeout)
        faults.append(fault)
        resolve(fault)
    return ServedRun(faults, [t.join(timeout) for t in threads])


def expect_one_fault_per_page(run: ServedRun, addr: int, pages: int, write: bool) -> None:
    """Require one fault for each page of the registered range at host address `addr`, each a
    write fault exactly when `write` (the checkers' first access was a store), and every vCPU's
    checker to have found GPA ^ magic in all of its pages; AssertionError naming what differs."""
    seen = sorted(f.page for f in run.faults)
    if seen != [addr + i * PAGE for i in range(pages)]:
        raise AssertionError(f"userfaultfd reported faults at {[hex(p) for p in seen]}, expected one per page of "
                             f"{addr:#x}+{pages * PAGE:#x}")
    flags = [f.write for f in run.faults]
    if flags != [write] * pages:
        raise AssertionError(f"userfaultfd write flags {flags}; every first access was a "
                             f"{'store' if write else 'load'}")
    share = pages // len(run.found)
    if run.found != [[share]] * len(run.found):
        raise AssertionError(f"the vCPUs found GPA ^ magic in {run.found} of their {share} pages each, expected all "
                             "of them")
