// model: the GIVT model of shared/GIVT.md: configuration, the parameter table, and the forward and
// backward passes written once over the backend op table (ops.h).
#ifndef GIVT_MODEL_H
#define GIVT_MODEL_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "ops.h"
#include "rng.h"
#include "util.h"

// The model's configuration (the seed's GIVTConfig; keys and defaults as in GIVT.md).
typedef struct {
    int input_dim;         // D
    int hidden_dim;        // C
    int intermediate_dim;  // F
    int num_heads;         // H
    int num_layers;        // L
    int block_size;        // longest sequence
    double eps;            // added to the std; clamp of the variance in the loss
    double rope_base;
    double rope_rotary_percentage;
    double rope_condense_ratio;
    // beyond the seed (GIVT.md, "What the paper has that the seed dropped")
    int num_mixtures;      // k: Gaussian mixture components of the head (1: the seed's head)
    int num_classes;       // classes of class conditioning (0: unconditional)
} GivtConfig;

// Upper limits of the sizes (validation names the key that exceeds one). Within them every count the
// model code forms in an int (3C, 2F, 2D, H * hd) fits, and sizes computed with size_mul cannot wrap.
#define GIVT_MAX_INPUT_DIM 65536
#define GIVT_MAX_HIDDEN_DIM 65536
#define GIVT_MAX_INTERMEDIATE_DIM 1048576
#define GIVT_MAX_NUM_HEADS 4096
#define GIVT_MAX_NUM_LAYERS 4096
#define GIVT_MAX_BLOCK_SIZE 1048576
#define GIVT_MAX_MIXTURES 1024
#define GIVT_MAX_CLASSES 16777216

// The configuration keys of GIVT.md, in that order, defined once: X(key, type, range, lo, hi, help) with
// type INT or F64 and range util.h's RANGE_* flags against lo / hi. The first GIVT_CONFIG_SEED_NKEYS
// are the seed's GIVTConfig; the rest (mixtures, classes) are this engine's additions, which
// config.json carries only when they differ from their default (so seed folders stay as they were). From this list model.c builds the
// key table (config.json reading and writing, givt_config_diff, givt_config_check) and train_config.c
// the [model] rows of its table (INI parsing, --help, write-back).
// eps is at most 1: std = softplus(pre) + eps and var = max(std^2, eps) are float32, so an eps above
// about 1.8e19 makes std^2 infinite (1e300 is infinite as a float32 already) and every loss inf or
// NaN; a stabiliser (1e-8 in the seed) above 1 would only flatten every predicted density.
#define GIVT_CONFIG_KEYS(X)                                                                                     \
    X(input_dim, INT, RANGE_GE | RANGE_LE, 1, GIVT_MAX_INPUT_DIM, "D: size of each input vector")                \
    X(hidden_dim, INT, RANGE_GE | RANGE_LE, 1, GIVT_MAX_HIDDEN_DIM, "C: width of the residual stream")           \
    X(intermediate_dim, INT, RANGE_GE | RANGE_LE, 1, GIVT_MAX_INTERMEDIATE_DIM, "F: SwiGLU width")               \
    X(num_heads, INT, RANGE_GE | RANGE_LE, 1, GIVT_MAX_NUM_HEADS,                                                \
      "H: attention heads; hidden_dim must be a multiple of it")                                                \
    X(num_layers, INT, RANGE_GE | RANGE_LE, 1, GIVT_MAX_NUM_LAYERS, "L: transformer blocks")                     \
    X(block_size, INT, RANGE_GE | RANGE_LE, 1, GIVT_MAX_BLOCK_SIZE, "longest sequence the model accepts")        \
    X(eps, F64, RANGE_GT | RANGE_LE, 0, 1,                                                                      \
      "added to the predicted std, and the clamp of the variance in the loss")                                  \
    X(rope_base, F64, RANGE_GT, 0, 0, "RoPE base")                                                              \
    X(rope_rotary_percentage, F64, RANGE_GE | RANGE_LE, 0, 1,                                                   \
      "share of each head's dims that RoPE rotates: int(pct * head_dim), even (0: none rotated)")               \
    X(rope_condense_ratio, F64, RANGE_GT, 0, 0, "RoPE positions are divided by this")                          \
    X(num_mixtures, INT, RANGE_GE | RANGE_LE, 1, GIVT_MAX_MIXTURES,                                             \
      "k: Gaussian mixture components of the head (1: the seed's single Gaussian)")                             \
    X(num_classes, INT, RANGE_GE | RANGE_LE, 0, GIVT_MAX_CLASSES,                                               \
      "classes of class conditioning; 0 = unconditional")

