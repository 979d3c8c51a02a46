/* The C baseline for benchmarks/bench_harness.py: the same KVM work kvmtest does, in plain C.
 *   kvm_bench exits N      guest does OUT in a loop; time per exit (ns)
 *   kvm_bench lifecycle N  create VM, vCPU, 2 MiB slot, first exit, close; time per cycle (ns)
 */
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MEM (2u << 20)
#define CODE 0x8000
/* real mode: 1: out 0x10, al; jmp 1b */
static const unsigned char loop_code[] = {0xe6, 0x10, 0xeb, 0xfc};

static void die(const char *what) { perror(what); exit(1); }

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

struct vm { int vm, vcpu; void *mem; struct kvm_run *run; int run_size; };

static void vm_up(int kvm, struct vm *v) {
    v->vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (v->vm < 0) die("KVM_CREATE_VM");
    v->mem = mmap(NULL, MEM, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (v->mem == MAP_FAILED) die("mmap");
    memcpy((char *)v->mem + CODE, loop_code, sizeof(loop_code));
    struct kvm_userspace_memory_region r = {.slot = 0, .guest_phys_addr = 0, .memory_size = MEM,
                                            .userspace_addr = (unsigned long)v->mem};
    if (ioctl(v->vm, KVM_SET_USER_MEMORY_REGION, &r)) die("KVM_SET_USER_MEMORY_REGION");
    v->vcpu = ioctl(v->vm, KVM_CREATE_VCPU, 0);
    if (v->vcpu < 0) die("KVM_CREATE_VCPU");
    v->run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    v->run = mmap(NULL, v->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->vcpu, 0);
    if (v->run == MAP_FAILED) die("mmap kvm_run");
    struct kvm_sregs s;
    if (ioctl(v->vcpu, KVM_GET_SREGS, &s)) die("KVM_GET_SREGS");
    s.cs.base = 0; s.cs.selector = 0;
    if (ioctl(v->vcpu, KVM_SET_SREGS, &s)) die("KVM_SET_SREGS");
    struct kvm_regs regs;
    memset(&regs, 0, sizeof(regs));
    regs.rip = CODE; regs.rflags = 2;
    if (ioctl(v->vcpu, KVM_SET_REGS, &regs)) die("KVM_SET_REGS");
}

static void run_once(struct vm *v) {
    if (ioctl(v->vcpu, KVM_RUN, 0)) die("KVM_RUN");
    if (v->run->exit_reason != KVM_EXIT_IO || v->run->io.port != 0x10) {
        fprintf(stderr, "unexpected exit %u\n", v->run->exit_reason);
        exit(1);
    }
}

static void vm_down(struct vm *v) {
    munmap(v->run, v->run_size);
    close(v->vcpu);
    close(v->vm);
    munmap(v->mem, MEM);
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: %s exits|lifecycle N\n", argv[0]); return 2; }
    long n = atol(argv[2]);
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) die("/dev/kvm");
    struct vm v;
    double t0, t1;
    if (!strcmp(argv[1], "exits")) {
        vm_up(kvm, &v);
        run_once(&v);
        t0 = now();
        for (long i = 0; i < n; i++) run_once(&v);
        t1 = now();
        vm_down(&v);
    } else {
        t0 = now();
        for (long i = 0; i < n; i++) { vm_up(kvm, &v); run_once(&v); vm_down(&v); }
        t1 = now();
    }
    printf("%.1f\n", (t1 - t0) / n);
    return 0;
}
