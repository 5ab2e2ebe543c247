// Tests of the Hugging Face folder: save -> load bit-exact, config.json defaults and extra keys,
// F16/BF16 weights, and every bad folder (messages must name the file, and the key or tensor).
#define _POSIX_C_SOURCE 200809L
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fs.h"
#include "harness.h"
#include "hf.h"
#include "json.h"
#include "model.h"
#include "rng.h"
#include "testutil.h"
#include "util.h"


TEST(hf_round_trip_bit_exact) {
    char dir[256];
    tu_mkdtemp(dir, "hf");
    const char *folder = tu_path(dir, "a/b/ckpt");  // mkdir -p
    GivtConfig cfg, back;
    tu_tiny_config(&cfg);
    cfg.eps = 1e-6;
    cfg.rope_base = 10000;
    cfg.rope_rotary_percentage = 0.5;
    cfg.rope_condense_ratio = 1.5;
    ParamTable pt;
    param_table_build(&pt, &cfg);
    float *p = xmalloc(pt.total * sizeof(float)), *q = xcalloc(pt.total, sizeof(float));
    Rng rng;
    rng_seed(&rng, 1);
    for (size_t i = 0; i < pt.total; i++) p[i] = (float)rng_normal(&rng);
    param_table_zero_padding(&pt, p);  // the padding between tensors is not in the file: zero after a load
    CHECK(hf_save(folder, &cfg, &pt, p) == 0, "%s", givt_last_error());
    CHECK(hf_read_config(folder, &back) == 0, "%s", givt_last_error());
    CHECK(memcmp(&cfg, &back, sizeof cfg) == 0, "config changed in the round trip");
    CHECK(hf_load_weights(folder, &pt, q) == 0, "%s", givt_last_error());
    CHECK(memcmp(p, q, pt.total * sizeof(float)) == 0, "weights not bit-exact");
    const char *path = tu_path(folder, "config.json");
    char *text = fs_read_text(path, NULL);
    CHECK(text && strstr(text, "\"model_type\": \"givt\"") && strstr(text, "\"GIVT\"") &&
          strstr(text, "\"rope_base\": 10000,") && strstr(text, "\"eps\": 1e-06,"), "%s", text);
    free(text);
    CHECK(hf_save(folder, &cfg, &pt, p) == 0, "saving over an existing folder: %s", givt_last_error());
    free(p);
    free(q);
    param_table_free(&pt);
    tu_rmtree(dir);
}

// A mixture / class-conditional model: config.json carries num_mixtures and num_classes, the table
// has model.class_embed.weight [classes + 1, C] and a head of [k + 2kD, C], and all round-trip; a
// default model's config.json has neither key (the seed's config.json, byte for byte as before).
TEST(hf_round_trip_mixture_and_classes) {
    char dir[256];
    tu_mkdtemp(dir, "hfmix");
    GivtConfig cfg, back;
    tu_tiny_config(&cfg);
    cfg.num_mixtures = 3, cfg.num_classes = 5;
    ParamTable pt;
    param_table_build(&pt, &cfg);
    int ce = param_table_find(&pt, "model.class_embed.weight"), head = param_table_find(&pt, "model.head.weight");
    CHECK(ce == pt.class_embed && ce >= 0 && pt.specs[ce].shape[0] == 6 && pt.specs[ce].shape[1] == cfg.hidden_dim);
    CHECK(pt.specs[head].shape[0] == 3 + 2 * 3 * cfg.input_dim, "head rows %d", pt.specs[head].shape[0]);
    CHECK(pt.params == givt_config_num_params(&cfg), "%zu vs %zu", pt.params, givt_config_num_params(&cfg));
    float *p = xmalloc(pt.total * sizeof(float)), *q = xcalloc(pt.total, sizeof(float));
    for (size_t i = 0; i < pt.total; i++) p[i] = (float)i * 1e-3f;
    param_table_zero_padding(&pt, p);
    const char *folder = tu_path(dir, "mix");
    CHECK(hf_save(folder, &cfg, &pt, p) == 0, "%s", givt_last_error());
    CHECK(hf_read_config(folder, &back) == 0, "%s", givt_last_error());
    CHECK(memcmp(&cfg, &back, sizeof cfg) == 0, "config changed in the round trip");
    CHECK(hf_load_weights(folder, &pt, q) == 0 && memcmp(p, q, pt.total * sizeof(float)) == 0, "%s", givt_last_error());
    char *text = fs_read_text(tu_path(folder, "config.json"), NULL);
    CHECK(text && strstr(text, "\"num_mixtures\": 3,") && strstr(text, "\"num_classes\": 5,"), "%s", text);
    free(text);
    // a model without classes does not load these weights: the class embedding is unexpected
    GivtConfig plain = cfg;
    plain.num_classes = 0;
    ParamTable pp;
    param_table_build(&pp, &plain);
    CHECK(pp.class_embed == -1 && param_table_find(&pp, "model.class_embed.weight") < 0);
    CHECK(hf_load_weights(folder, &pp, q) != 0 && tu_error_has("model.class_embed.weight", "unexpected tensor"), "%s",
          givt_last_error());
    param_table_free(&pp);
    tu_tiny_config(&plain);
    CHECK(hf_save(tu_path(dir, "plain"), &plain, &pt, p) == 0, "%s", givt_last_error());
    text = fs_read_text(tu_path(tu_path(dir, "plain"), "config.json"), NULL);
    CHECK(text && !strstr(text, "num_mixtures") && !strstr(text, "num_classes"), "%s", text);
    free(text);
    free(p), free(q);
    param_table_free(&pt);
    tu_rmtree(dir);
}

