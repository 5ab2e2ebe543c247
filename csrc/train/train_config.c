// train_config: the configuration of givt-train, driven by one table of keys (k_keys below) that
// gives parsing, defaults, range checks, --help and the write-back.
#define _POSIX_C_SOURCE 200809L
#include "train_config.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "data.h"
#include "fs.h"
#include "hf.h"
#include "ini.h"
#include "util.h"

// ---- the table ------------------------------------------------------------------------------
static const char *const k_schedules[] = {"inverse_sqrt", "cosine", "constant", NULL};
static const char *const k_data_kinds[] = {"npy", "dummy", NULL};
static const char *const k_sections[] = {"model", "train", "data", NULL};
static const char *const k_graph_modes[] = {"auto", "on", "off", NULL};
static const char *const k_reduce_dtypes[] = {"fp32", "bf16", NULL};
_Static_assert(CUDA_GRAPHS_AUTO == 0 && CUDA_GRAPHS_ON == 1 && CUDA_GRAPHS_OFF == 2, "k_graph_modes follows CudaGraphs");
_Static_assert(GRAD_REDUCE_FP32 == 0 && GRAD_REDUCE_BF16 == 1, "k_reduce_dtypes follows GradReduceDtype");
_Static_assert(LR_SCHEDULE_INVERSE_SQRT == 0 && LR_SCHEDULE_COSINE == 1 && LR_SCHEDULE_CONSTANT == 2,
               "k_schedules follows optim.h's LrSchedule");

#define FIELD(f) offsetof(TrainConfig, f), sizeof(((TrainConfig *)0)->f)
#define NO_RANGE 0, 0.0, 0.0

