# Common exception handler for 64-bit IDTs (long64, compat32 and their CPL3 variants).
# Each per-vector stub has pushed an error code (the CPU's, or 0) and the vector, so the
# stack holds: vector, error code, RIP, CS, RFLAGS, RSP, SS (SDM Vol. 3A 6.14.2).
#
# If EXC_RESUME is set (GUEST_ASSERT_RAISES armed it), record vector, error code, RIP and
# CR2 in EXC_INFO and return to EXC_RESUME; otherwise report on PORT_EXCEPTION and halt.
# The record is this vCPU's: every access to it goes through GS, whose base the builder set to
# this vCPU's record (kvmtest.guest.exc_records).
kt_exc_common:
    push rax
    push rbx
    push rcx
    mov rax, EXC_INFO
    mov rcx, qword ptr gs:[rax]
    test rcx, rcx
    jz kt_exc_fatal
    mov qword ptr gs:[rax], 0
    mov rbx, qword ptr [rsp + 24]
    mov qword ptr gs:[rax + 8], rbx
    mov rbx, qword ptr [rsp + 32]
    mov qword ptr gs:[rax + 16], rbx
    mov rbx, qword ptr [rsp + 40]
    mov qword ptr gs:[rax + 24], rbx
    mov rbx, cr2
    mov qword ptr gs:[rax + 32], rbx
    inc qword ptr gs:[rax + 40]
    mov qword ptr [rsp + 40], rcx
    pop rcx
    pop rbx
    pop rax
    add rsp, 16
    iretq
kt_exc_fatal:
    mov rbx, qword ptr [rsp + 24]
    mov rcx, qword ptr [rsp + 32]
    mov rdx, qword ptr [rsp + 40]
    mov rsi, cr2
    out PORT_EXCEPTION, al
kt_exc_halt:
    hlt
    jmp kt_exc_halt