// The backend-memory helpers: a model's weights and a second table-shaped buffer (as the EMA) saved
// from backend memory and loaded into another model's, bit for bit; a failed load leaves dst as it was.
TEST(hf_model_save_and_load_backend_memory) {
    char dir[256];
    tu_mkdtemp(dir, "hfm");
    const char *folder = tu_path(dir, "ckpt");
    GivtConfig cfg;
    tu_tiny_config(&cfg);
    GivtModel a, b;
    Backend *be = backend_open("cpu", PRECISION_NO);
    CHECK(model_create(&a, &cfg, be) == 0 && model_create(&b, &cfg, be) == 0, "%s", givt_last_error());
    size_t bytes = a.table.total * sizeof(float);
    float *host = xmalloc(bytes), *back = xmalloc(bytes);
    Weights ema, ema_b;  // second weight sets, as the trainer's EMA
    model_weights_alloc(&a, &ema);
    model_weights_alloc(&b, &ema_b);
    Rng rng;
    rng_seed(&rng, 5);
    for (size_t i = 0; i < a.table.total; i++) host[i] = (float)rng_normal(&rng);
    param_table_zero_padding(&a.table, host);  // as every weight set has it (a load writes zeros there)
    model_weights_upload(&a, &a.w, host);
    for (size_t i = 0; i < a.table.total; i++) host[i] = (float)rng_normal(&rng);
    param_table_zero_padding(&a.table, host);
    model_weights_upload(&a, &ema, host);
    const char *ema_path = tu_path(folder, "ema.safetensors");
    CHECK(hf_model_save(&a, folder, &a.w) == 0 && hf_model_save_tensors(&a, ema_path, &ema) == 0, "%s",
          givt_last_error());
    GivtConfig read;
    CHECK(hf_read_config(folder, &read) == 0 && memcmp(&read, &cfg, sizeof cfg) == 0, "%s", givt_last_error());
    CHECK(hf_model_load_weights(&b, folder, &b.w) == 0 && hf_model_load_tensors(&b, ema_path, &ema_b) == 0, "%s",
          givt_last_error());
    model_weights_download(&b, &b.w, back);
    model_weights_download(&a, &a.w, host);
    CHECK(memcmp(host, back, bytes) == 0, "weights not bit-exact");
    model_weights_download(&b, &ema_b, back);
    model_weights_download(&a, &ema, host);
    CHECK(memcmp(host, back, bytes) == 0, "EMA not bit-exact");
    CHECK(hf_model_load_tensors(&b, tu_path(dir, "missing.safetensors"), &ema_b) == -1 &&
              tu_error_has("cannot open", NULL),
          "%s", givt_last_error());
    model_weights_download(&b, &ema_b, back);
    CHECK(memcmp(host, back, bytes) == 0, "a failed load changed dst");
    model_weights_free(&a, &ema);
    model_weights_free(&b, &ema_b);
    free(host);
    free(back);
    model_free(&a);
    model_free(&b);
    backend_close(be);
    tu_rmtree(dir);
}