static const ConfigKey k_keys[] = {
    // section, key, type, field, default (NULL: givt_config_default), description, range, choices
    // [model]: the keys of model.h's GIVT_CONFIG_KEYS, defaults from givt_config_default
#define MODEL_KEY(key, type, range, lo, hi, help) \
    {"model", #key, CFG_##type, FIELD(model.key), NULL, help, range, lo, hi, NULL},
    GIVT_CONFIG_KEYS(MODEL_KEY)
#undef MODEL_KEY

    {"train", "batch_size", CFG_INT, FIELD(train.batch_size), "2", "sequences per micro-batch", RANGE_GE | RANGE_LE, 1,
     TRAIN_MAX_BATCH_SIZE, NULL},
    {"train", "lr", CFG_F64, FIELD(train.lr), "1e-4", "peak learning rate (AdamW)", RANGE_GT, 0, 0, NULL},
    {"train", "weight_decay", CFG_F64, FIELD(train.weight_decay), "0.1",
     "AdamW decoupled weight decay, on matrices only", RANGE_GE, 0, 0, NULL},
    {"train", "lr_eps", CFG_F64, FIELD(train.lr_eps), "1e-8", "AdamW epsilon", RANGE_GT, 0, 0, NULL},
    {"train", "lr_betas", CFG_PAIR, FIELD(train.lr_betas), "0.9, 0.99", "AdamW betas: two numbers \"b1, b2\"",
     RANGE_GE | RANGE_LT, 0, 1, NULL},
    {"train", "grad_norm", CFG_F64, FIELD(train.grad_norm), "1.0",
     "clip the global gradient norm to this; 0 = no clipping", RANGE_GE, 0, 0, NULL},
    {"train", "warmup_steps", CFG_I64, FIELD(train.warmup_steps), "1000", "linear warmup steps", RANGE_GE, 0, 0,
     NULL},
    {"train", "timescale", CFG_F64, FIELD(train.timescale), "1e8",
     "inverse_sqrt: lr factor 1/sqrt((step + timescale - warmup) / timescale)", RANGE_GT, 0, 0, NULL},
    {"train", "lr_schedule", CFG_ENUM, FIELD(train.lr_schedule), "inverse_sqrt",
     "learning-rate schedule after the warmup", NO_RANGE, k_schedules},
    {"train", "min_lr_ratio", CFG_F64, FIELD(train.min_lr_ratio), "0",
     "cosine: final lr = lr * min_lr_ratio", RANGE_GE | RANGE_LE, 0, 1, NULL},
    {"train", "max_steps", CFG_I64, FIELD(train.max_steps), "100000", "optimizer steps to train", RANGE_GE, 1,
     0, NULL},
    {"train", "grad_accum_steps", CFG_INT, FIELD(train.grad_accum_steps), "1",
     "micro-batches accumulated per optimizer step", RANGE_GE | RANGE_LE, 1, TRAIN_MAX_GRAD_ACCUM, NULL},
    {"train", "ema", CFG_F64_OPT, FIELD(train.ema), "",
     "power of the Karras-style EMA of the weights (the seed: 2/3); empty = no EMA", RANGE_GT, 0, 0, NULL},
    {"train", "mixed_precision", CFG_ENUM, FIELD(train.mixed_precision), "no",
     "bf16: bfloat16 compute, fp32 master weights (GPU only; the CPU backend trains in float32)", NO_RANGE,
     backend_precision_names},
    {"train", "gradient_checkpointing", CFG_BOOL, FIELD(train.gradient_checkpointing), "false",
     "keep only each layer's input and recompute the layer in backward: less memory, about 1/3 more time", NO_RANGE, NULL},
    {"train", "log_every", CFG_I64, FIELD(train.log_every), "10", "print the training loss every N steps",
     RANGE_GE, 1, 0, NULL},
    {"train", "tensorboard", CFG_BOOL, FIELD(train.tensorboard), "false",
     "also write TensorBoard event files into out_dir at every log (loss, val_loss, lr, grad_norm, tokens_per_s, "
     "mfu): tensorboard --logdir runs/", NO_RANGE, NULL},
    {"train", "val_every", CFG_I64, FIELD(train.val_every), "1000", "validate every N steps; 0 = never",
     RANGE_GE, 0, 0, NULL},
    {"train", "val_size", CFG_I64, FIELD(train.val_size), "100",
     "sequences held out of the data for validation; 0 = no validation", RANGE_GE, 0, 0, NULL},
    {"train", "save_every", CFG_I64, FIELD(train.save_every), "1000",
     "save a checkpoint every N steps (and at the end); 0 = only at the end", RANGE_GE, 0, 0, NULL},
    {"train", "keep_checkpoints", CFG_INT, FIELD(train.keep_checkpoints), "5",
     "keep the last N checkpoints; 0 = keep all", RANGE_GE, 0, 0, NULL},
    {"train", "keep_best", CFG_BOOL, FIELD(train.keep_best), "false",
     "also keep the checkpoint of the lowest val_loss, out of the keep_checkpoints rotation (a new best is saved "
     "at once; out_dir/best links to it)", NO_RANGE, NULL},
    {"train", "seed", CFG_U64, FIELD(train.seed), "42", "random seed (init, data order, dummy data)", NO_RANGE,
     NULL},
    {"train", "out_dir", CFG_STR, FIELD(train.out_dir), "runs/default",
     "folder for checkpoints, the resolved config and logs", NO_RANGE, NULL},
    {"train", "resume_from_ckpt", CFG_STR, FIELD(train.resume_from_ckpt), "",
     "resume from a checkpoint folder, or \"latest\": the newest in out_dir (none yet: start fresh); empty = start fresh", NO_RANGE, NULL},
    {"train", "init_from", CFG_STR, FIELD(train.init_from), "",
     "initial weights from a Hugging Face style folder; empty = random init", NO_RANGE, NULL},
    {"train", "device", CFG_DEVICE, FIELD(train.device), "auto", "auto = cuda when a GPU is present, else cpu",
     NO_RANGE, NULL},
    {"train", "peak_tflops", CFG_F64, FIELD(train.peak_tflops), "0",
     "peak of one device in TFLOP/s for the MFU figure; 0 = the backend's own figure (the CPU backend has none: no MFU shown)", RANGE_GE, 0, 0, NULL},
    {"train", "zero", CFG_INT, FIELD(train.zero), "0",
     "data parallel: 1 = ZeRO-1, each rank keeps and updates only its part of the AdamW moments (reduce-scatter, "
     "all-gather); 0 = every rank keeps all", RANGE_GE | RANGE_LE, 0, 1, NULL},
    {"train", "hang_timeout", CFG_F64, FIELD(train.hang_timeout), "600",
     "data parallel: a rank that makes no progress for this many seconds (a hung peer or file system) ends "
     "the whole job; 0 = wait forever", RANGE_GE, 0, 0, NULL},
    {"train", "cuda_graphs", CFG_ENUM, FIELD(train.cuda_graphs), "auto",
     "capture a training step as a CUDA graph after warm-up and replay it: auto = where the step allows it (CUDA, "
     "one micro-batch a step, no NCCL), on = the same but an error where it cannot, off = launch every kernel", NO_RANGE,
     k_graph_modes},
    {"train", "grad_reduce_dtype", CFG_ENUM, FIELD(train.grad_reduce_dtype), "fp32",
     "data parallel: dtype of the gradients sent between ranks; bf16 halves the bytes (summed into float32 "
     "gradients)", NO_RANGE, k_reduce_dtypes},
    {"train", "label_drop", CFG_F64, FIELD(train.label_drop), "0.1",
     "class-conditional models: share of training labels replaced by \"no label\" (for guidance)", RANGE_GE | RANGE_LE,
     0, 1, NULL},

    {"data", "kind", CFG_ENUM, FIELD(data.kind), "npy",
     "npy = .npy files of (N, T, D) sequences or (M, D) streams, float32/float16; dummy = unit normal noise", NO_RANGE, k_data_kinds},
    {"data", "path", CFG_STR, FIELD(data.path), "",
     "npy: a file, a comma-separated list of files, or a glob", NO_RANGE, NULL},
    {"data", "seq_len", CFG_INT, FIELD(data.seq_len), "512", "T: sequence length (<= model.block_size)",
     RANGE_GE | RANGE_LE, 1, GIVT_MAX_BLOCK_SIZE, NULL},
    {"data", "dummy_size", CFG_I64, FIELD(data.dummy_size), "10000", "dummy: number of sequences", RANGE_GE | RANGE_LE, 1,
     TRAIN_MAX_DUMMY_SIZE, NULL},
    {"data", "labels", CFG_STR, FIELD(data.labels), "",
     "class labels for [model] num_classes > 0: an int32/int64 .npy of shape (N,), one per sequence of the data", NO_RANGE,
     NULL},
};

#define NKEYS ((int)(sizeof k_keys / sizeof k_keys[0]))

const ConfigKey *train_config_keys(int *n) {
    *n = NKEYS;
    return k_keys;
}

const char *lr_schedule_name(int s) { return s >= 0 && s < 3 ? k_schedules[s] : "?"; }
const char *train_data_kind_name(int k) { return k >= 0 && k < 2 ? k_data_kinds[k] : "?"; }

static int find_key(const char *section, const char *key) {
    for (int i = 0; i < NKEYS; i++)
        if (!strcmp(k_keys[i].section, section) && !strcmp(k_keys[i].key, key)) return i;
    return -1;
}

static int known_section(const char *s) {
    for (int i = 0; k_sections[i]; i++)
        if (!strcmp(k_sections[i], s)) return 1;
    return 0;
}

// ---- "did you mean" -------------------------------------------------------------------------
static const char *nearest_section(const char *s) {
    const char *best = k_sections[0];
    int bd = INT_MAX;
    for (int i = 0; k_sections[i]; i++) {
        int d = util_name_distance(s, k_sections[i]);
        if (d < bd) bd = d, best = k_sections[i];
    }
    return best;
}

// The suggestion for an unknown key in a known section: the same key in another section, else the
// nearest key of the section.
static void suggest_key(const char *section, const char *key, char *buf, size_t n) {
    for (int i = 0; i < NKEYS; i++) {
        if (!strcmp(k_keys[i].key, key)) {
            snprintf(buf, n, "[%s] %s", k_keys[i].section, key);
            return;
        }
    }
    int bd = INT_MAX, best = -1;
    for (int i = 0; i < NKEYS; i++) {
        if (strcmp(k_keys[i].section, section)) continue;
        int d = util_name_distance(key, k_keys[i].key);
        if (d < bd) bd = d, best = i;
    }
    snprintf(buf, n, "\"%s\"", best >= 0 ? k_keys[best].key : "?");
}

// ---- values: text -> field ------------------------------------------------------------------
static void *field_ptr(TrainConfig *c, const ConfigKey *k) { return (char *)c + k->offset; }
static const void *field_cptr(const TrainConfig *c, const ConfigKey *k) { return (const char *)c + k->offset; }

static const char *key_range_text(const ConfigKey *k, char *buf, size_t n) {
    return util_range_text(k->range, k->lo, k->hi, buf, n);
}
static int in_range(const ConfigKey *k, double v) { return util_range_ok(k->range, k->lo, k->hi, v); }

static const char *parse_f64(const char *s, double *out) {
    if (!*s) return "missing value (expected a number)";
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end) return "not a number";
    if (isnan(v) || (isinf(v) && errno != ERANGE)) return "not a finite number";
    if (errno == ERANGE && isinf(v)) return "out of range";
    *out = v;
    return NULL;
}

