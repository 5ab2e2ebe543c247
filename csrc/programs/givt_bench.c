// givt-bench: times full training steps of a GIVT model on a backend (--device cpu by default, or
// cuda; tokens/s, ms/step, achieved GFLOP/s and, when the device's peak is known, MFU), or OpenBLAS
// sgemm alone (--sgemm M N K: this machine's CPU ceiling), or the attention op alone (--attention:
// forward and backward at one shape, TFLOP/s, what scripts/gpu_check.sh sets beside PyTorch's SDPA).
// A benchmark, not a test: it prints one
// machine-readable "RESULT ..." line that scripts/bench_cpu.sh and scripts/gpu_check.sh read.
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blas.h"
#include "model.h"
#include "optim.h"
#include "rng.h"

static void usage(FILE *out) {
    fprintf(out,
            "usage: givt-bench [model options] [--device auto|cpu|cuda] [--precision no|bf16] [--steps N]\n"
            "                  [--warmup N] [--no-adamw] [--ema] [--checkpointing] [--profile] [--peak-tflops X]\n"
            "                  [--seed S] [--cuda-graphs]\n"
            "       givt-bench --sgemm M N K [--reps R]\n"
            "       givt-bench --attention [--batch B] [--heads H] [--seq T] [--head-dim hd] [--device ...]\n"
            "                  [--precision ...] [--steps N] [--warmup N]\n"
            "model options (defaults in brackets):\n"
            "  --input-dim D [16]  --hidden C [256]  --intermediate F [688]  --heads H [4]  --layers L [4]\n"
            "  --seq T [256]  --batch B [8]\n"
            "--device [cpu] and --precision [no] open the backend as givt-train's device and mixed_precision\n"
            "(bf16: bfloat16 compute, float32 master weights; the CPU backend computes in float32).\n"
            "MFU (model FLOPs as givt_config_flops_per_token counts them / the device's peak) is printed when\n"
            "the backend knows its peak or --peak-tflops X is given. The CUDA backend's, from the device:\n"
            "SMs x clock x dense rate per SM (sm_90 bf16: 4096 FLOP/clk/SM on the tensor cores at the\n"
            "datasheet clock: 989 TFLOP/s on an H100/H200 SXM, 756 on an H100 PCIe; fp32: 256 at boost).\n"
            "A step is zero_grads, forward, backward, global grad norm and AdamW (lr 1e-4, betas 0.9/0.99,\n"
            "wd 0.1, clip 1.0) as givt-train's: the clipping and the skip of a non-finite step decided on the\n"
            "backend, the step's loss read back one step late; ms/step and tokens/s are of the median timed\n"
            "step. Per step, host_syncs (host waits that drain the backend's queue) and kernel launches, as\n"
            "the backend counts them (the emulated CUDA backend; \"na\" elsewhere), the bench's own\n"
            "synchronize around each timed step excluded. --no-adamw times forward\n"
            "+ backward only. --ema adds givt-train's EMA update of the weights to each step. --checkpointing\n"
            "recomputes each layer in backward. --cuda-graphs records the step as a CUDA graph at the second\n"
            "step and replays it after (givt-train's [train] cuda_graphs; a replayed step is one launch).\n"
            "--profile adds a table of the\n"
            "time spent in each backend op (timed synchronously, by op name). The clock is read after\n"
            "synchronizing the backend (GPU ops are asynchronous). peak_mem_bytes in the RESULT line is the\n"
            "device's total - free memory at the end (a rough peak: it includes the CUDA context, which\n"
            "ctx_mem_bytes, the same just after the backend opened, estimates).\n"
            "--sgemm times C (M,N) = A (M,K) B^T (B stored (N,K), as the model's matmul_fwd) on the CPU with\n"
            "OpenBLAS, best of R repetitions.\n"
            "--attention times the backend's attention_fwd and attention_bwd (RoPE on every dim, causal) on\n"
            "random q, k, v in the model's layout ((B, T, 3C) rows), hd [64]: the median of N calls each, and\n"
            "TFLOP/s counting the causal pairs only: forward 4 hd pairs, backward 10 hd pairs (5 products),\n"
            "pairs = B H T (T + 1) / 2 (the convention of FlashAttention's benchmarks, for causal masks).\n"
            "Threads: OMP_NUM_THREADS (OpenMP loops and the OpenMP build of OpenBLAS).\n");
}

