/* The fix for newproc.c's compute. */
int compute_v2(int x) { return x * 100; }