static const char *parse_i64(const char *s, int64_t *out) {
    if (!*s) return "missing value (expected an integer)";
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (end == s || *end) return "not an integer";
    if (errno == ERANGE) return "out of range";
    *out = (int64_t)v;
    return NULL;
}

static const char *parse_u64(const char *s, uint64_t *out) {
    if (!*s) return "missing value (expected an integer)";
    const char *p = s;
    if (*p == '+') p++;
    if (*p < '0' || *p > '9') return *p == '-' ? "must be >= 0" : "not an integer";
    char *end;
    errno = 0;
    unsigned long long v = strtoull(p, &end, 10);
    if (*end) return "not an integer";
    if (errno == ERANGE) return "out of range";
    *out = (uint64_t)v;
    return NULL;
}

static int text_is(const char *s, const char *const *words) {
    for (int i = 0; words[i]; i++)
        if (!strcasecmp(s, words[i])) return 1;
    return 0;
}

// Sets key k of c from text. NULL, or the reason it cannot (buf may hold it).
static const char *set_value(TrainConfig *c, const ConfigKey *k, const char *text, char *buf, size_t n) {
    void *dst = field_ptr(c, k);
    const char *why;
    char rb[64];
    switch (k->type) {
    case CFG_INT:
    case CFG_I64: {
        int64_t v;
        if ((why = parse_i64(text, &v))) return why;
        if (k->type == CFG_INT && (v < INT_MIN || v > INT_MAX)) return "out of range";
        if (!in_range(k, (double)v)) {
            snprintf(buf, n, "must be %s", key_range_text(k, rb, sizeof rb));
            return buf;
        }
        if (k->type == CFG_INT) *(int *)dst = (int)v;
        else *(int64_t *)dst = v;
        return NULL;
    }
    case CFG_U64: return parse_u64(text, (uint64_t *)dst);
    case CFG_F64_OPT:
        if (!*text) {
            *(double *)dst = 0.0;
            return NULL;
        }
        // fall through
    case CFG_F64: {
        double v;
        if ((why = parse_f64(text, &v))) return why;
        if (!in_range(k, v)) {
            snprintf(buf, n, "must be %s%s", key_range_text(k, rb, sizeof rb),
                     k->type == CFG_F64_OPT ? " (or empty for off)" : "");
            return buf;
        }
        *(double *)dst = v;
        return NULL;
    }
    case CFG_PAIR: {
        size_t len = strlen(text);
        char *copy = xmalloc(len + 1);
        memcpy(copy, text, len + 1);
        char *b = copy, *e = copy + len;
        if (len >= 2 && ((b[0] == '(' && e[-1] == ')') || (b[0] == '[' && e[-1] == ']'))) b++, *--e = '\0';
        char *comma = strchr(b, ',');
        double v[2];
        why = NULL;
        if (!comma || strchr(comma + 1, ',')) {
            why = "expected two numbers \"a, b\"";
        } else {
            *comma = '\0';
            char *parts[2] = {b, comma + 1};
            for (int i = 0; i < 2 && !why; i++) {
                char *pb = parts[i], *pe = pb + strlen(pb);
                while (*pb == ' ' || *pb == '\t') pb++;
                while (pe > pb && (pe[-1] == ' ' || pe[-1] == '\t')) *--pe = '\0';
                if ((why = parse_f64(pb, &v[i]))) why = "expected two numbers \"a, b\"";
                else if (!in_range(k, v[i])) {
                    snprintf(buf, n, "each must be %s", key_range_text(k, rb, sizeof rb));
                    why = buf;
                }
            }
        }
        free(copy);
        if (why) return why;
        ((double *)dst)[0] = v[0];
        ((double *)dst)[1] = v[1];
        return NULL;
    }
    case CFG_BOOL: {
        static const char *const yes[] = {"true", "yes", "on", "1", NULL};
        static const char *const no[] = {"false", "no", "off", "0", NULL};
        if (text_is(text, yes)) *(int *)dst = 1;
        else if (text_is(text, no)) *(int *)dst = 0;
        else return "expected true or false (or yes/no, on/off, 1/0)";
        return NULL;
    }
    case CFG_ENUM:
        for (int i = 0; k->choices[i]; i++) {
            if (!strcasecmp(text, k->choices[i])) {
                *(int *)dst = i;
                return NULL;
            }
        }
        snprintf(buf, n, "must be one of");
        for (int i = 0; k->choices[i]; i++)
            snprintf(buf + strlen(buf), n - strlen(buf), "%s %s", i ? "," : "", k->choices[i]);
        return buf;
    case CFG_DEVICE: {
        const char *name = backend_device_lookup(text);
        if (!name || strlen(name) >= k->size) {
            snprintf(buf, n, "must be one of ");
            backend_device_names(buf + strlen(buf), n - strlen(buf), ", ");
            return buf;
        }
        memset(dst, 0, k->size);
        memcpy(dst, name, strlen(name));
        return NULL;
    }
    case CFG_STR:
        if (strlen(text) >= k->size) {
            snprintf(buf, n, "too long (at most %zu characters)", k->size - 1);
            return buf;
        }
        for (const char *p = text; *p; p++)
            if ((unsigned char)*p < 0x20 || *p == 0x7f) return "contains a control character";
        memcpy(dst, text, strlen(text) + 1);
        return NULL;
    }
    return "internal error: unknown key type";
}

static void where_prefix(const char *where, char *buf, size_t n) {
    if (where && *where) snprintf(buf, n, "%s: ", where);
    else buf[0] = '\0';
}

// Sets section/key from text; on success *index gets the key's table index.
static int set_key(TrainConfig *c, const char *section, const char *key, const char *value, const char *where,
                   int *index) {
    char pre[1100], sug[128], why_buf[256];
    where_prefix(where, pre, sizeof pre);
    if (!known_section(section)) {
        int ki = -1;
        for (int i = 0; i < NKEYS && ki < 0; i++)
            if (!strcmp(k_keys[i].key, key)) ki = i;
        if (ki >= 0)
            return givt_fail("%s[%s] %s: unknown section (did you mean [%s] %s?)", pre, section, key,
                             k_keys[ki].section, key);
        return givt_fail("%s[%s] %s: unknown section (did you mean \"%s\"?)", pre, section, key,
                         nearest_section(section));
    }
    int ki = find_key(section, key);
    if (ki < 0) {
        suggest_key(section, key, sug, sizeof sug);
        return givt_fail("%s[%s] %s: unknown key (did you mean %s?)", pre, section, key, sug);
    }
    const char *why = set_value(c, &k_keys[ki], value, why_buf, sizeof why_buf);
    if (why) return givt_fail("%s[%s] %s = \"%s\": %s", pre, section, key, value, why);
    if (index) *index = ki;
    return 0;
}

int train_config_set(TrainConfig *c, const char *section, const char *key, const char *value,
                     const char *where) {
    return set_key(c, section, key, value, where, NULL);
}

void train_config_default(TrainConfig *c) {
    memset(c, 0, sizeof *c);
    givt_config_default(&c->model);
    char buf[256];
    for (int i = 0; i < NKEYS; i++) {
        if (!k_keys[i].def) continue;
        const char *why = set_value(c, &k_keys[i], k_keys[i].def, buf, sizeof buf);
        if (why) givt_die("bad default for [%s] %s: %s", k_keys[i].section, k_keys[i].key, why);
    }
}

// ---- values: field -> text ------------------------------------------------------------------

