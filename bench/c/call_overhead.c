/* Cost of a call through a patched entry.
 *
 * Prints "ready work=0xADDR", then answers "m ITERS" with one sample, in ns per call, of a loop
 * of ITERS calls to each of:
 *   direct    direct(): the same body as work_v2 (in the module) and as work(), never patched
 *   work      work(): unpatched, or patched by pannus (whatever the process is in now)
 *   self_rel  self_rel(): patched by this program at start-up with a 5-byte `jmp rel32` to
 *             self_rel_v2() (the same body), written through /proc/self/mem
 *   self_abs  self_abs(): patched the same way with the 14-byte `jmp [rip+0]; .quad
 *             self_abs_v2`
 * as "direct=NS work=NS self_rel=NS self_abs=NS". The code pages are never made writable: the
 * bytes go through /proc/self/mem, as pannus writes them through /proc/PID/mem. "q" quits.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

volatile int one = 1;
static volatile int one_d = 1, one_r = 1, one_a = 1, one_r2 = 1, one_a2 = 1;

__attribute__((noipa)) int work(int x) { return x + one; }
__attribute__((noipa)) int direct(int x) { return x + one_d; }
__attribute__((noipa)) int self_rel(int x) { return x + one_r; }
__attribute__((noipa)) int self_rel_v2(int x) { return x + one_r2; }
/* 16-aligned and followed by a 16-aligned function: the 14 bytes stay inside its own slot */
__attribute__((noipa, aligned(16))) int self_abs(int x) { return x + one_a; }
__attribute__((noipa)) int self_abs_v2(int x) { return x + one_a2; }

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void poke(uintptr_t at, const unsigned char *bytes, size_t len)
{
    int fd = open("/proc/self/mem", O_RDWR);
    if (fd < 0 || pwrite(fd, bytes, len, (off_t)at) != (ssize_t)len) {
        perror("/proc/self/mem");
        exit(1);
    }
    close(fd);
}

/* Direct calls (call rel32), one loop per function, as a compiled caller would have. */
#define LOOP(name)                                                                                                     \
    static double loop_##name(long iters)                                                                              \
    {                                                                                                                  \
        int acc = 0;                                                                                                   \
        uint64_t t0 = now_ns();                                                                                        \
        for (long i = 0; i < iters; i++)                                                                               \
            acc = name(acc);                                                                                           \
        uint64_t t1 = now_ns();                                                                                        \
        if (acc == 42)                                                                                                 \
            fputc(' ', stderr);                                                                                        \
        return (double)(t1 - t0) / (double)iters;                                                                      \
    }
LOOP(direct)
LOOP(work)
LOOP(self_rel)
LOOP(self_abs)

int main(void)
{
    unsigned char rel[5] = {0xe9};
    int32_t d = (int32_t)((intptr_t)self_rel_v2 - ((intptr_t)self_rel + 5));
    memcpy(rel + 1, &d, 4);
    poke((uintptr_t)self_rel, rel, sizeof rel);
    unsigned char abs[14] = {0xff, 0x25, 0, 0, 0, 0};
    uint64_t a = (uint64_t)(uintptr_t)self_abs_v2;
    memcpy(abs + 6, &a, 8);
    poke((uintptr_t)self_abs, abs, sizeof abs);
    printf("ready work=%p\n", (void *)work);
    fflush(stdout);
    char line[128];
    while (fgets(line, sizeof line, stdin)) {
        if (line[0] == 'm') {
            long iters = atol(line + 1);
            if (iters <= 0)
                iters = 10000000;
            double dd = loop_direct(iters), w = loop_work(iters), r = loop_self_rel(iters), s = loop_self_abs(iters);
            printf("direct=%.4f work=%.4f self_rel=%.4f self_abs=%.4f\n", dd, w, r, s);
            fflush(stdout);
        } else if (line[0] == 'q') {
            break;
        }
    }
    return 0;
}