#define GIVT_CONFIG_COUNT_KEY_(key, type, range, lo, hi, help) +1
enum { GIVT_CONFIG_NKEYS = 0 GIVT_CONFIG_KEYS(GIVT_CONFIG_COUNT_KEY_), GIVT_CONFIG_SEED_NKEYS = 10 };

void givt_config_default(GivtConfig *cfg);
// Checks each key's range and the rules between keys: the one check of a model configuration, for
// config.json (hf.c), the INI file (train_config.c) and model_create. On failure records a message
// naming every key involved as prefix + key ("[model] " for the INI file, "" elsewhere); when
// involved is not NULL it receives those keys' names, NULL-terminated (at most 3).
int givt_config_check(const GivtConfig *cfg, const char *prefix, const char *involved[4]);
int givt_config_validate(const GivtConfig *cfg);  // givt_config_check(cfg, "", NULL)
// Parameters of a model of this (validated) configuration (saturating at SIZE_MAX).
size_t givt_config_num_params(const GivtConfig *cfg);
// Training FLOPs per token (forward + backward) of a (validated) configuration at sequence length T,
// counted as llm.c does (model FLOPs, attention dense); *matmul_params (may be NULL) gets the
// parameters in matmuls. givt-bench's GFLOP/s and the trainer's MFU.
double givt_config_flops_per_token(const GivtConfig *cfg, int T, size_t *matmul_params);
// One entry of GIVT_CONFIG_KEYS and where it lives in GivtConfig.
typedef struct {
    const char *key;
    int is_int;     // int field; otherwise double
    size_t offset;  // in GivtConfig
    int range;      // RANGE_* flags against lo / hi
    double lo, hi;
    const char *help;
} GivtConfigKey;
const GivtConfigKey *givt_config_keys(int *n);  // GIVT_CONFIG_NKEYS entries, in GIVT.md's order
double givt_config_value(const GivtConfig *cfg, const GivtConfigKey *k);
// The first key whose values differ between a and b (NULL if none); va, vb get the two values.
const char *givt_config_diff(const GivtConfig *a, const GivtConfig *b, char *va, char *vb, size_t n);

int givt_config_head_dim(const GivtConfig *cfg);     // hd = C / H
// Width of the head's output row: 2D for k = 1 ([mu | pre], the seed's), else k + 2kD
// ([logits (k) | mu (k x D, component-major) | pre (k x D)]).
int givt_config_head_out(const GivtConfig *cfg);
int givt_config_rope_n_elem(const GivtConfig *cfg);  // int(pct * hd), as Python's int()

// ---- the parameter table ------------------------------------------------------------------
typedef enum { INIT_ZEROS, INIT_ONES, INIT_XAVIER_UNIFORM, INIT_NORMAL_002 } ParamInit;

typedef struct {
    char name[64];     // the seed's state_dict name, e.g. "model.blocks.0.attn.qkv_proj.weight"
    int ndim;          // 1 or 2
    int shape[2];      // PyTorch order: [out, in] for Linear weights
    ParamInit init;
    int weight_decay;  // 1 for tensors with more than one dimension (AdamW decay group)
    size_t offset;     // in floats, into the flat parameter buffers (see PARAM_ALIGN)
    size_t numel;
    size_t slot;       // offset + slot: where the next tensor starts (numel, and the padding)
} ParamSpec;

// Every tensor starts at a multiple of PARAM_ALIGN elements of the flat buffers (the master weights,
// gradients, AdamW moments, the EMA and the compute copies): 512 bytes in float32, 256 in bf16, so
// that cuBLASLt's heuristic sees 256-byte aligned operands (matmul.cu) - except fc2, which follows
// fc1 directly (the two are one [2F, C] matrix, aligned at fc1). A tensor's slot is [offset, offset +
// slot): its numel elements and the padding to the next tensor, always zero (the initialisation and
// every load write zeros there; AdamW and the EMA keep zeros zero; no op writes there). The slots
// tile [0, total). Files (safetensors) hold the tensors only, whatever the padding.
#define PARAM_ALIGN 128

// Per-layer tensors, in table order. fc1 and fc2 are adjacent (no padding between them) so that
// together they form one [2F, C] matrix for a single matmul.
enum {
    P_ATTN_NORM,
    P_QKV,
    P_O_PROJ,
    P_MLP_NORM,
    P_FC1,
    P_FC2,
    P_FC3,
    P_PER_LAYER
};

typedef struct {
    ParamSpec *specs;
    int count;
    size_t total;   // elements of the flat buffers: the tensors' slots, padding included
    size_t params;  // the parameters (the sum of numel): the count users are shown
    // indices into specs of the non-layer tensors
    int embed, bos, norm, head;
    int class_embed;  // -1 for an unconditional model (num_classes = 0)
    int layer0;  // index of layer 0's first tensor; layer l tensor k is layer0 + l*P_PER_LAYER + k
} ParamTable;