void train_config_format(const TrainConfig *c, const ConfigKey *k, char *buf, size_t n) {
    const void *src = field_cptr(c, k);
    switch (k->type) {
    case CFG_INT: snprintf(buf, n, "%d", *(const int *)src); return;
    case CFG_I64: snprintf(buf, n, "%lld", (long long)*(const int64_t *)src); return;
    case CFG_U64: snprintf(buf, n, "%llu", (unsigned long long)*(const uint64_t *)src); return;
    case CFG_F64_OPT:
        if (*(const double *)src == 0.0) {
            buf[0] = '\0';
            return;
        }
        // fall through
    case CFG_F64: util_format_double(*(const double *)src, buf, n); return;
    case CFG_PAIR: {
        char a[32], b[32];
        util_format_double(((const double *)src)[0], a, sizeof a);
        util_format_double(((const double *)src)[1], b, sizeof b);
        snprintf(buf, n, "%s, %s", a, b);
        return;
    }
    case CFG_BOOL: snprintf(buf, n, "%s", *(const int *)src ? "true" : "false"); return;
    case CFG_ENUM: {
        int v = *(const int *)src, nc = 0;
        while (k->choices[nc]) nc++;
        snprintf(buf, n, "%s", v >= 0 && v < nc ? k->choices[v] : "?");
        return;
    }
    case CFG_DEVICE:
    case CFG_STR: snprintf(buf, n, "%s", (const char *)src); return;
    }
    buf[0] = '\0';
}

// ---- validation -----------------------------------------------------------------------------
// where[i] is where key i was last set (NULL: its default); NULL altogether when not loading.
typedef struct {
    const TrainConfig *c;
    const char *const *where;
} Checker;

// Appends where key section/key was set to the list in buf (once; nothing when it was not set).
static void locs_add(const Checker *ck, char *buf, size_t n, const char *section, const char *key) {
    int i = find_key(section, key);
    const char *w = (ck->where && i >= 0) ? ck->where[i] : NULL;
    if (!w || strstr(buf, w)) return;
    size_t len = strlen(buf);
    snprintf(buf + len, n - len, "%s%s", len ? ", " : "", w);
}

static void locs_end(char *buf, size_t n) {
    if (buf[0]) {
        size_t len = strlen(buf);
        snprintf(buf + len, n - len, ": ");
    }
}

// "LOC1, LOC2: " for those of the named keys (NULL-terminated "section", "key" pairs) that were set.
static void locs_prefix(const Checker *ck, char *buf, size_t n, ...) {
    va_list ap;
    va_start(ap, n);
    buf[0] = '\0';
    const char *sec;
    while ((sec = va_arg(ap, const char *))) {
        const char *key = va_arg(ap, const char *);
        locs_add(ck, buf, n, sec, key);
    }
    va_end(ap);
    locs_end(buf, n);
}

// Checks that data.path names at least one file and that every file it names exists, expanding it
// as the data loader will (data_expand_paths).
static int check_data_paths(const Checker *ck) {
    const char *spec = ck->c->data.path;
    char pre[2200];
    if (strspn(spec, " \t,") == strlen(spec)) {
        locs_prefix(ck, pre, sizeof pre, "data", "kind", "data", "path", NULL);
        return givt_fail("%s[data] path is required when [data] kind = npy (a .npy file, a comma-separated list "
                         "or a glob)",
                         pre);
    }
    locs_prefix(ck, pre, sizeof pre, "data", "path", NULL);
    char **paths;
    int n;
    if (data_expand_paths(spec, &paths, &n) != 0)
        return givt_fail("%s[data] path = \"%s\": %s", pre, spec, givt_last_error());
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++)
        if (!fs_path_exists(paths[i])) rc = givt_fail("%s[data] path = \"%s\": no such file \"%s\"", pre, spec, paths[i]);
    data_free_paths(paths, n);
    return rc;
}

static int check(const Checker *ck) {
    const TrainConfig *c = ck->c;
    const GivtConfig *m = &c->model;
    const TrainSettings *t = &c->train;
    const DataSettings *d = &c->data;
    char pre[2200], val[256], why[256], rb[64];

    // [model]: model.c's check, the one that config.json and model_create get too, naming the keys
    // involved with where they were set.
    const char *involved[4];
    if (givt_config_check(m, "[model] ", involved) != 0) {
        pre[0] = '\0';
        for (int i = 0; involved[i]; i++) locs_add(ck, pre, sizeof pre, "model", involved[i]);
        locs_end(pre, sizeof pre);
        return givt_fail("%s%s", pre, givt_last_error());
    }
    // [train] and [data]: each key on its own (values may have been set in code, not through the parser).
    for (int i = 0; i < NKEYS; i++) {
        const ConfigKey *k = &k_keys[i];
        if (!strcmp(k->section, "model")) continue;
        const void *src = field_cptr(c, k);
        int ok = 1;
        switch (k->type) {
        case CFG_INT: ok = in_range(k, *(const int *)src); break;
        case CFG_I64: ok = in_range(k, (double)*(const int64_t *)src); break;
        case CFG_F64: ok = isfinite(*(const double *)src) && in_range(k, *(const double *)src); break;
        case CFG_F64_OPT: {
            double v = *(const double *)src;
            ok = v == 0.0 || (isfinite(v) && in_range(k, v));
            break;
        }
        case CFG_PAIR: {
            const double *v = src;
            ok = isfinite(v[0]) && isfinite(v[1]) && in_range(k, v[0]) && in_range(k, v[1]);
            break;
        }
        case CFG_ENUM: {
            int v = *(const int *)src, nc = 0;
            while (k->choices[nc]) nc++;
            ok = v >= 0 && v < nc;
            break;
        }
        case CFG_BOOL: ok = *(const int *)src == 0 || *(const int *)src == 1; break;
        case CFG_STR: ok = memchr(src, '\0', k->size) != NULL; break;
        case CFG_DEVICE: {  // as the registry spells it: what backend_open finds
            const char *name = memchr(src, '\0', k->size) ? backend_device_lookup(src) : NULL;
            ok = name && !strcmp(name, src);
            break;
        }
        case CFG_U64: break;
        }
        if (!ok) {
            locs_prefix(ck, pre, sizeof pre, k->section, k->key, NULL);
            train_config_format(c, k, val, sizeof val);
            if (k->range) snprintf(why, sizeof why, "must be %s", key_range_text(k, rb, sizeof rb));
            else snprintf(why, sizeof why, "invalid value");
            return givt_fail("%s[%s] %s = \"%s\": %s", pre, k->section, k->key, val, why);
        }
    }

    // [data] against [model]
    if (d->seq_len > m->block_size) {
        locs_prefix(ck, pre, sizeof pre, "data", "seq_len", "model", "block_size", NULL);
        return givt_fail("%s[data] seq_len = %d must be <= [model] block_size = %d", pre, d->seq_len,
                         m->block_size);
    }
    // one micro-batch: its B*T rows are counted in an int by the ops
    if ((size_t)t->batch_size * (size_t)d->seq_len > INT_MAX) {
        locs_prefix(ck, pre, sizeof pre, "train", "batch_size", "data", "seq_len", NULL);
        return givt_fail("%s[train] batch_size = %d x [data] seq_len = %d = %lld rows in a micro-batch: must be at "
                         "most %d (lower batch_size and use grad_accum_steps)",
                         pre, t->batch_size, d->seq_len, (long long)t->batch_size * d->seq_len, INT_MAX);
    }
    // [train]
    // a cosine warmup that does not end before max_steps is cut by the trainer, with a note (a smoke
    // test: max_steps = 1 on any config)
    if (t->keep_best && (t->val_every == 0 || t->val_size == 0)) {
        locs_prefix(ck, pre, sizeof pre, "train", "keep_best", "train", "val_every", "train", "val_size", NULL);
        return givt_fail("%s[train] keep_best = true needs validation: [train] val_every = %lld and [train] val_size = "
                         "%lld must both be > 0",
                         pre, (long long)t->val_every, (long long)t->val_size);
    }
    if (t->out_dir[0] == '\0') {
        locs_prefix(ck, pre, sizeof pre, "train", "out_dir", NULL);
        return givt_fail("%s[train] out_dir must not be empty", pre);
    }
    if (t->resume_from_ckpt[0] && strcmp(t->resume_from_ckpt, "latest") != 0 && t->init_from[0]) {
        locs_prefix(ck, pre, sizeof pre, "train", "resume_from_ckpt", "train", "init_from", NULL);
        return givt_fail("%s[train] resume_from_ckpt = \"%s\" and [train] init_from = \"%s\": set at most one "
                         "(a resumed run takes its weights from the checkpoint; with \"latest\", init_from serves a fresh start)",
                         pre, t->resume_from_ckpt, t->init_from);
    }
    if (t->resume_from_ckpt[0] && strcmp(t->resume_from_ckpt, "latest") && !fs_path_exists(t->resume_from_ckpt)) {
        locs_prefix(ck, pre, sizeof pre, "train", "resume_from_ckpt", NULL);
        return givt_fail("%s[train] resume_from_ckpt = \"%s\": no such checkpoint folder", pre,
                         t->resume_from_ckpt);
    }
    if (t->init_from[0] && !fs_path_exists(t->init_from)) {
        locs_prefix(ck, pre, sizeof pre, "train", "init_from", NULL);
        return givt_fail("%s[train] init_from = \"%s\": no such folder", pre, t->init_from);
    }
    // class labels: with a class-conditional model, and only with one
    if (m->num_classes > 0 && (d->kind != DATA_KIND_NPY || !d->labels[0])) {
        locs_prefix(ck, pre, sizeof pre, "model", "num_classes", "data", "labels", "data", "kind", NULL);
        return givt_fail("%s[model] num_classes = %d needs [data] labels (an int32/int64 .npy of one label per "
                         "sequence) with [data] kind = npy",
                         pre, m->num_classes);
    }
    if (m->num_classes == 0 && d->labels[0]) {
        locs_prefix(ck, pre, sizeof pre, "data", "labels", "model", "num_classes", NULL);
        return givt_fail("%s[data] labels = \"%s\" but [model] num_classes = 0: an unconditional model takes no labels "
                         "(set num_classes, or remove labels)",
                         pre, d->labels);
    }
    if (d->labels[0] && !fs_path_exists(d->labels)) {
        locs_prefix(ck, pre, sizeof pre, "data", "labels", NULL);
        return givt_fail("%s[data] labels = \"%s\": no such file", pre, d->labels);
    }
    // [data]
    if (d->kind == DATA_KIND_NPY) {
        if (check_data_paths(ck)) return -1;
    } else if (d->kind == DATA_KIND_DUMMY) {
        if (t->val_size >= d->dummy_size || d->dummy_size - t->val_size < t->batch_size) {
            locs_prefix(ck, pre, sizeof pre, "train", "val_size", "data", "dummy_size", "train", "batch_size",
                        NULL);
            return givt_fail("%s[train] val_size = %lld held out of [data] dummy_size = %lld sequences must leave "
                             "at least [train] batch_size = %d for training",
                             pre, (long long)t->val_size, (long long)d->dummy_size, t->batch_size);
        }
    }
    return 0;
}

