/* A new process of an installed patch's build: what compute(5) returns at the first line of
 * main (500 once patched), when main started, and, when it was not patched yet, when the patch
 * became active (polled every 100 us for up to argv[1] ms). One line: FIRST MAIN_NS ACTIVE_NS
 * (CLOCK_REALTIME; ACTIVE_NS 0 when it never did). */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

__attribute__((noinline)) int compute(int x) {
    volatile int k = 1;
    return x + k;
}

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

int main(int argc, char **argv) {
    int first = compute(5);
    long long at_main = now_ns();
    long long active = first == 500 ? at_main : 0;
    long wait_ms = argc > 1 ? atol(argv[1]) : 0;
    for (long i = 0; !active && i < wait_ms * 10; i++) {
        struct timespec d = { 0, 100000L };
        nanosleep(&d, NULL);
        if (compute(5) == 500)
            active = now_ns();
    }
    printf("%d %lld %lld\n", first, at_main, active);
    return 0;
}
