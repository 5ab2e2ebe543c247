// hf: the Hugging Face folder of a GIVT model (config.json + model.safetensors).
#define _POSIX_C_SOURCE 200809L
#include "hf.h"

#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "fs.h"
#include "json.h"
#include "util.h"

// ---- config.json --------------------------------------------------------------------------
static int read_key(const char *path, const JsonValue *root, const GivtConfigKey *k, GivtConfig *cfg) {
    const JsonValue *v = json_get(root, k->key);
    if (!v) return 0;  // absent: the default, as the seed's GIVTConfig
    char what[600];
    snprintf(what, sizeof what, "%s: key \"%s\"", path, k->key);
    char *field = (char *)cfg + k->offset;
    if (k->is_int) return json_as_int(v, (int *)(void *)field, what);
    return json_as_double(v, (double *)(void *)field, what);
}

int hf_read_config_json(const char *path, GivtConfig *cfg) {
    size_t len;
    char *text = fs_read_text_max(path, GIVT_TEXT_MAX_BYTES, &len);
    if (!text) return -1;
    JsonValue *root = json_parse(text, len, path);
    free(text);
    if (!root) return -1;
    givt_config_default(cfg);
    int rc = json_expect(root, JSON_OBJECT, path), nkeys;
    const GivtConfigKey *keys = givt_config_keys(&nkeys);
    for (int k = 0; k < nkeys && rc == 0; k++) rc = read_key(path, root, &keys[k], cfg);
    json_free(root);
    if (rc == 0 && givt_config_validate(cfg) != 0) rc = givt_fail("%s: %s", path, givt_last_error());
    return rc;
}

int hf_read_config(const char *folder, GivtConfig *cfg) {
    char *path = fs_path_join(folder, "config.json");
    int rc = hf_read_config_json(path, cfg);
    free(path);
    return rc;
}

