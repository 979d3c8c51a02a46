# kvmclock in 64-bit code: `call pvclock_read` with RSI = the linear address of a
# struct pvclock_vcpu_time_info returns in RAX the kvmclock time in nanoseconds, computed as
# Documentation/virt/kvm/x86/msr.rst (MSR_KVM_SYSTEM_TIME_NEW) says: read the version, skip
# while odd, read the TSC (after an LFENCE, so not before the loads that precede the call), scale (TSC - tsc_timestamp) by tsc_shift and tsc_to_system_mul,
# add system_time, and start again if the version changed meanwhile.
# Clobbers RCX, RDX, R8. Offsets: version 0, tsc_timestamp 8, system_time 16,
# tsc_to_system_mul 24, tsc_shift 28, flags 29.
    jmp pvclock_read_end
pvclock_read:
    mov r8d, dword ptr [rsi]
    test r8d, 1
    jnz pvclock_read
    lfence                          # RDTSC after the loads before it (SDM Vol. 2B RDTSC)
    rdtsc
    shl rdx, 32
    or rax, rdx
    sub rax, qword ptr [rsi + 8]
    movsx ecx, byte ptr [rsi + 28]
    test ecx, ecx
    js pvclock_shift_right
    shl rax, cl
    jmp pvclock_scale
pvclock_shift_right:
    neg ecx
    shr rax, cl
pvclock_scale:
    mov edx, dword ptr [rsi + 24]
    mul rdx
    shrd rax, rdx, 32
    add rax, qword ptr [rsi + 16]
    cmp r8d, dword ptr [rsi]
    jne pvclock_read
    ret
pvclock_read_end:
