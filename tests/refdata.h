// refdata: reader of tests/reference.bin, the float64 PyTorch reference written by scripts/make_reference.py.
#ifndef GIVT_TEST_REFDATA_H
#define GIVT_TEST_REFDATA_H

#include <stddef.h>

#include "model.h"

// File format, version 1 (little-endian; scripts/make_reference.py is the writer):
//   header:  char magic[8] = "GIVTREF1"; u32 version = 1; u32 ncases
//   string:  u32 length, then the bytes (no NUL)
//   tensor:  string name; u32 dtype (4 = float32, 8 = float64); u32 ndim (1..4); u32 shape[ndim];
//            the values, row-major
//   case:    string label
//            i32 input_dim, hidden_dim, intermediate_dim, num_heads, num_layers, block_size
//            f64 eps, rope_base, rope_rotary_percentage, rope_condense_ratio
//            i32 B, T, full
//            u32 nparams, tensors     weights by state_dict name (float32, exactly what the reference used)
//            tensor x (B,T,D) float32; tensor mu, tensor std (B,T,D) float64
//            f64 loss                 mean NLL, with 0.5*log(2*pi) iff full
//            u32 ngrads, tensors      d loss / d weight (float64), same names as the weights
//            u32 has_train            0, or 1 followed by the AdamW section:
//              f64 lr, beta1, beta2, adam_eps, weight_decay, grad_clip, timescale
//              u32 warmup_steps, u32 nsteps
//              nsteps x (f64 lr_used, f64 loss_before_step, f64 grad_norm_before_clip)
//              u32 nfinal, tensors    weights after nsteps updates (float64 math, stored as float32)
//   trailer: char magic[8] = "GIVTEND1"
// Version 2 (tests/reference_mix.bin: mixture heads and class conditioning) differs in the case:
//   after rope_condense_ratio: i32 num_mixtures, num_classes
//   instead of mu and std: tensor labels (B) float32 (only when num_classes > 0: each in
//   [0, num_classes], num_classes = "no label"), then tensor y (B, T, head_out) float64: the head output
//   (GIVT.md's row layout); loss: the mixture NLL as GIVT.md reports it.
// Training section semantics: every step uses the case's x and full flag; torch.optim.AdamW with
// weight decay on tensors of more than one dimension; clip_grad_norm_ (coef clip/(norm+1e-6), at
// most 1); the inverse-sqrt schedule is stepped after each update, so update s (0-based) uses
// lr * factor(s) (factor(s) = s/warmup for s < warmup: update 0 has lr 0), recorded as lr_used.

typedef struct {
    char name[96];
    int ndim;
    int shape[4];
    size_t numel;
    double *data;  // converted to double whatever the stored dtype
} RefTensor;

typedef struct {
    double lr, beta1, beta2, adam_eps, weight_decay, grad_clip, timescale;
    int warmup_steps;
    int nsteps;
    double *lr_used;    // (nsteps) the learning rate each update used
    double *losses;     // (nsteps) the loss before each update
    double *grad_norm;  // (nsteps) the global gradient norm before clipping
    int nfinal;
    RefTensor *final_params;  // weights after nsteps updates
} RefTrain;

typedef struct {
    char label[96];
    GivtConfig cfg;
    int B, T, full;
    int nparams;
    RefTensor *params;
    RefTensor x, mu, std;  // mu, std: version 1
    RefTensor labels, y;   // version 2 (labels when num_classes > 0)
    double loss;
    int ngrads;
    RefTensor *grads;
    int has_train;
    RefTrain train;  // valid when has_train
} RefCase;

typedef struct {
    int version;
    int ncases;
    RefCase *cases;
} RefData;

// "$GIVT_TEST_DATA" if set, else "tests/reference.bin" (relative to the repository root).
const char *refdata_default_path(void);
// "$GIVT_TEST_DATA_MIX" if set, else "tests/reference_mix.bin".
const char *refdata_mix_path(void);
// Returns 0, or -1 with givt_fail (the message names the file) on a missing or malformed file.
int refdata_load(RefData *rd, const char *path);
void refdata_free(RefData *rd);
// The tensor called name among ts[0..n), or NULL.
const RefTensor *ref_find(const RefTensor *ts, int n, const char *name);

#endif