int train_config_validate(const TrainConfig *c) {
    Checker ck = {c, NULL};
    return check(&ck);
}

// ---- loading --------------------------------------------------------------------------------
// Suggests a known section for an unknown one: the section that holds most of its keys, else the
// nearest name.
static const char *suggest_section(const IniFile *ini, const char *name) {
    int votes[8] = {0}, best = -1;
    for (int e = 0; e < ini->count; e++) {
        if (strcmp(ini->entries[e].section, name)) continue;
        for (int s = 0; k_sections[s]; s++)
            if (find_key(k_sections[s], ini->entries[e].key) >= 0) votes[s]++;
    }
    for (int s = 0; k_sections[s]; s++)
        if (votes[s] > 0 && (best < 0 || votes[s] > votes[best])) best = s;
    return best >= 0 ? k_sections[best] : nearest_section(name);
}

static int apply(TrainConfig *c, const IniFile *ini, const char **where) {
    for (int s = 0; s < ini->nsections; s++) {
        const IniSection *sec = &ini->sections[s];
        if (!known_section(sec->name))
            return givt_fail("%s: [%s]: unknown section (did you mean \"%s\"?)", sec->where, sec->name,
                             suggest_section(ini, sec->name));
    }
    for (int e = 0; e < ini->count; e++) {
        const IniEntry *en = &ini->entries[e];
        int ki;
        if (set_key(c, en->section, en->key, en->value, en->where, &ki)) return -1;
        where[ki] = en->where;
    }
    return 0;
}

// [train] init_from: the [model] keys that the INI and the overrides leave out come from the folder's
// config.json (when it has one: a folder without is the weights loader's error). The number taken goes
// to c->model_keys_from_init.
static int fill_model_from_init(TrainConfig *c, const char **where) {
    const char *folder = c->train.init_from;
    c->model_keys_from_init = 0;
    if (!folder[0]) return 0;
    char *json = fs_path_join(folder, "config.json");
    int present = fs_path_exists(json);
    free(json);
    if (!present) return 0;
    GivtConfig saved;
    if (hf_read_config(folder, &saved) != 0) {
        char pre[1100];
        where_prefix(where[find_key("train", "init_from")], pre, sizeof pre);
        return givt_fail("%s[train] init_from = \"%s\": %s", pre, folder, givt_last_error());
    }
    for (int i = 0; i < NKEYS; i++) {
        const ConfigKey *k = &k_keys[i];
        if (strcmp(k->section, "model") != 0 || where[i]) continue;
        memcpy(field_ptr(c, k), (const char *)&saved + (k->offset - offsetof(TrainConfig, model)), k->size);
        c->model_keys_from_init++;
    }
    return 0;
}

static int load(TrainConfig *c, const char *text, const char *path, const char *name, int n_overrides,
                char **overrides) {
    TrainConfig *tmp = xmalloc(sizeof *tmp);
    train_config_default(tmp);
    IniFile ini;
    ini_init(&ini);
    const char *where[NKEYS] = {0};
    int rc = 0;
    if (text) rc = ini_parse(&ini, text, name);
    else if (path) rc = ini_load(&ini, path);
    for (int i = 0; rc == 0 && i < n_overrides; i++) rc = ini_add_override(&ini, overrides[i], i + 1);
    if (rc == 0) rc = apply(tmp, &ini, where);
    if (rc == 0) rc = fill_model_from_init(tmp, where);
    if (rc == 0) {
        Checker ck = {tmp, where};
        rc = check(&ck);
    }
    if (rc == 0) *c = *tmp;
    ini_free(&ini);
    free(tmp);
    return rc;
}

int train_config_load(TrainConfig *c, const char *ini_path, int n_overrides, char **overrides) {
    return load(c, NULL, ini_path, ini_path, n_overrides, overrides);
}

int train_config_load_string(TrainConfig *c, const char *text, const char *file_name, int n_overrides,
                             char **overrides) {
    return load(c, text ? text : "", NULL, file_name ? file_name : "<string>", n_overrides, overrides);
}

int train_config_read_unchecked(TrainConfig *c, const char *path) {
    train_config_default(c);
    IniFile ini;
    ini_init(&ini);
    int rc = ini_load(&ini, path);
    for (int e = 0; rc == 0 && e < ini.count; e++) {
        const IniEntry *en = &ini.entries[e];
        int ki = find_key(en->section, en->key);
        char buf[256];
        if (ki >= 0) set_value(c, &k_keys[ki], en->value, buf, sizeof buf);  // unreadable: the default stays
    }
    ini_free(&ini);
    return rc;
}