// cfg must be valid (givt_config_validate); an invalid one is an internal error (exit).
void param_table_build(ParamTable *pt, const GivtConfig *cfg);
void param_table_free(ParamTable *pt);
int param_table_find(const ParamTable *pt, const char *name);  // -1 if absent
// Fills params (host, pt->total floats) with the table's initialisation, from rng (the padding zero).
void param_table_init(const ParamTable *pt, float *params, Rng *rng);
// Zeros the padding of every tensor's slot in params (host, pt->total floats).
void param_table_zero_padding(const ParamTable *pt, float *params);
// The elements of the flat buffers (ParamTable.total) of a valid configuration's table.
size_t param_table_total(const GivtConfig *cfg);

// ---- the model ----------------------------------------------------------------------------
typedef struct GivtActs GivtActs;

// A set of weights the model can be run with: the float32 master weights and their copy in the
// backend's compute dtype (the same memory when that is float32). The model owns one set (its
// weights); the trainer's EMA is a second one.
typedef struct {
    float *master;  // backend memory, table.total floats
    cval *compute;  // backend memory, table.total compute elements; == master for float32 compute
} Weights;

// Backend scalars of the model (double, in backend memory), read by the host when it needs them.
enum { SCALAR_LOSS_SUM, SCALAR_GRAD_SUMSQ, SCALAR_EVAL_SUM, MODEL_NUM_SCALARS };

typedef struct {
    GivtConfig cfg;
    ParamTable table;
    Backend *be;
    Weights w;       // the weights being trained (or evaluated)
    float *grads;    // backend memory, table.total floats (NULL until model_alloc_grads)
    GivtActs *acts;  // sized for (max_B, max_T)
    int max_B, max_T, training;
    float *rope_cos, *rope_sin;  // (block_size, n_elem), backend memory
    double *scalars;             // MODEL_NUM_SCALARS backend scalars
    // When set, model_backward calls it as soon as a contiguous range of grads is final, each
    // parameter exactly once: the head and final norm, then layer L-1 down to layer 0, then the
    // embedding and bos (a data-parallel trainer starts reducing a range while backward goes on).
    void (*grads_ready)(void *user, size_t first, size_t count);
    void *grads_ready_user;
} GivtModel;

// Creates a model whose parameters are zero until model_init_params or a load fills them.
int model_create(GivtModel *m, const GivtConfig *cfg, Backend *be);
void model_free(GivtModel *m);
void model_init_params(GivtModel *m, Rng *rng);
// A second weight set (zero) and its release.
void model_weights_alloc(GivtModel *m, Weights *w);
void model_weights_free(GivtModel *m, Weights *w);
// host (table.total floats) -> w's master weights and compute copy; w's master -> host.
void model_weights_upload(GivtModel *m, Weights *w, const float *host);
void model_weights_download(GivtModel *m, const Weights *w, float *host);
// dst = src (master and compute copy).
void model_weights_copy(GivtModel *m, Weights *dst, const Weights *src);

// Sizes activation memory once for batches up to (max_B, max_T); training keeps what backward needs:
// every layer's activations, or with checkpointing only each layer's input, one layer's activations
// being recomputed at a time in backward (same results, bit for bit; about one more forward pass).
void model_alloc_acts(GivtModel *m, int max_B, int max_T, int training, int checkpointing);
// What model_alloc_acts allocates on backend be for these arguments, in bytes (saturating at
// SIZE_MAX); the elements are of be's compute dtype, the attention state of be's choosing.
size_t model_acts_bytes(const GivtConfig *cfg, Backend *be, int max_B, int max_T, int training, int checkpointing);
// Bytes the model holds on be besides activations: master weights, their compute copy (when it is
// not the master) and the RoPE tables.
size_t model_weights_bytes(const GivtConfig *cfg, Backend *be);
void model_alloc_grads(GivtModel *m);
void model_zero_grads(GivtModel *m);

