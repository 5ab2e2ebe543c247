// sample: batched KV-cache generation (see sample.h).
#include "sample.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "half.h"
#include "rng.h"
#include "util.h"

size_t sample_memory_bytes(const GivtConfig *cfg, Backend *be, int b, int L, int s) {
    size_t io = size_mul3((size_t)b, (size_t)(s + 1), (size_t)cfg->input_dim * sizeof(float));
    return size_add(model_cache_bytes(cfg, be, b, L, s + 1), io);
}

// ---- one vector from a head row -----------------------------------------------------------
// The parts of a head row y (GIVT.md): logits (K; none for K = 1), mu and pre (K, D) each.
typedef struct {
    const float *logit, *mu, *pre;
    int K, D;
} HeadRow;

static HeadRow head_row(const GivtConfig *c, const float *y) {
    int K = c->num_mixtures, D = c->input_dim;
    HeadRow h = {.logit = y, .mu = y + (K > 1 ? K : 0), .K = K, .D = D};
    h.pre = h.mu + (size_t)K * D;
    return h;
}

// A component index from softmax(logits) (t > 0), or the most probable one (t = 0); 0 for K = 1.
static int pick_component(const HeadRow *h, double t, Rng *rng) {
    if (h->K == 1) return 0;
    int best = 0;
    for (int k = 1; k < h->K; k++)
        if (h->logit[k] > h->logit[best]) best = k;
    if (t == 0) return best;
    double total = 0, u;
    for (int k = 0; k < h->K; k++) total += exp((double)h->logit[k] - h->logit[best]);
    u = rng_uniform(rng) * total;
    for (int k = 0; k < h->K; k++) {
        u -= exp((double)h->logit[k] - h->logit[best]);
        if (u < 0) return k;
    }
    return h->K - 1;  // u within rounding of the total
}

void sample_head_vector(const GivtConfig *c, const float *y, double t, Rng *rng, float *x) {
    HeadRow h = head_row(c, y);
    size_t k0 = (size_t)pick_component(&h, t, rng) * h.D;
    for (int d = 0; d < h.D; d++) {
        double mu = h.mu[k0 + d], sd = givt_head_std(h.pre[k0 + d], c->eps);
        x[d] = (float)(t > 0 ? mu + t * sd * rng_normal(rng) : mu);
    }
}

// log of the guided target N(x; mc, sc)^(1+w) / N(x; mu, su)^w minus that of the proposal N(x; mc, sq),
// without the constants that cancel against the bound
static double cfg_log_ratio(double x, double mc, double sc, double mu, double su, double sq, double w) {
    double a = (x - mc) / sc, b = (x - mu) / su, q = (x - mc) / sq;
    return -0.5 * (1.0 + w) * a * a + 0.5 * w * b * b + 0.5 * q * q;
}

// The grid of the bound: offsets -CFG_GRID_HALF .. CFG_GRID_HALF proposal stds around mc
#define CFG_GRID_HALF 4.0
#define CFG_GRID_POINTS 161

double sample_cfg_1d(double mc, double sc, double mu, double su, double w, Rng *rng, CfgStats *st) {
    double sq = 2.0 * (sc > su ? sc : su), bound = -INFINITY;
    for (int i = 0; i < CFG_GRID_POINTS; i++) {
        double off = -CFG_GRID_HALF + 2.0 * CFG_GRID_HALF * i / (CFG_GRID_POINTS - 1);
        bound = fmax(bound, cfg_log_ratio(mc + off * sq, mc, sc, mu, su, sq, w));
    }
    // the log ratio is a quadratic in x; when it is concave its maximum is exact
    double curv = (1.0 + w) / (sc * sc) - w / (su * su) - 1.0 / (sq * sq);
    if (curv > 0) {
        double xs = ((1.0 + w) * mc / (sc * sc) - w * mu / (su * su) - mc / (sq * sq)) / curv;
        bound = fmax(bound, cfg_log_ratio(xs, mc, sc, mu, su, sq, w));
    }
    if (st) st->dims++;
    for (int i = 0; i < SAMPLE_CFG_MAX_PROPOSALS; i++) {
        double z = rng_normal(rng), x = mc + sq * z, u = rng_uniform(rng);
        if (st) st->proposals++;
        // the target is taken on the grid's interval, where the bound holds (when p_u is the narrower
        // density, p_c^(1+w) / p_u^w grows without bound away from mc and is no density at all)
        if (fabs(z) <= CFG_GRID_HALF && log(u) <= cfg_log_ratio(x, mc, sc, mu, su, sq, w) - bound) {
            if (st) st->accepted++;
            return x;
        }
    }
    if (st) st->fallbacks++;
    return mc + sc * rng_normal(rng);
}

