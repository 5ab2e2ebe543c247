// sample: batched KV-cache generation (see sample.h).
#include "sample.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

size_t sample_memory_bytes(const GivtConfig *cfg, Backend *be, int b, int L, int s) {
    size_t io = size_mul3((size_t)b, (size_t)(s + 1), (size_t)cfg->input_dim * sizeof(float));
    return size_add(model_cache_bytes(cfg, be, b, L, s + 1), io);
}

// The stream of sample i: independent of the chunking, so a sample does not depend on the batch size.
static void sample_rng(Rng *r, uint64_t seed, int64_t i) {
    uint64_t x = seed ^ 0x5ca1ab1e0ddba11ull;
    rng_seed(r, mix64(mix64(x) ^ (uint64_t)i));
}

// x (b, D) = mu + t * std * z at the last query position of y (b, Tq, 2D), host copy in yh; each
// sample's vector goes to its output row.
static void draw(const GivtModel *m, const SampleConfig *sc, const float *yh, int b, int Tq, Rng *rngs, float *x,
                 float *out_rows, size_t out_stride) {
    int D = m->cfg.input_dim;
    for (int i = 0; i < b; i++) {
        const float *y = yh + ((size_t)i * Tq + (Tq - 1)) * 2 * D;
        for (int d = 0; d < D; d++) {
            double mu = y[d], sd = givt_head_std(y[D + d], m->cfg.eps);
            double v = sc->temperature > 0 ? mu + sc->temperature * sd * rng_normal(&rngs[i]) : mu;
            x[(size_t)i * D + d] = (float)v;
            out_rows[(size_t)i * out_stride + d] = (float)v;
        }
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
    for (size_t i = 0; i < n; i++) host[i] = bf16_to_f32(raw[i]);
    free(raw);
}

// One chunk: samples [first, first + b).
static void generate_chunk(GivtModel *m, const Weights *w, const SampleConfig *sc, KvCache *kc, const float *prompt,
                           int n_prompts, int s, int64_t first, int b, float *out, float *xh, float *yh, float *xd,
                           Rng *rngs, SampleProgress progress, void *user, int64_t *done, int64_t total) {
    Backend *be = m->be;
    int D = m->cfg.input_dim, L = sc->max_len;
    size_t row = (size_t)L * D;
    for (int i = 0; i < b; i++) {
        sample_rng(&rngs[i], sc->seed, first + i);
        if (s > 0) {  // the prompt starts the output; the first call reads [bos, prompt] (x's last row unused)
            const float *p = prompt + (n_prompts == 1 ? 0 : (size_t)(first + i) * s * D);
            memcpy(out + (size_t)i * row, p, (size_t)s * D * sizeof(float));
            memcpy(xh + (size_t)i * (s + 1) * D, p, (size_t)s * D * sizeof(float));
        }
        memset(xh + ((size_t)i * (s + 1) + s) * D, 0, (size_t)D * sizeof(float));
    }
    be->ops->upload(be, xd, xh, (size_t)b * (s + 1) * D * sizeof(float));
    const cval *y = model_decode(m, w, kc, xd, b, s + 1, 0);
    for (int pos = s; pos < L; pos++) {
        // y's last row predicts the vector at position pos
        int Tq = pos == s ? s + 1 : 1;
        download_head(be, yh, y, (size_t)b * Tq * 2 * D);
        draw(m, sc, yh, b, Tq, rngs, xh, out + (size_t)pos * D, row);
        *done += b;
        if (progress) progress(user, *done, total);
        if (pos + 1 == L) break;
        be->ops->upload(be, xd, xh, (size_t)b * D * sizeof(float));
        y = model_decode(m, w, kc, xd, b, 1, pos + 1);  // position pos + 1 reads the vector just drawn
    }
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
    Backend *be = m->be;
    KvCache kc;
    model_cache_alloc(m, &kc, b, L, s + 1);
    size_t in_floats = (size_t)b * (s + 1) * D;
    float *xh = xmalloc(in_floats * sizeof(float)), *yh = xmalloc(in_floats * 2 * sizeof(float));
    float *xd = be->ops->alloc(be, in_floats * sizeof(float));
    Rng *rngs = xcalloc((size_t)b, sizeof *rngs);
    int64_t done = 0, total = (int64_t)n * (L - s);
    for (int64_t first = 0; first < n; first += b) {
        int chunk = n - first < b ? (int)(n - first) : b;
        generate_chunk(m, w, sc, &kc, prompt, n_prompts, s, first, chunk, out + (size_t)first * L * D, xh, yh, xd,
                       rngs, progress, user, &done, total);
    }
    free(rngs);
    be->ops->free(be, xd);
    free(xh);
    free(yh);
    model_cache_free(m, &kc);
    return 0;
}