char *train_config_changes(const TrainConfig *old, const TrainConfig *now, const char *indent, int *count) {
    char *out = NULL, *a = xmalloc(TRAIN_CONFIG_STR_MAX), *b = xmalloc(TRAIN_CONFIG_STR_MAX);
    size_t len = 0;
    int n = 0;
    for (int i = 0; i < NKEYS; i++) {
        const ConfigKey *k = &k_keys[i];
        if (!strcmp(k->section, "model") || !strcmp(k->key, "resume_from_ckpt")) continue;
        train_config_format(old, k, a, TRAIN_CONFIG_STR_MAX);
        train_config_format(now, k, b, TRAIN_CONFIG_STR_MAX);
        if (!strcmp(a, b)) continue;
        const char *qa = k->type == CFG_STR || k->type == CFG_F64_OPT ? "\"" : "";
        size_t add = strlen(indent) + strlen(k->section) + strlen(k->key) + strlen(a) + strlen(b) + 32;
        out = xrealloc(out, len + add);
        len += (size_t)snprintf(out + len, add, "%s[%s] %s: %s%s%s -> %s%s%s\n", indent, k->section, k->key, qa, a, qa,
                                qa, b, qa);
        n++;
    }
    free(a);
    free(b);
    if (count) *count = n;
    return out;
}

// ---- help and write-back ----------------------------------------------------------------------
static void constraint_text(const ConfigKey *k, char *buf, size_t n) {
    char rb[64];
    key_range_text(k, rb, sizeof rb);
    switch (k->type) {
    case CFG_INT:
    case CFG_I64: snprintf(buf, n, "integer %s", rb); break;
    case CFG_U64: snprintf(buf, n, "integer >= 0"); break;
    case CFG_F64: snprintf(buf, n, "number %s", rb); break;
    case CFG_F64_OPT: snprintf(buf, n, "empty or a number %s", rb); break;
    case CFG_PAIR: snprintf(buf, n, "two numbers, each %s", rb); break;
    case CFG_BOOL: snprintf(buf, n, "true | false"); break;
    case CFG_ENUM:
        buf[0] = '\0';
        for (int i = 0; k->choices[i]; i++)
            snprintf(buf + strlen(buf), n - strlen(buf), "%s%s", i ? " | " : "", k->choices[i]);
        break;
    case CFG_DEVICE: backend_device_names(buf, n, " | "); break;
    case CFG_STR: snprintf(buf, n, "text"); break;
    }
}

void train_config_help(FILE *out) {
    TrainConfig *def = xmalloc(sizeof *def);
    train_config_default(def);
    char val[TRAIN_CONFIG_STR_MAX + 2], con[128];
    const char *cur = NULL;
    for (int i = 0; i < NKEYS; i++) {
        const ConfigKey *k = &k_keys[i];
        if (!cur || strcmp(cur, k->section)) {
            fprintf(out, "\n[%s]\n", k->section);
            cur = k->section;
        }
        train_config_format(def, k, val, sizeof val);
        if (k->type == CFG_STR && !val[0]) snprintf(val, sizeof val, "\"\"");
        if (k->type == CFG_F64_OPT && !val[0]) snprintf(val, sizeof val, "(empty)");
        constraint_text(k, con, sizeof con);
        fprintf(out, "  %-24s = %-14s %s (%s)\n", k->key, val, k->help, con);
    }
    free(def);
}

int train_config_write_ini(FILE *out, const TrainConfig *c) {
    char val[TRAIN_CONFIG_STR_MAX], line[2 * TRAIN_CONFIG_STR_MAX + 128];
    int err = fprintf(out, "# givt-train configuration, fully resolved (every key, defaults included).\n"
                           "# Train again with: givt-train THIS_FILE; givt-train --help describes the keys.\n") < 0;
    const char *cur = NULL;
    for (int i = 0; i < NKEYS; i++) {
        const ConfigKey *k = &k_keys[i];
        if (!cur || strcmp(cur, k->section)) {
            err |= fprintf(out, "\n[%s]\n", k->section) < 0;
            cur = k->section;
        }
        train_config_format(c, k, val, sizeof val);
        if (k->type == CFG_STR) {  // quoted, with \" and \\ escaped
            size_t n = 0;
            line[n++] = '"';
            for (const char *p = val; *p; p++) {
                if (*p == '"' || *p == '\\') line[n++] = '\\';
                line[n++] = *p;
            }
            line[n++] = '"';
            line[n] = '\0';
        } else {
            snprintf(line, sizeof line, "%s", val);
        }
        err |= fprintf(out, "%-22s = %-16s # %s\n", k->key, line, k->help) < 0;
    }
    if (err || ferror(out)) return givt_fail("writing the configuration failed");
    return 0;
}

int train_config_save(const TrainConfig *c, const char *path) {
    AtomicFile af;
    if (fs_atomic_open(&af, path)) return -1;
    if (train_config_write_ini(af.fp, c)) {
        fs_atomic_abort(&af);
        return givt_fail("%s: writing the configuration failed", path);
    }
    return fs_atomic_commit(&af);
}