void sample_head_vector_cfg(const GivtConfig *c, const float *yc, const float *yu, double t, double w, Rng *rng,
                            float *x, CfgStats *st) {
    if (w == 0 || t == 0) {  // no guidance; at t = 0 both densities are points at their means
        sample_head_vector(c, yc, t, rng, x);
        return;
    }
    HeadRow hc = head_row(c, yc), hu = head_row(c, yu);
    size_t k0 = (size_t)pick_component(&hc, t, rng) * hc.D;
    for (int d = 0; d < hc.D; d++) {
        size_t i = k0 + d;
        double sc = t * givt_head_std(hc.pre[i], c->eps), su = t * givt_head_std(hu.pre[i], c->eps);
        x[d] = (float)sample_cfg_1d(hc.mu[i], sc, hu.mu[i], su, w, rng, st);
    }
}

// The stream of sample i: independent of the chunking, so a sample does not depend on the batch size.
static void sample_rng(Rng *r, uint64_t seed, int64_t i) {
    uint64_t x = seed ^ 0x5ca1ab1e0ddba11ull;
    rng_seed(r, rng_mix64(rng_mix64(x) ^ (uint64_t)i));
}

// x (b, D) from the last query position of y (streams * b, Tq, W), host copy in yh: rows [0, b) are
// the conditional stream, [b, 2b) the unconditional one with guidance; each sample's vector goes to
// its output row, and to x's rows of both streams (the next input of each).
static void draw(const GivtModel *m, const SampleConfig *sc, const float *yh, int b, int streams, int Tq, Rng *rngs,
                 float *x, float *out_rows, size_t out_stride) {
    int D = m->cfg.input_dim;
    size_t W = (size_t)givt_config_head_out(&m->cfg);
    for (int i = 0; i < b; i++) {
        const float *yc = yh + ((size_t)i * Tq + (Tq - 1)) * W, *yu = yc + (size_t)b * Tq * W;
        float *xi = x + (size_t)i * D;
        if (streams == 2) sample_head_vector_cfg(&m->cfg, yc, yu, sc->temperature, sc->cfg_scale, &rngs[i], xi, sc->stats);
        else sample_head_vector(&m->cfg, yc, sc->temperature, &rngs[i], xi);
        memcpy(out_rows + (size_t)i * out_stride, xi, (size_t)D * sizeof(float));
        if (streams == 2) memcpy(x + (size_t)(b + i) * D, xi, (size_t)D * sizeof(float));
    }
}

// n head outputs (compute dtype, backend memory) into host floats.
static void download_head(Backend *be, float *host, const cval *y, size_t n) {
    if (be->compute == DTYPE_F32) {
        be->ops->download(be, host, y, n * sizeof(float));
        return;
    }
    uint16_t *raw = xmalloc(n * sizeof(uint16_t));
    be->ops->download(be, raw, y, n * sizeof(uint16_t));
    for (size_t i = 0; i < n; i++) host[i] = half_bf16_to_f32(raw[i]);
    free(raw);
}

// The labels of a chunk (streams * b): the samples' own, then "no label" for the guidance stream;
// NULL for an unconditional model.
static const int32_t *chunk_labels(const GivtModel *m, const SampleConfig *sc, int64_t first, int b, int streams,
                                   int32_t *lab) {
    int nc = m->cfg.num_classes;
    if (nc == 0) return NULL;
    for (int i = 0; i < b; i++) {
        lab[i] = sc->labels ? sc->labels[sc->n_labels == 1 ? 0 : first + i] : nc;
        if (streams == 2) lab[b + i] = nc;
    }
    return lab;
}

// One chunk: samples [first, first + b), in streams (1, or 2 with guidance) of b rows each. Returns 1
// when progress asked to stop, else 0.
static int generate_chunk(GivtModel *m, const Weights *w, const SampleConfig *sc, KvCache *kc, const float *prompt,
                           int n_prompts, int s, int64_t first, int b, int streams, float *out, float *xh, float *yh,
                           float *xd, int32_t *lab, Rng *rngs, SampleProgress progress, void *user, int64_t *done,
                           int64_t total) {
    Backend *be = m->be;
    int D = m->cfg.input_dim, L = sc->max_len, bs = streams * b;
    size_t row = (size_t)L * D, W = (size_t)givt_config_head_out(&m->cfg);
    for (int i = 0; i < bs; i++) {
        if (i < b) sample_rng(&rngs[i], sc->seed, first + i);
        if (s > 0) {  // the prompt starts the output; the first call reads [bos, prompt] (x's last row unused)
            const float *p = prompt + (n_prompts == 1 ? 0 : (size_t)(first + i % b) * s * D);
            if (i < b) memcpy(out + (size_t)i * row, p, (size_t)s * D * sizeof(float));
            memcpy(xh + (size_t)i * (s + 1) * D, p, (size_t)s * D * sizeof(float));
        }
        memset(xh + ((size_t)i * (s + 1) + s) * D, 0, (size_t)D * sizeof(float));
    }
    be->ops->upload(be, xd, xh, (size_t)bs * (s + 1) * D * sizeof(float));
    const cval *y = model_decode_cond(m, w, kc, xd, chunk_labels(m, sc, first, b, streams, lab), bs, s + 1, 0);
    for (int pos = s; pos < L; pos++) {
        // y's last row predicts the vector at position pos
        int Tq = pos == s ? s + 1 : 1;
        download_head(be, yh, y, (size_t)bs * Tq * W);
        draw(m, sc, yh, b, streams, Tq, rngs, xh, out + (size_t)pos * D, row);
        *done += b;
        if (progress && progress(user, *done, total) != 0) return 1;
        if (pos + 1 == L) break;
        be->ops->upload(be, xd, xh, (size_t)bs * D * sizeof(float));
        y = model_decode(m, w, kc, xd, bs, 1, pos + 1);  // position pos + 1 reads the vector just drawn
    }
    return 0;
}

