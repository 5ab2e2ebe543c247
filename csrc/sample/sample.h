// sample: batched generation from a GIVT model with a KV cache (the seed's generate, batched):
// the prompt is run once, then one position at a time for the whole batch; x ~ Normal(mu, t * std),
// from a mixture component drawn first for mixture heads, and with distribution-based
// classifier-free guidance (DB-CFG, GIVT.md) for class-conditional models.
#ifndef GIVT_SAMPLE_H
#define GIVT_SAMPLE_H

#include <stdint.h>

#include "model.h"
#include "rng.h"

// What DB-CFG's rejection sampling did (counts over all guided dimensions).
typedef struct {
    int64_t dims;       // dimensions sampled with guidance
    int64_t proposals;  // proposals drawn
    int64_t accepted;   // dimensions whose value is an accepted proposal
    int64_t fallbacks;  // dimensions where no proposal of the budget was accepted: a plain conditional draw
} CfgStats;

// Proposals DB-CFG draws for one dimension before it falls back to a conditional sample.
#define SAMPLE_CFG_MAX_PROPOSALS 1000

typedef struct {
    int max_len;         // L: vectors in each output sequence, the prompt included (<= block_size)
    double temperature;  // t >= 0; 0 returns the means (of the most probable component)
    uint64_t seed;       // sample i draws from its own stream, keyed by (seed, i)
    int batch_size;      // sequences run together (a chunk); the results do not depend on it
    // class conditioning (num_classes > 0): labels (n_labels = 1: shared, or n) in [0, num_classes];
    // NULL: every sample gets "no label" (num_classes), the unconditional model
    const int32_t *labels;
    int n_labels;
    double cfg_scale;    // w >= 0 of DB-CFG (needs labels); 0: plain conditional sampling
    CfgStats *stats;     // receives the counts of DB-CFG when not NULL
} SampleConfig;

// Called after each position of a chunk: done and total count generated vectors of all samples.
// Returns non-zero to stop generation there (a stop signal).
typedef int (*SampleProgress)(void *user, int64_t done, int64_t total);

// Generates n sequences into out (n, L, D) host float32, each starting with its prompt: prompt
// (n_prompts, s, D) host float32 with n_prompts = 1 (shared by all) or n, and s = 0 (start from
// bos alone) up to L - 1. Uses weights w of m (m must have no activations allocated: generation
// sizes its own). With guidance the batch holds two streams (the labels and "no label"), each with
// its KV cache rows. Returns 0, 1 when progress asked to stop (out then holds only part of the
// samples), or -1 with a message (givt_fail).
int sample_generate(GivtModel *m, const Weights *w, const SampleConfig *sc, const float *prompt, int n_prompts, int s,
                    int n, float *out, SampleProgress progress, void *user);

// Bytes generation takes on m's backend for a chunk of b sequences of L with a prompt of s (b counts
// both streams with guidance: twice the batch).
size_t sample_memory_bytes(const GivtConfig *cfg, Backend *be, int b, int L, int s);

// ---- one vector from one head row (exposed for the tests) -----------------------------------
// x (D) from the head row y (givt_config_head_out(c) floats) at temperature t: a component k from
// softmax(logits) (mixtures), then x_d = mu_kd + t * std_kd * z. t = 0: the mean of the most probable
// component.
void sample_head_vector(const GivtConfig *c, const float *y, double t, Rng *rng, float *x);
// The same with DB-CFG of weight w >= 0: yc, yu the conditional and unconditional rows; the component
// is drawn from the conditional weights and used for both; per dimension sample_cfg_1d with the
// component's (mu, t * std) of each. w = 0 is sample_head_vector of yc.
void sample_head_vector_cfg(const GivtConfig *c, const float *yc, const float *yu, double t, double w, Rng *rng,
                            float *x, CfgStats *st);
// One draw of p(x) ∝ N(x; mc, sc^2)^(1+w) / N(x; mu, su^2)^w by rejection (GIVT.md): proposals from
// N(mc, (2 max(sc, su))^2), the ratio target/proposal bounded by its maximum over a grid of offsets
// around mc (and its exact maximum when the log ratio is concave), at most SAMPLE_CFG_MAX_PROPOSALS
// proposals, then a conditional draw N(mc, sc^2) counted as a fallback. sc, su > 0.
double sample_cfg_1d(double mc, double sc, double mu, double su, double w, Rng *rng, CfgStats *st);

#endif