TEST(hf_config_defaults_and_extra_keys) {
    char dir[256];
    tu_mkdtemp(dir, "hf");
    const char *path = tu_path(dir, "config.json");
    tu_put_text(path, "{\"hidden_dim\": 64, \"num_heads\": 8, \"eps\": 1e-6, \"rope_condense_ratio\": 2,\n"
                   " \"model_type\": \"givt\", \"architectures\": [\"GIVT\"], \"transformers_version\": \"4.40.0\",\n"
                   " \"torch_dtype\": \"float32\", \"head_dim\": 8, \"rope_n_elem\": 8, \"_name_or_path\": \"x\"}\n");
    GivtConfig c, d;
    givt_config_default(&d);
    d.hidden_dim = 64;
    d.num_heads = 8;
    d.eps = 1e-6;
    d.rope_condense_ratio = 2.0;
    CHECK(hf_read_config(dir, &c) == 0, "%s", givt_last_error());
    CHECK(memcmp(&c, &d, sizeof c) == 0);
    tu_put_text(path, "{}");
    givt_config_default(&d);
    CHECK(hf_read_config(dir, &c) == 0 && memcmp(&c, &d, sizeof c) == 0, "%s", givt_last_error());
    tu_rmtree(dir);
}

TEST(hf_config_errors) {
    static const struct {
        const char *text, *want1, *want2;
    } cases[] = {
        {"{\"hidden_dim\": \"abc\"}", "key \"hidden_dim\"", "a string \"abc\""},
        {"{\"hidden_dim\": 3.5}", "key \"hidden_dim\"", "expected an integer"},
        {"{\"hidden_dim\": 32.0}", "key \"hidden_dim\"", "expected an integer"},
        {"{\"num_layers\": true}", "key \"num_layers\"", "expected an integer"},
        {"{\"block_size\": null}", "key \"block_size\"", "null"},
        {"{\"input_dim\": 10000000000}", "key \"input_dim\"", "int range"},
        {"{\"eps\": \"1e-8\"}", "key \"eps\"", "expected a number"},
        {"{\"rope_base\": [1]}", "key \"rope_base\"", "an array"},
        {"{\"num_heads\": 5}", "num_heads", NULL},
        {"{\"num_layers\": 0}", "num_layers", NULL},
        {"[1]", "expected an object", NULL},
        {"{\"hidden_dim\": 32,}", "invalid JSON at line 1", NULL},
        {"", "invalid JSON", NULL},
    };
    char dir[256];
    tu_mkdtemp(dir, "hf");
    const char *path = tu_path(dir, "config.json");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tu_put_text(path, cases[i].text);
        GivtConfig c;
        CHECK(hf_read_config(dir, &c) == -1, "case %zu accepted", i);
        CHECK(tu_error_has(path, cases[i].want1) && tu_error_has(path, cases[i].want2), "case %zu: %s", i, givt_last_error());
    }
    unlink(path);
    GivtConfig c;
    CHECK(hf_read_config(dir, &c) == -1 && tu_error_has(path, "cannot open"), "%s", givt_last_error());
    tu_rmtree(dir);
}