// The class arguments against the model: labels only for a class-conditional model, each a class
// (or "no label"); guidance needs labels.
static int check_classes(const GivtModel *m, const SampleConfig *sc, int n) {
    int nc = m->cfg.num_classes;
    if (!(sc->cfg_scale >= 0) || !isfinite(sc->cfg_scale))
        return givt_fail("cfg scale = %g: must be a finite number >= 0", sc->cfg_scale);
    if (sc->labels && nc == 0)
        return givt_fail("class labels given, but the model is unconditional (num_classes = 0)");
    if (sc->cfg_scale > 0 && !sc->labels)
        return givt_fail("cfg scale = %g needs class labels (guidance is towards a class)", sc->cfg_scale);
    if (sc->labels && sc->n_labels != 1 && sc->n_labels != n)
        return givt_fail("%d labels for %d samples: need 1 or %d", sc->n_labels, n, n);
    for (int i = 0; sc->labels && i < sc->n_labels; i++)
        if (sc->labels[i] < 0 || sc->labels[i] > nc)
            return givt_fail("label %d (sample %d): must be a class in [0, %d), or %d (\"no label\")", sc->labels[i], i,
                             nc, nc);
    return 0;
}

int sample_generate(GivtModel *m, const Weights *w, const SampleConfig *sc, const float *prompt, int n_prompts, int s,
                    int n, float *out, SampleProgress progress, void *user) {
    const GivtConfig *c = &m->cfg;
    int L = sc->max_len, D = c->input_dim;
    if (m->acts) return givt_fail("sample_generate: the model already has activations");
    if (L < 1 || L > c->block_size) return givt_fail("max_len = %d: must be in [1, block_size = %d]", L, c->block_size);
    if (s < 0 || s >= L) return givt_fail("a prompt of %d vectors leaves nothing to generate with max_len = %d", s, L);
    if (n < 1) return givt_fail("%d samples: need at least 1", n);
    if (n_prompts != 1 && n_prompts != n) return givt_fail("%d prompts for %d samples: need 1 or %d", n_prompts, n, n);
    if (!(sc->temperature >= 0) || !isfinite(sc->temperature))
        return givt_fail("temperature = %g: must be a finite number >= 0", sc->temperature);
    int b = sc->batch_size < n ? sc->batch_size : n;
    if (b < 1) return givt_fail("batch size %d: must be at least 1", sc->batch_size);
    if (check_classes(m, sc, n)) return -1;
    int streams = sc->cfg_scale > 0 ? 2 : 1;
    Backend *be = m->be;
    KvCache kc;
    model_cache_alloc(m, &kc, streams * b, L, s + 1);
    size_t in_floats = (size_t)streams * b * (s + 1) * D, W = (size_t)givt_config_head_out(c);
    float *xh = xmalloc(in_floats * sizeof(float)), *yh = xmalloc(in_floats / D * W * sizeof(float));
    float *xd = be->ops->alloc(be, in_floats * sizeof(float));
    Rng *rngs = xcalloc((size_t)b, sizeof *rngs);
    int32_t *lab = xmalloc((size_t)streams * b * sizeof *lab);
    int64_t done = 0, total = (int64_t)n * (L - s);
    int stopped = 0;
    for (int64_t first = 0; first < n && !stopped; first += b) {
        int chunk = n - first < b ? (int)(n - first) : b;
        stopped = generate_chunk(m, w, sc, &kc, prompt, n_prompts, s, first, chunk, streams, out + (size_t)first * L * D,
                                 xh, yh, xd, lab, rngs, progress, user, &done, total);
    }
    free(lab);
    free(rngs);
    be->ops->free(be, xd);
    free(xh);
    free(yh);
    model_cache_free(m, &kc);
    return stopped;
}
