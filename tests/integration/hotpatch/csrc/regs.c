/* Register preservation check: the only thread fills %xmm0-%xmm15 and %r12-%r15 with known
 * values, blocks in a raw read(2) on stdin, and on return compares them. The loader borrows
 * this thread for dlopen (which uses SSE/AVX freely) and stops it for the switch; every
 * register must come back as it was and the read must complete, not fail with EINTR.
 * Prints "ok <bytes read>" or "bad <what>" per line of input.
 */
#include <stdio.h>
#include <string.h>

__attribute__((noipa)) int probe(int x) { return x + 1 + (x & 3); }

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    for (;;) {
        double in[16], out[16];
        unsigned long gin[4] = {0x1111111111111111UL, 0x2222222222222222UL,
                                0x3333333333333333UL, 0x4444444444444444UL};
        unsigned long gout[4];
        char buf[64];
        long r;
        for (int i = 0; i < 16; i++) in[i] = 1.5 + i * 1.25;
        __asm__ volatile(
            "movsd 0(%[in]), %%xmm0\n\t movsd 8(%[in]), %%xmm1\n\t"
            "movsd 16(%[in]), %%xmm2\n\t movsd 24(%[in]), %%xmm3\n\t"
            "movsd 32(%[in]), %%xmm4\n\t movsd 40(%[in]), %%xmm5\n\t"
            "movsd 48(%[in]), %%xmm6\n\t movsd 56(%[in]), %%xmm7\n\t"
            "movsd 64(%[in]), %%xmm8\n\t movsd 72(%[in]), %%xmm9\n\t"
            "movsd 80(%[in]), %%xmm10\n\t movsd 88(%[in]), %%xmm11\n\t"
            "movsd 96(%[in]), %%xmm12\n\t movsd 104(%[in]), %%xmm13\n\t"
            "movsd 112(%[in]), %%xmm14\n\t movsd 120(%[in]), %%xmm15\n\t"
            "mov 0(%[gin]), %%r12\n\t mov 8(%[gin]), %%r13\n\t"
            "mov 16(%[gin]), %%r14\n\t mov 24(%[gin]), %%r15\n\t"
            "xor %%eax, %%eax\n\t xor %%edi, %%edi\n\t mov %[buf], %%rsi\n\t"
            "mov $63, %%edx\n\t syscall\n\t"
            "movsd %%xmm0, 0(%[out])\n\t movsd %%xmm1, 8(%[out])\n\t"
            "movsd %%xmm2, 16(%[out])\n\t movsd %%xmm3, 24(%[out])\n\t"
            "movsd %%xmm4, 32(%[out])\n\t movsd %%xmm5, 40(%[out])\n\t"
            "movsd %%xmm6, 48(%[out])\n\t movsd %%xmm7, 56(%[out])\n\t"
            "movsd %%xmm8, 64(%[out])\n\t movsd %%xmm9, 72(%[out])\n\t"
            "movsd %%xmm10, 80(%[out])\n\t movsd %%xmm11, 88(%[out])\n\t"
            "movsd %%xmm12, 96(%[out])\n\t movsd %%xmm13, 104(%[out])\n\t"
            "movsd %%xmm14, 112(%[out])\n\t movsd %%xmm15, 120(%[out])\n\t"
            "mov %%r12, 0(%[gout])\n\t mov %%r13, 8(%[gout])\n\t"
            "mov %%r14, 16(%[gout])\n\t mov %%r15, 24(%[gout])\n\t"
            : "=a"(r)
            : [in] "r"(in), [out] "r"(out), [gin] "r"(gin), [gout] "r"(gout), [buf] "r"(buf)
            : "rdi", "rsi", "rdx", "rcx", "r11", "r12", "r13", "r14", "r15", "xmm0", "xmm1",
              "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11",
              "xmm12", "xmm13", "xmm14", "xmm15", "memory");
        if (r == 0) return 0;
        if (r < 0) {
            printf("bad read %ld\n", r);
            continue;
        }
        if (memcmp(in, out, sizeof in)) {
            printf("bad xmm\n");
        } else if (memcmp(gin, gout, sizeof gin)) {
            printf("bad gpr\n");
        } else {
            buf[r] = 0;
            printf("ok %ld %d\n", r, probe(r));
        }
    }
}
