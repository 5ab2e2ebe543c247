// model: GIVT configuration, parameter table, and the forward/backward passes over the op table.
#include "model.h"

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
        if (isfinite(v) && range_ok(k->range, k->lo, k->hi, v)) continue;
        format_double(v, val, sizeof val);
        involve(involved, k->key, NULL, NULL);
        return givt_fail("%s%s = %s: must be %s", p, k->key, val, range_text(k->range, k->lo, k->hi, rb, sizeof rb));
    }
    if (cfg->hidden_dim % cfg->num_heads != 0) {
        involve(involved, "hidden_dim", "num_heads", NULL);
        return givt_fail("%shidden_dim = %d must be a multiple of %snum_heads = %d", p, cfg->hidden_dim, p,
                         cfg->num_heads);
    }
    int n_elem = givt_config_rope_n_elem(cfg);
    if (n_elem % 2 != 0) {
        format_double(cfg->rope_rotary_percentage, val, sizeof val);
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
    // per layer: two norms, qkv, o_proj, fc1, fc2, fc3; then embed, bos, the final norm, the head
    size_t layer = size_add(size_add(2 * C, size_mul(4 * C, C)), size_mul3(3, F, C));
    return size_add(size_mul(layer, (size_t)cfg->num_layers), size_add(size_mul(3 * C, D) + D, C));
}

size_t model_static_bytes(const GivtConfig *cfg) {
    size_t n_elem = (size_t)givt_config_rope_n_elem(cfg);
    size_t rope = size_mul3(2, (size_t)cfg->block_size, n_elem > 0 ? n_elem : 1);
    return size_mul(size_add(givt_config_num_params(cfg), rope), sizeof(float));
}

// Per token, as llm.c / nanoGPT count them: 6 * (parameters in matmuls) for the forward (2 per
// weight) and the backward (4 per weight: dinp and dw), i.e. every weight except the norms and bos.
// Attention, per token and layer: QK^T and PV each take 2*T*C in the forward (hd*T multiply-adds per
// head and position, H heads). We count the dense T x T products, as llm.c does (the CPU backend
// computes only the causal lower triangle, in row blocks, about half of it: GFLOP/s are model FLOPs,
// not executed ones), and the backward does twice the forward: attention = 3 * L * 2 * 2 * T * C.
double givt_config_flops_per_token(const GivtConfig *cfg, int T, size_t *matmul_params) {
    ParamTable pt;
    param_table_build(&pt, cfg);
    size_t n = 0;
    for (int i = 0; i < pt.count; i++)
        if (pt.specs[i].ndim == 2) n += pt.specs[i].numel;
    param_table_free(&pt);
    if (matmul_params) *matmul_params = n;
    return 6.0 * (double)n + 12.0 * cfg->num_layers * (double)T * cfg->hidden_dim;
}

// ---- parameter table ----------------------------------------------------------------------
static void table_add(ParamTable *pt, const char *name, int d0, int d1, ParamInit init) {
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
    pt->total += s->numel;
}

// The table of GIVT.md, in this order: embed, bos, blocks (P_* order), norm, head.
void param_table_build(ParamTable *pt, const GivtConfig *cfg) {
    if (givt_config_validate(cfg) != 0) givt_die("param_table_build: invalid configuration: %s", givt_last_error());
    int D = cfg->input_dim, C = cfg->hidden_dim, F = cfg->intermediate_dim, L = cfg->num_layers;
    memset(pt, 0, sizeof *pt);
    pt->specs = xcalloc(4 + (size_t)L * P_PER_LAYER, sizeof(ParamSpec));
    char name[64];
    pt->embed = pt->count;
    table_add(pt, "model.embed.weight", C, D, INIT_XAVIER_UNIFORM);
    pt->bos = pt->count;
    table_add(pt, "model.bos", D, 0, INIT_NORMAL_002);
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
            table_add(pt, name, layer[k].d0, layer[k].d1, layer[k].init);
        }
    }
    pt->norm = pt->count;
    table_add(pt, "model.norm.weight", C, 0, INIT_ONES);
    pt->head = pt->count;
    table_add(pt, "model.head.weight", 2 * D, C, INIT_ZEROS);
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

