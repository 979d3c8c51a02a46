# From 64-bit CPL0 to 64-bit CPL3 at the label `user`, on the user stack, with IRETQ: the
# frame is SS, RSP, RFLAGS, CS, RIP (SDM Vol. 3A 6.14.3). Needs user-accessible pages.
    push SEL_USER_DATA | 3
    push USER_STACK_TOP
    push 0x2
    push SEL_USER_CODE64 | 3
    push rax
    mov rax, user
    mov qword ptr [rsp], rax
    iretq
