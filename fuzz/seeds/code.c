/* Functions whose entry bytes seed the entry-plan target. */
volatile int one = 1;
int table[16];
__attribute__((noipa)) int compute(int x) { return x + one; }
__attribute__((noipa)) int tiny(int x) { return x; }
__attribute__((noipa, patchable_function_entry(5, 5))) int padded(int x) { return x; }
__attribute__((noipa)) int early_call(int x) { extern int ext(int); return ext(x) + 1; }
__attribute__((noipa)) int loop(int n) { int s = 0; for (int i = 0; i < n; i++) s += table[i & 15]; return s; }
__attribute__((noipa)) long sys(long n) { long r; __asm__ volatile("syscall" : "=a"(r) : "a"(n) : "rcx", "r11", "memory"); return r; }
__attribute__((noipa)) int back_branch(int x) { while (x > 3) x = x / 2 + one; return x; }
