// sample: batched generation from a GIVT model with a KV cache (the seed's generate, batched):
// the prompt is run once, then one position at a time for the whole batch; x ~ Normal(mu, t * std).
#ifndef GIVT_SAMPLE_H
#define GIVT_SAMPLE_H

#include <stdint.h>

#include "model.h"

typedef struct {
    int max_len;         // L: vectors in each output sequence, the prompt included (<= block_size)
    double temperature;  // t >= 0; 0 returns the means
    uint64_t seed;       // sample i draws from its own stream, keyed by (seed, i)
    int batch_size;      // sequences run together (a chunk); the results do not depend on it
} SampleConfig;

// Called after each position of a chunk: done and total count generated vectors of all samples.
typedef void (*SampleProgress)(void *user, int64_t done, int64_t total);

// Generates n sequences into out (n, L, D) host float32, each starting with its prompt: prompt
// (n_prompts, s, D) host float32 with n_prompts = 1 (shared by all) or n, and s = 0 (start from
// bos alone) up to L - 1. Uses weights w of m (m must have no activations allocated: generation
// sizes its own). Returns 0, or -1 with a message (givt_fail).
int sample_generate(GivtModel *m, const Weights *w, const SampleConfig *sc, const float *prompt, int n_prompts, int s,
                    int n, float *out, SampleProgress progress, void *user);

// Bytes generation takes on m's backend for a chunk of b sequences of L with a prompt of s.
size_t sample_memory_bytes(const GivtConfig *cfg, Backend *be, int b, int L, int s);

#endif
