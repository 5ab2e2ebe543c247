// fuzz_json: the JSON parser (json_parse, the typed getters, the writer) and the config.json reader
// of a Hugging Face folder (hf_read_config, which reads <folder>/config.json).
//
// Input: JSON text. Properties checked beyond "no crash, no sanitizer report, no exit":
//   - every member of a parsed object is found by json_get under its key, every element by json_at;
//   - a parsed value written back with the JsonBuf writer parses to the same value;
//   - a config.json that hf_read_config accepts, written by hf_write_config_json, reads back the same.
#include "fuzz_util.h"

#include "hf.h"
#include "json.h"
#include "model.h"
#include "util.h"

static void check_getters(const JsonValue *v, int depth) {
    FUZZ_CHECK(depth <= JSON_MAX_DEPTH + 1, "depth %d", depth);
    int64_t i64;
    int i;
    double d;
    const char *s;
    FUZZ_CHECK((json_as_double(v, &d, "v") == 0) == (v->type == JSON_NUMBER), "json_as_double");
    if (json_as_int64(v, &i64, "v") == 0) FUZZ_CHECK(v->is_int && i64 == v->integer, "json_as_int64");
    if (json_as_int(v, &i, "v") == 0) FUZZ_CHECK(v->is_int && i == v->integer, "json_as_int");
    if (json_as_string(v, &s, "v") == 0) FUZZ_CHECK(s == v->str && strlen(s) <= v->str_len, "json_as_string");
    (void)json_as_bool(v, &i, "v");
    (void)json_type_name(v->type);
    if (v->type == JSON_OBJECT) {
        for (int k = 0; k < v->count; k++) {
            FUZZ_CHECK(json_get(v, v->keys[k]) == &v->items[k], "key %d \"%s\" not found", k, v->keys[k]);
            check_getters(&v->items[k], depth + 1);
        }
    } else if (v->type == JSON_ARRAY) {
        for (int k = 0; k < v->count; k++) {
            FUZZ_CHECK(json_at(v, k) == &v->items[k], "element %d", k);
            check_getters(&v->items[k], depth + 1);
        }
        FUZZ_CHECK(json_at(v, v->count) == NULL && json_at(v, -1) == NULL, "json_at out of range");
    } else {
        FUZZ_CHECK(v->count == 0, "a scalar with %d children", v->count);
    }
}

// Writes v as JSON text; 0, or -1 when it holds a string with \u0000 (json_buf_string takes C strings).
static int write_value(JsonBuf *b, const JsonValue *v) {
    switch (v->type) {
    case JSON_NULL: json_buf_puts(b, "null"); return 0;
    case JSON_BOOL: json_buf_puts(b, v->boolean ? "true" : "false"); return 0;
    case JSON_NUMBER:
        if (v->is_int) {
            json_buf_printf(b, "%lld", (long long)v->integer);
            return 0;
        }
        FUZZ_CHECK(json_buf_double(b, v->number) == 0, "json_buf_double(%.17g): %s", v->number, givt_last_error());
        return 0;
    case JSON_STRING:
        if (strlen(v->str) != v->str_len) return -1;
        json_buf_string(b, v->str);
        return 0;
    case JSON_ARRAY:
    case JSON_OBJECT:
        json_buf_puts(b, v->type == JSON_ARRAY ? "[" : "{");
        for (int k = 0; k < v->count; k++) {
            if (k) json_buf_puts(b, ",");
            if (v->type == JSON_OBJECT) {
                json_buf_string(b, v->keys[k]);
                json_buf_puts(b, ":");
            }
            if (write_value(b, &v->items[k])) return -1;
        }
        json_buf_puts(b, v->type == JSON_ARRAY ? "]" : "}");
        return 0;
    }
    return -1;
}

static void check_same(const JsonValue *a, const JsonValue *b) {
    FUZZ_CHECK(a->type == b->type, "type %s became %s", json_type_name(a->type), json_type_name(b->type));
    FUZZ_CHECK(a->count == b->count, "count %d became %d", a->count, b->count);
    switch (a->type) {
    case JSON_BOOL: FUZZ_CHECK(a->boolean == b->boolean, "boolean"); break;
    case JSON_NUMBER:
        FUZZ_CHECK(a->number == b->number, "number %.17g became %.17g", a->number, b->number);
        FUZZ_CHECK(a->is_int == b->is_int && (!a->is_int || a->integer == b->integer), "integer %lld became %lld",
                   (long long)a->integer, (long long)b->integer);
        break;
    case JSON_STRING:
        FUZZ_CHECK(a->str_len == b->str_len && memcmp(a->str, b->str, a->str_len) == 0, "string \"%s\" became \"%s\"",
                   a->str, b->str);
        break;
    case JSON_OBJECT:
    case JSON_ARRAY:
        for (int k = 0; k < a->count; k++) {
            if (a->type == JSON_OBJECT) FUZZ_CHECK(strcmp(a->keys[k], b->keys[k]) == 0, "key %d", k);
            check_same(&a->items[k], &b->items[k]);
        }
        break;
    case JSON_NULL: break;
    }
}

static void check_json(const uint8_t *data, size_t size) {
    JsonValue *v = json_parse((const char *)data, size, "fuzz.json");
    if (!v) {
        FUZZ_CHECK(strstr(givt_last_error(), "fuzz.json") != NULL, "message does not name the input: %s",
                   givt_last_error());
        return;
    }
    check_getters(v, 0);
    JsonBuf b;
    json_buf_init(&b);
    if (write_value(&b, v) == 0) {
        JsonValue *w = json_parse(b.data, b.len, "written.json");
        FUZZ_CHECK(w != NULL, "written text does not parse: %s\n--- written:\n%s\n---", givt_last_error(), b.data);
        check_same(v, w);
        json_free(w);
    }
    json_buf_free(&b);
    json_free(v);
}

static void check_hf_config(const uint8_t *data, size_t size) {
    fuzz_write_file(fuzz_path("config.json"), data, size);
    GivtConfig cfg, back;
    if (hf_read_config(fuzz_dir(), &cfg) != 0) return;
    FUZZ_CHECK(givt_config_validate(&cfg) == 0, "read but does not validate: %s", givt_last_error());
    const char *out = fuzz_path("written.json");
    FUZZ_CHECK(hf_write_config_json(out, &cfg) == 0, "hf_write_config_json: %s", givt_last_error());
    FUZZ_CHECK(hf_read_config_json(out, &back) == 0, "the written config.json does not read back: %s",
               givt_last_error());
    char va[64], vb[64];
    const char *key = givt_config_diff(&cfg, &back, va, vb, sizeof va);
    FUZZ_CHECK(key == NULL, "config.json key \"%s\" = %s reads back as %s", key, va, vb);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    check_json(data, size);
    check_hf_config(data, size);
    return 0;
}