// A model.safetensors with the table's names, each tensor stored in the dtype dtype_of(name) gives
// (NULL: left out), plus an extra tensor when extra != NULL; every element is the value 1.
static void write_table_file(const char *path, const ParamTable *pt, const char *(*dtype_of)(const char *),
                             const char *extra) {
    JsonBuf h;
    json_buf_init(&h);
    size_t off = 0;
    json_buf_puts(&h, "{");
    unsigned char *data = xcalloc(pt->total * 8 + 64, 1);
    for (int i = 0; i <= pt->count; i++) {
        const char *name = i < pt->count ? pt->specs[i].name : extra;
        const char *dt = i < pt->count ? dtype_of(name) : "F32";
        if (!name || !dt) continue;
        size_t numel = i < pt->count ? pt->specs[i].numel : 1;
        size_t es = strcmp(dt, "F32") == 0 ? 4 : strcmp(dt, "I64") == 0 ? 8 : 2;
        json_buf_printf(&h, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[", off ? "," : "", name, dt);
        if (i < pt->count)
            for (int d = 0; d < pt->specs[i].ndim; d++) json_buf_printf(&h, "%s%d", d ? "," : "", pt->specs[i].shape[d]);
        else json_buf_puts(&h, "1");
        json_buf_printf(&h, "],\"data_offsets\":[%zu,%zu]}", off, off + numel * es);
        static const unsigned char one_f32[] = {0, 0, 0x80, 0x3f}, one_f16[] = {0, 0x3c}, one_bf16[] = {0x80, 0x3f},
                                   one_i64[] = {1, 0, 0, 0, 0, 0, 0, 0};
        const unsigned char *one = es == 4 ? one_f32 : es == 8 ? one_i64 : strcmp(dt, "F16") == 0 ? one_f16 : one_bf16;
        for (size_t k = 0; k < numel; k++) memcpy(data + off + k * es, one, es);
        off += numel * es;
    }
    json_buf_puts(&h, "}");
    FILE *fp = fopen(path, "wb");
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)h.len >> (8 * i));
    if (!fp || fwrite(len8, 1, 8, fp) != 8 || fwrite(h.data, 1, h.len, fp) != h.len ||
        fwrite(data, 1, off, fp) != off || fclose(fp) != 0)
        givt_die("cannot write %s", path);
    free(data);
    json_buf_free(&h);
}

static const char *all_f32(const char *n) { (void)n; return "F32"; }
static const char *all_f16(const char *n) { (void)n; return "F16"; }
static const char *mixed_bf16(const char *n) { return strstr(n, "norm") ? "BF16" : "F32"; }
static const char *no_head(const char *n) { return strcmp(n, "model.head.weight") ? "F32" : NULL; }
static const char *no_bos(const char *n) { return strcmp(n, "model.bos") ? "F32" : NULL; }
static const char *bos_i64(const char *n) { return strcmp(n, "model.bos") ? "F32" : "I64"; }

