// givt-bench: times full training steps of a GIVT model on the CPU backend (tokens/s, ms/step,
// achieved GFLOP/s), or OpenBLAS sgemm alone (--sgemm M N K: this machine's ceiling). A benchmark,
// not a test: it prints one machine-readable "RESULT ..." line that scripts/bench_cpu.sh reads.
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "optim.h"

static void usage(FILE *out) {
    fprintf(out,
            "usage: givt-bench [model options] [--steps N] [--warmup N] [--no-adamw] [--checkpointing]\n"
            "                  [--profile] [--seed S]\n"
            "       givt-bench --sgemm M N K [--reps R]\n"
            "model options (defaults in brackets):\n"
            "  --input-dim D [16]  --hidden C [256]  --intermediate F [688]  --heads H [4]  --layers L [4]\n"
            "  --seq T [256]  --batch B [8]\n"
            "A step is zero_grads, forward, backward, global grad norm and AdamW (lr 1e-4, betas 0.9/0.99,\n"
            "wd 0.1, clip 1.0); ms/step and tokens/s are of the median timed step. --no-adamw times forward\n"
            "+ backward only. --checkpointing recomputes each layer in backward. --profile adds a table of the time spent in each backend op (matmuls by\n"
            "shape). --sgemm times C (M,N) = A (M,K) B^T (B stored (N,K), as the model's matmul_fwd),\n"
            "best of R repetitions.\n"
            "Threads: OMP_NUM_THREADS (OpenMP loops and the OpenMP build of OpenBLAS).\n");
}

static int parse_int(const char *opt, const char *v, long lo, long hi, int *out) {
    char *end = NULL;
    long x = v ? strtol(v, &end, 10) : 0;
    if (!v || !*v || *end || x < lo || x > hi)
        return givt_fail("%s %s: expected a whole number in [%ld, %ld]", opt, v ? v : "(missing)", lo, hi);
    *out = (int)x;
    return 0;
}

// ---- per-op timing: a copy of the backend's op table whose entries time the real ones ----------
// (The CPU ops are synchronous, so wall time around each call is the op's time.)
#define PROF_MAX 64
typedef struct {
    char key[64];
    double seconds;
    long calls;
} ProfEntry;
static ProfEntry g_prof[PROF_MAX];
static int g_nprof;
static const GivtOps *g_real;

static void prof_add(const char *key, double seconds) {
    int i = 0;
    while (i < g_nprof && strcmp(g_prof[i].key, key) != 0) i++;
    if (i == g_nprof) {
        if (g_nprof == PROF_MAX) givt_die("--profile: more than %d distinct ops", PROF_MAX);
        snprintf(g_prof[g_nprof++].key, sizeof g_prof[0].key, "%s", key);
    }
    g_prof[i].seconds += seconds;
    g_prof[i].calls++;
}

#define TIMED(key, call)                         \
    do {                                         \
        double t0_ = time_now_s();               \
        call;                                    \
        prof_add((key), time_now_s() - t0_);     \
    } while (0)

