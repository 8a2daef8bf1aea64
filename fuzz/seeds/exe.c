/* A small executable for the ELF seeds. */
#include <stdio.h>
#include <stdlib.h>

volatile int one = 1;
__attribute__((noipa)) int compute(int x) { return x + one; }
__attribute__((noipa)) static int twice(int x) { return x * 2; }
int main(int argc, char **argv) { printf("%d\n", compute(argc) + twice(atoi(argv[0]))); return 0; }
