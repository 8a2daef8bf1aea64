/* The bare limit of a live patch's stop: the least a patcher must do to write 5 bytes into a
 * running process with every thread stopped, and nothing else.
 *
 *   limit PID ADDR HEXBYTES [ORIGINAL_HEXBYTES]
 *
 * At SCHED_FIFO (as pannus runs its stop window): PTRACE_SEIZE + PTRACE_INTERRUPT every thread
 * listed in /proc/PID/task (all interrupted before any is waited for), waitpid each, pwrite the
 * bytes to /proc/PID/mem at ADDR, PTRACE_DETACH every thread. With ORIGINAL_HEXBYTES, a second
 * stop the same way writes those back. Prints "stop_ns=N [restore_ns=N] threads=T window=S,E":
 * the wall time of each stop, from the first seize to the last detach, and when the first one
 * began and ended (CLOCK_MONOTONIC ns).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int parse_hex(const char *s, unsigned char *out, int max)
{
    int n = 0;
    while (s[0] && s[1] && n < max) {
        unsigned v;
        if (sscanf(s, "%2x", &v) != 1)
            return -1;
        out[n++] = (unsigned char)v;
        s += 2;
    }
    return n;
}

static int tids[65536];

static uint64_t stop_write(int pid, int memfd, uint64_t addr, const unsigned char *bytes, int len, int *nthreads,
                           uint64_t *start, uint64_t *end)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", pid);
    uint64_t t0 = now_ns();
    DIR *d = opendir(path);
    if (!d) {
        perror(path);
        exit(1);
    }
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < (int)(sizeof tids / sizeof tids[0])) {
        if (e->d_name[0] == '.')
            continue;
        int tid = atoi(e->d_name);
        if (ptrace(PTRACE_SEIZE, tid, 0, 0) != 0)
            continue; /* exited meanwhile */
        if (ptrace(PTRACE_INTERRUPT, tid, 0, 0) != 0) {
            ptrace(PTRACE_DETACH, tid, 0, 0);
            continue;
        }
        tids[n++] = tid;
    }
    closedir(d);
    for (int i = 0; i < n; i++) {
        int st;
        if (waitpid(tids[i], &st, __WALL) < 0)
            perror("waitpid");
    }
    if (pwrite(memfd, bytes, len, (off_t)addr) != len) {
        perror("pwrite /proc/PID/mem");
        exit(1);
    }
    for (int i = 0; i < n; i++)
        ptrace(PTRACE_DETACH, tids[i], 0, 0);
    uint64_t t1 = now_ns();
    *nthreads = n;
    *start = t0;
    *end = t1;
    return t1 - t0;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s PID ADDR HEXBYTES [ORIGINAL_HEXBYTES]\n", argv[0]);
        return 2;
    }
    int pid = atoi(argv[1]);
    uint64_t addr = strtoull(argv[2], NULL, 0);
    unsigned char bytes[64], orig[64];
    int len = parse_hex(argv[3], bytes, sizeof bytes);
    int olen = argc > 4 ? parse_hex(argv[4], orig, sizeof orig) : 0;
    if (len <= 0 || olen < 0) {
        fprintf(stderr, "bad bytes\n");
        return 2;
    }
    struct sched_param sp = {.sched_priority = 50};
    if (sched_setscheduler(0, SCHED_FIFO, &sp) != 0)
        perror("sched_setscheduler (continuing at normal priority)");
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/mem", pid);
    int memfd = open(path, O_RDWR);
    if (memfd < 0) {
        perror(path);
        return 1;
    }
    int n = 0, m = 0;
    uint64_t s0, e0, s1, e1;
    uint64_t stop = stop_write(pid, memfd, addr, bytes, len, &n, &s0, &e0);
    if (olen > 0) {
        uint64_t restore = stop_write(pid, memfd, addr, orig, olen, &m, &s1, &e1);
        printf("stop_ns=%llu restore_ns=%llu threads=%d", (unsigned long long)stop, (unsigned long long)restore, n);
    } else {
        printf("stop_ns=%llu threads=%d", (unsigned long long)stop, n);
    }
    printf(" window=%llu,%llu\n", (unsigned long long)s0, (unsigned long long)e0);
    return 0;
}
