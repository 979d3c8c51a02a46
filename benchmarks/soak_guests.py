"""Soak: build and run thousands of distinct guests in every CPU mode; memory and fds stay flat.

    nice -n 10 .venv/bin/python benchmarks/soak_guests.py [--guests 10000] [--seed N]

Each guest moves one to three random immediates into general-purpose registers of its mode's
width, GUEST_SYNCs each register and stops with GUEST_DONE; the host checks that the synced
values are the immediates. The guests go round every CPU mode of kvmtest.guest.modes.MODES
that this host can start (a mode whose set-up the host refuses is named and left out), with a
random page size of the mode, and every source is distinct (the guest's number is an .equ in
it), so each one goes through the assembler and its caches. Every fifth guest instead repeats
the guest built `--revisit` guests earlier: by then it has left the in-memory cache, so it is
read back from the disk cache (the path where each hit once kept 35 kB).

The assembler's disk cache goes to a fresh directory, capped at `--disk-mb` MiB so that it is
pruned many times over. Every `--every` guests it prints the rate, VmRSS (/proc/self/status),
the open fds (/proc/self/fd) and the disk cache's size. Exit 1 when, after `--warmup` guests,
RSS grows more than `--rss-mb` MiB or the fd count more than `--fds` over the warm-up sample,
when the disk cache exceeds its cap by more than the eighth each process may add between
prunes, or when any guest does not report its values; 0 otherwise.
"""

import argparse
import collections
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REGISTERS = {
    16: ["ax", "bx", "cx", "dx", "si", "di", "bp"],
    32: ["eax", "ebx", "ecx", "edx", "esi", "edi", "ebp"],
    64: ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp"] + [f"r{n}" for n in range(8, 16)],
}