static void p_zero(void *p, size_t bytes) { TIMED("zero", g_real->zero(p, bytes)); }
static void p_matmul_fwd(float *out, const float *inp, const float *w, int N, int K, int M) {
    char key[64];
    snprintf(key, sizeof key, "matmul_fwd %dx%d->%d", N, K, M);
    TIMED(key, g_real->matmul_fwd(out, inp, w, N, K, M));
}
static void p_matmul_bwd(float *dinp, float *dw, const float *dout, const float *inp, const float *w, int N, int K,
                         int M) {
    char key[64];
    snprintf(key, sizeof key, "matmul_bwd %dx%d->%d", N, K, M);
    TIMED(key, g_real->matmul_bwd(dinp, dw, dout, inp, w, N, K, M));
}
static void p_rmsnorm_fwd(float *out, float *rstd, const float *inp, const float *w, int N, int C) {
    TIMED("rmsnorm_fwd", g_real->rmsnorm_fwd(out, rstd, inp, w, N, C));
}
static void p_rmsnorm_bwd(float *dinp, float *dw, const float *dout, const float *inp, const float *w,
                          const float *rstd, int N, int C) {
    TIMED("rmsnorm_bwd", g_real->rmsnorm_bwd(dinp, dw, dout, inp, w, rstd, N, C));
}
static void p_rope_fwd(float *qkv, const float *cs, const float *sn, int B, int T, int C, int H, int n) {
    TIMED("rope_fwd", g_real->rope_fwd(qkv, cs, sn, B, T, C, H, n));
}
static void p_rope_bwd(float *dqkv, const float *cs, const float *sn, int B, int T, int C, int H, int n) {
    TIMED("rope_bwd", g_real->rope_bwd(dqkv, cs, sn, B, T, C, H, n));
}
static void p_attention_fwd(float *out, float *att, const float *qkv, int B, int T, int C, int H) {
    TIMED("attention_fwd", g_real->attention_fwd(out, att, qkv, B, T, C, H));
}
static void p_attention_bwd(float *dqkv, float *scratch, const float *dout, const float *qkv, const float *att,
                            int B, int T, int C, int H) {
    TIMED("attention_bwd", g_real->attention_bwd(dqkv, scratch, dout, qkv, att, B, T, C, H));
}
static void p_swiglu_fwd(float *out, const float *h, int N, int F) {
    TIMED("swiglu_fwd", g_real->swiglu_fwd(out, h, N, F));
}
static void p_swiglu_bwd(float *dh, const float *dout, const float *h, int N, int F) {
    TIMED("swiglu_bwd", g_real->swiglu_bwd(dh, dout, h, N, F));
}
static void p_add(float *out, const float *a, const float *b, size_t n) { TIMED("add", g_real->add(out, a, b, n)); }
static void p_shift_bos(float *in, const float *x, const float *bos, int B, int T, int D) {
    TIMED("shift_bos", g_real->shift_bos(in, x, bos, B, T, D));
}
static void p_shift_bos_bwd(float *dbos, const float *din, int B, int T, int D) {
    TIMED("shift_bos_bwd", g_real->shift_bos_bwd(dbos, din, B, T, D));
}
static double p_gaussian_nll(float *dy, const float *y, const float *x, int N, int D, double eps, float scale) {
    double r = 0;
    TIMED(dy ? "gaussian_nll+grad" : "gaussian_nll", r = g_real->gaussian_nll(dy, y, x, N, D, eps, scale));
    return r;
}
static double p_sumsq(const float *p, size_t n) {
    double r = 0;
    TIMED("sumsq (grad norm)", r = g_real->sumsq(p, n));
    return r;
}
static void p_adamw(float *p, const float *g, float *m, float *v, size_t n, float lr, float b1, float b2, float eps,
                    float wd, float gs, int t) {
    TIMED("adamw", g_real->adamw(p, g, m, v, n, lr, b1, b2, eps, wd, gs, t));
}

static GivtOps g_prof_ops;
static const GivtOps *prof_ops(const GivtOps *real) {
    g_real = real;
    g_prof_ops = *real;
    g_prof_ops.zero = p_zero;
    g_prof_ops.matmul_fwd = p_matmul_fwd;
    g_prof_ops.matmul_bwd = p_matmul_bwd;
    g_prof_ops.rmsnorm_fwd = p_rmsnorm_fwd;
    g_prof_ops.rmsnorm_bwd = p_rmsnorm_bwd;
    g_prof_ops.rope_fwd = p_rope_fwd;
    g_prof_ops.rope_bwd = p_rope_bwd;
    g_prof_ops.attention_fwd = p_attention_fwd;
    g_prof_ops.attention_bwd = p_attention_bwd;
    g_prof_ops.swiglu_fwd = p_swiglu_fwd;
    g_prof_ops.swiglu_bwd = p_swiglu_bwd;
    g_prof_ops.add = p_add;
    g_prof_ops.shift_bos = p_shift_bos;
    g_prof_ops.shift_bos_bwd = p_shift_bos_bwd;
    g_prof_ops.gaussian_nll = p_gaussian_nll;
    g_prof_ops.sumsq = p_sumsq;
    g_prof_ops.adamw = p_adamw;
    return &g_prof_ops;
}

static int prof_cmp(const void *a, const void *b) {
    double x = ((const ProfEntry *)a)->seconds, y = ((const ProfEntry *)b)->seconds;
    return (x < y) - (x > y);
}

