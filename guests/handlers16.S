# Common exception handler for real mode (IVT) and 16-bit protected mode (16-bit gates).
# Stack after the stub: vector, error code (0 in real mode), IP, CS, FLAGS
# (SDM Vol. 3A 20.1.4 and 6.12.1). Same contract as handlers64.S, the record also through GS.
kt_exc_common:
    push bp
    mov bp, sp
    push ax
    push bx
    push cx
    mov bx, EXC_INFO
    mov cx, word ptr gs:[bx]
    test cx, cx
    jz kt_exc_fatal
    mov word ptr gs:[bx], 0
    mov ax, word ptr [bp + 2]
    mov word ptr gs:[bx + 8], ax
    mov ax, word ptr [bp + 4]
    mov word ptr gs:[bx + 16], ax
    mov ax, word ptr [bp + 6]
    mov word ptr gs:[bx + 24], ax
    inc word ptr gs:[bx + 40]
    mov word ptr [bp + 6], cx
    pop cx
    pop bx
    pop ax
    pop bp
    add sp, 4
    iret
kt_exc_fatal:
    mov bx, word ptr [bp + 2]
    mov cx, word ptr [bp + 4]
    mov dx, word ptr [bp + 6]
    xor esi, esi
    out PORT_EXCEPTION, al
kt_exc_halt:
    hlt
    jmp kt_exc_halt