// The forward pass with weights w on x: (B, T, D) float32 targets in backend memory (the input is
// x shifted right behind bos). Returns the head output y (B, T, givt_config_head_out), backend memory.
const cval *model_forward(GivtModel *m, const Weights *w, const float *x, int B, int T);
// The same for a class-conditional model: labels (B) host int32, each in [0, num_classes] (num_classes
// is the "no label" class), put class_embed[label] in place of the embedded bos at position 0. NULL
// labels: every sequence gets "no label" (the unconditional model). An unconditional model takes
// NULL only.
const cval *model_forward_cond(GivtModel *m, const Weights *w, const float *x, const int32_t *labels, int B, int T);
// Checks labels (B, host) as model_forward_cond does (each in [0, num_classes]; dies naming a bad one)
// and writes them into out (B, host; NULL labels: every one num_classes, "no label"). A model without
// classes takes NULL labels only (and out may be NULL).
void model_check_labels(const GivtModel *m, const int32_t *labels, int B, int32_t *out);
// model_forward_cond with the labels already in backend memory, in m->acts->labels (B, checked by
// model_check_labels; a class-conditional model only reads them), put there by the caller: nothing
// here reads host memory, so that the forward can be recorded into a graph (ops.h: graph_begin).
const cval *model_forward_staged(GivtModel *m, const Weights *w, const float *x, int B, int T);
// Where model_forward_staged reads the labels: backend memory for max_B int32 (model_alloc_acts).
int32_t *model_labels_buffer(GivtModel *m);
// The loss of the last forward (whose targets it has): *loss_sum (a backend scalar, e.g.
// m->scalars + SCALAR_LOSS_SUM) += the Gaussian NLL summed over the B*T*D elements, without the
// 0.5*log(2 pi) constant (k > 1: the mixture's -log p per position, without D * 0.5*log(2 pi), summed
// over positions; divided by B*T*D it is the loss GIVT.md reports, the seed's for k = 1). In training, also the gradient of grad_scale * (mean loss) w.r.t. y for
// model_backward (grad_scale = 1 / grad_accum_steps for the mean over micro-batches).
void model_loss(GivtModel *m, double *loss_sum, float grad_scale);
// Backward of the last forward and loss (training mode, same weights w); gradients accumulate into
// m->grads.
void model_backward(GivtModel *m, const Weights *w);

// ---- generation: a KV cache and the forward of new positions -------------------------------------
// Per layer the keys (after RoPE) and values of every position run so far, (B, L, C) compute
// elements each, and room for the attention state of one call.
typedef struct {
    int max_B, max_L, max_Tq;
    cval *k, *v;      // num_layers x (max_B, max_L, C) each
    void *att;        // the attention state of one call of up to (max_B, max_Tq) queries against max_L keys
} KvCache;

// A cache for batches up to max_B sequences of max_L positions, run max_Tq positions at a time at
// most (the prompt's length + 1 for the first call, 1 after). Also sizes the model's activations for
// (max_B, max_Tq) in inference mode (model_alloc_acts must not have been called).
void model_cache_alloc(GivtModel *m, KvCache *kc, int max_B, int max_L, int max_Tq);
void model_cache_free(GivtModel *m, KvCache *kc);
// Bytes model_cache_alloc takes on be (cache, attention state and activations).
size_t model_cache_bytes(const GivtConfig *cfg, Backend *be, int max_B, int max_L, int max_Tq);
// Runs positions pos0 .. pos0 + Tq - 1 of B sequences, attending over the cache's positions before
// pos0 (filled by earlier calls) and adding these to it. x (B, Tq, D) float32 in backend memory holds
// the vectors the positions read: at pos0 = 0 as model_forward's x (position 0 reads bos, position t
// reads x_{t-1}: x's last row is not read); after that, row t is the vector of position pos0 + t - 1.
// Returns the head output y (B, Tq, givt_config_head_out). model_decode at pos0 = 0 over a whole
// sequence computes what model_forward does; model_decode_cond takes labels as model_forward_cond
// (read at pos0 = 0 only).
const cval *model_decode(GivtModel *m, const Weights *w, KvCache *kc, const float *x, int B, int Tq, int pos0);
const cval *model_decode_cond(GivtModel *m, const Weights *w, KvCache *kc, const float *x, const int32_t *labels,
                              int B, int Tq, int pos0);

typedef struct {
    double loss;      // mean Gaussian NLL over B*T*D elements, without the constant (seed's loss)
    double loss_sum;  // sum over elements, without the constant
    long count;       // B*T*D
} ModelLoss;
// Forward and loss with the host reading the result (one synchronisation): for evaluation and tests.
// full adds 0.5*log(2*pi) per element to loss (not to loss_sum).
ModelLoss model_eval_loss(GivtModel *m, const Weights *w, const float *x, int B, int T, int full);
// The same with class labels (host, B; as model_forward_cond).
ModelLoss model_eval_loss_cond(GivtModel *m, const Weights *w, const float *x, const int32_t *labels, int B, int T,
                               int full);
// Host copies of the last forward's outputs mu, std (B, T, D) each; dst must hold B*T*D floats.
// Single-Gaussian heads (num_mixtures = 1) only.
void model_get_mu_std(GivtModel *m, float *mu, float *std_out);

#endif
