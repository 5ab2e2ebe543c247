// test_registry: the backend registry as the one source of truth: the op table check (every required
// slot of GivtOps set, a missing one named), the precision names and their parse, the device names,
// the capabilities instead of names, the precision note, and the optimizer's ops in the op profile
// (givt-bench --profile).
#define _POSIX_C_SOURCE 200809L
#include <stdlib.h>
#include <string.h>

#include "fs.h"
#include "harness.h"
#include "ops.h"
#include "testutil.h"
#include "util.h"

// A copy of the CPU backend's table with one required slot NULL fails the check, naming that slot;
// the whole table passes, and so do the optional slots left NULL.
TEST(registry_op_table_check_names_a_missing_op) {
    Backend *be = tu_open_cpu();
    CHECK(backend_check_ops(be->ops, "cpu") == 0, "%s", givt_last_error());
    int n = 0;
#define MISSING(op)                                                                                        \
    {                                                                                                      \
        GivtOps ops = *be->ops;                                                                            \
        ops.op = NULL;                                                                                     \
        int rc = backend_check_ops(&ops, "cpu");                                                           \
        CHECK(rc == -1 && tu_error_has("backend cpu: op " #op " is not implemented", NULL), "%s: rc %d, %s", \
              #op, rc, givt_last_error());                                                                 \
        n++;                                                                                               \
    }
    GIVT_OPS_REQUIRED(MISSING)
#undef MISSING
    GivtOps ops = *be->ops;
    int n_optional = 0;
#define OPTIONAL_NULL(op) ops.op = NULL, n_optional++;
    GIVT_OPS_OPTIONAL(OPTIONAL_NULL)
#undef OPTIONAL_NULL
    CHECK((size_t)(n + n_optional) == sizeof(GivtOps) / sizeof(void (*)(void)), "%d required ops, %d optional", n,
          n_optional);
    CHECK(backend_check_ops(&ops, "cpu") == 0, "%s", givt_last_error());
    backend_close(be);
}

// Every backend the registry can open here passes the check through backend_open, in both precisions,
// and has its capabilities: host memory (the CPU) or a device's own memory (CUDA, emulated too).
TEST(registry_backends_open_checked_with_their_capabilities) {
    for (int i = 0; i < backend_registry_count(); i++) {
        const char *name = backend_registry_name(i);
        char why[256];
        if (!backend_available(name, why, sizeof why)) {
            printf("  %s: not available here (%s)\n", name, why);
            continue;
        }
        for (int p = PRECISION_NO; p <= PRECISION_BF16; p++) {
            Backend *be = backend_open(name, (Precision)p);
            CHECK(be != NULL, "%s: %s", name, givt_last_error());
            if (!be) continue;
            CHECK(!strcmp(be->name, name) && be->precision == (Precision)p);
            unsigned want = !strcmp(name, "cpu") ? BACKEND_CAP_HOST_MEMORY : BACKEND_CAP_DEVICE_MEMORY;
            CHECK(be->caps == want, "%s: caps %#x, want %#x", name, be->caps, want);
            char note[128];
            int has_note = backend_precision_note(be, note, sizeof note);
            CHECK(has_note == (p == PRECISION_BF16 && be->compute != DTYPE_BF16), "%s %s", name,
                  backend_precision_name((Precision)p));
            if (has_note) {
                char want_note[128];
                snprintf(want_note, sizeof want_note, "the %s backend computes in float32", name);
                CHECK(!strcmp(note, want_note), "%s", note);
            }
            backend_close(be);
        }
    }
}

TEST(registry_precision_and_device_names) {
    Precision p = PRECISION_BF16;
    CHECK(backend_precision_parse("no", &p) == 0 && p == PRECISION_NO);
    CHECK(backend_precision_parse("bf16", &p) == 0 && p == PRECISION_BF16);
    CHECK(backend_precision_parse("fp16", &p) == -1 && tu_error_has("precision \"fp16\": expected no or bf16", NULL),
          "%s", givt_last_error());
    CHECK(!strcmp(backend_precision_name(PRECISION_NO), "no"));
    CHECK(!strcmp(backend_precision_name(PRECISION_BF16), "bf16"));

    char names[128];
    backend_device_names(names, sizeof names, ", ");
    CHECK(!strcmp(names, "auto, cuda, cpu"), "%s", names);
    CHECK(!strcmp(backend_device_lookup("AUTO"), "auto") && !strcmp(backend_device_lookup("Cpu"), "cpu"));
    CHECK(backend_device_lookup("tpu") == NULL);
    CHECK(backend_open("tpu", PRECISION_NO) == NULL &&
              tu_error_has("device \"tpu\": unknown (known: auto, cuda, cpu)", NULL),
          "%s", givt_last_error());
}

// givt-bench --profile times the optimizer's ops too (through BACKEND_OPC): adamw and sumsq, each
// with its GB/s; with --ema the EMA is in adamw's pass (no ema_update row).
TEST(registry_bench_profile_shows_the_optimizer_ops) {
    char exe[1024], dir[256];
    if (!tu_program_path(exe, sizeof exe, "givt-bench")) {
        CHECK(0, "%s not found: build it (make all) and run the tests from the repository root", exe);
        return;
    }
    tu_mkdtemp(dir, "bench");
    const char *log = tu_path(dir, "bench.log");
    char *const argv[] = {exe, "--hidden", "16", "--intermediate", "24", "--heads", "2", "--layers", "1", "--seq",
                          "8", "--batch", "2", "--steps", "2", "--warmup", "0", "--profile", "--ema", NULL};
    int err = 0;
    pid_t pid = tu_spawn_logged(argv, log, 1, &err);
    CHECK(pid > 0, "posix_spawn %s: %s", exe, strerror(err));
    int rc = pid > 0 ? tu_wait_exit(pid, 120) : -1;
    char *text = fs_read_text(log, NULL);
    CHECK(rc == 0 && text, "exit %d: %s", rc, text ? text : "(no output)");
    static const char *const ops[] = {"adamw", "sumsq", "matmul_fwd"};
    for (size_t i = 0; text && i < sizeof ops / sizeof ops[0]; i++) {
        char row[64];
        snprintf(row, sizeof row, "\n%s ", ops[i]);
        const char *at = strstr(text, row);
        const char *eol = at ? strchr(at + 1, '\n') : NULL;
        CHECK(at && eol, "no %s row in:\n%s", ops[i], text);
        if (at && eol && i < 2) {
            char line[256];
            snprintf(line, sizeof line, "%.*s", (int)(eol - at - 1), at + 1);
            CHECK(strstr(line, " GB/s"), "%s", line);
        }
    }
    // with AdamW the EMA runs in its pass (adamw_step_ema, as givt-train's step): no pass of its own
    CHECK(!text || !strstr(text, "\nema_update "), "an ema_update row beside adamw in:\n%s", text);
    free(text);
    tu_rmtree(dir);
}

// givt-train --version's line per backend: the CPU is available; the CUDA backend is "available,
// emulated on the CPU" in a runner that links the emulated kernels, "unavailable: why" without a GPU
// or nvcc, and "available" on a GPU.
TEST(registry_availability_text_for_version) {
    char line[320], why[256] = "";
    CHECK(!strcmp(backend_availability_text("cpu", line, sizeof line), "available"), "%s", line);
    int ok = backend_available("cuda", why, sizeof why);
    backend_availability_text("cuda", line, sizeof line);
    const char *want = ok == 2 ? "available, emulated on the CPU (tiny models only)" : ok ? "available" : "unavailable: ";
    CHECK(!strncmp(line, want, strlen(want)), "cuda (available() = %d): %s", ok, line);
    printf("  cuda: %s\n", line);
    CHECK(!strncmp(backend_availability_text("tpu", line, sizeof line), "unavailable: no such backend", 28), "%s",
          line);
}
