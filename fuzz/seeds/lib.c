/* A small shared object for the ELF seeds: exported and file-local functions, data, a
 * versioned symbol, a libc import, a constructor. */
#include <stdio.h>
#include <string.h>

static int hidden_count = 3;
int exported_data = 42;
__thread int tls_counter;

__attribute__((noinline)) static int local_helper(int x) { return x * hidden_count; }
int compute(int x) { return local_helper(x) + exported_data; }
int compute_v2(int x) { return x * 100 + (int)strlen("abc"); }
int versioned(void) { return tls_counter++; }
__attribute__((constructor)) static void init(void) { hidden_count = 4; }
void say(const char *s) { puts(s); }