TEST(hf_loads_f16_bf16_and_rejects_bad_weights) {
    char dir[256];
    tu_mkdtemp(dir, "hf");
    const char *path = tu_path(dir, "model.safetensors");
    GivtConfig cfg;
    tu_tiny_config(&cfg);
    ParamTable pt;
    param_table_build(&pt, &cfg);
    float *p = xcalloc(pt.total, sizeof(float));
    const char *(*good[])(const char *) = {all_f32, all_f16, mixed_bf16};
    for (int g = 0; g < 3; g++) {
        write_table_file(path, &pt, good[g], NULL);
        for (size_t i = 0; i < pt.total; i++) p[i] = 7.0f;  // the padding too: the load zeros it
        CHECK(hf_load_weights(dir, &pt, p) == 0, "%s", givt_last_error());
        size_t ones = 0, zeros = 0;
        for (size_t i = 0; i < pt.total; i++) ones += p[i] == 1.0f, zeros += p[i] == 0.0f;
        CHECK(ones == pt.params && zeros == pt.total - pt.params, "dtype set %d did not load as ones (%zu of %zu), "
              "the padding as zeros (%zu of %zu)", g, ones, pt.params, zeros, pt.total - pt.params);
    }
    write_table_file(path, &pt, no_head, NULL);
    CHECK(hf_load_weights(dir, &pt, p) == -1 && tu_error_has(path, "tensor \"model.head.weight\" is missing"), "%s", givt_last_error());
    // the weights of givt_pytorch 0.0.3 (PyPI), whose model has no bos: the error names the cause
    write_table_file(path, &pt, no_bos, NULL);
    CHECK(hf_load_weights(dir, &pt, p) == -1 &&
              tu_error_has(path, "no tensor \"model.bos\": written by an older givt_pytorch (the PyPI release 0.0.3"),
          "%s", givt_last_error());
    write_table_file(path, &pt, all_f32, "model.extra.weight");
    CHECK(hf_load_weights(dir, &pt, p) == -1 && tu_error_has(path, "unexpected tensor \"model.extra.weight\""), "%s", givt_last_error());
    write_table_file(path, &pt, bos_i64, NULL);
    CHECK(hf_load_weights(dir, &pt, p) == -1 && tu_error_has(path, "tensor \"model.bos\": dtype I64 is not supported"), "%s", givt_last_error());
    // wrong shape: saved with input_dim 4, loaded as input_dim 6
    GivtConfig other = cfg;
    other.input_dim = 6;
    ParamTable pt6;
    param_table_build(&pt6, &other);
    float *p6 = xcalloc(pt6.total, sizeof(float));
    write_table_file(path, &pt, all_f32, NULL);
    CHECK(hf_load_weights(dir, &pt6, p6) == -1 && tu_error_has(path, "tensor \"model.embed.weight\": shape [8, 4], expected [8, 6]"), "%s", givt_last_error());
    // fewer layers in the file than the table: missing; more: unexpected
    GivtConfig three = cfg;
    three.num_layers = 3;
    ParamTable pt3;
    param_table_build(&pt3, &three);
    float *p3 = xcalloc(pt3.total, sizeof(float));
    CHECK(hf_load_weights(dir, &pt3, p3) == -1 && tu_error_has(path, "tensor \"model.blocks.2.attn.norm.weight\" is missing"), "%s", givt_last_error());
    write_table_file(path, &pt3, all_f32, NULL);
    CHECK(hf_load_weights(dir, &pt, p) == -1 && tu_error_has(path, "unexpected tensor \"model.blocks.2."), "%s", givt_last_error());
    // truncated file
    size_t n;
    char *full = fs_read_text(path, &n);
    tu_put_bytes(path, full, n - 5);
    free(full);
    CHECK(hf_load_weights(dir, &pt3, p3) == -1 && tu_error_has(path, "tensor \"model."), "%s", givt_last_error());
    unlink(path);
    CHECK(hf_load_weights(dir, &pt, p) == -1 && tu_error_has(path, "cannot open"), "%s", givt_last_error());
    free(p);
    free(p6);
    free(p3);
    param_table_free(&pt);
    param_table_free(&pt6);
    param_table_free(&pt3);
    tu_rmtree(dir);
}

