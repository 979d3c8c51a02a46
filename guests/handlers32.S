# Common exception handler for 32-bit IDTs (pm32, paging32, pae and their CPL3 variants).
# Stack after the stub: vector, error code, EIP, CS, EFLAGS (+ ESP, SS from CPL3)
# (SDM Vol. 3A 6.12.1). Same contract as handlers64.S, the record also through GS.
kt_exc_common:
    push eax
    push ebx
    push ecx
    mov eax, EXC_INFO
    mov ecx, dword ptr gs:[eax]
    test ecx, ecx
    jz kt_exc_fatal
    mov dword ptr gs:[eax], 0
    mov ebx, dword ptr [esp + 12]
    mov dword ptr gs:[eax + 8], ebx
    mov ebx, dword ptr [esp + 16]
    mov dword ptr gs:[eax + 16], ebx
    mov ebx, dword ptr [esp + 20]
    mov dword ptr gs:[eax + 24], ebx
    mov ebx, cr2
    mov dword ptr gs:[eax + 32], ebx
    inc dword ptr gs:[eax + 40]
    mov dword ptr [esp + 20], ecx
    pop ecx
    pop ebx
    pop eax
    add esp, 8
    iretd
kt_exc_fatal:
    mov ebx, dword ptr [esp + 12]
    mov ecx, dword ptr [esp + 16]
    mov edx, dword ptr [esp + 20]
    mov esi, cr2
    out PORT_EXCEPTION, al
kt_exc_halt:
    hlt
    jmp kt_exc_halt