// An int option in [lo, hi] (util's util_parse_long_option).
static int parse_int(const char *opt, const char *v, long lo, long hi, int *out) {
    long x = 0;
    int rc = util_parse_long_option(opt, v, lo, hi, &x);
    if (rc == 0) *out = (int)x;
    return rc;
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
        double t0 = util_time_now_s();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, a, K, b, K, 0.0f, c, N);
        double dt = util_time_now_s() - t0;
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

// givt-train's EMA update as a pass of its own (--no-adamw --ema; with AdamW the EMA runs in its
// pass: adamw_update), its decay (power 2/3, the seed's) from the step record rec
static void bench_ema_step(GivtModel *m, Weights *ema, const StepRecord *rec) {
    cval *compute = (void *)ema->compute == (void *)ema->master ? NULL : ema->compute;
    ema_update_weights(m->be, ema->master, compute, m->w.master, m->table.total, 0.0f, rec);
}

// What one benchmarked step enqueues, as givt-train's (trainer.c enqueue_step): the loss and the
// squared norm into backend scalars, the step's decision from them on the backend (step_check), the
// update (AdamW with the EMA in its pass, or the EMA alone with --no-adamw --ema, or nothing).
typedef struct {
    GivtModel *m;
    AdamW *opt;
    Weights *ema;  // NULL: no EMA
    const float *x;
    StepRecord *rec;
    int B, T, adamw;
} BenchStep;

static void bench_enqueue_step(void *user) {
    const BenchStep *b = user;
    GivtModel *m = b->m;
    Backend *be = m->be;
    model_zero_grads(m);
    be->ops->zero(be, m->scalars, MODEL_NUM_SCALARS * sizeof(double));
    model_forward(m, &m->w, b->x, b->B, b->T);
    model_loss(m, m->scalars + SCALAR_LOSS_SUM, 1.0f);
    model_backward(m, &m->w);
    grad_sumsq(m, m->scalars + SCALAR_GRAD_SUMSQ);
    adamw_check_step(b->opt, be, b->rec, m->scalars + SCALAR_LOSS_SUM, (double)b->B * b->T * m->cfg.input_dim,
                     b->ema ? 2.0 / 3.0 : 0.0);
    if (b->adamw)
        adamw_update(b->opt, m, m->grads, b->rec, b->ema);
    else if (b->ema)
        bench_ema_step(m, b->ema, b->rec);
}


static int dbl_cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

// ---- attention alone ------------------------------------------------------------------------------
// The median of n timings of one call (fwd: 0 the forward, 1 the backward); the backend synchronized
// around each call.
typedef struct {
    Backend *be;
    AttnShape s;
    cval *qkv, *dqkv, *out, *dout;
    void *saved, *scratch;
    float *cos, *sin;
} AttnBench;

static void attn_bench_call(AttnBench *a, int bwd) {
    const GivtOps *o = a->be->ops;
    size_t C = (size_t)a->s.H * a->s.hd, e = dtype_size(a->be->compute);
    char *q = (char *)a->qkv, *dq = (char *)a->dqkv;
    if (bwd)
        o->attention_bwd(a->be, (cval *)dq, (cval *)(dq + C * e), (cval *)(dq + 2 * C * e), a->scratch, a->dout, a->out,
                         (cval *)q, (cval *)(q + C * e), (cval *)(q + 2 * C * e), a->saved, a->cos, a->sin, &a->s);
    else
        o->attention_fwd(a->be, a->out, a->saved, (cval *)q, (cval *)(q + C * e), (cval *)(q + 2 * C * e), a->cos,
                         a->sin, &a->s);
}

static double attn_bench_time(AttnBench *a, int bwd, int warmup, int n) {
    double *t = xcalloc((size_t)n, sizeof(double));
    for (int i = 0; i < warmup + n; i++) {
        backend_synchronize(a->be);
        double t0 = util_time_now_s();
        attn_bench_call(a, bwd);
        backend_synchronize(a->be);
        if (i >= warmup) t[i - warmup] = util_time_now_s() - t0;
    }
    qsort(t, (size_t)n, sizeof(double), dbl_cmp);
    double med = n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
    free(t);
    return med;
}

