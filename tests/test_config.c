// test_config: the INI reader and the givt-train configuration (parsing, messages, validation,
// --help, write-back), and the three configs under configs/.
#define _POSIX_C_SOURCE 200809L
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fs.h"
#include "harness.h"
#include "hf.h"
#include "ini.h"
#include "rng.h"
#include "testutil.h"
#include "train_config.h"
#include "util.h"

// Loads text as "x.ini" with the given overrides plus, when dummy, data.kind=dummy first.
static int load_text(TrainConfig *c, const char *text, int dummy, int n, char **ov) {
    char *all[16];
    int k = 0;
    if (dummy) all[k++] = "data.kind=dummy";
    for (int i = 0; i < n && k < 16; i++) all[k++] = ov[i];
    return train_config_load_string(c, text, "x.ini", k, all);
}

// Loading must fail with a message containing want.
#define EXPECT_ERR(text, dummy, n, ov, want)                                                             \
    do {                                                                                               \
        TrainConfig *c_ = malloc(sizeof *c_);                                                          \
        int rc_ = load_text(c_, (text), (dummy), (n), (ov));                                           \
        CHECK(rc_ == -1, "for %s", want);                                                              \
        if (rc_ == -1) CHECK(strstr(givt_last_error(), want) != NULL, "got \"%s\", want \"%s\"",       \
                             givt_last_error(), want);                                                 \
        free(c_);                                                                                      \
    } while (0)

static char *read_stream(FILE *fp) {
    long n = ftell(fp);
    rewind(fp);
    char *buf = xmalloc((size_t)n + 1);
    size_t got = fread(buf, 1, (size_t)n, fp);
    buf[got] = '\0';
    return buf;
}

TEST(ini_parses_sections_comments_quotes) {
    const char *text =
        "# a comment\n"
        "; another\n"
        "\n"
        "  [ model ]   # trailing comment\n"
        "hidden_dim=64\n"
        "  num_heads   =   4   ; inline\n"
        "[train]\r\n"
        "out_dir = \"runs/a #b; c\"  # quoted keeps # and ;\n"
        "path = a#b\n"
        "esc = \"q\\\"x\\\\y\"\n"
        "empty =\n"
        "empty2 = \"\"\n"
        "spaced = \"  padded  \"\n"
        "ema = # only a comment\n";
    IniFile ini;
    ini_init(&ini);
    CHECK(ini_parse(&ini, text, "t.ini") == 0, "%s", givt_last_error());
    CHECK(ini.count == 9, "count %d", ini.count);
    CHECK(ini.nsections == 2);
    const IniEntry *e = ini_find(&ini, "model", "num_heads");
    CHECK(e && !strcmp(e->value, "4") && e->line == 6 && !strcmp(e->where, "t.ini:6"));
    e = ini_find(&ini, "model", "hidden_dim");
    CHECK(e && !strcmp(e->value, "64") && e->line == 5);
    e = ini_find(&ini, "train", "out_dir");
    CHECK(e && !strcmp(e->value, "runs/a #b; c"), "got %s", e ? e->value : "(none)");
    e = ini_find(&ini, "train", "path");
    CHECK(e && !strcmp(e->value, "a#b"));  // '#' not after whitespace is text
    e = ini_find(&ini, "train", "esc");
    CHECK(e && !strcmp(e->value, "q\"x\\y"));
    e = ini_find(&ini, "train", "empty");
    CHECK(e && !strcmp(e->value, ""));
    e = ini_find(&ini, "train", "empty2");
    CHECK(e && !strcmp(e->value, ""));
    e = ini_find(&ini, "train", "spaced");
    CHECK(e && !strcmp(e->value, "  padded  "));
    e = ini_find(&ini, "train", "ema");
    CHECK(e && !strcmp(e->value, "") && e->line == 14);
    CHECK(ini_find(&ini, "train", "nope") == NULL);
    CHECK(ini_add_override(&ini, "train.lr = \"3e-4\"", 1) == 0);
    CHECK(ini_add_override(&ini, "data.path=a b#c", 2) == 0);
    e = ini_find(&ini, "train", "lr");
    CHECK(e && !strcmp(e->value, "3e-4") && !strcmp(e->where, "override 1"));
    e = ini_find(&ini, "data", "path");
    CHECK(e && !strcmp(e->value, "a b#c"));
    ini_free(&ini);
}

