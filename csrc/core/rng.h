// rng: random numbers, deterministic and portable (xoshiro256**, seeded by splitmix64).
#ifndef GIVT_RNG_H
#define GIVT_RNG_H

#include <stdint.h>

typedef struct {
    uint64_t s[4];
} Rng;  // xoshiro256**
void rng_seed(Rng *r, uint64_t seed);  // the four state words from splitmix64 of seed
uint64_t rng_next(Rng *r);
double rng_uniform(Rng *r);  // [0, 1)
double rng_normal(Rng *r);   // standard normal (Box-Muller, no cached second value)
// splitmix64's output function: a bijective 64-bit mix. splitmix64 (rng_seed) applies it to
// state += 0x9e3779b97f4a7c15; data.c hashes (seed, salt, index) into Rng seeds with it.
uint64_t rng_mix64(uint64_t z);

#endif
