/* A glibc-style fix: two functions of the C library replaced in running processes, as a
 * distribution's live patch for libc.so.6 would.
 *
 * - wcsnlen, an indirect function: the dynamic linker chose an implementation for the CPU
 *   (__wcsnlen_sse4_1, __wcsnlen_avx2, __wcsnlen_evex, ...). Before glibc 2.34 the vectorised
 *   ones could return a wrong length when maxlen is near SIZE_MAX / sizeof(wchar_t) (BZ #27974).
 *   This portable version takes their place: pannus patches every implementation the resolver
 *   can return, so whichever one a process was bound to, and whichever a later dlopen binds,
 *   runs this.
 * - realpath@GLIBC_2.2.5, the version programs linked before glibc 2.3 call, which refuses a
 *   NULL buffer with EINVAL: this one allocates the result, as the current version does. The
 *   current version, realpath@@GLIBC_2.3, is left as it is (and does the work).
 *
 * Build the module and write its manifest for this machine's C library (its build-id differs
 * from machine to machine, so the manifest beside this file holds placeholders):
 *
 *   gcc -O2 -shared -fPIC -o glibc-fixes.so glibc-fixes.c
 *   pannus manifest new --target /lib/x86_64-linux-gnu/libc.so.6 --module glibc-fixes.so \
 *       --patch glibc-fixes --version 1 --map 'realpath@GLIBC_2.2.5=realpath_alloc' \
 *       --output glibc-fixes.yaml --force
 *   pannus check glibc-fixes.yaml --pid PID     # shows wcsnlen → __wcsnlen_... → wcsnlen_fixed
 */
#include <stdlib.h>
#include <wchar.h>

/* wcsnlen, one wide character at a time; the count never overflows whatever maxlen is. Kept
 * from being turned back into a call to wcsnlen, which would come here again. */
__attribute__((optimize("no-tree-loop-distribute-patterns"))) size_t wcsnlen_fixed(const wchar_t *s, size_t maxlen)
{
    size_t n = 0;
    while (n < maxlen && s[n] != L'\0')
        n++;
    return n;
}

/* realpath@GLIBC_2.2.5 with a NULL buffer: allocate, as realpath@@GLIBC_2.3 (called here) does. */
char *realpath_alloc(const char *path, char *resolved)
{
    return realpath(path, resolved);
}