// NaN or infinite weights fail to load (givt-eval printed "loss = nan", init_from / resume diverged),
// naming the file, the tensor and the first bad element; through every loader: the folder's
// model.safetensors (givt-eval, init_from, resume) and a table file (EMA), F32 and F16.
TEST(hf_rejects_non_finite_weights) {
    char dir[256], want[512];
    tu_mkdtemp(dir, "hf");
    GivtConfig cfg;
    tu_tiny_config(&cfg);
    ParamTable pt;
    param_table_build(&pt, &cfg);
    float *p = xmalloc(pt.total * sizeof(float)), *q = xcalloc(pt.total, sizeof(float));
    Rng rng;
    rng_seed(&rng, 2);
    for (size_t i = 0; i < pt.total; i++) p[i] = (float)rng_normal(&rng);
    const ParamSpec *head = &pt.specs[pt.head], *norm = &pt.specs[pt.norm];
    CHECK(head->ndim == 2 && head->shape[1] == 8 && norm->ndim == 1, "unexpected table layout");
    const char *st = tu_path(dir, "model.safetensors");

    p[head->offset + 2 * 8 + 5] = NAN;  // [2, 5]
    p[head->offset + 3 * 8 + 1] = NAN;  // a later one is not the one named
    CHECK(hf_save(dir, &cfg, &pt, p) == 0, "%s", givt_last_error());
    snprintf(want, sizeof want, "%s: tensor \"%s\": element [2, 5] is nan: the weights are not finite", st, head->name);
    CHECK(hf_load_weights(dir, &pt, q) == -1 && tu_error_has(want, NULL), "got \"%s\", want \"%s\"", givt_last_error(), want);
    p[head->offset + 2 * 8 + 5] = p[head->offset + 3 * 8 + 1] = 0.5f;

    p[norm->offset + 3] = -INFINITY;
    const char *ema = tu_path(dir, "ema.safetensors");
    CHECK(hf_save_tensors(ema, &pt, p, NULL, 0) == 0, "%s", givt_last_error());
    snprintf(want, sizeof want, "%s: tensor \"%s\": element [3] is -inf", ema, norm->name);
    CHECK(hf_load_tensors(ema, &pt, q) == -1 && tu_error_has(want, NULL), "got \"%s\", want \"%s\"", givt_last_error(), want);
    p[norm->offset + 3] = 1.0f;
    CHECK(hf_save_tensors(ema, &pt, p, NULL, 0) == 0 && hf_load_tensors(ema, &pt, q) == 0, "%s", givt_last_error());

    // F16 infinity (0x7c00) in a file written by another tool
    write_table_file(st, &pt, all_f16, NULL);
    CHECK(hf_load_weights(dir, &pt, q) == 0, "%s", givt_last_error());
    size_t n;
    char *bytes = fs_read_text(st, &n);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = (hl << 8) | (unsigned char)bytes[i];
    const char *bos_entry = strstr(bytes + 8, "\"model.bos\"");
    const char *offs = bos_entry ? strstr(bos_entry, "\"data_offsets\":[") : NULL;
    CHECK(offs != NULL);
    if (offs) {
        size_t begin = strtoul(offs + strlen("\"data_offsets\":["), NULL, 10);
        bytes[8 + hl + begin + 2 * 1] = 0x00, bytes[8 + hl + begin + 2 * 1 + 1] = 0x7c;  // element 1 = +inf
        tu_put_bytes(st, bytes, n);
        snprintf(want, sizeof want, "%s: tensor \"model.bos\": element [1] is inf", st);
        CHECK(hf_load_weights(dir, &pt, q) == -1 && tu_error_has(want, NULL), "got \"%s\", want \"%s\"",
              givt_last_error(), want);
    }
    free(bytes);
    free(p);
    free(q);
    param_table_free(&pt);
    tu_rmtree(dir);
}

TEST(hf_save_errors_and_table_files) {
    char dir[256];
    tu_mkdtemp(dir, "hf");
    GivtConfig cfg;
    tu_tiny_config(&cfg);
    ParamTable pt;
    param_table_build(&pt, &cfg);
    float *p = xcalloc(pt.total, sizeof(float)), *q = xcalloc(pt.total, sizeof(float));
    const char *path = tu_path(dir, "file");
    tu_put_text(path, "x");
    path = tu_path(dir, "file/sub");
    CHECK(hf_save(path, &cfg, &pt, p) == -1 && tu_error_has("file", "not a directory"), "%s", givt_last_error());
    GivtConfig bad = cfg;
    bad.eps = NAN;
    path = tu_path(dir, "nan");
    CHECK(hf_save(path, &bad, &pt, p) == -1 && tu_error_has("config.json", "\"eps\""), "%s", givt_last_error());
    // the table-shaped writer used for EMA weights / optimizer state, with metadata
    for (size_t i = 0; i < pt.total; i++) p[i] = (float)i * 0.25f;
    param_table_zero_padding(&pt, p);
    path = tu_path(dir, "ema.safetensors");
    StMeta meta[] = {{"step", "100"}};
    CHECK(hf_save_tensors(path, &pt, p, meta, 1) == 0, "%s", givt_last_error());
    CHECK(hf_load_tensors(path, &pt, q) == 0 && memcmp(p, q, pt.total * sizeof(float)) == 0, "%s", givt_last_error());
    StFile f;
    CHECK(st_open(&f, path) == 0 && f.count == pt.count && st_metadata(&f, "step") &&
          strcmp(st_metadata(&f, "step"), "100") == 0 && strcmp(st_metadata(&f, "format"), "pt") == 0);
    st_close(&f);
    free(p);
    free(q);
    param_table_free(&pt);
    tu_rmtree(dir);
}
