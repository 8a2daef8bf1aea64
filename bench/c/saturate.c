/* Benchmark target for a saturated machine: N threads, each calling work() and then sleeping
 * PERIOD_US microseconds, forever. With 1,400 threads and a period of 1 ms the wake-ups alone
 * keep two CPUs busy (load in the hundreds or more).
 *
 *   saturate N PERIOD_US
 *
 * Prints "ready work=0xADDR" once every thread is started; then answers, one line per line read
 * on stdin: "c" with work(1) (2 unpatched), "q" to exit.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

volatile int one = 1; /* read by work(), so that it is longer than a 5-byte jump */

__attribute__((noipa)) int work(int x) { return x + one; }

static long period_ns;

static void *worker(void *arg)
{
    (void)arg;
    struct timespec nap = {period_ns / 1000000000L, period_ns % 1000000000L};
    volatile int acc = 0;
    for (;;) {
        acc = work(acc);
        nanosleep(&nap, NULL);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s N PERIOD_US\n", argv[0]);
        return 2;
    }
    int n = atoi(argv[1]);
    period_ns = atol(argv[2]) * 1000L;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    for (int i = 0; i < n; i++) {
        pthread_t t;
        if (pthread_create(&t, &attr, worker, NULL) != 0) {
            perror("pthread_create");
            return 1;
        }
    }
    printf("ready work=%p\n", (void *)work);
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (line[0] == 'q')
            break;
        printf("%d\n", work(1));
        fflush(stdout);
    }
    return 0;
}
