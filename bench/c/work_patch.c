/* The patch for worker_target's and call_overhead's work(): the same body, reading its own
 * file-local volatile (RIP-relative, no GOT), so that a call to it costs what a call to work() costs. */
static volatile int one_v2 = 1;

int work_v2(int x) { return x + one_v2; }
