// harness: a minimal test framework. Each test file registers its tests with TEST(name); the
// runner (tests/run_tests.c) runs them all, or those whose name contains argv[1], and prints the
// plain closing line "N passed, N failed, N skipped". A failing CHECK marks the test failed.
#ifndef GIVT_TEST_HARNESS_H
#define GIVT_TEST_HARNESS_H

#include <math.h>
#include <stdio.h>

typedef void (*test_fn)(void);
void t_register(const char *name, test_fn fn, const char *file);
// Records a failure: "CHECK(cond)" (cond may be NULL) followed by the formatted message.
void t_fail_at(const char *file, int line, const char *cond, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void t_skip(const char *reason);  // marks the running test skipped; return from the test after it
int t_failed(void);               // has the running test failed so far?

#define TEST(name)                                                                  \
    static void name(void);                                                         \
    __attribute__((constructor)) static void t_reg_##name(void) {                   \
        t_register(#name, name, __FILE__);                                          \
    }                                                                               \
    static void name(void)

// CHECK(cond) or CHECK(cond, "format", args...): the optional message follows the condition's text.
#define CHECK(cond, ...)                                                            \
    do {                                                                            \
        if (!(cond)) t_fail_at(__FILE__, __LINE__, #cond, " " __VA_ARGS__);          \
    } while (0)

// |got - want| <= tol * max(1, |want|)
#define CHECK_CLOSE(got, want, tol)                                                              \
    do {                                                                                         \
        double g_ = (got), w_ = (want), t_ = (tol);                                              \
        if (!(fabs(g_ - w_) <= t_ * fmax(1.0, fabs(w_))))                                       \
            t_fail_at(__FILE__, __LINE__, NULL, "%s = %.10g, want %s = %.10g (tol %g)", #got, g_, #want, \
                      w_, t_);                                                                   \
    } while (0)

#endif
