/* Benchmark target: N worker threads call work() in a loop and record the largest gap between
 * two consecutive iterations of their loop (CLOCK_MONOTONIC).
 *
 *   worker_target N spin|sleep
 *     spin:  call work() in a tight loop
 *     sleep: call work(), then sleep 100 us
 *
 * Prints "ready work=0xADDR" once every worker runs. Commands on stdin, one per line:
 *   reset   zero every worker's maximum; answers "ok"
 *   report  waits until every worker has completed an iteration since the command, then prints
 *           "max=NS median=NS held=NS calls=C eintr=E": the largest gap over all workers since
 *           the last reset, the median of the per-worker maxima, the largest time a worker was
 *           held (see below), the total number of calls so far, and how many reads of stdin
 *           failed with EINTR (pannus promises none)
 *
 * Held: a gap is time the worker did not run, either waiting for a CPU (time slicing: with more
 * busy threads than CPUs it has such gaps anyway) or kept off the CPUs (stopped by a tracer,
 * blocked). At the end of every gap longer than 20 us the worker reads its own run_delay (time
 * spent runnable, waiting for a CPU, /proc/thread-self/schedstat): the gap minus the growth of
 * run_delay across it is the time it was held. Meaningful for spin workers, whose only waits
 * are those; a sleep worker's gaps include its sleep.
 *   quit    exits
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

volatile int one = 1; /* read by work(), so that it is longer than a 5-byte jump */

__attribute__((noipa)) int work(int x) { return x + one; }

struct slot {
    /* (generation << 48) | max gap in ns, so that a stale maximum is recognised after a reset */
    _Atomic uint64_t max;
    _Atomic uint64_t iterations;
    /* the same for the largest time held */
    _Atomic uint64_t held;
    char pad[64 - 3 * sizeof(uint64_t)];
} __attribute__((aligned(64)));

static struct slot *slots;
static int nworkers;
static int sleeping;
static _Atomic uint64_t generation;
static _Atomic int started;
static long eintr; /* reads of stdin that failed with EINTR */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#define GAP_MASK ((1ull << 48) - 1)

/* run_delay (ns spent waiting for a CPU) of the calling thread, from its schedstat; 0 if none */
static uint64_t run_delay(int fd)
{
    char buf[96];
    ssize_t n = fd < 0 ? -1 : pread(fd, buf, sizeof buf - 1, 0);
    if (n <= 0)
        return 0;
    buf[n] = 0;
    unsigned long long run = 0, delay = 0;
    sscanf(buf, "%llu %llu", &run, &delay);
    return delay;
}

static void *worker(void *arg)
{
    struct slot *s = arg;
    uint64_t gen = atomic_load_explicit(&generation, memory_order_relaxed);
    uint64_t last = now_ns(), max = 0, held_max = 0;
    int sched = open("/proc/thread-self/schedstat", O_RDONLY);
    uint64_t delay = run_delay(sched);
    int acc = 0;
    struct timespec nap = {0, 100000};
    atomic_fetch_add(&started, 1);
    for (;;) {
        acc = work(acc);
        if (sleeping)
            nanosleep(&nap, NULL);
        uint64_t t = now_ns();
        uint64_t g = atomic_load_explicit(&generation, memory_order_acquire);
        uint64_t gap = t - last;
        uint64_t held = 0;
        if (gap > 20000) {
            uint64_t d = run_delay(sched);
            uint64_t waited = d - delay;
            delay = d;
            held = gap > waited ? gap - waited : 0;
        }
        if (g != gen) {
            /* reset: the gap that spans it only counts from the reset on (approximated by now) */
            gen = g;
            max = 0;
            held_max = 0;
            atomic_store_explicit(&s->max, gen << 48, memory_order_relaxed);
            atomic_store_explicit(&s->held, gen << 48, memory_order_relaxed);
        } else {
            if (gap > max) {
                max = gap;
                atomic_store_explicit(&s->max, (gen << 48) | (max & GAP_MASK), memory_order_relaxed);
            }
            if (held > held_max) {
                held_max = held;
                atomic_store_explicit(&s->held, (gen << 48) | (held_max & GAP_MASK), memory_order_relaxed);
            }
        }
        last = t;
        atomic_fetch_add_explicit(&s->iterations, 1, memory_order_release);
    }
    return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void report(void)
{
    uint64_t *before = calloc(nworkers, sizeof *before), *m = calloc(nworkers, sizeof *m);
    for (int i = 0; i < nworkers; i++)
        before[i] = atomic_load(&slots[i].iterations);
    /* wait (up to 10 s) until every worker has gone round its loop once more, so that a gap
     * still open when the command arrived is closed and recorded */
    uint64_t deadline = now_ns() + 10000000000ull;
    for (;;) {
        int behind = 0;
        for (int i = 0; i < nworkers; i++)
            if (atomic_load(&slots[i].iterations) == before[i])
                behind++;
        if (!behind || now_ns() > deadline)
            break;
        usleep(50);
    }
    uint64_t gen = atomic_load(&generation), total = 0, calls = 0, held = 0;
    for (int i = 0; i < nworkers; i++) {
        uint64_t v = atomic_load(&slots[i].max);
        m[i] = (v >> 48) == (gen & 0xffff) ? (v & GAP_MASK) : 0;
        if (m[i] > total)
            total = m[i];
        uint64_t h = atomic_load(&slots[i].held);
        if ((h >> 48) == (gen & 0xffff) && (h & GAP_MASK) > held)
            held = h & GAP_MASK;
        calls += atomic_load(&slots[i].iterations);
    }
    qsort(m, nworkers, sizeof *m, cmp_u64);
    printf("max=%llu median=%llu held=%llu calls=%llu eintr=%ld\n", (unsigned long long)total,
           (unsigned long long)m[nworkers / 2], (unsigned long long)held, (unsigned long long)calls, eintr);
    fflush(stdout);
    free(before);
    free(m);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s N spin|sleep\n", argv[0]);
        return 2;
    }
    nworkers = atoi(argv[1]);
    sleeping = strcmp(argv[2], "sleep") == 0;
    if (nworkers < 1)
        nworkers = 1;
    slots = aligned_alloc(64, sizeof(struct slot) * nworkers);
    memset(slots, 0, sizeof(struct slot) * nworkers);
    for (int i = 0; i < nworkers; i++) {
        pthread_t t;
        pthread_attr_t a;
        pthread_attr_init(&a);
        pthread_attr_setstacksize(&a, 64 * 1024);
        if (pthread_create(&t, &a, worker, &slots[i]) != 0) {
            perror("pthread_create");
            return 1;
        }
    }
    while (atomic_load(&started) < nworkers)
        usleep(100);
    printf("ready work=%p\n", (void *)work);
    fflush(stdout);
    char line[128];
    for (;;) {
        if (!fgets(line, sizeof line, stdin)) {
            /* pannus promises the borrowed thread no EINTR; count any, and carry on */
            if (ferror(stdin) && errno == EINTR) {
                eintr++;
                clearerr(stdin);
                continue;
            }
            fprintf(stderr, "worker_target: stdin: %s (errno %d, eof %d)\n", feof(stdin) ? "end of file" : "error",
                    errno, feof(stdin));
            break;
        }
        if (!strncmp(line, "reset", 5)) {
            atomic_fetch_add(&generation, 1);
            printf("ok\n");
            fflush(stdout);
        } else if (!strncmp(line, "report", 6)) {
            report();
        } else if (!strncmp(line, "quit", 4)) {
            break;
        }
    }
    return 0;
}