// Integers stay integers; rope_base is written as an integer when it is one (as in GIVT.md).
static int write_value(JsonBuf *b, const GivtConfig *cfg, const GivtConfigKey *k) {
    double x = givt_config_value(cfg, k);
    if (k->is_int) {
        json_buf_printf(b, "%d", (int)x);
        return 0;
    }
    if (!isfinite(x)) return givt_fail("key \"%s\" = %g: not a finite number", k->key, x);
    if (strcmp(k->key, "rope_base") == 0 && x == floor(x) && fabs(x) < 9007199254740992.0) {
        json_buf_printf(b, "%.0f", x);
        return 0;
    }
    return json_buf_double(b, x);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

// Keys sorted, indent 2, as transformers' PretrainedConfig.to_json_file writes them. The seed's keys
// always; this engine's additions (num_mixtures, num_classes) only when not at their default, so that
// a seed-compatible model writes the seed's config.json.
static int config_text(JsonBuf *b, const GivtConfig *cfg) {
    int nkeys;
    const GivtConfigKey *ck = givt_config_keys(&nkeys);
    const char *names[GIVT_CONFIG_NKEYS + 2];  // the keys, "architectures", "model_type"
    int n = 0;
    GivtConfig def;
    givt_config_default(&def);
    for (int k = 0; k < nkeys; k++)
        if (k < GIVT_CONFIG_SEED_NKEYS || givt_config_value(cfg, &ck[k]) != givt_config_value(&def, &ck[k]))
            names[n++] = ck[k].key;
    names[n++] = "architectures";
    names[n++] = "model_type";
    qsort(names, (size_t)n, sizeof names[0], cmp_str);
    json_buf_puts(b, "{\n");
    for (int i = 0; i < n; i++) {
        json_buf_printf(b, "  \"%s\": ", names[i]);
        int k = 0;
        while (k < nkeys && strcmp(ck[k].key, names[i]) != 0) k++;
        if (k < nkeys && write_value(b, cfg, &ck[k])) return -1;
        if (strcmp(names[i], "architectures") == 0) json_buf_puts(b, "[\n    \"GIVT\"\n  ]");
        if (strcmp(names[i], "model_type") == 0) json_buf_puts(b, "\"givt\"");
        json_buf_puts(b, i + 1 < n ? ",\n" : "\n");
    }
    json_buf_puts(b, "}\n");
    return 0;
}

int hf_write_config_json(const char *path, const GivtConfig *cfg) {
    JsonBuf b;
    json_buf_init(&b);
    int rc = config_text(&b, cfg);
    if (rc) rc = givt_fail("%s: %s", path, givt_last_error());
    AtomicFile af;
    if (rc == 0) rc = fs_atomic_open(&af, path);
    if (rc == 0) {
        if (fs_atomic_write(&af, b.data, b.len) == 0) {
            rc = fs_atomic_commit(&af);
        } else {
            rc = -1;
            fs_atomic_abort(&af);
        }
    }
    json_buf_free(&b);
    return rc;
}

// ---- tensors ------------------------------------------------------------------------------
static void spec_shape(const ParamSpec *s, int64_t *shape) {
    for (int d = 0; d < s->ndim; d++) shape[d] = s->shape[d];
}

int hf_save_tensors(const char *path, const ParamTable *pt, const float *params_host, const StMeta *meta,
                    int n_meta) {
    StWriteTensor *ts = xcalloc((size_t)(pt->count ? pt->count : 1), sizeof *ts);
    for (int i = 0; i < pt->count; i++) {
        const ParamSpec *s = &pt->specs[i];
        ts[i].name = s->name;
        ts[i].ndim = s->ndim;
        spec_shape(s, ts[i].shape);
        ts[i].data = params_host + s->offset;
    }
    int rc = st_write(path, ts, pt->count, meta, n_meta);
    free(ts);
    return rc;
}

// Weights that are NaN or infinite would make every loss NaN (givt-eval) or training diverge from the
// first step (init_from, resume, EMA), so loading them fails, naming the tensor and the first bad element.
static int check_finite(const char *path, const ParamSpec *s, const float *p) {
    size_t k = 0;
    while (k < s->numel && isfinite(p[k])) k++;
    if (k == s->numel) return 0;
    char idx[64];
    if (s->ndim == 2) snprintf(idx, sizeof idx, "[%zu, %zu]", k / (size_t)s->shape[1], k % (size_t)s->shape[1]);
    else snprintf(idx, sizeof idx, "[%zu]", k);
    return givt_fail("%s: tensor \"%.200s\": element %s is %s: the weights are not finite", path, s->name, idx,
                     isnan(p[k]) ? "nan" : p[k] > 0 ? "inf" : "-inf");
}

static int load_all(const StFile *f, const ParamTable *pt, float *params_host) {
    // givt_pytorch 0.0.3 (PyPI) has no bos; GIVT.md follows the GitHub version, whose model has one
    if (st_find(f, "model.bos") < 0 && st_find(f, "model.embed.weight") >= 0)
        return givt_fail("%s: no tensor \"model.bos\": written by an older givt_pytorch (the PyPI release 0.0.3 "
                         "has no bos); givt exchanges weights with the GitHub version of givt_pytorch (a clone "
                         "installed with pip install .), whose model has it",
                         f->path);
    for (int i = 0; i < f->count; i++)
        if (param_table_find(pt, f->tensors[i].name) < 0)
            return givt_fail("%s: unexpected tensor \"%.200s\" (not a parameter of this model configuration)",
                             f->path, f->tensors[i].name);
    param_table_zero_padding(pt, params_host);
    for (int i = 0; i < pt->count; i++) {
        const ParamSpec *s = &pt->specs[i];
        int64_t shape[2];
        spec_shape(s, shape);
        if (st_load_f32(f, s->name, s->ndim, shape, params_host + s->offset) ||
            check_finite(f->path, s, params_host + s->offset))
            return -1;
    }
    return 0;
}

int hf_load_tensors(const char *path, const ParamTable *pt, float *params_host) {
    StFile f;
    int rc = st_open(&f, path);
    if (rc == 0) rc = load_all(&f, pt, params_host);
    st_close(&f);
    return rc;
}

int hf_load_weights(const char *folder, const ParamTable *pt, float *params_host) {
    char *path = fs_path_join(folder, "model.safetensors");
    int rc = hf_load_tensors(path, pt, params_host);
    free(path);
    return rc;
}

// ---- weight sets in backend memory ----------------------------------------------------------
// A host copy of w's master weights (w NULL: uninitialised); caller frees.
static float *host_copy(GivtModel *m, const Weights *w) {
    float *host = xmalloc(m->table.total * sizeof(float));
    if (w) model_weights_download(m, w, host);
    return host;
}

// load (hf_load_tensors or hf_load_weights) of where into a host copy, uploaded to w once read.
static int load_staged(GivtModel *m, int (*load)(const char *, const ParamTable *, float *), const char *where,
                       Weights *w) {
    float *host = host_copy(m, NULL);
    int rc = load(where, &m->table, host);
    if (rc == 0) model_weights_upload(m, w, host);
    free(host);
    return rc;
}

int hf_model_load_tensors(GivtModel *m, const char *path, Weights *w) { return load_staged(m, hf_load_tensors, path, w); }

int hf_model_load_weights(GivtModel *m, const char *folder, Weights *w) {
    return load_staged(m, hf_load_weights, folder, w);
}

int hf_model_load_checkpoint_weights(GivtModel *m, const char *folder, int ema, Weights *w) {
    if (!ema) return hf_model_load_weights(m, folder, w);
    char *p = fs_path_join(folder, "ema.safetensors");
    int rc = fs_path_exists(p) ? hf_model_load_tensors(m, p, w)
                               : givt_fail("--ema: %s: no such file (a givt-train checkpoint with [train] ema on has it)", p);
    free(p);
    return rc;
}

int hf_model_save_tensors(GivtModel *m, const char *path, const Weights *w) {
    float *host = host_copy(m, w);
    int rc = hf_save_tensors(path, &m->table, host, NULL, 0);
    free(host);
    return rc;
}

int hf_model_save(GivtModel *m, const char *folder, const Weights *w) {
    float *host = host_copy(m, w);
    int rc = hf_save(folder, &m->cfg, &m->table, host);
    free(host);
    return rc;
}

int hf_save(const char *folder, const GivtConfig *cfg, const ParamTable *pt, const float *params_host) {
    if (fs_mkdir_p(folder)) return -1;
    char *cfg_path = fs_path_join(folder, "config.json"), *st_path = fs_path_join(folder, "model.safetensors");
    int rc = hf_write_config_json(cfg_path, cfg);
    if (rc == 0) rc = hf_save_tensors(st_path, pt, params_host, NULL, 0);
    free(cfg_path);
    free(st_path);
    return rc;
}
