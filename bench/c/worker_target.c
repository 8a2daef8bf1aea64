/* Benchmark target: N worker threads call work() in a loop and record the largest gap between
 * two consecutive iterations of their loop (CLOCK_MONOTONIC).
 *
 *   worker_target N spin|sleep
 *     spin:  call work() in a tight loop
 *     sleep: call work(), then sleep 100 us
 *
 * Prints "ready work=0xADDR" once every worker runs. Commands on stdin, one per line:
 *   reset   zero every worker's maximum and gap log; answers "ok now=NS" (CLOCK_MONOTONIC)
 *   report [S E]...
 *           waits until every worker has completed an iteration since the command, then prints
 *           "max=NS median=NS held=NS calls=C eintr=E": the largest gap over all workers since
 *           the last reset, the median of the per-worker maxima, the largest time a worker was
 *           held (see below), the total number of calls so far, and how many reads of stdin
 *           failed with EINTR (pannus promises none). Given windows (CLOCK_MONOTONIC ns, such
 *           as the stops a patcher reports), it adds "window_max=NS window_held=NS lost=L": the
 *           largest gap, and the largest time held, among the gaps that overlap a window. Each
 *           worker logs its last LOG gaps over 20 us since the reset; L counts the workers whose
 *           log no longer reaches back to the first window (0 when the answer is exact).
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

/* Each worker's log of its gaps over 20 us since the last reset: a ring of LOG entries, each
 * the gap's end and (its length << 32 | the time held in it), in ns (clamped to 4.29 s). A
 * sleeping worker logs every iteration, about 5000 a second: the ring holds several seconds. */
#define LOG 32768
struct gap {
    _Atomic uint64_t end, len_held;
};
struct log {
    _Atomic uint64_t count; /* entries written since the reset; entry i is at i % LOG */
    struct gap gaps[LOG];
};

static struct slot *slots;
static struct log *logs;
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

/* Adds a gap that ended at `end` to a worker's log (only that worker writes it). */
static void note(struct log *log, uint64_t *logged, uint64_t end, uint64_t len, uint64_t held)
{
    struct gap *e = &log->gaps[*logged % LOG];
    uint64_t l = len < UINT32_MAX ? len : UINT32_MAX, h = held < UINT32_MAX ? held : UINT32_MAX;
    atomic_store_explicit(&e->end, end, memory_order_relaxed);
    atomic_store_explicit(&e->len_held, l << 32 | h, memory_order_relaxed);
    atomic_store_explicit(&log->count, ++*logged, memory_order_release);
}

static void *worker(void *arg)
{
    struct slot *s = arg;
    struct log *log = &logs[s - slots];
    uint64_t logged = 0;
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
            logged = 0;
            atomic_store_explicit(&log->count, 0, memory_order_release);
            /* the log keeps the gap that spans the reset whole: a stop may lie in it */
            if (gap > 20000)
                note(log, &logged, t, gap, held);
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
            if (gap > 20000)
                note(log, &logged, t, gap, held);
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

#define WINDOWS 64

/* The largest gap and time held among one worker's logged gaps that overlap a window; returns
 * whether its log reaches back far enough to be sure. */
static int in_windows(struct log *log, const uint64_t *w, int nw, uint64_t *gap_max, uint64_t *held_max)
{
    uint64_t first = w[0];
    for (int k = 0; k < nw; k++)
        if (w[2 * k] < first)
            first = w[2 * k];
    uint64_t n = atomic_load_explicit(&log->count, memory_order_acquire);
    uint64_t from = n > LOG ? n - LOG : 0;
    int complete = 1;
    for (uint64_t i = from; i < n; i++) {
        struct gap *e = &log->gaps[i % LOG];
        uint64_t end = atomic_load_explicit(&e->end, memory_order_relaxed);
        uint64_t lh = atomic_load_explicit(&e->len_held, memory_order_relaxed);
        uint64_t len = lh >> 32, held = lh & UINT32_MAX;
        if (i == from && from > 0 && end - len > first)
            complete = 0;
        for (int k = 0; k < nw; k++) {
            if (end > w[2 * k] && end - len < w[2 * k + 1]) {
                if (len > *gap_max)
                    *gap_max = len;
                if (held > *held_max)
                    *held_max = held;
            }
        }
    }
    /* entries overwritten while they were read */
    if (atomic_load_explicit(&log->count, memory_order_acquire) > from + LOG)
        complete = 0;
    return complete;
}

static void report(const uint64_t *w, int nw)
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
    printf("max=%llu median=%llu held=%llu calls=%llu eintr=%ld", (unsigned long long)total,
           (unsigned long long)m[nworkers / 2], (unsigned long long)held, (unsigned long long)calls, eintr);
    if (nw > 0) {
        uint64_t wmax = 0, wheld = 0;
        int lost = 0;
        for (int i = 0; i < nworkers; i++)
            lost += !in_windows(&logs[i], w, nw, &wmax, &wheld);
        printf(" window_max=%llu window_held=%llu lost=%d", (unsigned long long)wmax, (unsigned long long)wheld, lost);
    }
    printf("\n");
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
    logs = calloc(nworkers, sizeof *logs);
    if (!logs) {
        perror("calloc");
        return 1;
    }
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
    static char line[64 * WINDOWS];
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
            printf("ok now=%llu\n", (unsigned long long)now_ns());
            fflush(stdout);
        } else if (!strncmp(line, "report", 6)) {
            uint64_t w[2 * WINDOWS];
            int nw = 0, used = 0;
            const char *p = line + 6;
            unsigned long long a, b;
            while (nw < WINDOWS && sscanf(p, "%llu %llu%n", &a, &b, &used) == 2) {
                w[2 * nw] = a;
                w[2 * nw + 1] = b;
                nw++;
                p += used;
            }
            report(w, nw);
        } else if (!strncmp(line, "quit", 4)) {
            break;
        }
    }
    return 0;
}