static void prof_print(int steps, double step_seconds) {
    qsort(g_prof, (size_t)g_nprof, sizeof g_prof[0], prof_cmp);
    double total = 0;
    for (int i = 0; i < g_nprof; i++) total += g_prof[i].seconds;
    printf("profile over %d steps (mean ms per step; ops total %.1f of %.1f ms/step):\n", steps, 1e3 * total / steps,
           1e3 * step_seconds);
    for (int i = 0; i < g_nprof; i++)
        printf("  %-32s %9.2f ms  %5.1f%%  (%ld calls/step)\n", g_prof[i].key, 1e3 * g_prof[i].seconds / steps,
               100.0 * g_prof[i].seconds / (step_seconds * steps), g_prof[i].calls / steps);
}

// ---- sgemm ceiling ----------------------------------------------------------------------------
static int bench_sgemm(int M, int N, int K, int reps) {
    Rng rng;
    rng_seed(&rng, 1);
    float *a = xmalloc((size_t)M * K * sizeof(float)), *b = xmalloc((size_t)N * K * sizeof(float));
    float *c = xmalloc((size_t)M * N * sizeof(float));
    for (size_t i = 0; i < (size_t)M * K; i++) a[i] = (float)rng_uniform(&rng) - 0.5f;
    for (size_t i = 0; i < (size_t)N * K; i++) b[i] = (float)rng_uniform(&rng) - 0.5f;
    double best = 1e30;
    for (int r = 0; r < reps + 1; r++) {  // the first call warms the thread pool and caches
        double t0 = time_now_s();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, a, K, b, K, 0.0f, c, N);
        double dt = time_now_s() - t0;
        if (r > 0 && dt < best) best = dt;
    }
    double gflops = 2.0 * M * N * K / best / 1e9;
    printf("sgemm %dx%dx%d (A (M,K) @ B^T, B (N,K)): best of %d %.3f ms, %.1f GFLOP/s\n", M, N, K, reps, 1e3 * best,
           gflops);
    printf("RESULT impl=sgemm threads=%d M=%d N=%d K=%d ms=%.4f gflops=%.2f\n", omp_get_max_threads(), M, N, K,
           1e3 * best, gflops);
    free(a);
    free(b);
    free(c);
    return 0;
}