// Uploads n random values (normal, times scale) in the compute dtype
static cval *attn_bench_random(Backend *be, Rng *rng, size_t n, double scale) {
    float *h = xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) h[i] = (float)(scale * rng_normal(rng));
    float *f = be->ops->alloc(be, n * sizeof(float));
    cval *c = be->ops->alloc(be, n * dtype_size(be->compute));
    be->ops->upload(be, f, h, n * sizeof(float));
    be->ops->to_compute(be, c, f, n);
    be->ops->free(be, f);
    free(h);
    return c;
}

static int bench_attention(const char *device, Precision precision, int B, int H, int T, int hd, int steps,
                           int warmup) {
    Backend *be = backend_open(device, precision);
    if (!be) {
        fprintf(stderr, "givt-bench: %s\n", givt_last_error());
        return 1;
    }
    const GivtOps *o = be->ops;
    AttnBench a = {.be = be};
    size_t C = (size_t)H * hd;
    a.s = (AttnShape){.B = B, .H = H, .hd = hd, .Tq = T, .Tk = T, .pos0 = 0, .n_rot = hd & ~1, .q_row = 3 * C,
                      .q_batch = 3 * C * T, .kv_row = 3 * C, .kv_batch = 3 * C * T};
    Rng rng;
    rng_seed(&rng, 1);
    size_t nqkv = (size_t)B * T * 3 * C, no = (size_t)B * T * C, nt = (size_t)T * (size_t)(a.s.n_rot ? a.s.n_rot : 1);
    a.qkv = attn_bench_random(be, &rng, nqkv, 1.0);
    a.dout = attn_bench_random(be, &rng, no, 1.0);
    a.dqkv = o->alloc(be, nqkv * dtype_size(be->compute));
    a.out = o->alloc(be, no * dtype_size(be->compute));
    a.saved = o->alloc(be, o->attention_saved_bytes(be, &a.s));
    a.scratch = o->alloc(be, o->attention_scratch_bytes(be, &a.s));
    float *cs = xmalloc(nt * sizeof(float)), *sn = xmalloc(nt * sizeof(float));
    int half = a.s.n_rot / 2;
    for (int t = 0; t < T; t++)  // rotate-half tables (base 10000), as the model's
        for (int i = 0; i < a.s.n_rot; i++) {
            double ang = t * pow(10000.0, -2.0 * (i % (half ? half : 1)) / (a.s.n_rot ? a.s.n_rot : 1));
            cs[(size_t)t * a.s.n_rot + i] = (float)cos(ang), sn[(size_t)t * a.s.n_rot + i] = (float)sin(ang);
        }
    a.cos = o->alloc(be, nt * sizeof(float)), a.sin = o->alloc(be, nt * sizeof(float));
    o->upload(be, a.cos, cs, nt * sizeof(float)), o->upload(be, a.sin, sn, nt * sizeof(float));
    free(cs), free(sn);

    attn_bench_call(&a, 0);  // the backward needs a forward's output and saved state
    double tf = attn_bench_time(&a, 0, warmup, steps), tb = attn_bench_time(&a, 1, warmup, steps);
    double pairs = (double)B * H * T * (T + 1.0) / 2.0, ff = 4.0 * hd * pairs, fb = 10.0 * hd * pairs;
    printf("backend: %s (%s), compute %s\n", be->name, be->device, dtype_name(be->compute));
    printf("attention B %d H %d T %d hd %d (causal, RoPE on %d dims): forward %.3f ms %.2f TFLOP/s, backward %.3f ms "
           "%.2f TFLOP/s (median of %d)\n",
           B, H, T, hd, a.s.n_rot, 1e3 * tf, ff / tf / 1e12, 1e3 * tb, fb / tb / 1e12, steps);
    printf("RESULT impl=givt-attention B=%d H=%d T=%d hd=%d fwd_ms=%.4f bwd_ms=%.4f fwd_tflops=%.3f bwd_tflops=%.3f "
           "backend=%s compute=%s\n",
           B, H, T, hd, 1e3 * tf, 1e3 * tb, ff / tf / 1e12, fb / tb / 1e12, be->name, dtype_name(be->compute));
    void *bufs[] = {a.qkv, a.dqkv, a.out, a.dout, a.saved, a.scratch, a.cos, a.sin};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) o->free(be, bufs[i]);
    backend_close(be);
    return 0;
}

