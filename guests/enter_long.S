# From the architectural reset state to 64-bit mode, the way SDM Vol. 3A 10.9 (protected
# mode) and 10.8.5 (IA-32e mode) describe it. The builder leaves the GDT at GDT and
# 4-level identity page tables at KT_CR3. Include at the start of a "reset" guest; the
# guest continues at the label `long_mode` in 64-bit code. After each step it reports
# CR0 with GUEST_SYNC so the host can compare the guest's view with KVM_GET_SREGS.
    cli
    lgdt [kt_gdtr]
    mov eax, cr0
    or eax, 1                       # CR0.PE
    mov cr0, eax
    FARJMP SEL_CODE32, kt_pm32
kt_gdtr:
    .word 0xfff
    .long GDT
.code32
kt_pm32:
    mov ax, SEL_DATA
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov esp, KERNEL_STACK_TOP
    mov eax, cr0
    GUEST_SYNC eax
    mov eax, cr4
    or eax, 0x20                    # CR4.PAE
    mov cr4, eax
    mov eax, KT_CR3
    mov cr3, eax
    mov ecx, 0xC0000080             # IA32_EFER
    rdmsr
    or eax, 0x100                   # EFER.LME
    wrmsr
    mov eax, cr0
    or eax, 0x80000000              # CR0.PG: with LME set this activates IA-32e mode
    mov cr0, eax
    FARJMP SEL_CODE64, long_mode
.code64