TEST(ini_rejects_malformed_lines) {
    static const struct {
        const char *text, *want;
    } cases[] = {
        {"[train]\nlr 3\n", "t.ini:2: expected \"key = value\" or \"[section]\", got \"lr 3\""},
        {"lr = 3\n", "t.ini:1: key \"lr\" outside any [section]"},
        {"[train]\nlr = 1\n\nlr = 2\n", "t.ini:4: [train] lr: duplicate key (first set at line 2)"},
        {"[train]\nlr = 1\n[model]\n[train]\nlr = 2\n", "t.ini:5: [train] lr: duplicate key (first set at line 2)"},
        {"[train\nlr = 1\n", "t.ini:1: section header without a closing ']'"},
        {"[train] x\n", "t.ini:1: text after the section header"},
        {"[]\n", "t.ini:1: bad section name"},
        {"[train]\nout_dir = \"abc\n", "t.ini:2: [train] out_dir: unterminated quoted value"},
        {"[train]\nout_dir = \"abc\" d\n", "t.ini:2: [train] out_dir: text after the closing quote"},
        {"[train]\n = 3\n", "t.ini:2: bad key"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        IniFile ini;
        ini_init(&ini);
        int rc = ini_parse(&ini, cases[i].text, "t.ini");
        CHECK(rc == -1, "case %zu", i);
        CHECK(rc == -1 && strstr(givt_last_error(), cases[i].want), "case %zu: got \"%s\", want \"%s\"", i,
              givt_last_error(), cases[i].want);
        ini_free(&ini);
    }
    IniFile ini;
    ini_init(&ini);
    CHECK(ini_add_override(&ini, "lr3", 2) == -1);
    CHECK(strstr(givt_last_error(), "override 2: \"lr3\": expected section.key=value") != NULL, "%s",
          givt_last_error());
    CHECK(ini_add_override(&ini, "train_lr=3", 1) == -1);
    CHECK(ini_load(&ini, "/nonexistent/givt.ini") == -1);
    CHECK(strstr(givt_last_error(), "/nonexistent/givt.ini") != NULL);
    ini_free(&ini);
}

// A NUL byte is an error at its line (it used to end the text there, the rest read as defaults).
TEST(ini_nul_byte_is_an_error_naming_file_and_line) {
    IniFile ini;
    ini_init(&ini);
    static const char in_mem[] = "[tr\0ain]\nlr = 1\n";
    CHECK(ini_parse_n(&ini, in_mem, sizeof in_mem - 1, "t.ini") == -1 &&
              tu_error_has("t.ini:1: contains a NUL byte (column 4)", NULL),
          "%s", givt_last_error());
    ini_free(&ini);

    char dir[256], want[512];
    tu_mkdtemp(dir, "ini");
    const char *path = tu_path(dir, "nul.ini");
    static const char text[] = "[data]\nkind = dummy\n\0[model]\nhidden_dim = 30\n";  // 30: not a multiple of 4 heads
    tu_put_bytes(path, text, sizeof text - 1);
    ini_init(&ini);
    snprintf(want, sizeof want, "%s:3: contains a NUL byte (column 1)", path);
    CHECK(ini_load(&ini, path) == -1 && tu_error_has(want, NULL), "%s", givt_last_error());
    ini_free(&ini);
    TrainConfig *c = malloc(sizeof *c);
    CHECK(train_config_load(c, path, 0, NULL) == -1 && tu_error_has(want, NULL), "%s", givt_last_error());
    free(c);
    tu_rmtree(dir);
}

// "\n", "\r\n" and a lone "\r" all end a line: the same text parses alike with any of them.
static char *with_line_ends(const char *lf_text, const char *eol) {
    size_t n = 0, k = strlen(eol);
    for (const char *p = lf_text; *p; p++) n += *p == '\n' ? k : 1;
    char *out = xmalloc(n + 1), *o = out;
    for (const char *p = lf_text; *p; p++) {
        if (*p == '\n') memcpy(o, eol, k), o += k;
        else *o++ = *p;
    }
    *o = '\0';
    return out;
}

TEST(ini_line_ends_cr_crlf_lf_parse_alike) {
    const char *lf =
        "# comment\n\n[model]\nhidden_dim = 48  ; c\nnum_heads=3\n\n[train]\nout_dir = \"a b\"\nlr = 2e-3\n";
    IniFile want, got;
    ini_init(&want);
    CHECK(ini_parse(&want, lf, "t.ini") == 0 && want.count == 4, "%s", givt_last_error());
    const char *eols[] = {"\r", "\r\n", "\n"};
    for (int k = 0; k < 3; k++) {
        char *text = with_line_ends(lf, eols[k]);
        ini_init(&got);
        CHECK(ini_parse_n(&got, text, strlen(text), "t.ini") == 0, "eol %d: %s", k, givt_last_error());
        CHECK(got.count == want.count && got.nsections == 2, "eol %d: %d entries", k, got.count);
        for (int i = 0; i < got.count && i < want.count; i++) {
            const IniEntry *a = &got.entries[i], *b = &want.entries[i];
            CHECK(!strcmp(a->section, b->section) && !strcmp(a->key, b->key) && !strcmp(a->value, b->value) &&
                      a->line == b->line && !strcmp(a->where, b->where),
                  "eol %d entry %d: [%s] %s = \"%s\" at %s", k, i, a->section, a->key, a->value, a->where);
        }
        ini_free(&got);
        free(text);
    }
    ini_free(&want);
    // line numbers in messages: "\r\n" is one line end, "\n\r" two
    static const struct {
        const char *text, *want;
    } cases[] = {
        {"[train]\rlr = 1\r\rlr 3\r", "t.ini:4: expected \"key = value\" or \"[section]\", got \"lr 3\""},
        {"[train]\r\n\r\nlr 3\r\n", "t.ini:3: expected"},
        {"[train]\n\rlr 3", "t.ini:3: expected"},
        {"[train]\rlr = 1\rlr = 2", "t.ini:3: [train] lr: duplicate key (first set at line 2)"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ini_init(&got);
        CHECK(ini_parse(&got, cases[i].text, "t.ini") == -1 && tu_error_has(cases[i].want, NULL),
              "case %zu: got \"%s\", want \"%s\"", i, givt_last_error(), cases[i].want);
        ini_free(&got);
    }
    // a whole config file with old-Mac line ends loads as the LF original
    char dir[256];
    tu_mkdtemp(dir, "ini");
    const char *cr_path = tu_path(dir, "tiny_cr.ini");
    char *orig = fs_read_text("configs/tiny.ini", NULL);
    CHECK(orig != NULL, "%s", givt_last_error());
    if (orig) {
        char *cr = with_line_ends(orig, "\r");
        tu_put_text(cr_path, cr);
        free(cr);
        TrainConfig *a = malloc(sizeof *a), *b = malloc(sizeof *b);
        char *ov[] = {"train.out_dir=/tmp/givt-cr-test"};
        CHECK(train_config_load(a, "configs/tiny.ini", 1, ov) == 0, "%s", givt_last_error());
        CHECK(train_config_load(b, cr_path, 1, ov) == 0, "%s", givt_last_error());
        FILE *fa = tmpfile(), *fb = tmpfile();
        train_config_write_ini(fa, a);
        train_config_write_ini(fb, b);
        char *ta = read_stream(fa), *tb = read_stream(fb);
        CHECK(!strcmp(ta, tb) && b->model.hidden_dim == 12 && b->train.max_steps == 20, "CR file read as:\n%s", tb);
        free(ta);
        free(tb);
        fclose(fa);
        fclose(fb);
        free(a);
        free(b);
        free(orig);
    }
    tu_rmtree(dir);
}

// A message that echoes a huge value still ends with its reason (it used to be cut at 1023 bytes).
static int ends_with(const char *s, const char *tail) {
    size_t n = strlen(s), k = strlen(tail);
    return n >= k && !strcmp(s + n - k, tail);
}

TEST(error_messages_keep_reason_after_long_values) {
    size_t big = (size_t)1 << 20;
    char *value = xmalloc(big + 1);
    memset(value, 'x', big);
    value[big] = '\0';
    char *text = xmalloc(big + 64);
    snprintf(text, big + 64, "[train]\nlr = %s\n", value);
    TrainConfig *c = malloc(sizeof *c);
    CHECK(load_text(c, text, 1, 0, NULL) == -1, "a 1 MB lr loaded");
    const char *m = givt_last_error();
    CHECK(!strncmp(m, "x.ini:2: [train] lr = \"xxx", 26) && ends_with(m, "xxx\": not a number") &&
              strlen(m) > big,
          "message of %zu bytes ends \"%s\"", strlen(m), m + (strlen(m) > 60 ? strlen(m) - 60 : 0));
    snprintf(text, big + 64, "[train]\nout_dir = \"%s\"\n", value);
    CHECK(load_text(c, text, 1, 0, NULL) == -1, "a 1 MB out_dir loaded");
    m = givt_last_error();
    CHECK(strstr(m + strlen(m) - 60, "xxx\": too long (at most ") && ends_with(m, " characters)"),
          "ends \"%s\"", m + (strlen(m) > 60 ? strlen(m) - 60 : 0));
    free(c);
    // a message may carry the previous one (givt_last_error() as an argument)
    givt_fail("%s: first reason", value);
    givt_fail("outer: %s; second reason", givt_last_error());
    m = givt_last_error();
    CHECK(!strncmp(m, "outer: xxx", 10) && ends_with(m, "xxx: first reason; second reason") &&
              strlen(m) == big + strlen("outer: : first reason; second reason"),
          "%zu bytes", strlen(m));
    free(text);
    free(value);
}

TEST(config_table_is_consistent) {
    int n;
    const ConfigKey *keys = train_config_keys(&n);
    CHECK(n >= 39, "n = %d", n);
    for (int i = 0; i < n; i++) {
        const ConfigKey *k = &keys[i];
        size_t want = 0;
        switch (k->type) {
        case CFG_INT: case CFG_BOOL: case CFG_ENUM: want = sizeof(int); break;
        case CFG_I64: want = sizeof(int64_t); break;
        case CFG_U64: want = sizeof(uint64_t); break;
        case CFG_F64: case CFG_F64_OPT: want = sizeof(double); break;
        case CFG_PAIR: want = 2 * sizeof(double); break;
        case CFG_STR: want = TRAIN_CONFIG_STR_MAX; break;
        case CFG_DEVICE: want = BACKEND_NAME_MAX; break;
        }
        CHECK(k->size == want, "[%s] %s: field size %zu, type wants %zu", k->section, k->key, k->size, want);
        CHECK(k->offset + k->size <= sizeof(TrainConfig), "[%s] %s", k->section, k->key);
        CHECK(k->help && k->help[0], "[%s] %s has no description", k->section, k->key);
        CHECK(k->type != CFG_ENUM || k->choices, "[%s] %s", k->section, k->key);
        CHECK(!strcmp(k->section, "model") || k->def, "[%s] %s has no default", k->section, k->key);
        for (int j = 0; j < i; j++)
            CHECK(strcmp(k->section, keys[j].section) || strcmp(k->key, keys[j].key), "[%s] %s twice",
                  k->section, k->key);
    }
}

TEST(config_defaults_follow_givt_md) {
    TrainConfig *c = malloc(sizeof *c);
    train_config_default(c);
    GivtConfig m;
    givt_config_default(&m);
    CHECK(memcmp(&m, &c->model, sizeof m) == 0);
    CHECK(c->model.input_dim == 16 && c->model.hidden_dim == 32 && c->model.num_heads == 4);
    CHECK(c->model.block_size == 512 && c->model.rope_base == 1e6 && c->model.rope_condense_ratio == 4.0);
    const TrainSettings *t = &c->train;
    CHECK(t->batch_size == 2 && t->lr == 1e-4 && t->weight_decay == 0.1 && t->lr_eps == 1e-8);
    CHECK(t->lr_betas[0] == 0.9 && t->lr_betas[1] == 0.99 && t->grad_norm == 1.0);
    CHECK(t->warmup_steps == 1000 && t->timescale == 1e8 && t->lr_schedule == LR_SCHEDULE_INVERSE_SQRT);
    CHECK(t->max_steps == 100000 && t->grad_accum_steps == 1 && t->ema == 0.0);
    CHECK(t->mixed_precision == PRECISION_NO && t->gradient_checkpointing == 0);
    CHECK(t->log_every == 10 && t->val_every == 1000 && t->val_size == 100 && t->save_every == 1000);
    CHECK(t->keep_checkpoints == 5 && t->seed == 42 && !strcmp(t->out_dir, "runs/default"));
    CHECK(!t->resume_from_ckpt[0] && !t->init_from[0] && !strcmp(t->device, "auto"));
    CHECK(c->data.kind == DATA_KIND_NPY && !c->data.path[0] && c->data.seq_len == 512 &&
          c->data.dummy_size == 10000);
    // The defaults are consistent apart from the data path, which npy needs.
    c->data.kind = DATA_KIND_DUMMY;
    CHECK(train_config_validate(c) == 0, "%s", givt_last_error());
    free(c);
}

TEST(config_files_parse_and_validate) {
    TrainConfig *c = malloc(sizeof *c);
    if (!fs_path_exists("configs/base.ini")) {
        CHECK(0, "configs/base.ini not found: run the tests from the repository root");
        free(c);
        return;
    }
    CHECK(train_config_load(c, "configs/base.ini", 0, NULL) == 0, "%s", givt_last_error());
    CHECK(c->model.hidden_dim == 1024 && c->model.num_layers == 16 && c->model.block_size == 256);
    CHECK(c->train.mixed_precision == PRECISION_BF16 && c->data.kind == DATA_KIND_DUMMY);

    char *tiny_ov[] = {"train.out_dir=/tmp/givt-tiny-test"};
    CHECK(train_config_load(c, "configs/tiny.ini", 1, tiny_ov) == 0, "%s", givt_last_error());
    CHECK(c->model.input_dim == 4 && c->model.hidden_dim == 12 && c->model.num_heads == 2);
    CHECK(c->model.num_layers == 1 && c->data.seq_len == 8 && c->model.block_size == 8);
    CHECK(c->train.max_steps == 20 && !strcmp(c->train.out_dir, "/tmp/givt-tiny-test"));

    // digits.ini: its data file is made by a script; parse it with dummy data, and as is when present.
    char *dig_ov[] = {"data.kind=dummy", "data.dummy_size=1797"};
    CHECK(train_config_load(c, "configs/digits.ini", 2, dig_ov) == 0, "%s", givt_last_error());
    CHECK(c->model.input_dim == 4 && c->data.seq_len == 16 && c->model.block_size >= 16);
    CHECK(c->train.val_size == 197 && !strcmp(c->data.path, "data/digits/digits_p2.npy"));
    if (fs_path_exists("data/digits/digits_p2.npy"))
        CHECK(train_config_load(c, "configs/digits.ini", 0, NULL) == 0, "%s", givt_last_error());
    else
        CHECK(train_config_load(c, "configs/digits.ini", 0, NULL) == -1 &&
              strstr(givt_last_error(), "no such file \"data/digits/digits_p2.npy\""), "%s", givt_last_error());
    free(c);
}

TEST(config_good_input_and_overrides) {
    const char *text =
        "# comment\n"
        "[model]\n"
        "hidden_dim = 48   # three heads of 16\n"
        "num_heads = 3\n"
        "rope_rotary_percentage = 0.5\n"
        "\n"
        "[train]\n"
        "lr = \"3e-4\"\n"
        "lr_betas = (0.8, 0.95)\n"
        "lr_schedule = Cosine\n"
        "gradient_checkpointing = yes\n"
        "ema = 0.6667\n"
        "seed = 18446744073709551615\n"
        "out_dir = \"runs/with space\"\n"
        "batch_size = +8\n"
        "[data]\n"
        "seq_len = 100\n";
    TrainConfig *c = malloc(sizeof *c);
    char *ov[] = {"train.batch_size=16", "model.block_size = 128", "train.lr=1e-3", "train.lr=2e-3",
                  "train.device=cuda", "train.mixed_precision=\"bf16\""};
    CHECK(load_text(c, text, 1, 6, ov) == 0, "%s", givt_last_error());
    CHECK(c->model.hidden_dim == 48 && c->model.num_heads == 3 && c->model.rope_rotary_percentage == 0.5);
    CHECK(c->train.lr == 2e-3);  // the last override wins
    CHECK(c->train.lr_betas[0] == 0.8 && c->train.lr_betas[1] == 0.95);
    CHECK(c->train.lr_schedule == LR_SCHEDULE_COSINE && c->train.gradient_checkpointing == 1);
    CHECK(c->train.ema == 0.6667 && c->train.seed == UINT64_MAX);
    CHECK(!strcmp(c->train.out_dir, "runs/with space") && c->train.batch_size == 16);
    CHECK(c->model.block_size == 128 && c->data.seq_len == 100 && c->data.kind == DATA_KIND_DUMMY);
    CHECK(!strcmp(c->train.device, "cuda") && c->train.mixed_precision == PRECISION_BF16);
    // Overrides alone, no file.
    char *only[] = {"data.kind=dummy", "train.warmup_steps=0", "train.grad_norm=0", "train.ema="};
    CHECK(train_config_load(c, NULL, 4, only) == 0, "%s", givt_last_error());
    CHECK(c->train.warmup_steps == 0 && c->train.grad_norm == 0 && c->train.ema == 0);
    // On failure the struct is left as it was.
    char *bad[] = {"train.lr=abc"};
    CHECK(train_config_load(c, NULL, 1, bad) == -1);
    CHECK(c->train.warmup_steps == 0 && c->data.kind == DATA_KIND_DUMMY);
    free(c);
}

TEST(config_rejects_bad_values) {
    EXPECT_ERR("[train]\nlr = abc\n", 1, 0, NULL, "x.ini:2: [train] lr = \"abc\": not a number");
    EXPECT_ERR("[train]\nlr =\n", 1, 0, NULL, "x.ini:2: [train] lr = \"\": missing value (expected a number)");
    EXPECT_ERR("[train]\n\nbatch_size = 1.5\n", 1, 0, NULL, "x.ini:3: [train] batch_size = \"1.5\": not an integer");
    EXPECT_ERR("[train]\nbatch_size = 2x\n", 1, 0, NULL, "x.ini:2: [train] batch_size = \"2x\": not an integer");
    EXPECT_ERR("[train]\nbatch_size = 0\n", 1, 0, NULL, "x.ini:2: [train] batch_size = \"0\": must be in [1, 1048576]");
    EXPECT_ERR("[train]\nbatch_size = 99999999999\n", 1, 0, NULL,
               "x.ini:2: [train] batch_size = \"99999999999\": out of range");
    EXPECT_ERR("[train]\nmax_steps = 99999999999999999999\n", 1, 0, NULL, "out of range");
    EXPECT_ERR("[train]\nlr = -1\n", 1, 0, NULL, "x.ini:2: [train] lr = \"-1\": must be > 0");
    EXPECT_ERR("[train]\nlr = 1e999\n", 1, 0, NULL, "x.ini:2: [train] lr = \"1e999\": out of range");
    EXPECT_ERR("[train]\nlr = nan\n", 1, 0, NULL, "x.ini:2: [train] lr = \"nan\": not a finite number");
    EXPECT_ERR("[train]\nlr_betas = 0.9, 1.0\n", 1, 0, NULL,
               "x.ini:2: [train] lr_betas = \"0.9, 1.0\": each must be in [0, 1)");
    EXPECT_ERR("[train]\nlr_betas = 0.9\n", 1, 0, NULL, "[train] lr_betas = \"0.9\": expected two numbers");
    EXPECT_ERR("[train]\nlr_betas = 0.9, 0.99, 0.999\n", 1, 0, NULL, "expected two numbers");
    EXPECT_ERR("[model]\nrope_rotary_percentage = 1.5\n", 1, 0, NULL,
               "x.ini:2: [model] rope_rotary_percentage = \"1.5\": must be in [0, 1]");
    EXPECT_ERR("[model]\neps = 0\n", 1, 0, NULL, "x.ini:2: [model] eps = \"0\": must be in (0, 1]");
    EXPECT_ERR("[train]\nmin_lr_ratio = 1.5\n", 1, 0, NULL, "must be in [0, 1]");
    EXPECT_ERR("[train]\nema = 0\n", 1, 0, NULL, "[train] ema = \"0\": must be > 0 (or empty for off)");
    EXPECT_ERR("[train]\nseed = -1\n", 1, 0, NULL, "x.ini:2: [train] seed = \"-1\": must be >= 0");
    EXPECT_ERR("[train]\nwarmup_steps = -5\n", 1, 0, NULL, "[train] warmup_steps = \"-5\": must be >= 0");
    EXPECT_ERR("[train]\nlr_schedule = cos\n", 1, 0, NULL,
               "x.ini:2: [train] lr_schedule = \"cos\": must be one of inverse_sqrt, cosine, constant");
    EXPECT_ERR("[train]\nmixed_precision = fp16\n", 1, 0, NULL, "must be one of no, bf16");
    // [train] device: "auto" or a name of the backend registry, listed in the registry's order
    EXPECT_ERR("[train]\ndevice = tpu\n", 1, 0, NULL,
               "x.ini:2: [train] device = \"tpu\": must be one of auto, cuda, cpu");
    EXPECT_ERR("[data]\nkind = csv\n", 0, 0, NULL, "x.ini:2: [data] kind = \"csv\": must be one of npy, dummy");
    EXPECT_ERR("[train]\ngradient_checkpointing = maybe\n", 1, 0, NULL,
               "[train] gradient_checkpointing = \"maybe\": expected true or false");
    // Overrides name themselves in place of FILE:LINE.
    char *ov1[] = {"train.lr=abc"};
    EXPECT_ERR("", 1, 1, ov1, "override 2: [train] lr = \"abc\": not a number");  // 1 is data.kind=dummy
    char *ov2[] = {"model.num_heads=1.5"};
    EXPECT_ERR("[train]\nlr = 1\n", 1, 1, ov2, "override 2: [model] num_heads = \"1.5\": not an integer");
}

// [train] device is "auto" or a name of the backend registry (any case in, the registry's spelling
// kept), checked again by validation when set in code, and listed so by --help.
TEST(config_device_is_a_registry_name) {
    TrainConfig *c = malloc(sizeof *c);
    CHECK(load_text(c, "[train]\ndevice = CPU\n", 1, 0, NULL) == 0, "%s", givt_last_error());
    CHECK(!strcmp(c->train.device, "cpu"), "%s", c->train.device);
    for (int i = 0; i < backend_registry_count(); i++) {
        char ov[64], *ovp[] = {ov};
        snprintf(ov, sizeof ov, "train.device=%s", backend_registry_name(i));
        CHECK(load_text(c, "", 1, 1, ovp) == 0, "%s", givt_last_error());
        CHECK(!strcmp(c->train.device, backend_registry_name(i)), "%s", c->train.device);
    }
    snprintf(c->train.device, sizeof c->train.device, "tpu");
    CHECK(train_config_validate(c) == -1 && tu_error_has("[train] device = \"tpu\": invalid value", NULL), "%s",
          givt_last_error());
    snprintf(c->train.device, sizeof c->train.device, "CPU");  // backend_open takes the registry's spelling only
    CHECK(train_config_validate(c) == -1, "CPU set in code was accepted");
    free(c);
    FILE *fp = tmpfile();
    CHECK(fp != NULL);
    if (!fp) return;
    train_config_help(fp);
    char *text = read_stream(fp);
    fclose(fp);
    CHECK(strstr(text, "(auto | cuda | cpu)") != NULL, "%s", text);
    free(text);
}

// The INI file and config.json give the same verdict on RoPE's rotated dims, from one check
// (givt_config_check): none rotated (int(pct * head dim) = 0) is RoPE on an empty slice, which GIVT.md
// defines ("the rest pass unchanged") and the model runs; an odd count is refused by both, naming the key.
TEST(config_rope_dims_same_verdict_in_ini_and_config_json) {
    static const struct {
        int hidden_dim, num_heads;
        const char *pct;
        int ok;
    } cases[] = {
        {32, 4, "0", 1},     // head dim 8: 0 dims
        {32, 4, "0.1", 1},   // int(0.8) = 0 dims
        {32, 4, "0.25", 1},  // 2 dims
        {12, 2, "0.5", 0},   // int(3.0) = 3 dims: odd
        {12, 2, "1", 1},     // 6 dims
        {12, 2, "0.2", 0},   // int(1.2) = 1 dim: odd
    };
    char dir[256];
    tu_mkdtemp(dir, "rope");
    const char *json_path = tu_path(dir, "config.json");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char ini[256], json[256];
        snprintf(ini, sizeof ini, "[model]\nhidden_dim = %d\nnum_heads = %d\nrope_rotary_percentage = %s\n",
                 cases[i].hidden_dim, cases[i].num_heads, cases[i].pct);
        snprintf(json, sizeof json, "{\"hidden_dim\": %d, \"num_heads\": %d, \"rope_rotary_percentage\": %s}",
                 cases[i].hidden_dim, cases[i].num_heads, cases[i].pct);
        TrainConfig *c = malloc(sizeof *c);
        int rc_ini = load_text(c, ini, 1, 0, NULL);
        char *ini_err = xstrdup(givt_last_error());
        tu_put_text(json_path, json);
        GivtConfig g;
        int rc_json = hf_read_config_json(json_path, &g);
        CHECK(rc_ini == rc_json, "pct %s: INI %d (%s), config.json %d (%s)", cases[i].pct, rc_ini, ini_err, rc_json,
              givt_last_error());
        CHECK(rc_ini == (cases[i].ok ? 0 : -1), "pct %s: INI %s", cases[i].pct, rc_ini ? ini_err : "accepted");
        if (!cases[i].ok) {
            CHECK(strstr(ini_err, "x.ini:4, x.ini:2, x.ini:3: [model] rope_rotary_percentage = ") &&
                      strstr(ini_err, "RoPE needs an even number"),
                  "%s", ini_err);
            CHECK(tu_error_has(json_path, ": rope_rotary_percentage = ") && tu_error_has("RoPE needs an even number", NULL),
                  "%s", givt_last_error());
        }
        if (cases[i].ok && rc_ini == 0 && rc_json == 0) {
            CHECK(memcmp(&c->model, &g, sizeof g) == 0, "pct %s: INI and config.json read differently", cases[i].pct);
            // the model builds and runs with this configuration (no rotated dims: an empty RoPE cache)
            g.block_size = 4;
            GivtModel m;
            Backend *be = backend_open("cpu", PRECISION_NO);
            CHECK(model_create(&m, &g, be) == 0, "%s", givt_last_error());
            Rng rng;
            rng_seed(&rng, 3);
            model_init_params(&m, &rng);
            model_alloc_acts(&m, 1, 4, 0, 0);
            float x[4 * 16];
            for (int k = 0; k < 4 * 16; k++) x[k] = (float)rng_normal(&rng);
            float *xd = be->ops->alloc(be, sizeof x);
            be->ops->upload(be, xd, x, sizeof x);
            CHECK(isfinite(model_eval_loss(&m, &m.w, xd, 1, 4, 0).loss));
            be->ops->free(be, xd);
            model_free(&m);
            backend_close(be);
        }
        free(ini_err);
        free(c);
    }
    tu_rmtree(dir);
}

TEST(config_unknown_keys_and_sections_suggest) {
    EXPECT_ERR("[train]\nbatch_size = 4\nlearning_rate = 3e-4\n", 1, 0, NULL,
               "x.ini:3: [train] learning_rate: unknown key (did you mean \"lr\"?)");
    EXPECT_ERR("[train]\nbatchsize = 4\n", 1, 0, NULL, "x.ini:2: [train] batchsize: unknown key (did you mean \"batch_size\"?)");
    EXPECT_ERR("[train]\nwarmup = 4\n", 1, 0, NULL, "(did you mean \"warmup_steps\"?)");
    EXPECT_ERR("[train]\nseq_len = 4\n", 1, 0, NULL, "x.ini:2: [train] seq_len: unknown key (did you mean [data] seq_len?)");
    EXPECT_ERR("[modle]\nhidden_dim = 4\n", 1, 0, NULL, "x.ini:1: [modle]: unknown section (did you mean \"model\"?)");
    EXPECT_ERR("[optim]\nlr = 4\n", 1, 0, NULL, "x.ini:1: [optim]: unknown section (did you mean \"train\"?)");
    EXPECT_ERR("[trian]\n", 1, 0, NULL, "x.ini:1: [trian]: unknown section (did you mean \"train\"?)");
    char *ov[] = {"trian.lr=3"};
    EXPECT_ERR("", 1, 1, ov, "override 2: [trian] lr: unknown section (did you mean [train] lr?)");
    char *ov2[] = {"train.hidden_dim=3"};
    EXPECT_ERR("", 1, 1, ov2, "override 2: [train] hidden_dim: unknown key (did you mean [model] hidden_dim?)");
    char *ov3[] = {"train.lr"};
    EXPECT_ERR("", 1, 1, ov3, "override 2: \"train.lr\": expected section.key=value");
}

TEST(config_rejects_inconsistent_values) {
    EXPECT_ERR("[model]\nhidden_dim = 30\nnum_heads = 4\n", 1, 0, NULL,
               "x.ini:2, x.ini:3: [model] hidden_dim = 30 must be a multiple of [model] num_heads = 4");
    char *heads[] = {"model.num_heads=5"};
    EXPECT_ERR("", 1, 1, heads, "override 2: [model] hidden_dim = 32 must be a multiple of [model] num_heads = 5");
    EXPECT_ERR("[model]\nblock_size = 64\n[data]\nseq_len = 65\n", 1, 0, NULL,
               "x.ini:4, x.ini:2: [data] seq_len = 65 must be <= [model] block_size = 64");
    // head dim 6, 50% -> 3 rotated dims: odd
    EXPECT_ERR("[model]\nhidden_dim = 12\nnum_heads = 2\nrope_rotary_percentage = 0.5\n", 1, 0, NULL,
               "[model] rope_rotary_percentage = 0.5 rotates int(0.5 * head dim 6) = 3 dims");
    EXPECT_ERR("[train]\nval_size = 100\n[data]\ndummy_size = 100\n", 1, 0, NULL,
               "x.ini:2, x.ini:4: [train] val_size = 100 held out of [data] dummy_size = 100 sequences");
    {  // val_size = 0 turns validation off, whatever val_every says (all data trains)
        TrainConfig *c_ = malloc(sizeof *c_);
        CHECK(load_text(c_, "[train]\nval_size = 0\n", 1, 0, NULL) == 0, "%s", givt_last_error());
        free(c_);
    }
    {  // a cosine warmup as long as the run loads: the trainer cuts it, with a note (test_cli's smoke test)
        TrainConfig *c_ = malloc(sizeof *c_);
        CHECK(load_text(c_, "[train]\nlr_schedule = cosine\nwarmup_steps = 10\nmax_steps = 10\n", 1, 0, NULL) == 0,
              "%s", givt_last_error());
        free(c_);
    }
    EXPECT_ERR("[train]\nout_dir = \"\"\n", 1, 0, NULL, "x.ini:2: [train] out_dir must not be empty");
    EXPECT_ERR("[train]\nresume_from_ckpt = /tmp\ninit_from = /tmp\n", 1, 0, NULL, "set at most one");
    {  // "latest" with init_from is allowed: init_from serves the fresh start when no checkpoint exists yet
        TrainConfig *c_ = malloc(sizeof *c_);
        CHECK(load_text(c_, "[train]\nresume_from_ckpt = latest\ninit_from = /tmp\n", 1, 0, NULL) == 0, "%s",
              givt_last_error());
        free(c_);
    }
    EXPECT_ERR("[train]\ninit_from = /nonexistent/hf\n", 1, 0, NULL,
               "x.ini:2: [train] init_from = \"/nonexistent/hf\": no such folder");
    EXPECT_ERR("[train]\nresume_from_ckpt = /nonexistent/ck\n", 1, 0, NULL, "no such checkpoint folder");
    // A struct filled in code is checked the same way, without locations.
    TrainConfig *c = malloc(sizeof *c);
    train_config_default(c);
    c->data.kind = DATA_KIND_DUMMY;
    c->train.lr = -1;
    CHECK(train_config_validate(c) == -1 && !strcmp(givt_last_error(), "[train] lr = \"-1\": must be > 0"),
          "%s", givt_last_error());
    c->train.lr = 1e-3;
    c->train.lr_schedule = 7;
    CHECK(train_config_validate(c) == -1 && strstr(givt_last_error(), "[train] lr_schedule"), "%s",
          givt_last_error());
    free(c);
}

TEST(config_data_paths) {
    char dir[256], text[2048];
    tu_mkdtemp(dir, "cfg");
    const char *a = tu_path(dir, "a.npy"), *b = tu_path(dir, "b.npy");
    tu_put_text(a, "");
    tu_put_text(b, "");
    TrainConfig *c = malloc(sizeof *c);

    EXPECT_ERR("[data]\nkind = npy\n", 0, 0, NULL, "x.ini:2: [data] path is required when [data] kind = npy");
    EXPECT_ERR("", 0, 0, NULL, "[data] path is required when [data] kind = npy");
    snprintf(text, sizeof text, "[data]\npath = %s/missing.npy\n", dir);
    EXPECT_ERR(text, 0, 0, NULL, "x.ini:2: [data] path = \"");
    EXPECT_ERR(text, 0, 0, NULL, "/missing.npy\": no such file");
    snprintf(text, sizeof text, "[data]\npath = %s/*.bin\n", dir);
    EXPECT_ERR(text, 0, 0, NULL, "*.bin: no files match this pattern");
    snprintf(text, sizeof text, "[data]\npath = %s, %s/nope.npy\n", a, dir);
    EXPECT_ERR(text, 0, 0, NULL, "/nope.npy\"");  // the missing item of a list is named

    snprintf(text, sizeof text, "[data]\npath = %s\n", a);
    CHECK(load_text(c, text, 0, 0, NULL) == 0, "%s", givt_last_error());
    snprintf(text, sizeof text, "[data]\npath = \"%s, %s\"\n", a, b);
    CHECK(load_text(c, text, 0, 0, NULL) == 0, "%s", givt_last_error());
    snprintf(text, sizeof text, "[data]\npath = %s/*.npy\n", dir);
    CHECK(load_text(c, text, 0, 0, NULL) == 0, "%s", givt_last_error());
    // dummy data ignores the path
    CHECK(load_text(c, "[data]\nkind = dummy\npath = /nonexistent.npy\n", 0, 0, NULL) == 0, "%s",
          givt_last_error());
    free(c);
    tu_rmtree(dir);
}

TEST(config_help_lists_every_key) {
    FILE *fp = tmpfile();
    CHECK(fp != NULL);
    if (!fp) return;
    train_config_help(fp);
    char *text = read_stream(fp);
    fclose(fp);
    int n;
    const ConfigKey *keys = train_config_keys(&n);
    CHECK(strstr(text, "\n[model]\n") && strstr(text, "\n[train]\n") && strstr(text, "\n[data]\n"));
    for (int i = 0; i < n; i++) {
        char want[128];
        snprintf(want, sizeof want, "\n  %s ", keys[i].key);
        CHECK(strstr(text, want) != NULL, "help lacks %s", keys[i].key);
        CHECK(strstr(text, keys[i].help) != NULL, "help lacks the description of %s", keys[i].key);
    }
    CHECK(strstr(text, "inverse_sqrt | cosine | constant") != NULL);
    CHECK(strstr(text, "0.9, 0.99") != NULL && strstr(text, "runs/default") != NULL);
    free(text);
}

static void check_same(const TrainConfig *a, const TrainConfig *b) {
    int n;
    const ConfigKey *keys = train_config_keys(&n);
    char va[TRAIN_CONFIG_STR_MAX], vb[TRAIN_CONFIG_STR_MAX];
    for (int i = 0; i < n; i++) {
        train_config_format(a, &keys[i], va, sizeof va);
        train_config_format(b, &keys[i], vb, sizeof vb);
        CHECK(!strcmp(va, vb), "[%s] %s: %s vs %s", keys[i].section, keys[i].key, va, vb);
    }
    // Both structs were zeroed and then set key by key, so their bytes match too (doubles exactly).
    CHECK(memcmp(a, b, sizeof *a) == 0);
}

TEST(config_write_back_round_trip) {
    const char *text =
        "[model]\n"
        "hidden_dim = 48\nnum_heads = 4\nintermediate_dim = 130\nnum_layers = 3\nblock_size = 33\n"
        "eps = 1.2345678901234567e-7\nrope_base = 12345.678\nrope_rotary_percentage = 0.8333333333333334\n"
        "rope_condense_ratio = 0.3\ninput_dim = 7\n"
        "[train]\n"
        "batch_size = 5\nlr = 0.1\nweight_decay = 0.30000000000000004\nlr_eps = 3e-9\n"
        "lr_betas = 0.1, 0.7\ngrad_norm = 0\nwarmup_steps = 7\ntimescale = 123\nlr_schedule = constant\n"
        "min_lr_ratio = 0.25\nmax_steps = 9000000000\ngrad_accum_steps = 3\nema = 0.6666666666666666\n"
        "mixed_precision = bf16\ngradient_checkpointing = on\nlog_every = 3\nval_every = 0\nval_size = 0\n"
        "save_every = 0\nkeep_checkpoints = 0\nseed = 18446744073709551615\n"
        "out_dir = \"a \\\"quoted\\\" dir # ; \\\\ x \"\nresume_from_ckpt = latest\ndevice = cuda\n"
        "[data]\nkind = dummy\npath = \"some path\"\nseq_len = 33\ndummy_size = 123456789012\n";
    TrainConfig *a = malloc(sizeof *a), *b = malloc(sizeof *b);
    CHECK(load_text(a, text, 0, 0, NULL) == 0, "%s", givt_last_error());
    CHECK(!strcmp(a->train.out_dir, "a \"quoted\" dir # ; \\ x "), "%s", a->train.out_dir);
    FILE *fp = tmpfile();
    CHECK(fp && train_config_write_ini(fp, a) == 0);
    if (!fp) return;
    char *written = read_stream(fp);
    fclose(fp);
    CHECK(train_config_load_string(b, written, "written.ini", 0, NULL) == 0, "%s\n%s", givt_last_error(), written);
    check_same(a, b);
    free(written);

    // The defaults (empty ema and strings) too, through a file written atomically.
    train_config_default(a);
    a->data.kind = DATA_KIND_DUMMY;
    char path[] = "/tmp/givt_cfg_rt_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    if (fd >= 0) close(fd);
    CHECK(train_config_save(a, path) == 0, "%s", givt_last_error());
    CHECK(train_config_load(b, path, 0, NULL) == 0, "%s", givt_last_error());
    check_same(a, b);
    unlink(path);
    free(a);
    free(b);
}
