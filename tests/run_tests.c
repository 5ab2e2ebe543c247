// run_tests: runs every registered test (or those whose name contains argv[1]) and prints
// "N passed, N failed, N skipped". Exits 1 if any test failed.
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

typedef struct {
    const char *name, *file;
    test_fn fn;
} TestEntry;

static TestEntry g_tests[1024];
static int g_ntests;
static int g_cur_failed, g_cur_skipped;
static const char *g_cur_name;

void t_register(const char *name, test_fn fn, const char *file) {
    if (g_ntests == (int)(sizeof g_tests / sizeof g_tests[0])) {
        fprintf(stderr, "too many tests\n");
        exit(2);
    }
    g_tests[g_ntests++] = (TestEntry){name, file, fn};
}

void t_fail_at(const char *file, int line, const char *cond, const char *fmt, ...) {
    if (g_cur_failed < 20) {
        fprintf(stderr, "  FAIL %s (%s:%d): ", g_cur_name, file, line);
        if (cond) fprintf(stderr, "CHECK(%s)", cond);
        va_list ap;
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
    }
    g_cur_failed++;
}

void t_skip(const char *reason) {
    g_cur_skipped = 1;
    printf("  skipped %s: %s\n", g_cur_name, reason);
}

int t_failed(void) { return g_cur_failed > 0; }

int main(int argc, char **argv) {
    const char *filter = argc > 1 ? argv[1] : NULL;
    int passed = 0, failed = 0, skipped = 0;
    for (int i = 0; i < g_ntests; i++) {
        if (filter && !strstr(g_tests[i].name, filter)) continue;
        g_cur_name = g_tests[i].name;
        g_cur_failed = g_cur_skipped = 0;
        fflush(stdout);
        g_tests[i].fn();
        if (g_cur_failed) {
            failed++;
            printf("FAIL  %s (%d checks failed)\n", g_cur_name, g_cur_failed);
        } else if (g_cur_skipped) {
            skipped++;
        } else {
            passed++;
            printf("ok    %s\n", g_cur_name);
        }
    }
    fflush(stdout);
    printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
    return failed ? 1 : 0;
}