void param_table_init(const ParamTable *pt, float *params, Rng *rng) {
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
struct GivtActs {
    int layer_slots;  // L, or 1 when the slot is shared
    size_t BT;        // max_B * max_T, the size each slot is laid out for
    float *x_in;      // (B, T, D) shifted input
    float *res;       // (L+1) x (B, T, C), or 1 x (B, T, C) in inference (updated in place)
    float *ln1;       // slots x (B, T, C)
    float *ln1_rstd;  // slots x (B, T)
    float *qkv;       // slots x (B, T, 3C), q and k after RoPE
    float *att;       // slots x (B, H, T, T)
    float *atty;      // slots x (B, T, C) attention output before o_proj
    float *res_mid;   // slots x (B, T, C) residual after attention
    float *ln2;       // slots x (B, T, C)
    float *ln2_rstd;  // slots x (B, T)
    float *fc12;      // slots x (B, T, 2F) [fc1 | fc2] outputs
    float *swi;       // slots x (B, T, F)
    float *lnf;       // (B, T, C)
    float *lnf_rstd;  // (B, T)
    float *y;         // (B, T, 2D) head output [mu | pre]
    float *proj;      // (B, T, C) scratch: o_proj / fc3 output
    // backward scratch (training only)
    float *dres, *dtmp, *dqkv, *datt, *dfc12, *dswi, *dy, *din;
    const float *x;   // targets of the last forward
    int B, T, full;
};

// The activations of layer l: pointers into its slot, and its residual input and output.
typedef struct {
    float *res_in, *res_out, *ln1, *ln1_rstd, *qkv, *att, *atty, *res_mid, *ln2, *ln2_rstd, *fc12, *swi;
} LayerActs;

static LayerActs layer_acts(const GivtModel *m, int l) {
    const GivtActs *a = m->acts;
    size_t BT = a->BT, C = m->cfg.hidden_dim, F = m->cfg.intermediate_dim, H = m->cfg.num_heads;
    size_t slot = a->layer_slots > 1 ? (size_t)l : 0, res_slot = m->training ? (size_t)l : 0;
    LayerActs la = {
        .res_in = a->res + res_slot * BT * C,
        .res_out = a->res + (m->training ? res_slot + 1 : 0) * BT * C,
        .ln1 = a->ln1 + slot * BT * C,
        .ln1_rstd = a->ln1_rstd + slot * BT,
        .qkv = a->qkv + slot * BT * 3 * C,
        .att = a->att + slot * BT * H * (size_t)m->max_T,
        .atty = a->atty + slot * BT * C,
        .res_mid = a->res_mid + slot * BT * C,
        .ln2 = a->ln2 + slot * BT * C,
        .ln2_rstd = a->ln2_rstd + slot * BT,
        .fc12 = a->fc12 + slot * BT * 2 * F,
        .swi = a->swi + slot * BT * F,
    };
    return la;
}

// The activation buffers and their sizes in floats for batches up to (max_B, max_T): one list that
// both the allocation and the memory estimate read. Returns the number of entries of plan.
typedef struct {
    float **dst;
    size_t floats;
} ActsBuffer;

static int acts_plan(GivtActs *a, const GivtConfig *c, int max_B, int max_T, int training, int checkpointing,
                     ActsBuffer *plan) {
    // sizes from user input: products saturate (size_mul), so an impossible size cannot wrap to a small one
    size_t BT = size_mul((size_t)max_B, (size_t)max_T), C = c->hidden_dim, F = c->intermediate_dim;
    size_t D = c->input_dim, H = c->num_heads, T = (size_t)max_T;
    size_t S = training && !checkpointing ? (size_t)c->num_layers : 1;
    size_t R = training ? (size_t)c->num_layers + 1 : 1;
    size_t BTC = size_mul(BT, C), BTHT = size_mul3(BT, H, T);
    a->layer_slots = (int)S;
    a->BT = BT;
    ActsBuffer all[] = {
        {&a->x_in, size_mul(BT, D)},          {&a->res, size_mul(R, BTC)},
        {&a->ln1, size_mul(S, BTC)},          {&a->ln1_rstd, size_mul(S, BT)},
        {&a->qkv, size_mul3(S, BTC, 3)},      {&a->att, size_mul(S, BTHT)},
        {&a->atty, size_mul(S, BTC)},         {&a->res_mid, size_mul(S, BTC)},
        {&a->ln2, size_mul(S, BTC)},          {&a->ln2_rstd, size_mul(S, BT)},
        {&a->fc12, size_mul3(S, BT, 2 * F)},  {&a->swi, size_mul3(S, BT, F)},
        {&a->lnf, BTC},                       {&a->lnf_rstd, BT},
        {&a->y, size_mul(BT, 2 * D)},         {&a->proj, BTC},
        // backward scratch
        {&a->dres, BTC},                      {&a->dtmp, BTC},
        {&a->dqkv, size_mul(BTC, 3)},         {&a->datt, BTHT},
        {&a->dfc12, size_mul(BT, 2 * F)},     {&a->dswi, size_mul(BT, F)},
        {&a->dy, size_mul(BT, 2 * D)},        {&a->din, size_mul(BT, D)},
    };
    int n = (int)(sizeof all / sizeof all[0]), forward_only = 16;
    n = training ? n : forward_only;
    memcpy(plan, all, (size_t)n * sizeof all[0]);
    return n;
}

#define ACTS_MAX_BUFFERS 32

size_t model_acts_bytes(const GivtConfig *cfg, int max_B, int max_T, int training, int checkpointing) {
    GivtActs a;
    ActsBuffer plan[ACTS_MAX_BUFFERS];
    int n = acts_plan(&a, cfg, max_B, max_T, training, checkpointing, plan);
    size_t floats = 0;
    for (int i = 0; i < n; i++) floats = size_add(floats, plan[i].floats);
    return size_mul(floats, sizeof(float));
}

void model_alloc_acts(GivtModel *m, int max_B, int max_T, int training, int checkpointing) {
    if (max_T > m->cfg.block_size) givt_die("model_alloc_acts: T = %d > block_size = %d", max_T, m->cfg.block_size);
    if (m->acts) givt_die("model_alloc_acts: activations already allocated");
    GivtActs *a = xcalloc(1, sizeof *a);
    ActsBuffer plan[ACTS_MAX_BUFFERS];
    int n = acts_plan(a, &m->cfg, max_B, max_T, training, checkpointing, plan);
    for (int i = 0; i < n; i++) *plan[i].dst = m->ops->alloc(plan[i].floats * sizeof(float));
    m->acts = a;
    m->max_B = max_B;
    m->max_T = max_T;
    m->training = training;
}

static void acts_free(GivtModel *m) {
    ActsBuffer plan[ACTS_MAX_BUFFERS];
    int n = acts_plan(m->acts, &m->cfg, m->max_B, m->max_T, m->training, 0, plan);  // the pointers only
    for (int i = 0; i < n; i++)
        if (*plan[i].dst) m->ops->free(*plan[i].dst);
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
    m->rope_cos = m->ops->alloc(count * sizeof(float));
    m->rope_sin = m->ops->alloc(count * sizeof(float));
    m->ops->upload(m->rope_cos, cs, count * sizeof(float));
    m->ops->upload(m->rope_sin, sn, count * sizeof(float));
    free(cs);
    free(sn);
}

int model_create(GivtModel *m, const GivtConfig *cfg, const GivtOps *ops) {
    memset(m, 0, sizeof *m);
    if (givt_config_validate(cfg) != 0) return -1;
    m->cfg = *cfg;
    m->ops = ops;
    param_table_build(&m->table, cfg);
    m->params = ops->alloc(m->table.total * sizeof(float));
    rope_cache_build(m);
    return 0;
}

void model_init_params(GivtModel *m, Rng *rng) {
    float *host = xmalloc(m->table.total * sizeof(float));
    param_table_init(&m->table, host, rng);
    m->ops->upload(m->params, host, m->table.total * sizeof(float));
    free(host);
}

void model_alloc_grads(GivtModel *m) {
    if (!m->grads) m->grads = m->ops->alloc(m->table.total * sizeof(float));
}

void model_zero_grads(GivtModel *m) { m->ops->zero(m->grads, m->table.total * sizeof(float)); }

void model_free(GivtModel *m) {
    if (m->acts) acts_free(m);
    if (m->params) m->ops->free(m->params);
    if (m->grads) m->ops->free(m->grads);
    if (m->rope_cos) m->ops->free(m->rope_cos);
    if (m->rope_sin) m->ops->free(m->rope_sin);
    param_table_free(&m->table);
    memset(m, 0, sizeof *m);
}

static float *param(const GivtModel *m, float *base, int index) { return base + m->table.specs[index].offset; }
static float *layer_param(const GivtModel *m, float *base, int l, int k) {
    return param(m, base, m->table.layer0 + l * P_PER_LAYER + k);
}

// One block: res_out = res_in + attention branch + MLP branch, activations into layer l's slot.
static void layer_forward(GivtModel *m, int l, int B, int T) {
    const GivtConfig *c = &m->cfg;
    const GivtOps *ops = m->ops;
    int C = c->hidden_dim, F = c->intermediate_dim, H = c->num_heads, N = B * T;
    float *proj = m->acts->proj;
    LayerActs la = layer_acts(m, l);
    // attention: res_mid = res_in + o_proj(attn(rope(qkv(rmsnorm(res_in)))))
    ops->rmsnorm_fwd(la.ln1, la.ln1_rstd, la.res_in, layer_param(m, m->params, l, P_ATTN_NORM), N, C);
    ops->matmul_fwd(la.qkv, la.ln1, layer_param(m, m->params, l, P_QKV), N, C, 3 * C);
    ops->rope_fwd(la.qkv, m->rope_cos, m->rope_sin, B, T, C, H, givt_config_rope_n_elem(c));
    ops->attention_fwd(la.atty, la.att, la.qkv, B, T, C, H);
    ops->matmul_fwd(proj, la.atty, layer_param(m, m->params, l, P_O_PROJ), N, C, C);
    ops->add(la.res_mid, la.res_in, proj, (size_t)N * C);
    // mlp: res_out = res_mid + fc3(silu(fc1(m)) * fc2(m)), m = rmsnorm(res_mid)
    ops->rmsnorm_fwd(la.ln2, la.ln2_rstd, la.res_mid, layer_param(m, m->params, l, P_MLP_NORM), N, C);
    ops->matmul_fwd(la.fc12, la.ln2, layer_param(m, m->params, l, P_FC1), N, C, 2 * F);  // fc1, fc2 adjacent
    ops->swiglu_fwd(la.swi, la.fc12, N, F);
    ops->matmul_fwd(proj, la.swi, layer_param(m, m->params, l, P_FC3), N, F, C);
    ops->add(la.res_out, la.res_mid, proj, (size_t)N * C);
}

ModelLoss model_forward(GivtModel *m, const float *x, int B, int T, int full) {
    const GivtConfig *c = &m->cfg;
    const GivtOps *ops = m->ops;
    GivtActs *a = m->acts;
    if (!a || B > m->max_B || T > m->max_T || B < 1 || T < 1)
        givt_die("model_forward: batch (%d, %d) exceeds the allocated (%d, %d)", B, T, m->max_B, m->max_T);
    int D = c->input_dim, C = c->hidden_dim, N = B * T;
    a->x = x;
    a->B = B;
    a->T = T;
    a->full = full;

    ops->shift_bos(a->x_in, x, param(m, m->params, m->table.bos), B, T, D);
    ops->matmul_fwd(a->res, a->x_in, param(m, m->params, m->table.embed), N, D, C);
    for (int l = 0; l < c->num_layers; l++) layer_forward(m, l, B, T);
    float *res_last = layer_acts(m, c->num_layers - 1).res_out;
    ops->rmsnorm_fwd(a->lnf, a->lnf_rstd, res_last, param(m, m->params, m->table.norm), N, C);
    ops->matmul_fwd(a->y, a->lnf, param(m, m->params, m->table.head), N, C, 2 * D);

    ModelLoss out;
    out.count = (long)N * D;
    out.loss_sum = ops->gaussian_nll(NULL, a->y, x, N, D, c->eps, 0.0f);
    out.loss = out.loss_sum / (double)out.count + (full ? 0.5 * GIVT_LOG_2PI : 0.0);
    return out;
}

void model_backward(GivtModel *m, float loss_scale) {
    const GivtConfig *c = &m->cfg;
    const GivtOps *ops = m->ops;
    GivtActs *a = m->acts;
    if (!m->training || !m->grads) givt_die("model_backward: model not set up for training");
    int B = a->B, T = a->T, D = c->input_dim, C = c->hidden_dim, F = c->intermediate_dim, H = c->num_heads;
    int N = B * T, L = c->num_layers, n_elem = givt_config_rope_n_elem(c);
    float *P = m->params, *G = m->grads;

    // head: dy = d(mean nll)/dy; dlnf = dy @ head; then the final norm into dres
    ops->gaussian_nll(a->dy, a->y, a->x, N, D, c->eps, loss_scale / (float)((long)N * D));
    ops->matmul_bwd(a->dtmp, param(m, G, m->table.head), a->dy, a->lnf, param(m, P, m->table.head), N, C, 2 * D);
    ops->zero(a->dres, (size_t)N * C * sizeof(float));
    ops->rmsnorm_bwd(a->dres, param(m, G, m->table.norm), a->dtmp, layer_acts(m, L - 1).res_out,
                     param(m, P, m->table.norm), a->lnf_rstd, N, C);
    for (int l = L - 1; l >= 0; l--) {
        // with a shared slot (gradient checkpointing), layer l is recomputed from res[l]; the slot
        // still holds the last layer from the forward pass
        if (a->layer_slots == 1 && l < L - 1) layer_forward(m, l, B, T);
        LayerActs la = layer_acts(m, l);
        // mlp (dres is d res_out; it passes straight to res_mid, plus the branch)
        ops->matmul_bwd(a->dswi, layer_param(m, G, l, P_FC3), a->dres, la.swi, layer_param(m, P, l, P_FC3), N, F, C);
        ops->swiglu_bwd(a->dfc12, a->dswi, la.fc12, N, F);
        ops->matmul_bwd(a->dtmp, layer_param(m, G, l, P_FC1), a->dfc12, la.ln2, layer_param(m, P, l, P_FC1), N, C,
                        2 * F);
        ops->rmsnorm_bwd(a->dres, layer_param(m, G, l, P_MLP_NORM), a->dtmp, la.res_mid,
                         layer_param(m, P, l, P_MLP_NORM), la.ln2_rstd, N, C);
        // attention (dres is now d res_mid)
        ops->matmul_bwd(a->dtmp, layer_param(m, G, l, P_O_PROJ), a->dres, la.atty, layer_param(m, P, l, P_O_PROJ),
                        N, C, C);
        ops->attention_bwd(a->dqkv, a->datt, a->dtmp, la.qkv, la.att, B, T, C, H);
        ops->rope_bwd(a->dqkv, m->rope_cos, m->rope_sin, B, T, C, H, n_elem);
        ops->matmul_bwd(a->dtmp, layer_param(m, G, l, P_QKV), a->dqkv, la.ln1, layer_param(m, P, l, P_QKV), N, C,
                        3 * C);
        ops->rmsnorm_bwd(a->dres, layer_param(m, G, l, P_ATTN_NORM), a->dtmp, la.res_in,
                         layer_param(m, P, l, P_ATTN_NORM), la.ln1_rstd, N, C);
    }
    // embedding and bos
    ops->matmul_bwd(a->din, param(m, G, m->table.embed), a->dres, a->x_in, param(m, P, m->table.embed), N, D, C);
    ops->shift_bos_bwd(param(m, G, m->table.bos), a->din, B, T, D);
}

void model_get_mu_std(GivtModel *m, float *mu, float *std_out) {
    GivtActs *a = m->acts;
    int D = m->cfg.input_dim;
    size_t N = (size_t)a->B * a->T;
    float *y = xmalloc(N * 2 * D * sizeof(float));
    m->ops->download(y, a->y, N * 2 * D * sizeof(float));
    for (size_t n = 0; n < N; n++)
        for (int d = 0; d < D; d++) {
            mu[n * D + d] = y[n * 2 * D + d];
            std_out[n * D + d] = givt_head_std(y[n * 2 * D + D + d], m->cfg.eps);
        }
    free(y);
}