static int dbl_cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    GivtConfig cfg;
    givt_config_default(&cfg);
    cfg.input_dim = 16, cfg.hidden_dim = 256, cfg.intermediate_dim = 688, cfg.num_heads = 4, cfg.num_layers = 4;
    int T = 256, B = 8, steps = 10, warmup = 2, adamw = 1, profile = 0, seed = 1337, checkpointing = 0;
    int sg[3] = {0, 0, 0}, sgemm = 0, reps = 5;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int rc = 0;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--no-adamw")) {
            adamw = 0;
        } else if (!strcmp(a, "--checkpointing")) {
            checkpointing = 1;
        } else if (!strcmp(a, "--profile")) {
            profile = 1;
        } else if (!strcmp(a, "--sgemm")) {
            sgemm = 1;
            for (int k = 0; k < 3 && rc == 0; k++)
                rc = parse_int("--sgemm", i + 1 < argc ? argv[++i] : NULL, 1, 1 << 16, &sg[k]);
        } else {
            static const char *names[] = {"--input-dim", "--hidden", "--intermediate", "--heads", "--layers",
                                          "--seq",       "--batch",  "--steps",        "--warmup", "--reps",
                                          "--seed"};
            int *dst[] = {&cfg.input_dim, &cfg.hidden_dim, &cfg.intermediate_dim, &cfg.num_heads, &cfg.num_layers,
                          &T, &B, &steps, &warmup, &reps, &seed};
            size_t k = 0;
            while (k < sizeof names / sizeof names[0] && strcmp(a, names[k]) != 0) k++;
            if (k == sizeof names / sizeof names[0]) {
                rc = givt_fail("unknown option %s (see --help)", a);
            } else {
                long lo = (dst[k] == &warmup) ? 0 : 1;
                rc = parse_int(a, v, lo, 1 << 20, dst[k]);
                i++;
            }
        }
        if (rc != 0) {
            fprintf(stderr, "givt-bench: %s\n", givt_last_error());
            return 1;
        }
    }
    printf("threads: OpenMP %d, OpenBLAS %d; OpenBLAS: %s (core %s)\n", omp_get_max_threads(),
           openblas_get_num_threads(), openblas_get_config(), openblas_get_corename());
    if (sgemm) return bench_sgemm(sg[0], sg[1], sg[2], reps);

    cfg.block_size = T;
    GivtModel m;
    if (model_create(&m, &cfg, ops_cpu()) != 0) {
        fprintf(stderr, "givt-bench: %s\n", givt_last_error());
        return 1;
    }
    const GivtOps *ops = m.ops;
    // Table init, then every zero-initialised tensor (o_proj, fc3, head) gets small random values so
    // that the backward does real work (with zeros most gradients would vanish).
    Rng rng;
    rng_seed(&rng, (uint64_t)seed);
    float *host = xmalloc(m.table.total * sizeof(float));
    param_table_init(&m.table, host, &rng);
    for (int i = 0; i < m.table.count; i++) {
        const ParamSpec *s = &m.table.specs[i];
        if (s->init == INIT_ZEROS)
            for (size_t j = 0; j < s->numel; j++) host[s->offset + j] = (float)(0.02 * rng_normal(&rng));
    }
    ops->upload(m.params, host, m.table.total * sizeof(float));
    free(host);
    model_alloc_acts(&m, B, T, 1, checkpointing);
    model_alloc_grads(&m);

    size_t nx = (size_t)B * T * cfg.input_dim;
    float *xh = xmalloc(nx * sizeof(float)), *x = ops->alloc(nx * sizeof(float));
    for (size_t i = 0; i < nx; i++) xh[i] = (float)rng_normal(&rng);
    ops->upload(x, xh, nx * sizeof(float));
    free(xh);

    OptimConfig oc = {.lr = 1e-4, .beta1 = 0.9, .beta2 = 0.99, .eps = 1e-8, .weight_decay = 0.1, .grad_norm = 1.0,
                      .schedule = LR_SCHEDULE_CONSTANT};
    AdamW opt;
    adamw_create(&opt, &m, &oc);

    size_t mm_params;
    double fpt = givt_config_flops_per_token(&cfg, T, &mm_params);
    double tokens = (double)B * T, total = 0, loss = 0;
    double *times = xcalloc((size_t)steps, sizeof(double));
    printf("model: D %d C %d F %d H %d L %d, T %d, B %d; %zu params (%zu in matmuls); %.3f GFLOP/step%s\n",
           cfg.input_dim, cfg.hidden_dim, cfg.intermediate_dim, cfg.num_heads, cfg.num_layers, T, B,
           m.table.total, mm_params, fpt * tokens / 1e9, adamw ? "" : " (no optimizer step)");
    for (int s = 0; s < warmup + steps; s++) {
        if (s == warmup && profile) m.ops = prof_ops(ops);  // profile the timed steps only
        double t0 = time_now_s();
        model_zero_grads(&m);
        loss = model_forward(&m, x, B, T, 0).loss;
        model_backward(&m, 1.0f);
        if (adamw) adamw_step(&opt, &m, oc.lr, grad_global_norm(&m));
        double dt = time_now_s() - t0;
        if (!isfinite(loss)) givt_die("step %d: loss is %g", s, loss);
        if (s >= warmup) {
            times[s - warmup] = dt;
            total += dt;
        }
    }
    m.ops = ops;
    // The median step: robust to the odd step slowed by another process on a shared machine.
    qsort(times, (size_t)steps, sizeof(double), dbl_cmp);
    double per_step = steps % 2 ? times[steps / 2] : 0.5 * (times[steps / 2 - 1] + times[steps / 2]);
    double best = times[0];
    free(times);
    printf("givt: %d steps (+%d warmup): median %.1f ms/step (best %.1f, mean %.1f), %.0f tokens/s, %.2f GFLOP/s, "
           "loss %.4f\n",
           steps, warmup, 1e3 * per_step, 1e3 * best, 1e3 * total / steps, tokens / per_step,
           fpt * tokens / per_step / 1e9, loss);
    if (profile) prof_print(steps, total / steps);
    printf("RESULT impl=givt threads=%d tokens_per_s=%.1f ms_per_step=%.2f best_ms=%.2f gflops=%.2f params=%zu "
           "flops_per_token=%.0f loss=%.5f\n",
           omp_get_max_threads(), tokens / per_step, 1e3 * per_step, 1e3 * best, fpt * tokens / per_step / 1e9,
           m.table.total, fpt, loss);

    adamw_free(&opt, &m);
    ops->free(x);
    model_free(&m);
    return 0;
}