int main(int argc, char **argv) {
    GivtConfig cfg;
    givt_config_default(&cfg);
    cfg.input_dim = 16, cfg.hidden_dim = 256, cfg.intermediate_dim = 688, cfg.num_heads = 4, cfg.num_layers = 4;
    int T = 256, B = 8, steps = 10, warmup = 2, adamw = 1, ema = 0, profile = 0, seed = 1337, checkpointing = 0;
    int sg[3] = {0, 0, 0}, sgemm = 0, reps = 5, attention = 0, head_dim = 64, graphs = 0;
    const char *device = "cpu";
    Precision precision = PRECISION_NO;
    double peak_tflops = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int rc = 0;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--no-adamw")) {
            adamw = 0;
        } else if (!strcmp(a, "--ema")) {
            ema = 1;
        } else if (!strcmp(a, "--checkpointing")) {
            checkpointing = 1;
        } else if (!strcmp(a, "--cuda-graphs")) {
            graphs = 1;
        } else if (!strcmp(a, "--attention")) {
            attention = 1;
        } else if (!strcmp(a, "--profile")) {
            profile = 1;
        } else if (!strcmp(a, "--device") || !strcmp(a, "--precision")) {
            if (!v || !*v)
                rc = givt_fail("%s: expected a value", a);
            else if (!strcmp(a, "--device"))
                device = v;
            else
                rc = backend_precision_parse(v, &precision);
            i++;
        } else if (!strcmp(a, "--peak-tflops")) {
            char *end = NULL;
            peak_tflops = v ? strtod(v, &end) : 0;
            if (!v || !*v || *end || !(peak_tflops > 0) || !isfinite(peak_tflops))
                rc = givt_fail("--peak-tflops %s: expected a positive number (TFLOP/s)", v ? v : "(missing)");
            i++;
        } else if (!strcmp(a, "--sgemm")) {
            sgemm = 1;
            for (int k = 0; k < 3 && rc == 0; k++)
                rc = parse_int("--sgemm", i + 1 < argc ? argv[++i] : NULL, 1, 1 << 16, &sg[k]);
        } else {
            static const char *names[] = {"--input-dim", "--hidden", "--intermediate", "--heads", "--layers",
                                          "--seq",       "--batch",  "--steps",        "--warmup", "--reps",
                                          "--seed",      "--head-dim"};
            int *dst[] = {&cfg.input_dim, &cfg.hidden_dim, &cfg.intermediate_dim, &cfg.num_heads, &cfg.num_layers,
                          &T, &B, &steps, &warmup, &reps, &seed, &head_dim};
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
    blas_init_threads(omp_get_max_threads());
    printf("threads: OpenMP %d; BLAS: %s\n", omp_get_max_threads(), blas_description());
    if (sgemm) return bench_sgemm(sg[0], sg[1], sg[2], reps);
    if (attention) return bench_attention(device, precision, B, cfg.num_heads, T, head_dim, steps, warmup);

    cfg.block_size = T;
    GivtModel m;
    Backend *be = backend_open(device, precision);
    if (!be) {
        fprintf(stderr, "givt-bench: %s\n", givt_last_error());
        return 1;
    }
    double peak = peak_tflops > 0 ? peak_tflops * 1e12 : be->peak_flops;
    size_t mem_free = 0, mem_total = 0;
    backend_mem_info(be, &mem_free, &mem_total);
    size_t ctx_mem = mem_total > mem_free ? mem_total - mem_free : 0;
    char peak_s[64] = "unknown";
    if (peak > 0)
        snprintf(peak_s, sizeof peak_s, "%.0f TFLOP/s%s", peak / 1e12, peak_tflops > 0 ? " (--peak-tflops)" : "");
    printf("backend: %s (%s), compute %s, peak %s\n", be->name, be->device, dtype_name(be->compute), peak_s);
    if (model_create(&m, &cfg, be) != 0) {
        fprintf(stderr, "givt-bench: %s\n", givt_last_error());
        return 1;
    }
    const GivtOps *ops = be->ops;
    if (graphs && (!ops->graph_begin || profile)) {
        fprintf(stderr, "givt-bench: --cuda-graphs: %s\n",
                profile ? "not with --profile (it times each op on its own; a graph runs them as one launch)"
                        : "the backend has no graphs (CUDA only)");
        return 1;
    }
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
    model_weights_upload(&m, &m.w, host);
    free(host);
    model_alloc_acts(&m, B, T, 1, checkpointing);
    model_alloc_grads(&m);

    size_t nx = (size_t)B * T * cfg.input_dim;
    float *xh = xmalloc(nx * sizeof(float)), *x = ops->alloc(be, nx * sizeof(float));
    for (size_t i = 0; i < nx; i++) xh[i] = (float)rng_normal(&rng);
    ops->upload(be, x, xh, nx * sizeof(float));
    free(xh);

    OptimConfig oc = {.lr = 1e-4, .beta1 = 0.9, .beta2 = 0.99, .eps = 1e-8, .weight_decay = 0.1, .grad_norm = 1.0,
                      .schedule = LR_SCHEDULE_CONSTANT};
    AdamW opt;
    adamw_create(&opt, &m, &oc);
    Weights ema_w;  // --ema: the EMA weights, a copy to start (as givt-train's)
    memset(&ema_w, 0, sizeof ema_w);
    if (ema) {
        model_weights_alloc(&m, &ema_w);
        model_weights_copy(&m, &ema_w, &m.w);
    }

    size_t mm_params;
    double fpt = givt_config_flops_per_token(&cfg, T, &mm_params);
    double tokens = (double)B * T, total = 0, loss = 0;
    double *times = xcalloc((size_t)steps, sizeof(double));
    // the step's decision (clipping, the skip) on the backend and its record read one step late, as
    // givt-train's step (trainer.c): no wait for the backend inside a step
    StepRecord *rec = ops->alloc(be, sizeof *rec), r = {0};
    BackendReadback *back = ops->readback_create(be, sizeof(StepRecord));
    int pending = 0;
    BenchStep step = {&m, &opt, ema ? &ema_w : NULL, x, rec, B, T, adamw};
    BackendGraph *graph = NULL;
    BackendStats st0, st1;
    double syncs = 0, launches = 0, fences = 0;  // inside the timed steps, the bench's own brackets excluded
    printf("model: D %d C %d F %d H %d L %d, T %d, B %d; %zu params (%zu in matmuls); %.3f GFLOP/step%s\n",
           cfg.input_dim, cfg.hidden_dim, cfg.intermediate_dim, cfg.num_heads, cfg.num_layers, T, B,
           m.table.params, mm_params, fpt * tokens / 1e9, adamw ? "" : " (no optimizer step)");
    for (int s = 0; s < warmup + steps; s++) {
        if (s == warmup && profile) backend_profile_start(be);  // profile the timed steps only
        backend_synchronize(be);  // GPU ops are asynchronous: the clock brackets finished work
        double t0 = util_time_now_s();
        backend_stats(be, &st0);
        // as the trainer's step: the whole step enqueued (eagerly, or with --cuda-graphs from the
        // second step on as one graph launch), then the previous step's record read (a fence wait:
        // this step's work is queued after it)
        if (!(graphs && s >= 1))
            bench_enqueue_step(&step);
        else if (backend_graph_launch(be, &graph, bench_enqueue_step, &step) != 0)  // recorded at its first use
            givt_die("--cuda-graphs: %s", givt_last_error());
        if (pending) {
            memcpy(&r, ops->readback_wait(be, back), sizeof r);
            if (!isfinite(r.loss)) givt_die("step %d: loss is %g", s - 1, r.loss);
            adamw_note_step(&opt, &r);
        }
        ops->readback_start(be, back, rec, sizeof *rec);
        pending = 1;
        backend_stats(be, &st1);
        backend_synchronize(be);
        double dt = util_time_now_s() - t0;
        if (s >= warmup) {
            syncs += (double)(st1.host_syncs - st0.host_syncs);
            launches += (double)(st1.launches - st0.launches);
            fences += (double)(st1.fence_waits - st0.fence_waits);
        }
        if (s >= warmup) {
            times[s - warmup] = dt;
            total += dt;
        }
    }
    memcpy(&r, ops->readback_wait(be, back), sizeof r);  // the last step's record
    if (!isfinite(r.loss)) givt_die("step %d: loss is %g", warmup + steps - 1, r.loss);
    adamw_note_step(&opt, &r);
    loss = r.loss;
    // The median step: robust to the odd step slowed by another process on a shared machine.
    qsort(times, (size_t)steps, sizeof(double), dbl_cmp);
    double per_step = steps % 2 ? times[steps / 2] : 0.5 * (times[steps / 2 - 1] + times[steps / 2]);
    double best = times[0];
    free(times);
    printf("givt: %d steps (+%d warmup): median %.1f ms/step (best %.1f, mean %.1f), %.0f tokens/s, %.2f GFLOP/s, "
           "loss %.4f\n",
           steps, warmup, 1e3 * per_step, 1e3 * best, 1e3 * total / steps, tokens / per_step,
           fpt * tokens / per_step / 1e9, loss);
    double mfu = peak > 0 ? fpt * tokens / per_step / peak : 0;
    backend_mem_info(be, &mem_free, &mem_total);
    size_t used = mem_total > mem_free ? mem_total - mem_free : 0;
    int gpu = (be->caps & BACKEND_CAP_DEVICE_MEMORY) != 0;
    if (peak > 0) printf("MFU %.1f%% of %s\n", 100 * mfu, peak_s);
    char counts[160] = "";
    if (st0.counted) {
        printf("per step: %.2f host syncs, %.1f kernel launches, %.2f fence waits (counted by the %s backend; the "
               "bench's synchronize around each step excluded)\n",
               syncs / steps, launches / steps, fences / steps, be->name);
        snprintf(counts, sizeof counts, " host_syncs_per_step=%.2f launches_per_step=%.1f fence_waits_per_step=%.2f",
                 syncs / steps, launches / steps, fences / steps);
    } else {
        printf("per step: host syncs and kernel launches not counted by the %s backend (the emulated CUDA backend "
               "counts them)\n", be->name);
        snprintf(counts, sizeof counts, " host_syncs_per_step=na launches_per_step=na");
    }
    if (gpu)
        printf("device memory: %.2f GiB in use at the end (%.2f GiB just after the backend opened)\n",
               used / 1073741824.0, ctx_mem / 1073741824.0);
    if (profile) backend_profile_print(be, steps, total / steps);
    char extra[256] = "";
    int n = 0;
    if (peak > 0) n += snprintf(extra + n, sizeof extra - (size_t)n, " mfu=%.4f peak_tflops=%.1f", mfu, peak / 1e12);
    if (gpu)  // the CPU backend reports the whole machine's memory: not this run's
        snprintf(extra + n, sizeof extra - (size_t)n, " peak_mem_bytes=%zu ctx_mem_bytes=%zu", used, ctx_mem);
    printf("RESULT impl=givt threads=%d tokens_per_s=%.1f ms_per_step=%.2f best_ms=%.2f gflops=%.2f params=%zu "
           "flops_per_token=%.0f loss=%.5f backend=%s compute=%s%s%s\n",
           omp_get_max_threads(), tokens / per_step, 1e3 * per_step, 1e3 * best, fpt * tokens / per_step / 1e9,
           m.table.params, fpt, loss, be->name, dtype_name(be->compute), extra, counts);

    if (graph) ops->graph_free(be, graph);
    ops->readback_free(be, back);
    ops->free(be, rec);
    adamw_free(&opt, &m);
    if (ema) model_weights_free(&m, &ema_w);
    ops->free(be, x);
    model_free(&m);
    backend_close(be);
    return 0;
}
