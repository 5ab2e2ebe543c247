// model: GIVT configuration, parameter table, and the forward/backward passes over the op table.
#include "model.h"

#include "rng.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ---- configuration ------------------------------------------------------------------------
void givt_config_default(GivtConfig *cfg) {
    *cfg = (GivtConfig){
        .input_dim = 16,
        .hidden_dim = 32,
        .intermediate_dim = 64,
        .num_heads = 4,
        .num_layers = 2,
        .block_size = 512,
        .eps = 1e-8,
        .rope_base = 1000000,
        .rope_rotary_percentage = 1.0,
        .rope_condense_ratio = 4.0,
        .num_mixtures = 1,
        .num_classes = 0,
    };
}

enum { KEY_TYPE_INT, KEY_TYPE_F64 };
#define CONFIG_KEY(key, type, range, lo, hi, help) \
    {#key, KEY_TYPE_##type == KEY_TYPE_INT, offsetof(GivtConfig, key), range, lo, hi, help},
static const GivtConfigKey g_config_keys[] = {GIVT_CONFIG_KEYS(CONFIG_KEY)};
#undef CONFIG_KEY
// Every field of GivtConfig is a key (the sizes of the keys' fields add up to the struct's), and
// each key's type has its field's size.
#define KEY_FIELD_SIZE(key, type, range, lo, hi, help) +sizeof(((GivtConfig *)0)->key)
_Static_assert(0 GIVT_CONFIG_KEYS(KEY_FIELD_SIZE) == sizeof(GivtConfig),
               "a GivtConfig field is missing from GIVT_CONFIG_KEYS");
#undef KEY_FIELD_SIZE
#define KEY_TYPE_MATCHES(key, type, range, lo, hi, help)                                                   \
    _Static_assert(sizeof(((GivtConfig *)0)->key) ==                                                      \
                       (KEY_TYPE_##type == KEY_TYPE_INT ? sizeof(int) : sizeof(double)),                  \
                   #key ": the type in GIVT_CONFIG_KEYS is not the field's");
GIVT_CONFIG_KEYS(KEY_TYPE_MATCHES)
#undef KEY_TYPE_MATCHES

const GivtConfigKey *givt_config_keys(int *n) {
    *n = GIVT_CONFIG_NKEYS;
    return g_config_keys;
}

double givt_config_value(const GivtConfig *cfg, const GivtConfigKey *k) {
    const char *field = (const char *)cfg + k->offset;
    return k->is_int ? (double)*(const int *)(const void *)field : *(const double *)(const void *)field;
}

const char *givt_config_diff(const GivtConfig *a, const GivtConfig *b, char *va, char *vb, size_t n) {
    int count;
    const GivtConfigKey *keys = givt_config_keys(&count);
    for (int i = 0; i < count; i++) {
        double x = givt_config_value(a, &keys[i]), y = givt_config_value(b, &keys[i]);
        if (x != y) {
            snprintf(va, n, "%.17g", x);
            snprintf(vb, n, "%.17g", y);
            return keys[i].key;
        }
    }
    return NULL;
}

int givt_config_head_dim(const GivtConfig *cfg) { return cfg->hidden_dim / cfg->num_heads; }

int givt_config_head_out(const GivtConfig *cfg) {
    int K = cfg->num_mixtures, D = cfg->input_dim;
    return K == 1 ? 2 * D : K + 2 * K * D;
}

int givt_config_rope_n_elem(const GivtConfig *cfg) {
    return (int)(cfg->rope_rotary_percentage * (double)givt_config_head_dim(cfg));  // Python int()
}

// Records the keys a failed check names (NULL-terminated) for givt_config_check's caller.
static void involve(const char *involved[4], const char *a, const char *b, const char *c) {
    if (!involved) return;
    involved[0] = a;
    involved[1] = b;
    involved[2] = c;
    involved[3] = NULL;
}

// RoPE with n_elem = 0 is well-defined (GIVT.md: "RoPE on the first n_elem dims of every q and k head
// (below); the rest pass unchanged": none is rotated, the cache has no angles) and is accepted; an odd
// n_elem is not (rotate-half pairs dim i with dim i + n_elem/2).
int givt_config_check(const GivtConfig *cfg, const char *p, const char *involved[4]) {
    if (involved) involved[0] = NULL;
    char val[32], rb[64];
    for (int i = 0; i < GIVT_CONFIG_NKEYS; i++) {
        const GivtConfigKey *k = &g_config_keys[i];
        double v = givt_config_value(cfg, k);
        if (isfinite(v) && util_range_ok(k->range, k->lo, k->hi, v)) continue;
        util_format_double(v, val, sizeof val);
        involve(involved, k->key, NULL, NULL);
        return givt_fail("%s%s = %s: must be %s", p, k->key, val, util_range_text(k->range, k->lo, k->hi, rb, sizeof rb));
    }
    if (cfg->hidden_dim % cfg->num_heads != 0) {
        involve(involved, "hidden_dim", "num_heads", NULL);
        return givt_fail("%shidden_dim = %d must be a multiple of %snum_heads = %d", p, cfg->hidden_dim, p,
                         cfg->num_heads);
    }
    int n_elem = givt_config_rope_n_elem(cfg);
    if (n_elem % 2 != 0) {
        util_format_double(cfg->rope_rotary_percentage, val, sizeof val);
        involve(involved, "rope_rotary_percentage", "hidden_dim", "num_heads");
        return givt_fail("%srope_rotary_percentage = %s rotates int(%s * head dim %d) = %d dims of each head: "
                         "RoPE needs an even number (0 is allowed: no rotation; head dim = %shidden_dim / %snum_heads)",
                         p, val, val, givt_config_head_dim(cfg), n_elem, p, p);
    }
    return 0;
}

int givt_config_validate(const GivtConfig *cfg) { return givt_config_check(cfg, "", NULL); }

size_t givt_config_num_params(const GivtConfig *cfg) {
    size_t D = (size_t)cfg->input_dim, C = (size_t)cfg->hidden_dim, F = (size_t)cfg->intermediate_dim;
    size_t head = size_mul((size_t)givt_config_head_out(cfg), C);
    size_t classes = cfg->num_classes > 0 ? size_mul((size_t)cfg->num_classes + 1, C) : 0;
    // per layer: two norms, qkv, o_proj, fc1, fc2, fc3; then embed, bos, class_embed, the final norm, the head
    size_t layer = size_add(size_add(2 * C, size_mul(4 * C, C)), size_mul3(3, F, C));
    size_t rest = size_add(size_add(size_mul(C, D) + D, classes), size_add(C, head));
    return size_add(size_mul(layer, (size_t)cfg->num_layers), rest);
}

// Per token, as llm.c / nanoGPT count them: 6 * (parameters in matmuls) for the forward (2 per
// weight) and the backward (4 per weight: dinp and dw), i.e. every weight except the norms, bos and
// the class embedding (a lookup).
// Attention, per token and layer: QK^T and PV each take 2*T*C in the forward (hd*T multiply-adds per
// head and position, H heads). We count the dense T x T products, as llm.c does (the CPU backend
// computes only the causal lower triangle, in row blocks, about half of it: GFLOP/s are model FLOPs,
// not executed ones), and the backward does twice the forward: attention = 3 * L * 2 * 2 * T * C.
double givt_config_flops_per_token(const GivtConfig *cfg, int T, size_t *matmul_params) {
    ParamTable pt;
    param_table_build(&pt, cfg);
    size_t n = 0;
    for (int i = 0; i < pt.count; i++)
        if (pt.specs[i].ndim == 2 && i != pt.class_embed) n += pt.specs[i].numel;
    param_table_free(&pt);
    if (matmul_params) *matmul_params = n;
    return 6.0 * (double)n + 12.0 * cfg->num_layers * (double)T * cfg->hidden_dim;
}

// ---- parameter table ----------------------------------------------------------------------
// Appends a tensor [d0, d1] (d1 0: [d0]); joined: the next tensor continues it, without padding.
static void table_add_joined(ParamTable *pt, const char *name, int d0, int d1, ParamInit init, int joined) {
    ParamSpec *s = &pt->specs[pt->count++];
    memset(s, 0, sizeof *s);
    snprintf(s->name, sizeof s->name, "%s", name);
    s->ndim = d1 > 0 ? 2 : 1;
    s->shape[0] = d0;
    s->shape[1] = d1 > 0 ? d1 : 0;
    s->init = init;
    s->weight_decay = s->ndim > 1;
    s->numel = (size_t)d0 * (size_t)(d1 > 0 ? d1 : 1);
    s->offset = pt->total;
    s->slot = joined ? s->numel : (s->offset + s->numel + PARAM_ALIGN - 1) / PARAM_ALIGN * PARAM_ALIGN - s->offset;
    pt->total += s->slot;
    pt->params += s->numel;
}
static void table_add(ParamTable *pt, const char *name, int d0, int d1, ParamInit init) {
    table_add_joined(pt, name, d0, d1, init, 0);
}

// The table of GIVT.md, in this order: embed, bos, class_embed (only when num_classes > 0), blocks
// (P_* order), norm, head ([2D, C] for k = 1, [k + 2kD, C] for k > 1).
void param_table_build(ParamTable *pt, const GivtConfig *cfg) {
    if (givt_config_validate(cfg) != 0) givt_die("param_table_build: invalid configuration: %s", givt_last_error());
    int D = cfg->input_dim, C = cfg->hidden_dim, F = cfg->intermediate_dim, L = cfg->num_layers;
    memset(pt, 0, sizeof *pt);
    pt->specs = xcalloc(5 + (size_t)L * P_PER_LAYER, sizeof(ParamSpec));
    char name[64];
    pt->embed = pt->count;
    table_add(pt, "model.embed.weight", C, D, INIT_XAVIER_UNIFORM);
    pt->bos = pt->count;
    table_add(pt, "model.bos", D, 0, INIT_NORMAL_002);
    pt->class_embed = -1;
    if (cfg->num_classes > 0) {  // the last row is "no label"
        pt->class_embed = pt->count;
        table_add(pt, "model.class_embed.weight", cfg->num_classes + 1, C, INIT_NORMAL_002);
    }
    pt->layer0 = pt->count;
    for (int l = 0; l < L; l++) {
        const struct {
            const char *suffix;
            int d0, d1;
            ParamInit init;
        } layer[P_PER_LAYER] = {
            [P_ATTN_NORM] = {"attn.norm.weight", C, 0, INIT_ONES},
            [P_QKV] = {"attn.qkv_proj.weight", 3 * C, C, INIT_XAVIER_UNIFORM},
            [P_O_PROJ] = {"attn.o_proj.weight", C, C, INIT_ZEROS},
            [P_MLP_NORM] = {"mlp.norm.weight", C, 0, INIT_ONES},
            [P_FC1] = {"mlp.fc1.weight", F, C, INIT_XAVIER_UNIFORM},
            [P_FC2] = {"mlp.fc2.weight", F, C, INIT_XAVIER_UNIFORM},
            [P_FC3] = {"mlp.fc3.weight", C, F, INIT_ZEROS},
        };
        for (int k = 0; k < P_PER_LAYER; k++) {
            snprintf(name, sizeof name, "model.blocks.%d.%s", l, layer[k].suffix);
            table_add_joined(pt, name, layer[k].d0, layer[k].d1, layer[k].init, k == P_FC1);  // fc1 | fc2
        }
    }
    pt->norm = pt->count;
    table_add(pt, "model.norm.weight", C, 0, INIT_ONES);
    pt->head = pt->count;
    table_add(pt, "model.head.weight", givt_config_head_out(cfg), C, INIT_ZEROS);
}

void param_table_free(ParamTable *pt) {
    free(pt->specs);
    memset(pt, 0, sizeof *pt);
}

int param_table_find(const ParamTable *pt, const char *name) {
    for (int i = 0; i < pt->count; i++)
        if (strcmp(pt->specs[i].name, name) == 0) return i;
    return -1;
}

size_t param_table_total(const GivtConfig *cfg) {
    ParamTable pt;
    param_table_build(&pt, cfg);
    size_t total = pt.total;
    param_table_free(&pt);
    return total;
}

void param_table_zero_padding(const ParamTable *pt, float *params) {
    for (int i = 0; i < pt->count; i++) {
        const ParamSpec *s = &pt->specs[i];
        memset(params + s->offset + s->numel, 0, (s->slot - s->numel) * sizeof(float));
    }
}

void param_table_init(const ParamTable *pt, float *params, Rng *rng) {
    param_table_zero_padding(pt, params);
    for (int i = 0; i < pt->count; i++) {
        const ParamSpec *s = &pt->specs[i];
        float *p = params + s->offset;
        // PyTorch Linear weight [out, in]: fan_in = in, fan_out = out
        double a = s->ndim == 2 ? sqrt(6.0 / (double)(s->shape[0] + s->shape[1])) : 0.0;
        for (size_t j = 0; j < s->numel; j++) {
            switch (s->init) {
            case INIT_ZEROS: p[j] = 0.0f; break;
            case INIT_ONES: p[j] = 1.0f; break;
            case INIT_XAVIER_UNIFORM: p[j] = (float)(a * (2.0 * rng_uniform(rng) - 1.0)); break;
            case INIT_NORMAL_002: p[j] = (float)(0.02 * rng_normal(rng)); break;
            }
        }
    }
}

// ---- activations --------------------------------------------------------------------------
// The residual stream entering each layer, res[l] (B, T, C), is kept for every layer; res[L] leaves
// the last one. A layer's other activations live in slot l when every layer keeps its own (training
// without checkpointing), and in one shared slot otherwise: in inference, and with gradient
// checkpointing, where backward recomputes layer l from res[l] into the shared slot.
// Elements are of the backend's compute dtype (cval), except the norms' rstd (float32) and the
// attention state saved for backward (the backend's layout and size).
struct GivtActs {
    int layer_slots;   // L, or 1 when the slot is shared
    size_t BT;         // max_B * max_T, the size each slot is laid out for
    size_t esize;      // bytes of a compute element
    size_t att_bytes;  // attention state of one layer slot
    cval *x_in;        // (B, T, D) shifted input
    cval *res;         // (L+1) x (B, T, C), or 1 x (B, T, C) in inference (updated in place)
    cval *ln1;         // slots x (B, T, C)
    float *ln1_rstd;   // slots x (B, T)
    cval *qkv;         // slots x (B, T, 3C), q and k after RoPE
    void *att;         // slots x att_bytes
    cval *atty;        // slots x (B, T, C) attention output before o_proj
    cval *res_mid;     // slots x (B, T, C) residual after attention
    cval *ln2;         // slots x (B, T, C)
    float *ln2_rstd;   // slots x (B, T)
    cval *fc12;        // slots x (B, T, 2F) [fc1 | fc2] outputs
    cval *swi;         // slots x (B, T, F)
    cval *lnf;         // (B, T, C)
    float *lnf_rstd;   // (B, T)
    cval *y;           // (B, T, head_out) head output ([mu | pre] for k = 1)
    int32_t *labels;   // (B) class labels of the batch (class-conditional models only)
    cval *proj;        // (B, T, C) scratch: o_proj / fc3 output
    // backward scratch (training only)
    cval *dres, *dtmp, *dqkv, *dfc12, *dswi, *dy, *din;
    void *att_scratch;
    const float *x;    // targets of the last forward
    int B, T;
};

// Byte offset of element i of a compute buffer.
static cval *cat(cval *base, size_t i, size_t esize) { return (cval *)((char *)base + i * esize); }

// The activations of layer l: pointers into its slot, and its residual input and output.
typedef struct {
    cval *res_in, *res_out, *ln1, *qkv, *atty, *res_mid, *ln2, *fc12, *swi;
    float *ln1_rstd, *ln2_rstd;
    void *att;
} LayerActs;

static LayerActs layer_acts(const GivtModel *m, int l) {
    const GivtActs *a = m->acts;
    size_t BT = a->BT, C = m->cfg.hidden_dim, F = m->cfg.intermediate_dim, E = a->esize;
    size_t slot = a->layer_slots > 1 ? (size_t)l : 0, res_slot = m->training ? (size_t)l : 0;
    LayerActs la = {
        .res_in = cat(a->res, res_slot * BT * C, E),
        .res_out = cat(a->res, (m->training ? res_slot + 1 : 0) * BT * C, E),
        .ln1 = cat(a->ln1, slot * BT * C, E),
        .qkv = cat(a->qkv, slot * BT * 3 * C, E),
        .atty = cat(a->atty, slot * BT * C, E),
        .res_mid = cat(a->res_mid, slot * BT * C, E),
        .ln2 = cat(a->ln2, slot * BT * C, E),
        .fc12 = cat(a->fc12, slot * BT * 2 * F, E),
        .swi = cat(a->swi, slot * BT * F, E),
        .ln1_rstd = a->ln1_rstd + slot * BT,
        .ln2_rstd = a->ln2_rstd + slot * BT,
        .att = (char *)a->att + slot * a->att_bytes,
    };
    return la;
}

// The shape of the attention of a (B, T) batch: q, k, v inside qkv (B, T, 3C).
static AttnShape attn_shape(const GivtConfig *c, int B, int T) {
    size_t C = (size_t)c->hidden_dim;
    AttnShape s = {
        .B = B, .H = c->num_heads, .hd = givt_config_head_dim(c), .Tq = T, .Tk = T, .pos0 = 0,
        .n_rot = givt_config_rope_n_elem(c),
        .q_row = 3 * C, .q_batch = (size_t)T * 3 * C, .kv_row = 3 * C, .kv_batch = (size_t)T * 3 * C,
    };
    return s;
}

// The activation buffers and their sizes in bytes for batches up to (max_B, max_T): one list that
// both the allocation and the memory estimate read. Returns the number of entries of plan.
typedef struct {
    void **dst;
    size_t bytes;
} ActsBuffer;

static int acts_plan(GivtActs *a, const GivtConfig *c, Backend *be, int max_B, int max_T, int training,
                     int checkpointing, ActsBuffer *plan) {
    // sizes from user input: products saturate (size_mul), so an impossible size cannot wrap to a small one
    size_t BT = size_mul((size_t)max_B, (size_t)max_T), C = c->hidden_dim, F = c->intermediate_dim;
    size_t D = c->input_dim, E = dtype_size(be->compute), f32 = sizeof(float), Y = (size_t)givt_config_head_out(c);
    size_t n_labels = c->num_classes > 0 ? (size_t)max_B * sizeof(int32_t) : 0;
    size_t S = training && !checkpointing ? (size_t)c->num_layers : 1;
    size_t R = training ? (size_t)c->num_layers + 1 : 1;
    AttnShape sh = attn_shape(c, max_B, max_T);
    size_t BTC = size_mul3(BT, C, E);
    a->layer_slots = (int)S;
    a->BT = BT;
    a->esize = E;
    a->att_bytes = be->ops->attention_saved_bytes(be, &sh);
    ActsBuffer all[] = {
        {(void **)&a->x_in, size_mul3(BT, D, E)},      {(void **)&a->res, size_mul(R, BTC)},
        {(void **)&a->ln1, size_mul(S, BTC)},          {(void **)&a->ln1_rstd, size_mul3(S, BT, f32)},
        {(void **)&a->qkv, size_mul3(S, BTC, 3)},      {&a->att, size_mul(S, a->att_bytes)},
        {(void **)&a->atty, size_mul(S, BTC)},         {(void **)&a->res_mid, size_mul(S, BTC)},
        {(void **)&a->ln2, size_mul(S, BTC)},          {(void **)&a->ln2_rstd, size_mul3(S, BT, f32)},
        {(void **)&a->fc12, size_mul(size_mul3(S, BT, 2 * F), E)},
        {(void **)&a->swi, size_mul(size_mul3(S, BT, F), E)},
        {(void **)&a->lnf, BTC},                       {(void **)&a->lnf_rstd, size_mul(BT, f32)},
        {(void **)&a->y, size_mul3(BT, Y, E)},         {(void **)&a->proj, BTC},
        {(void **)&a->labels, n_labels},
        // backward scratch
        {(void **)&a->dres, BTC},                      {(void **)&a->dtmp, BTC},
        {(void **)&a->dqkv, size_mul(BTC, 3)},         {&a->att_scratch, be->ops->attention_scratch_bytes(be, &sh)},
        {(void **)&a->dfc12, size_mul3(BT, 2 * F, E)}, {(void **)&a->dswi, size_mul3(BT, F, E)},
        {(void **)&a->dy, size_mul3(BT, Y, E)},        {(void **)&a->din, size_mul3(BT, D, E)},
    };
    int n = (int)(sizeof all / sizeof all[0]), forward_only = 17;
    n = training ? n : forward_only;
    memcpy(plan, all, (size_t)n * sizeof all[0]);
    return n;
}

#define ACTS_MAX_BUFFERS 32

size_t model_acts_bytes(const GivtConfig *cfg, Backend *be, int max_B, int max_T, int training, int checkpointing) {
    GivtActs a;
    ActsBuffer plan[ACTS_MAX_BUFFERS];
    int n = acts_plan(&a, cfg, be, max_B, max_T, training, checkpointing, plan);
    size_t bytes = 0;
    for (int i = 0; i < n; i++) bytes = size_add(bytes, plan[i].bytes);
    return bytes;
}

void model_alloc_acts(GivtModel *m, int max_B, int max_T, int training, int checkpointing) {
    if (max_T > m->cfg.block_size) givt_die("model_alloc_acts: T = %d > block_size = %d", max_T, m->cfg.block_size);
    if (m->acts) givt_die("model_alloc_acts: activations already allocated");
    GivtActs *a = xcalloc(1, sizeof *a);
    ActsBuffer plan[ACTS_MAX_BUFFERS];
    int n = acts_plan(a, &m->cfg, m->be, max_B, max_T, training, checkpointing, plan);
    for (int i = 0; i < n; i++) *plan[i].dst = plan[i].bytes ? m->be->ops->alloc(m->be, plan[i].bytes) : NULL;
    m->acts = a;
    m->max_B = max_B;
    m->max_T = max_T;
    m->training = training;
}

static void acts_free(GivtModel *m) {
    ActsBuffer plan[ACTS_MAX_BUFFERS];
    int n = acts_plan(m->acts, &m->cfg, m->be, m->max_B, m->max_T, m->training, 0, plan);  // the pointers only
    for (int i = 0; i < n; i++)
        if (*plan[i].dst) m->be->ops->free(m->be, *plan[i].dst);
    free(m->acts);
    m->acts = NULL;
}

// ---- model --------------------------------------------------------------------------------
// cos, sin (block_size, n): row t holds the n/2 angles (t / condense) * base^(-2i/n), twice.
static void rope_cache_build(GivtModel *m) {
    const GivtConfig *c = &m->cfg;
    int n = givt_config_rope_n_elem(c), T = c->block_size;
    size_t count = (size_t)T * (n > 0 ? n : 1);
    float *cs = xcalloc(count, sizeof(float)), *sn = xcalloc(count, sizeof(float));
    for (int t = 0; t < T; t++)
        for (int i = 0; i < n / 2; i++) {
            double theta = 1.0 / pow(c->rope_base, (double)(2 * i) / (double)n);
            double angle = ((double)t / c->rope_condense_ratio) * theta;
            cs[(size_t)t * n + i] = cs[(size_t)t * n + i + n / 2] = (float)cos(angle);
            sn[(size_t)t * n + i] = sn[(size_t)t * n + i + n / 2] = (float)sin(angle);
        }
    Backend *be = m->be;
    m->rope_cos = be->ops->alloc(be, count * sizeof(float));
    m->rope_sin = be->ops->alloc(be, count * sizeof(float));
    be->ops->upload(be, m->rope_cos, cs, count * sizeof(float));
    be->ops->upload(be, m->rope_sin, sn, count * sizeof(float));
    free(cs);
    free(sn);
}

size_t model_weights_bytes(const GivtConfig *cfg, Backend *be) {
    size_t P = param_table_total(cfg), n_elem = (size_t)givt_config_rope_n_elem(cfg);  // padding included
    size_t rope = size_mul3(2 * sizeof(float), (size_t)cfg->block_size, n_elem > 0 ? n_elem : 1);
    size_t copy = be->compute == DTYPE_F32 ? 0 : size_mul(P, dtype_size(be->compute));
    return size_add(size_add(size_mul(P, sizeof(float)), copy), rope);
}

void model_weights_alloc(GivtModel *m, Weights *w) {
    Backend *be = m->be;
    w->master = be->ops->alloc(be, m->table.total * sizeof(float));
    w->compute = be->compute == DTYPE_F32 ? (cval *)(void *)w->master
                                          : be->ops->alloc(be, m->table.total * dtype_size(be->compute));
}

void model_weights_free(GivtModel *m, Weights *w) {
    Backend *be = m->be;
    if (w->compute && (void *)w->compute != (void *)w->master) be->ops->free(be, w->compute);
    if (w->master) be->ops->free(be, w->master);
    w->master = NULL;
    w->compute = NULL;
}

void model_weights_upload(GivtModel *m, Weights *w, const float *host) {
    Backend *be = m->be;
    be->ops->upload(be, w->master, host, m->table.total * sizeof(float));
    be->ops->to_compute(be, w->compute, w->master, m->table.total);
}

void model_weights_download(GivtModel *m, const Weights *w, float *host) {
    m->be->ops->download(m->be, host, w->master, m->table.total * sizeof(float));
}

void model_weights_copy(GivtModel *m, Weights *dst, const Weights *src) {
    Backend *be = m->be;
    be->ops->copy(be, dst->master, src->master, m->table.total * sizeof(float));
    be->ops->to_compute(be, dst->compute, dst->master, m->table.total);
}

int model_create(GivtModel *m, const GivtConfig *cfg, Backend *be) {
    memset(m, 0, sizeof *m);
    if (givt_config_validate(cfg) != 0) return -1;
    m->cfg = *cfg;
    m->be = be;
    param_table_build(&m->table, cfg);
    model_weights_alloc(m, &m->w);
    m->scalars = be->ops->alloc(be, MODEL_NUM_SCALARS * sizeof(double));
    rope_cache_build(m);
    return 0;
}

void model_init_params(GivtModel *m, Rng *rng) {
    float *host = xmalloc(m->table.total * sizeof(float));
    param_table_init(&m->table, host, rng);
    model_weights_upload(m, &m->w, host);
    free(host);
}

void model_alloc_grads(GivtModel *m) {
    if (!m->grads) m->grads = m->be->ops->alloc(m->be, m->table.total * sizeof(float));
}

void model_zero_grads(GivtModel *m) { m->be->ops->zero(m->be, m->grads, m->table.total * sizeof(float)); }

void model_free(GivtModel *m) {
    Backend *be = m->be;
    if (m->acts) acts_free(m);
    if (be) {
        model_weights_free(m, &m->w);
        if (m->grads) be->ops->free(be, m->grads);
        if (m->scalars) be->ops->free(be, m->scalars);
        if (m->rope_cos) be->ops->free(be, m->rope_cos);
        if (m->rope_sin) be->ops->free(be, m->rope_sin);
    }
    param_table_free(&m->table);
    memset(m, 0, sizeof *m);
}

// Every op call goes through OPC (or OP): ops.h's BACKEND_OPC on the local `be`, so that a profiling
// run (givt-bench --profile) times each op by name and the CUDA backend marks the same names as
// NVTX ranges. cost: the call's OpCost (its FLOPs and bytes, for the profile's GFLOP/s and GB/s);
// OP: an op whose rate is not shown.
#define OPC(cost, name, ...) BACKEND_OPC(be, cost, name, __VA_ARGS__)
#define OP(name, ...) BACKEND_OP(be, name, __VA_ARGS__)

// (N, K) x (M, K)^T: 2NKM FLOPs, three matrices of e bytes an element; backward twice the FLOPs
// (dinp and dw) reading dout, inp and w and writing dinp and dw.
static OpCost mm_cost(int N, int K, int M, size_t e, int backward) {
    double n = N, k = K, m = M;
    return (OpCost){(backward ? 4.0 : 2.0) * n * k * m, (double)e * (backward ? 2 * (n * k + k * m) + n * m : n * k + k * m + n * m)};
}
// causal attention over the (query, key) pairs each query sees: QK^T and PV forward (2 products),
// dP, dV, dQ, dK backward (4), 2 * hd FLOPs a pair each
static OpCost attn_cost(const AttnShape *s, int backward) {
    double pairs = (double)s->Tq * s->pos0 + (double)s->Tq * (s->Tq + 1) / 2.0;
    return (OpCost){(backward ? 8.0 : 4.0) * s->B * s->H * s->hd * pairs, 0};
}
// an elementwise or row op that reads and writes `passes` arrays of n elements of e bytes
static OpCost mem_cost(double n, double passes, size_t e) { return (OpCost){0, n * passes * (double)e}; }

// Weights and gradients of tensor `index` of the table (compute copy, master or gradient).
static const cval *wc(const GivtModel *m, const Weights *w, int index) {
    return cat(w->compute, m->table.specs[index].offset, m->acts->esize);
}
static float *grad(const GivtModel *m, int index) { return m->grads + m->table.specs[index].offset; }
static int layer_tensor(const GivtModel *m, int l, int k) { return m->table.layer0 + l * P_PER_LAYER + k; }
static const cval *lwc(const GivtModel *m, const Weights *w, int l, int k) { return wc(m, w, layer_tensor(m, l, k)); }
static float *lgrad(const GivtModel *m, int l, int k) { return grad(m, layer_tensor(m, l, k)); }

// The name of layer l's range on a profiler timeline (NVTX).
static const char *layer_range(int l) {
    static const char *const names[] = {"layer 0", "layer 1", "layer 2", "layer 3", "layer 4", "layer 5", "layer 6",
                                        "layer 7", "layer 8", "layer 9", "layer 10", "layer 11", "layer 12+"};
    return names[l < 12 ? l : 12];
}

// One block: res_out = res_in + attention branch + MLP branch, activations into layer l's slot.
// The norm of res_out (the next layer's ln1, or the final norm) is fused with the last add: next_ln
// and next_rstd receive it. recompute (gradient checkpointing's backward) computes ln1 from res_in
// here, and the caller points next_ln at scratch so that the slot's ln1 stays layer l's.
static void layer_forward(GivtModel *m, const Weights *w, int l, int B, int T, cval *next_ln, float *next_rstd,
                          int recompute, KvCache *kc, int pos0) {
    const GivtConfig *c = &m->cfg;
    Backend *be = m->be;
    int C = c->hidden_dim, F = c->intermediate_dim, N = B * T;
    cval *proj = m->acts->proj;
    LayerActs la = layer_acts(m, l);
    AttnShape sh = attn_shape(c, B, T);
    size_t E = m->acts->esize;
    backend_range_push(be, layer_range(l));
    // attention: res_mid = res_in + o_proj(attn(rope(qkv(ln1)))), ln1 = rmsnorm(res_in) (computed by
    // the previous layer's fused add + norm, or here for layer 0 and when recomputing)
    if (l == 0 || recompute)
        OPC(mem_cost((double)N * C, 2, E), residual_rmsnorm_fwd, NULL, la.ln1, la.ln1_rstd, la.res_in, NULL, lwc(m, w, l, P_ATTN_NORM), N, C);
    OPC(mm_cost(N, C, 3 * C, E, 0), matmul_fwd, la.qkv, la.ln1, lwc(m, w, l, P_QKV), N, C, 3 * C);
    cval *k = cat(la.qkv, (size_t)C, E), *v = cat(la.qkv, 2 * (size_t)C, E);
    void *saved = la.att;
    if (kc) {  // generation: this call's keys and values join the cache at pos0; attend over all of it
        size_t L = (size_t)kc->max_L, layer = (size_t)l * kc->max_B * L * C;
        cval *ck = cat(kc->k, layer, E), *cv = cat(kc->v, layer, E);
        OP(copy_rows, cat(ck, (size_t)pos0 * C, E), C, L * C, k, 3 * (size_t)C, (size_t)T * 3 * C, B, T, C);
        OP(copy_rows, cat(cv, (size_t)pos0 * C, E), C, L * C, v, 3 * (size_t)C, (size_t)T * 3 * C, B, T, C);
        k = ck, v = cv, saved = kc->att;
        sh.pos0 = pos0, sh.Tk = pos0 + T, sh.kv_row = C, sh.kv_batch = L * C;
    }
    OPC(attn_cost(&sh, 0), attention_fwd, la.atty, saved, la.qkv, k, v, m->rope_cos, m->rope_sin, &sh);
    OPC(mm_cost(N, C, C, E, 0), matmul_fwd, proj, la.atty, lwc(m, w, l, P_O_PROJ), N, C, C);
    // mlp: res_out = res_mid + fc3(silu(fc1(ln2)) * fc2(ln2)), ln2 = rmsnorm(res_mid)
    OPC(mem_cost((double)N * C, 4, E), residual_rmsnorm_fwd, la.res_mid, la.ln2, la.ln2_rstd, la.res_in, proj, lwc(m, w, l, P_MLP_NORM), N, C);
    OPC(mm_cost(N, C, 2 * F, E, 0), matmul_fwd, la.fc12, la.ln2, lwc(m, w, l, P_FC1), N, C, 2 * F);  // fc1, fc2 adjacent: one [2F, C] matrix
    OPC(mem_cost((double)N * F, 3, E), swiglu_fwd, la.swi, la.fc12, N, F);
    OPC(mm_cost(N, F, C, E, 0), matmul_fwd, proj, la.swi, lwc(m, w, l, P_FC3), N, F, C);
    const cval *next_w = l + 1 < c->num_layers ? lwc(m, w, l + 1, P_ATTN_NORM) : wc(m, w, m->table.norm);
    OPC(mem_cost((double)N * C, 4, E), residual_rmsnorm_fwd, la.res_out, next_ln, next_rstd, la.res_mid, proj, next_w, N, C);
    backend_range_pop(be);
}

// Where layer l's fused final add + norm puts the norm: the next layer's ln1, or the final norm.
static void next_norm(GivtModel *m, int l, cval **ln, float **rstd) {
    if (l + 1 < m->cfg.num_layers) {
        LayerActs next = layer_acts(m, l + 1);
        *ln = next.ln1;
        *rstd = next.ln1_rstd;
    } else {
        *ln = m->acts->lnf;
        *rstd = m->acts->lnf_rstd;
    }
}

void model_check_labels(const GivtModel *m, const int32_t *labels, int B, int32_t *out) {
    int nc = m->cfg.num_classes;
    if (nc == 0 && labels) givt_die("model: labels given to a model without classes (num_classes = 0)");
    for (int b = 0; b < B && nc > 0; b++) {
        out[b] = labels ? labels[b] : nc;
        if (out[b] < 0 || out[b] > nc) givt_die("model: label %d of sequence %d is not in [0, %d]", out[b], b, nc);
    }
}

// Class conditioning: unless staged (the caller put checked labels into a->labels: model_forward_staged),
// the labels of the batch (NULL: "no label" for all) into backend memory; then the first row of each
// sequence of the embedded input, res (B, T, C), becomes class_embed[label]. An unconditional model
// has nothing to do (and takes no labels).
static void embed_class(GivtModel *m, const Weights *w, const int32_t *labels, int staged, int B, int T) {
    Backend *be = m->be;
    GivtActs *a = m->acts;
    if (m->cfg.num_classes == 0) {
        model_check_labels(m, labels, B, NULL);
        return;
    }
    if (!staged) {
        int32_t *host = xmalloc((size_t)B * sizeof *host);
        model_check_labels(m, labels, B, host);
        be->ops->upload(be, a->labels, host, (size_t)B * sizeof *host);
        free(host);
    }
    OP(class_embed_fwd, a->res, wc(m, w, m->table.class_embed), a->labels, B, T, m->cfg.hidden_dim);
}

static const cval *forward(GivtModel *m, const Weights *w, const float *x, const int32_t *labels, int staged, int B,
                           int T);

const cval *model_forward_cond(GivtModel *m, const Weights *w, const float *x, const int32_t *labels, int B, int T) {
    return forward(m, w, x, labels, 0, B, T);
}

const cval *model_forward_staged(GivtModel *m, const Weights *w, const float *x, int B, int T) {
    return forward(m, w, x, NULL, 1, B, T);
}

int32_t *model_labels_buffer(GivtModel *m) {
    if (!m->acts) givt_die("model_labels_buffer: no activations allocated (model_alloc_acts)");
    return m->acts->labels;
}

const cval *model_forward(GivtModel *m, const Weights *w, const float *x, int B, int T) {
    return model_forward_cond(m, w, x, NULL, B, T);
}

static const cval *forward(GivtModel *m, const Weights *w, const float *x, const int32_t *labels, int staged, int B,
                           int T) {
    const GivtConfig *c = &m->cfg;
    Backend *be = m->be;
    GivtActs *a = m->acts;
    if (!a || B > m->max_B || T > m->max_T || B < 1 || T < 1)
        givt_die("model_forward: batch (%d, %d) exceeds the allocated (%d, %d)", B, T, m->max_B, m->max_T);
    int D = c->input_dim, C = c->hidden_dim, N = B * T;
    a->x = x;
    a->B = B;
    a->T = T;
    OP(shift_bos, a->x_in, x, wc(m, w, m->table.bos), B, T, D);
    OPC(mm_cost(N, D, C, a->esize, 0), matmul_fwd, a->res, a->x_in, wc(m, w, m->table.embed), N, D, C);
    embed_class(m, w, labels, staged, B, T);
    // each layer's last add is fused with the next norm: the next layer's ln1 (with a shared slot, the
    // slot's ln1, which layer l no longer needs by then), or the final norm
    for (int l = 0; l < c->num_layers; l++) {
        cval *ln;
        float *rstd;
        next_norm(m, l, &ln, &rstd);
        layer_forward(m, w, l, B, T, ln, rstd, 0, NULL, 0);
    }
    OPC(mm_cost(N, C, givt_config_head_out(c), a->esize, 0), matmul_fwd, a->y, a->lnf, wc(m, w, m->table.head), N, C,
        givt_config_head_out(c));
    return a->y;
}

// ---- generation ---------------------------------------------------------------------------
static size_t cache_elems(const GivtConfig *c, int max_B, int max_L) {
    return size_mul3(size_mul((size_t)c->num_layers, (size_t)max_B), (size_t)max_L, (size_t)c->hidden_dim);
}

// The largest attention state of a call: the prompt's (max_Tq queries) or a step's (1 query), each
// against up to max_L keys.
static size_t cache_att_bytes(const GivtConfig *c, Backend *be, int max_B, int max_L, int max_Tq) {
    AttnShape s = attn_shape(c, max_B, max_Tq);
    s.Tk = max_L, s.pos0 = max_L - max_Tq;
    size_t prompt = be->ops->attention_saved_bytes(be, &s);
    s.Tq = 1, s.pos0 = max_L - 1;
    size_t step = be->ops->attention_saved_bytes(be, &s);
    return prompt > step ? prompt : step;
}

size_t model_cache_bytes(const GivtConfig *cfg, Backend *be, int max_B, int max_L, int max_Tq) {
    size_t kv = size_mul(cache_elems(cfg, max_B, max_L), 2 * dtype_size(be->compute));
    return size_add(size_add(kv, cache_att_bytes(cfg, be, max_B, max_L, max_Tq)),
                    model_acts_bytes(cfg, be, max_B, max_Tq, 0, 0));
}

void model_cache_alloc(GivtModel *m, KvCache *kc, int max_B, int max_L, int max_Tq) {
    Backend *be = m->be;
    if (max_L > m->cfg.block_size || max_Tq > max_L)
        givt_die("model_cache_alloc: L = %d, Tq = %d with block_size %d", max_L, max_Tq, m->cfg.block_size);
    size_t bytes = size_mul(cache_elems(&m->cfg, max_B, max_L), dtype_size(be->compute));
    *kc = (KvCache){.max_B = max_B, .max_L = max_L, .max_Tq = max_Tq};
    kc->k = be->ops->alloc(be, bytes);
    kc->v = be->ops->alloc(be, bytes);
    kc->att = be->ops->alloc(be, cache_att_bytes(&m->cfg, be, max_B, max_L, max_Tq));
    model_alloc_acts(m, max_B, max_Tq, 0, 0);
}

void model_cache_free(GivtModel *m, KvCache *kc) {
    Backend *be = m->be;
    if (kc->k) be->ops->free(be, kc->k);
    if (kc->v) be->ops->free(be, kc->v);
    if (kc->att) be->ops->free(be, kc->att);
    memset(kc, 0, sizeof *kc);
}

const cval *model_decode(GivtModel *m, const Weights *w, KvCache *kc, const float *x, int B, int Tq, int pos0) {
    return model_decode_cond(m, w, kc, x, NULL, B, Tq, pos0);
}

const cval *model_decode_cond(GivtModel *m, const Weights *w, KvCache *kc, const float *x, const int32_t *labels,
                              int B, int Tq, int pos0) {
    const GivtConfig *c = &m->cfg;
    Backend *be = m->be;
    GivtActs *a = m->acts;
    if (!a || m->training || B > kc->max_B || Tq > kc->max_Tq || B < 1 || Tq < 1 || pos0 < 0 ||
        pos0 + Tq > kc->max_L)
        givt_die("model_decode: batch (%d, %d) at %d exceeds the cache (%d, %d of %d)", B, Tq, pos0, kc->max_B,
                 kc->max_Tq, kc->max_L);
    int D = c->input_dim, C = c->hidden_dim, N = B * Tq;
    if (pos0 == 0) OP(shift_bos, a->x_in, x, wc(m, w, m->table.bos), B, Tq, D);
    else OP(to_compute, a->x_in, x, (size_t)N * D);
    OPC(mm_cost(N, D, C, a->esize, 0), matmul_fwd, a->res, a->x_in, wc(m, w, m->table.embed), N, D, C);
    if (pos0 == 0) embed_class(m, w, labels, 0, B, Tq);
    for (int l = 0; l < c->num_layers; l++) {
        cval *ln;
        float *rstd;
        next_norm(m, l, &ln, &rstd);
        layer_forward(m, w, l, B, Tq, ln, rstd, 0, kc, pos0);
    }
    OPC(mm_cost(N, C, givt_config_head_out(c), a->esize, 0), matmul_fwd, a->y, a->lnf, wc(m, w, m->table.head), N, C,
        givt_config_head_out(c));
    return a->y;
}

void model_loss(GivtModel *m, double *loss_sum, float grad_scale) {
    Backend *be = m->be;
    GivtActs *a = m->acts;
    int N = a->B * a->T, D = m->cfg.input_dim;
    cval *dy = m->training && grad_scale != 0.0f ? a->dy : NULL;
    float scale = grad_scale / (float)((long)N * D);
    if (m->cfg.num_mixtures == 1)  // the seed's head: its op, bit for bit
        OP(gaussian_nll, dy, loss_sum, a->y, a->x, N, D, m->cfg.eps, scale);
    else
        OP(mixture_nll, dy, loss_sum, a->y, a->x, N, D, m->cfg.num_mixtures, m->cfg.eps, scale);
}

ModelLoss model_eval_loss(GivtModel *m, const Weights *w, const float *x, int B, int T, int full) {
    return model_eval_loss_cond(m, w, x, NULL, B, T, full);
}

ModelLoss model_eval_loss_cond(GivtModel *m, const Weights *w, const float *x, const int32_t *labels, int B, int T,
                               int full) {
    Backend *be = m->be;
    double *acc = m->scalars + SCALAR_EVAL_SUM, sum = 0.0;
    model_forward_cond(m, w, x, labels, B, T);
    be->ops->zero(be, acc, sizeof(double));
    model_loss(m, acc, 0.0f);
    be->ops->download(be, &sum, acc, sizeof(double));
    ModelLoss out;
    out.count = (long)B * T * m->cfg.input_dim;
    out.loss_sum = sum;
    out.loss = sum / (double)out.count + (full ? 0.5 * GIVT_LOG_2PI : 0.0);
    return out;
}

// Tensors [first, first + count) of the table have their final gradients: their slots (the padding
// too, so that the ranges reported tile the buffer).
static void report_ready(GivtModel *m, int first, int count) {
    if (!m->grads_ready) return;
    const ParamSpec *a = &m->table.specs[first], *b = &m->table.specs[first + count - 1];
    m->grads_ready(m->grads_ready_user, a->offset, b->offset + b->slot - a->offset);
}

void model_backward(GivtModel *m, const Weights *w) {
    const GivtConfig *c = &m->cfg;
    Backend *be = m->be;
    GivtActs *a = m->acts;
    if (!m->training || !m->grads) givt_die("model_backward: model not set up for training");
    int B = a->B, T = a->T, D = c->input_dim, C = c->hidden_dim, F = c->intermediate_dim;
    int N = B * T, L = c->num_layers;
    size_t E = a->esize;
    AttnShape sh = attn_shape(c, B, T);

    // head: dy (from model_loss); dlnf = dy @ head; then the final norm into dres
    OPC(mm_cost(N, C, givt_config_head_out(c), E, 1), matmul_bwd, a->dtmp, grad(m, m->table.head), a->dy, a->lnf,
        wc(m, w, m->table.head), N, C,
       givt_config_head_out(c));
    be->ops->zero(be, a->dres, (size_t)N * C * E);
    OP(residual_rmsnorm_bwd, a->dres, grad(m, m->table.norm), a->dtmp, layer_acts(m, L - 1).res_out,
       wc(m, w, m->table.norm), a->lnf_rstd, N, C);
    report_ready(m, m->table.norm, m->table.head - m->table.norm + 1);
    for (int l = L - 1; l >= 0; l--) {
        backend_range_push(be, layer_range(l));
        // with a shared slot (gradient checkpointing), layer l is recomputed from res[l]; the slot
        // still holds the last layer from the forward pass
        if (a->layer_slots == 1 && l < L - 1) layer_forward(m, w, l, B, T, a->dtmp, a->lnf_rstd, 1, NULL, 0);
        LayerActs la = layer_acts(m, l);
        // mlp (dres is d res_out; it passes straight to res_mid, plus the branch)
        OPC(mm_cost(N, F, C, E, 1), matmul_bwd, a->dswi, lgrad(m, l, P_FC3), a->dres, la.swi, lwc(m, w, l, P_FC3), N, F, C);
        OPC(mem_cost((double)N * F, 5, E), swiglu_bwd, a->dfc12, a->dswi, la.fc12, N, F);
        OPC(mm_cost(N, C, 2 * F, E, 1), matmul_bwd, a->dtmp, lgrad(m, l, P_FC1), a->dfc12, la.ln2, lwc(m, w, l, P_FC1), N, C, 2 * F);
        OPC(mem_cost((double)N * C, 4, E), residual_rmsnorm_bwd, a->dres, lgrad(m, l, P_MLP_NORM), a->dtmp, la.res_mid, lwc(m, w, l, P_MLP_NORM),
           la.ln2_rstd, N, C);
        // attention (dres is now d res_mid)
        OPC(mm_cost(N, C, C, E, 1), matmul_bwd, a->dtmp, lgrad(m, l, P_O_PROJ), a->dres, la.atty, lwc(m, w, l, P_O_PROJ), N, C, C);
        OPC(attn_cost(&sh, 1), attention_bwd, a->dqkv, cat(a->dqkv, (size_t)C, E), cat(a->dqkv, 2 * (size_t)C, E), a->att_scratch,
           a->dtmp, la.atty, la.qkv, cat(la.qkv, (size_t)C, E), cat(la.qkv, 2 * (size_t)C, E), la.att, m->rope_cos,
           m->rope_sin, &sh);
        OPC(mm_cost(N, C, 3 * C, E, 1), matmul_bwd, a->dtmp, lgrad(m, l, P_QKV), a->dqkv, la.ln1, lwc(m, w, l, P_QKV), N, C, 3 * C);
        OPC(mem_cost((double)N * C, 4, E), residual_rmsnorm_bwd, a->dres, lgrad(m, l, P_ATTN_NORM), a->dtmp, la.res_in, lwc(m, w, l, P_ATTN_NORM),
           la.ln1_rstd, N, C);
        backend_range_pop(be);
        report_ready(m, layer_tensor(m, l, 0), P_PER_LAYER);
    }
    // class embedding (it takes position 0's gradient, which then reaches neither embed nor bos),
    // embedding and bos
    int ce = m->table.class_embed;
    if (ce >= 0) OP(class_embed_bwd, grad(m, ce), a->dres, a->labels, B, T, C);
    OPC(mm_cost(N, D, C, E, 1), matmul_bwd, a->din, grad(m, m->table.embed), a->dres, a->x_in, wc(m, w, m->table.embed),
        N, D, C);
    OP(shift_bos_bwd, grad(m, m->table.bos), a->din, B, T, D);
    report_ready(m, m->table.embed, (ce >= 0 ? ce : m->table.bos) - m->table.embed + 1);
}

void model_get_mu_std(GivtModel *m, float *mu, float *std_out) {
    GivtActs *a = m->acts;
    int D = m->cfg.input_dim;
    size_t N = (size_t)a->B * a->T;
    if (a->esize != sizeof(float)) givt_die("model_get_mu_std: float32 compute only");
    if (m->cfg.num_mixtures != 1) givt_die("model_get_mu_std: a single-Gaussian head only (num_mixtures = 1)");
    float *y = xmalloc(N * 2 * D * sizeof(float));
    m->be->ops->download(m->be, y, a->y, N * 2 * D * sizeof(float));
    for (size_t n = 0; n < N; n++)
        for (int d = 0; d < D; d++) {
            mu[n * D + d] = y[n * 2 * D + d];
            std_out[n * D + d] = givt_head_std(y[n * 2 * D + D + d], m->cfg.eps);
        }
    free(y);
}