def rss_kib() -> int:
    """This process's resident set (VmRSS in /proc/self/status), in KiB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def open_fds() -> int:
    """The number of file descriptors this process has open (the listing's own fd not counted)."""
    return len(os.listdir("/proc/self/fd")) - 1


def disk_bytes(directory: Path) -> int:
    """What the cache files in `directory` take on disk, as the cache counts it."""
    from kvmtest.asm.cache import DiskCache

    return sum(size for _, size, _ in DiskCache(directory, 0).usage())


def payload(bits: int, rng: random.Random, number: int) -> tuple[str, list[int]]:
    """A guest source for `bits`-bit code and the values it must GUEST_SYNC, in order."""
    regs = rng.sample(REGISTERS[bits], rng.randint(1, 3))
    values = [rng.getrandbits(bits) for _ in regs]
    lines = [f".equ soak_guest, {number}"]
    lines += [f"mov {reg}, {value:#x}" for reg, value in zip(regs, values, strict=True)]
    lines += [f"GUEST_SYNC {reg}" for reg in regs] + ["GUEST_DONE"]
    return "\n".join(lines), values


def usable_modes(kvm) -> tuple[list, dict[str, str]]:
    """The CPU modes this host starts a guest in, and why each other one was left out."""
    from kvmtest.errors import KvmtestError
    from kvmtest.guest import Guest
    from kvmtest.guest.modes import MODES

    usable, left_out = [], {}
    for mode in MODES.values():
        try:
            with Guest(kvm, mode.name, "GUEST_DONE", name="probe") as g:
                g.run_to_done()
            usable.append(mode)
        except KvmtestError as e:
            left_out[mode.name] = str(e).splitlines()[0][:160]
    return usable, left_out


def page_sizes(kvm, mode) -> list[int]:
    """The page sizes a guest of `mode` may use here (1 GiB pages only with pdpe1gb)."""
    sizes = [s for s in mode.page_sizes if s < (1 << 30) or kvm.has_feature("pdpe1gb")]
    return sizes or [0x1000]


def soak(args) -> int:
    """Run the soak as `args` say; the exit status (0 flat, 1 grew or a guest failed)."""
    from kvmtest import Kvm
    from kvmtest.guest import Guest

    rng = random.Random(args.seed)
    print(f"seed {args.seed}; {args.guests} guests, sample every {args.every}, warm-up {args.warmup}; "
          f"disk cache {os.environ['KVMTEST_CACHE_DIR']} capped at {args.disk_mb} MiB", flush=True)
    failures, samples = [], []
    recent: collections.deque = collections.deque(maxlen=args.revisit)
    with Kvm() as kvm:
        modes, left_out = usable_modes(kvm)
        for name, why in left_out.items():
            print(f"mode {name} left out: {why}")
        if not modes:
            print("no CPU mode can start a guest on this host")
            return 1
        print("modes:", ", ".join(m.name for m in modes), flush=True)
        sizes = {m.name: page_sizes(kvm, m) for m in modes}
        cache_dir = Path(os.environ["KVMTEST_CACHE_DIR"])
        samples.append((0, rss_kib(), open_fds(), disk_bytes(cache_dir)))  # after the probes, before the soak
        start = time.perf_counter()
        for number in range(1, args.guests + 1):
            if number % 5 == 0 and len(recent) == args.revisit:
                mode, page_size, source, values = recent[0]  # built `revisit` guests ago
            else:
                mode = modes[number % len(modes)]
                page_size = rng.choice(sizes[mode.name])
                source, values = payload(mode.code_bits, rng, number)
                recent.append((mode, page_size, source, values))
            try:
                with Guest(kvm, mode.name, source, page_size=page_size, name=f"soak{number}") as g:
                    got = g.run_to_done()
                if got != values:
                    raise AssertionError(f"GUEST_SYNC values {[hex(v) for v in got]}, expected "
                                         f"{[hex(v) for v in values]}")
            except Exception as e:  # noqa: BLE001 - every failure is reported with its guest
                failures.append(f"guest {number} ({mode.name}): {type(e).__name__}: {str(e).splitlines()[0]}")
                print(failures[-1], flush=True)
                if len(failures) >= 10:
                    break
            if number % args.every == 0 or number == args.guests:
                elapsed = time.perf_counter() - start
                sample = (number, rss_kib(), open_fds(), disk_bytes(cache_dir))
                samples.append(sample)
                print(f"{number:6d} guests {elapsed:7.1f} s {number / elapsed:6.1f} guests/s  "
                      f"RSS {sample[1] / 1024:6.1f} MiB  fds {sample[2]:3d}  disk cache {sample[3] / 2**20:5.1f} MiB",
                      flush=True)
    return verdict(args, samples, failures, time.perf_counter() - start)


def verdict(args, samples, failures, elapsed) -> int:
    """Print the figures and the bounds they were held to; 1 if any bound was broken."""
    problems = list(failures)
    first, last = samples[0], samples[-1]
    print(f"\n{last[0]} guests in {elapsed:.0f} s ({last[0] / elapsed:.1f} guests/s); "
          f"RSS {first[1] / 1024:.1f} -> {last[1] / 1024:.1f} MiB, fds {first[2]} -> {last[2]} "
          f"(samples at {first[0]} and {last[0]} guests)")
    base = next((s for s in samples if s[0] >= max(args.warmup, 1)), None)
    if base is None or base is last:
        problems.append(f"too few guests ({last[0]}) to compare after the {args.warmup}-guest warm-up")
    else:
        after = [s for s in samples if s[0] > base[0]]
        rss_peak = max(s[1] for s in after)
        fd_peak = max(s[2] for s in after)
        print(f"after warm-up ({base[0]} guests): RSS {base[1] / 1024:.1f} -> peak {rss_peak / 1024:.1f} MiB "
              f"(bound +{args.rss_mb} MiB), fds {base[2]} -> peak {fd_peak} (bound +{args.fds})")
        if rss_peak - base[1] > args.rss_mb * 1024:
            problems.append(f"RSS grew {(rss_peak - base[1]) / 1024:.1f} MiB after warm-up (bound {args.rss_mb} MiB)")
        if fd_peak - base[2] > args.fds:
            problems.append(f"open fds grew by {fd_peak - base[2]} after warm-up (bound {args.fds})")
    disk_peak = max(s[3] for s in samples)
    disk_cap = args.disk_mb * 2**20 * 9 / 8 + 64 * 1024  # the cap, an eighth between prunes, the last guest's files
    print(f"disk cache peak {disk_peak / 2**20:.1f} MiB (cap {args.disk_mb} MiB, plus an eighth between prunes)")
    if disk_peak > disk_cap:
        problems.append(f"disk cache reached {disk_peak / 2**20:.1f} MiB, over {disk_cap / 2**20:.1f} MiB")
    for problem in problems:
        print("FAIL:", problem)
    print("PASS" if not problems else f"FAIL ({len(problems)} problem(s))")
    return 1 if problems else 0


def main(argv=None) -> int:
    """Command line: parse the options, point the assembler's caches at a fresh directory, soak."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--guests", type=int, default=10000, help="guests to build and run (default 10000)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: a new one, printed)")
    p.add_argument("--every", type=int, default=500, help="sample RSS and fds every N guests (default 500)")
    p.add_argument("--warmup", type=int, default=2000,
                   help="guests before the baseline sample, while the bounded caches fill (default 2000)")
    p.add_argument("--rss-mb", type=float, default=2.0, help="allowed RSS growth after warm-up, MiB (default 2)")
    p.add_argument("--fds", type=int, default=0, help="allowed growth of open fds after warm-up (default 0)")
    p.add_argument("--revisit", type=int, default=1000,
                   help="every fifth guest repeats the one built this many guests earlier (default 1000)")
    p.add_argument("--disk-mb", type=float, default=8.0, help="the assembler's disk cache cap, MiB (default 8)")
    args = p.parse_args(argv)
    if args.seed is None:
        args.seed = random.SystemRandom().getrandbits(32)
    if min(args.guests, args.every, args.revisit) < 1 or args.warmup < 0 or args.disk_mb <= 0:
        p.error("--guests, --every, --revisit and --disk-mb must be above 0, --warmup 0 or more")
    args.warmup = min(args.warmup, args.guests // 2)
    with tempfile.TemporaryDirectory(prefix="kvmtest-soak-") as cache:
        os.environ["KVMTEST_CACHE_DIR"] = cache
        os.environ["KVMTEST_ASM_CACHE_MB"] = str(args.disk_mb)
        return soak(args)


if __name__ == "__main__":
    sys.exit(main())
