// fuzz_overrides: givt-train's "section.key=value" overrides on their own (ini_add_override, then
// train_config_set and the validation, through train_config_load_string), over a fixed valid INI
// text (configs/tiny.ini's). fuzz_ini mixes INI text and overrides; here every byte is an override.
//
// Input: up to 8 overrides separated by NUL bytes: "train.lr=3e-4\0model.num_layers=2\0data.kind=npy"
// Properties checked beyond "no crash, no sanitizer report, no exit":
//   - on success, every key some override named has the value of its last override (as
//     train_config_set reads that value), and every other key keeps the INI text's value;
//   - on success, the resolved configuration validates and train_config_write_ini's text loads back
//     to the same values;
//   - on failure, the message is one line and its location (before the first ": ") names an
//     override ("override N", 1 <= N <= count): the INI text is valid, so an override is the cause.
#define FUZZ_WITH_TRAIN_CONFIG  // fuzz_check_config_round_trip
#include "fuzz_util.h"

#include "ini.h"
#include "train_config.h"
#include "util.h"

#define MAX_OVERRIDES 8

// configs/tiny.ini
static const char k_tiny_ini[] =
    "[model]\n"
    "input_dim = 4\n"
    "hidden_dim = 12\n"
    "intermediate_dim = 32\n"
    "num_heads = 2               # head dim 6: RoPE rotates all 6 dims\n"
    "num_layers = 1\n"
    "block_size = 8\n"
    "\n"
    "[train]\n"
    "batch_size = 4\n"
    "lr = 1e-3\n"
    "warmup_steps = 5\n"
    "max_steps = 20\n"
    "log_every = 5\n"
    "val_every = 10\n"
    "val_size = 8\n"
    "save_every = 10\n"
    "keep_checkpoints = 2\n"
    "seed = 1\n"
    "out_dir = \"runs/tiny\"       # overridden by the tests\n"
    "device = cpu\n"
    "\n"
    "[data]\n"
    "kind = dummy\n"
    "seq_len = 8\n"
    "dummy_size = 64\n";

static char g_a[TRAIN_CONFIG_STR_MAX + 64], g_b[TRAIN_CONFIG_STR_MAX + 64];

// The configuration of the INI text alone (loaded once).
static const TrainConfig *base_config(void) {
    static TrainConfig *base;
    if (!base) {
        base = malloc(sizeof *base);
        FUZZ_CHECK(train_config_load_string(base, k_tiny_ini, "tiny.ini", 0, NULL) == 0, "tiny.ini: %s",
                   givt_last_error());
    }
    return base;
}

// Each key has its last override's value, or the INI text's when no override names it.
static void check_overrides_applied(const TrainConfig *c, char **overrides, int n) {
    IniFile ini;
    ini_init(&ini);
    for (int i = 0; i < n; i++)
        FUZZ_CHECK(ini_add_override(&ini, overrides[i], i + 1) == 0,
                   "override %d \"%s\" was accepted by the load but not on its own: %s", i + 1, overrides[i],
                   givt_last_error());
    int nkeys;
    const ConfigKey *keys = train_config_keys(&nkeys);
    for (int e = 0; e < ini.count; e++) {  // every override names a key of the table
        int found = 0;
        for (int k = 0; k < nkeys && !found; k++)
            found = !strcmp(keys[k].section, ini.entries[e].section) && !strcmp(keys[k].key, ini.entries[e].key);
        FUZZ_CHECK(found, "override %d names [%s] %s, no key of the table", e + 1, ini.entries[e].section,
                   ini.entries[e].key);
    }
    const TrainConfig *base = base_config();
    TrainConfig *one = malloc(sizeof *one);
    for (int k = 0; k < nkeys; k++) {
        const IniEntry *e = ini_find(&ini, keys[k].section, keys[k].key);
        train_config_format(c, &keys[k], g_a, sizeof g_a);
        if (!e) {
            train_config_format(base, &keys[k], g_b, sizeof g_b);
            FUZZ_CHECK(strcmp(g_a, g_b) == 0, "[%s] %s = \"%s\", but no override names it and tiny.ini gives \"%s\"",
                       keys[k].section, keys[k].key, g_a, g_b);
            continue;
        }
        *one = *base;
        FUZZ_CHECK(train_config_set(one, e->section, e->key, e->value, e->where) == 0,
                   "%s: \"%s\" was accepted by the load but not on its own: %s", e->where, e->value,
                   givt_last_error());
        train_config_format(one, &keys[k], g_b, sizeof g_b);
        FUZZ_CHECK(strcmp(g_a, g_b) == 0, "[%s] %s = \"%s\" after the load, but its last override (%s) \"%s\" gives \"%s\"",
                   keys[k].section, keys[k].key, g_a, e->where, e->value, g_b);
    }
    free(one);
    ini_free(&ini);
}

// One line that starts with where the fault is ("override 3: ..." or "tiny.ini:5, override 2: ..."),
// naming one of the n overrides there (the text after it may quote a value that says anything).
static void check_failure(int n) {
    const char *msg = givt_last_error();
    FUZZ_CHECK(strchr(msg, '\n') == NULL, "the message is not one line: \"%s\"", msg);
    const char *colon = strstr(msg, ": ");
    size_t len = colon ? (size_t)(colon - msg) : strlen(msg);
    char *where = malloc(len + 1);
    memcpy(where, msg, len);
    where[len] = '\0';
    int named = 0;
    for (const char *p = where; (p = strstr(p, "override ")) != NULL;) {
        p += strlen("override ");
        char *end;
        long k = strtol(p, &end, 10);
        if (end == p) continue;
        FUZZ_CHECK(k >= 1 && k <= n, "the message names override %ld of %d: \"%s\"", k, n, msg);
        named = 1;
    }
    FUZZ_CHECK(named, "the message does not start with an override (%d given): \"%s\"", n, msg);
    free(where);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *overrides[MAX_OVERRIDES];
    int n;
    char *buf = fuzz_split_at_nul(data, size, overrides, MAX_OVERRIDES, &n);
    TrainConfig *c = malloc(sizeof *c);
    if (train_config_load_string(c, k_tiny_ini, "tiny.ini", n, overrides) == 0) {
        FUZZ_CHECK(train_config_validate(c) == 0, "loaded but does not validate: %s", givt_last_error());
        FUZZ_MAGNITUDE(c->model.num_layers);
        FUZZ_MAGNITUDE(c->model.hidden_dim);
        FUZZ_MAGNITUDE(c->train.batch_size);
        FUZZ_MAGNITUDE(c->data.seq_len);
        check_overrides_applied(c, overrides, n);
        fuzz_check_config_round_trip(c);
    } else {
        check_failure(n);
    }
    free(c);
    free(buf);
    return 0;
}
