// Tests of json (strict parsing, limits, typed getters, writing) and safetensors (round trip, F16/BF16,
// and every malformed file: each must fail with a one-line message naming the file and tensor).
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fs.h"
#include "harness.h"
#include "json.h"
#include "rng.h"
#include "safetensors.h"
#include "testutil.h"
#include "util.h"

// ---- helpers ------------------------------------------------------------------------------
// A safetensors file from a header text and data_len bytes of data (byte i = i & 0xff).
static void write_raw(const char *path, const char *header, uint64_t header_len, size_t data_len) {
    size_t hl = strlen(header);
    unsigned char *buf = xcalloc(8 + hl + data_len, 1);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(header_len >> (8 * i));
    memcpy(buf + 8, header, hl);
    for (size_t i = 0; i < data_len; i++) buf[8 + hl + i] = (unsigned char)i;
    tu_put_bytes(path, buf, 8 + hl + data_len);
    free(buf);
}

// ---- json ---------------------------------------------------------------------------------
TEST(json_parses_all_types) {
    const char *t = "{\"a\": [1, -2, 3.5, 1e3, 9223372036854775807, 9223372036854775808, -0],\n"
                    " \"s\": \"q\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00\\u0000x\", \"t\": true,"
                    " \"f\": false, \"n\": null, \"o\": {}, \"e\": []}";
    JsonValue *v = json_parse(t, strlen(t), "t.json");
    CHECK(v != NULL, "%s", givt_last_error());
    if (!v) return;
    const JsonValue *a = json_get(v, "a");
    CHECK(a && a->type == JSON_ARRAY && a->count == 7);
    CHECK(json_at(a, 0)->is_int && json_at(a, 0)->integer == 1);
    CHECK(json_at(a, 1)->is_int && json_at(a, 1)->integer == -2);
    CHECK(!json_at(a, 2)->is_int && json_at(a, 2)->number == 3.5);
    CHECK(!json_at(a, 3)->is_int && json_at(a, 3)->number == 1000.0);
    CHECK(json_at(a, 4)->is_int && json_at(a, 4)->integer == INT64_MAX);
    CHECK(!json_at(a, 5)->is_int);
    CHECK(json_at(a, 6)->is_int && json_at(a, 6)->integer == 0);
    CHECK(json_at(a, 7) == NULL && json_at(a, -1) == NULL);
    const JsonValue *s = json_get(v, "s");
    const char want[] = "q\"\\/\b\f\n\r\t\xc3\xa9\xf0\x9f\x98\x80\0x";
    CHECK(s && s->str_len == sizeof want - 1 && memcmp(s->str, want, sizeof want - 1) == 0);
    CHECK(json_get(v, "t")->boolean == 1 && json_get(v, "f")->type == JSON_BOOL && !json_get(v, "f")->boolean);
    CHECK(json_get(v, "n")->type == JSON_NULL);
    CHECK(json_get(v, "o")->type == JSON_OBJECT && json_get(v, "o")->count == 0);
    CHECK(json_get(v, "missing") == NULL);
    CHECK(json_at(a, 2)->line == 1 && json_get(v, "s")->line == 2);
    json_free(v);
}

TEST(json_rejects_bad_text) {
    static const char *bad[] = {
        "", " ", "{", "[1,]", "{\"a\":1,}", "01", "1.", ".5", "-", "+1", "1e", "\"\\x\"", "\"\x01\"",
        "\"\\ud800\"", "\"\\udc00\"", "\"\\ud800\\u0041\"", "\"\\u12g4\"", "nul", "tru", "[1] x", "{\"a\" 1}",
        "{1:2}", "{\"a\":1,\"a\":2}", "1e999", "\"\xff\"", "\"\xc0\xaf\"", "\"\xed\xa0\x80\"", "NaN",
        "Infinity", "\xef\xbb\xbf{}", "[1 2]", "{\"a\":1 \"b\":2}", "\"abc", "'a'", "{\"\\u0000\":1}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        JsonValue *v = json_parse(bad[i], strlen(bad[i]), "bad.json");
        CHECK(v == NULL, "accepted case %zu: %s", i, bad[i]);
        json_free(v);
        CHECK(tu_error_has("bad.json: invalid JSON at line 1, column", NULL), "%s", givt_last_error());
    }
}

TEST(json_depth_limit) {
    char deep[400];
    memset(deep, '[', 200);
    memset(deep + 200, ']', 200);
    CHECK(json_parse(deep, 400, "deep.json") == NULL);
    CHECK(strstr(givt_last_error(), "nesting deeper than") != NULL, "%s", givt_last_error());
    int n = JSON_MAX_DEPTH;  // exactly at the limit parses
    memset(deep, '[', (size_t)n);
    memset(deep + n, ']', (size_t)n);
    JsonValue *v = json_parse(deep, (size_t)(2 * n), "ok.json");
    CHECK(v != NULL, "%s", givt_last_error());
    json_free(v);
}

TEST(json_typed_getters) {
    const char *t = "{\"i\": 3, \"d\": 3.5, \"s\": \"abc\", \"b\": true, \"big\": 10000000000}";
    JsonValue *v = json_parse(t, strlen(t), "g.json");
    if (!v) {
        CHECK(0, "%s", givt_last_error());
        return;
    }
    int i = 0, b = 0;
    int64_t i64 = 0;
    double d = 0;
    const char *s = NULL;
    CHECK(json_as_int(json_get(v, "i"), &i, "i") == 0 && i == 3);
    CHECK(json_as_double(json_get(v, "i"), &d, "i") == 0 && d == 3.0);
    CHECK(json_as_double(json_get(v, "d"), &d, "d") == 0 && d == 3.5);
    CHECK(json_as_string(json_get(v, "s"), &s, "s") == 0 && strcmp(s, "abc") == 0);
    CHECK(json_as_bool(json_get(v, "b"), &b, "b") == 0 && b == 1);
    CHECK(json_as_int64(json_get(v, "big"), &i64, "big") == 0 && i64 == 10000000000LL);
    CHECK(json_as_int(json_get(v, "big"), &i, "cfg: big") == -1 && strstr(givt_last_error(), "cfg: big"));
    CHECK(json_as_int(json_get(v, "d"), &i, "cfg: d") == -1 && strstr(givt_last_error(), "the number 3.5"));
    CHECK(json_as_int(json_get(v, "s"), &i, "cfg: s") == -1 && strstr(givt_last_error(), "a string \"abc\""));
    CHECK(json_as_double(json_get(v, "b"), &d, "cfg: b") == -1 && strstr(givt_last_error(), "cfg: b: expected a number"));
    CHECK(json_as_string(json_get(v, "nope"), &s, "cfg: nope") == -1 && strstr(givt_last_error(), "missing"));
    CHECK(json_expect(v, JSON_ARRAY, "root") == -1 && strstr(givt_last_error(), "root: expected an array"));
    json_free(v);
}

TEST(json_writer) {
    static const struct {
        double x;
        const char *want;
    } cases[] = {{4.0, "4.0"}, {1e-8, "1e-08"}, {1000000.0, "1000000.0"}, {0.1, "0.1"}, {0.0, "0.0"},
                 {-2.5, "-2.5"}, {1e16, "1e+16"}, {1.5e-5, "1.5e-05"}, {0.0001, "0.0001"}, {123.456, "123.456"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        JsonBuf b;
        json_buf_init(&b);
        CHECK(json_buf_double(&b, cases[i].x) == 0);
        CHECK(strcmp(b.data, cases[i].want) == 0, "%g -> %s, want %s", cases[i].x, b.data, cases[i].want);
        json_buf_free(&b);
    }
    JsonBuf b;
    json_buf_init(&b);
    CHECK(json_buf_double(&b, 1.0 / 3.0) == 0 && strtod(b.data, NULL) == 1.0 / 3.0);
    CHECK(json_buf_double(&b, NAN) == -1);
    json_buf_free(&b);
    json_buf_init(&b);
    json_buf_string(&b, "a\"b\\c\n\x01\xc3\xa9");
    CHECK(strcmp(b.data, "\"a\\\"b\\\\c\\n\\u0001\xc3\xa9\"") == 0, "%s", b.data);
    JsonValue *v = json_parse(b.data, b.len, "w");
    CHECK(v && strcmp(v->str, "a\"b\\c\n\x01\xc3\xa9") == 0);
    json_free(v);
    json_buf_free(&b);
}

// The writer never emits invalid UTF-8: such a string is rejected, named, and nothing is appended.
TEST(json_writer_rejects_invalid_utf8) {
    static const struct {
        const char *s, *want;
    } bad[] = {
        {"\xff", "string \"\\xff\" is not valid UTF-8 (byte 0xff at offset 0)"},
        {"ab\x80", "string \"ab\\x80\" is not valid UTF-8 (byte 0x80 at offset 2)"},    // stray continuation
        {"a\xc3", "(byte 0xc3 at offset 1)"},                                           // cut 2-byte sequence
        {"x\xe2\x82", "(byte 0xe2 at offset 1)"},                                       // cut 3-byte sequence
        {"\xe2\x82y", "(byte 0xe2 at offset 0)"},                                       // ASCII inside a sequence
        {"\xc0\xaf", "(byte 0xc0 at offset 0)"},                                        // overlong '/'
        {"\xe0\x80\xaf", "(byte 0xe0 at offset 0)"},                                    // overlong, 3 bytes
        {"\xed\xa0\x80", "(byte 0xed at offset 0)"},                                    // surrogate U+D800
        {"\xf4\x90\x80\x80", "(byte 0xf4 at offset 0)"},                                // past U+10FFFF
        {"caf\xc3\xa9 \"q\" \xe9t\xe9", "string \"caf\\xc3\\xa9 \\x22q\\x22 \\xe9t\\xe9\" is not valid UTF-8 (byte 0xe9 at offset 10)"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        JsonBuf b;
        json_buf_init(&b);
        json_buf_puts(&b, "[");
        CHECK(json_buf_string(&b, bad[i].s) == -1, "case %zu accepted: %s", i, b.data);
        CHECK(b.len == 1 && !strcmp(b.data, "["), "case %zu: appended \"%s\"", i, b.data);
        CHECK(tu_error_has(bad[i].want, NULL), "case %zu: got \"%s\", want \"%s\"", i, givt_last_error(), bad[i].want);
        json_buf_free(&b);
    }
    // the shown part of a long string is bounded; the offset still points at the bad byte
    char long_s[300];
    memset(long_s, 'a', sizeof long_s);
    long_s[250] = (char)0xfe;
    long_s[299] = '\0';
    JsonBuf b;
    json_buf_init(&b);
    CHECK(json_buf_string(&b, long_s) == -1 && tu_error_has("aaa...\" is not valid UTF-8 (byte 0xfe at offset 250)", NULL) &&
              strlen(givt_last_error()) < 200,
          "%s", givt_last_error());
    json_buf_free(&b);
    // valid sequences of every length, up to U+10FFFF, pass through unchanged
    const char *good = "/\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\xf4\x8f\xbf\xbf\xef\xbf\xbd";
    json_buf_init(&b);
    CHECK(json_buf_string(&b, good) == 0, "%s", givt_last_error());
    JsonValue *v = json_parse(b.data, b.len, "w");
    CHECK(v && v->type == JSON_STRING && !strcmp(v->str, good), "%s", b.data);
    json_free(v);
    json_buf_free(&b);
    // through the safetensors writer: a tensor name or a metadata value that is not UTF-8
    char dir[256];
    tu_mkdtemp(dir, "st");
    const char *path = tu_path(dir, "u.safetensors");
    float a[2] = {0};
    StWriteTensor ts[] = {{"w\xff", 1, {2}, a}};
    CHECK(st_write(path, ts, 1, NULL, 0) == -1 &&
              tu_error_has(path, ": tensor name: string \"w\\xff\" is not valid UTF-8 (byte 0xff at offset 1)"),
          "%s", givt_last_error());
    StWriteTensor ok[] = {{"w", 1, {2}, a}};
    StMeta m[] = {{"note", "\xc0\x80"}};
    CHECK(st_write(path, ok, 1, m, 1) == -1 && tu_error_has(path, ": __metadata__ \"note\": string \"\\xc0\\x80\""),
          "%s", givt_last_error());
    CHECK(!fs_path_exists(path), "a rejected write left a file");
    tu_rmtree(dir);
}

// ---- safetensors: round trip --------------------------------------------------------------
TEST(st_round_trip_bit_exact) {
    char dir[256];
    tu_mkdtemp(dir, "st");
    const char *path = tu_path(dir, "x.safetensors");
    Rng rng;
    rng_seed(&rng, 7);
    float a[6 * 5], b[7], c[1];
    for (int i = 0; i < 30; i++) a[i] = (float)rng_normal(&rng);
    for (int i = 0; i < 7; i++) b[i] = (float)rng_normal(&rng) * 1e-30f;
    c[0] = -0.0f;
    StWriteTensor ts[] = {{"z.weight", 2, {6, 5}, a}, {"a.bias", 1, {7}, b}, {"m.scalar", 0, {0}, c},
                          {"m.empty", 2, {0, 4}, NULL}};
    StMeta meta[] = {{"step", "12"}};
    CHECK(st_write(path, ts, 4, meta, 1) == 0, "%s", givt_last_error());
    StFile f;
    CHECK(st_open(&f, path) == 0, "%s", givt_last_error());
    CHECK(f.count == 4);
    CHECK(st_metadata(&f, "format") && strcmp(st_metadata(&f, "format"), "pt") == 0);
    CHECK(st_metadata(&f, "step") && strcmp(st_metadata(&f, "step"), "12") == 0);
    CHECK(st_metadata(&f, "nope") == NULL);
    long data_start = (long)f.data_offset;
    CHECK((data_start & 7) == 0, "header not padded to 8 bytes: data at %ld", data_start);
    int ia = st_find(&f, "z.weight"), ib = st_find(&f, "a.bias"), ic = st_find(&f, "m.scalar");
    CHECK(ia >= 0 && ib >= 0 && ic >= 0 && st_find(&f, "nope") == -1);
    if (ia >= 0 && ib >= 0 && ic >= 0) {
        CHECK(f.tensors[ib].begin == 0 && f.tensors[ib].begin < f.tensors[ic].begin, "not sorted by name");
        CHECK(f.tensors[ia].ndim == 2 && f.tensors[ia].shape[0] == 6 && f.tensors[ia].shape[1] == 5);
        CHECK(f.tensors[ia].dtype == ST_F32 && f.tensors[ic].ndim == 0 && f.tensors[ic].numel == 1);
        float ra[30], rb[7], rc[1];
        int64_t shape_a[2] = {6, 5}, shape_b[1] = {7};
        CHECK(st_load_f32(&f, "z.weight", 2, shape_a, ra) == 0 && memcmp(ra, a, sizeof a) == 0);
        CHECK(st_load_f32(&f, "a.bias", 1, shape_b, rb) == 0 && memcmp(rb, b, sizeof b) == 0);
        CHECK(st_read_f32(&f, ic, rc) == 0 && memcmp(rc, c, sizeof c) == 0);
        int64_t wrong[2] = {5, 6};
        CHECK(st_load_f32(&f, "z.weight", 2, wrong, ra) == -1);
        CHECK(tu_error_has(path, "tensor \"z.weight\": shape [6, 5], expected [5, 6]"), "%s", givt_last_error());
        CHECK(st_load_f32(&f, "q", 1, shape_b, rb) == -1 && tu_error_has(path, "tensor \"q\" is missing"));
    }
    st_close(&f);
    tu_rmtree(dir);
}

TEST(st_reads_f16_and_bf16) {
    char dir[256];
    tu_mkdtemp(dir, "st");
    const char *path = tu_path(dir, "h.safetensors");
    const char *hdr = "{\"h\":{\"dtype\":\"F16\",\"shape\":[5],\"data_offsets\":[0,10]},"
                      "\"b\":{\"dtype\":\"BF16\",\"shape\":[1,3],\"data_offsets\":[10,16]}}";
    uint16_t h[5] = {0x3c00, 0xc000, 0x3800, 0x7bff, 0x0001}, bf[3] = {0x3f80, 0xc040, 0x4049};
    size_t hl = strlen(hdr);
    unsigned char buf[512];
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, hdr, hl);
    for (int i = 0; i < 5; i++) buf[8 + hl + 2 * i] = h[i] & 0xff, buf[8 + hl + 2 * i + 1] = h[i] >> 8;
    for (int i = 0; i < 3; i++) buf[8 + hl + 10 + 2 * i] = bf[i] & 0xff, buf[8 + hl + 10 + 2 * i + 1] = bf[i] >> 8;
    tu_put_bytes(path, buf, 8 + hl + 16);
    StFile f;
    CHECK(st_open(&f, path) == 0, "%s", givt_last_error());
    float rh[5], rb[3];
    int64_t sh[1] = {5}, sb[2] = {1, 3};
    CHECK(st_load_f32(&f, "h", 1, sh, rh) == 0, "%s", givt_last_error());
    CHECK(rh[0] == 1.0f && rh[1] == -2.0f && rh[2] == 0.5f && rh[3] == 65504.0f && rh[4] == ldexpf(1.0f, -24));
    CHECK(st_load_f32(&f, "b", 2, sb, rb) == 0, "%s", givt_last_error());
    CHECK(rb[0] == 1.0f && rb[1] == -3.0f && rb[2] == 3.140625f);
    CHECK(st_metadata(&f, "format") == NULL);
    st_close(&f);
    tu_rmtree(dir);
}

// ---- safetensors: malformed files ---------------------------------------------------------
#define T1 "{\"t1\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}"
static const struct {
    const char *header;
    size_t data_len;
    const char *want, *tensor;  // substrings the message must contain
} g_bad[] = {
    {"{\"t1\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 12, "extends past the end", "\"t1\""},
    {"{\"t1\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 12, "cover 8", NULL},
    {T1 ",\"t2\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, "overlap", "\"t2\""},
    {T1 ",\"t2\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[12,16]}}", 16, "gap", "\"t2\""},
    {T1 ",\"t2\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "overlap", "\"t2\""},
    {T1 ",\"t2\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8, "not a valid range", "\"t2\""},
    {T1 ",\"t2\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-8,0]}}", 8, "not a valid range", "\"t2\""},
    {"{\"t1\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, "needs 12 bytes", "\"t1\""},
    {"{\"t1\":{\"dtype\":\"F7\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "unknown dtype \"F7\"", "\"t1\""},
    {"{\"t1\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, "negative dimension", "\"t1\""},
    {"{\"t1\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]}}", 8, "expected an integer", "\"t1\""},
    {"{\"t1\":{\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]}}", 8, "expected an array", "\"t1\""},
    {"{\"t1\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, "\"data_offsets\": missing", "\"t1\""},
    {"{\"t1\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "\"dtype\": missing", "\"t1\""},
    {"{\"t1\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4,8]}}", 8, "expected [begin, end]", "\"t1\""},
    {"{\"t1\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"x\":1}}", 8, "unexpected key", "\"t1\""},
    {"{\"t1\":[2]}", 8, "expected an object", "\"t1\""},
    {"{\"__metadata__\":{\"format\":1}," "\"t1\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
     "\"__metadata__\" key \"format\": expected a string", NULL},
    {"{\"t1\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4, "at most 8", "\"t1\""},
    {"{\"t1\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},}", 8, "invalid JSON", NULL},
    {"{\"t1\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}x", 8, "invalid JSON", NULL},
    {"[1, 2]   ", 0, "header: expected an object", NULL},
    {"\"t1\"", 0, "header: expected an object", NULL},
    {"", 0, "invalid JSON", NULL},
};

TEST(st_rejects_malformed_headers) {
    char dir[256];
    tu_mkdtemp(dir, "st");
    const char *path = tu_path(dir, "bad.safetensors");
    for (size_t i = 0; i < sizeof g_bad / sizeof g_bad[0]; i++) {
        write_raw(path, g_bad[i].header, strlen(g_bad[i].header), g_bad[i].data_len);
        StFile f;
        CHECK(st_open(&f, path) == -1, "case %zu accepted", i);
        CHECK(tu_error_has(path, g_bad[i].want), "case %zu: %s", i, givt_last_error());
        if (g_bad[i].tensor) CHECK(strstr(givt_last_error(), g_bad[i].tensor), "case %zu: %s", i, givt_last_error());
        st_close(&f);
    }
    tu_rmtree(dir);
}

TEST(st_rejects_bad_lengths) {
    char dir[256];
    tu_mkdtemp(dir, "st");
    const char *path = tu_path(dir, "len.safetensors");
    StFile f;
    tu_put_bytes(path, "abc", 3);
    CHECK(st_open(&f, path) == -1 &&
              tu_error_has(path, ": file is 3 bytes, too short for a safetensors file (the header length alone "
                                 "takes 8 bytes)"),
          "%s", givt_last_error());
    st_close(&f);
    tu_put_bytes(path, "", 0);
    CHECK(st_open(&f, path) == -1 && tu_error_has(path, ": file is 0 bytes, too short"), "%s", givt_last_error());
    st_close(&f);
    // header length past the end: the message gives the file size and the size the length needs
    write_raw(path, "{}", 5, 0);  // 10 bytes; 8 + 5 = 13 needed
    CHECK(st_open(&f, path) == -1 &&
              tu_error_has(path, ": file is 10 bytes, but its header length 5 needs at least 13 (8 + 5): truncated, "
                                 "or not a safetensors file"),
          "%s", givt_last_error());
    st_close(&f);
    write_raw(path, "{}", 1000, 0);
    CHECK(st_open(&f, path) == -1 && tu_error_has(path, ": file is 10 bytes, but its header length 1000 needs at least 1008"),
          "%s", givt_last_error());
    st_close(&f);
    write_raw(path, "{}x", 2, 0);  // 11 bytes: header "{}", then 1 byte of data: the length fits
    CHECK(st_open(&f, path) == -1 && tu_error_has(path, "the data buffer has 1 bytes but the tensors cover 0"), "%s",
          givt_last_error());
    st_close(&f);
    write_raw(path, "{}", (uint64_t)1 << 40, 0);
    CHECK(st_open(&f, path) == -1 && tu_error_has(path, "larger than the limit"), "%s", givt_last_error());
    st_close(&f);
    write_raw(path, "{}", ~(uint64_t)0, 0);
    CHECK(st_open(&f, path) == -1 && tu_error_has(path, "larger than the limit"), "%s", givt_last_error());
    st_close(&f);
    write_raw(path, "{}  ", 4, 0);  // an empty file is valid
    CHECK(st_open(&f, path) == 0 && f.count == 0, "%s", givt_last_error());
    st_close(&f);
    CHECK(st_open(&f, dir) == -1 && tu_error_has(dir, "not a regular file"), "%s", givt_last_error());
    st_close(&f);
    path = tu_path(dir, "none.safetensors");
    CHECK(st_open(&f, path) == -1 && tu_error_has(path, "cannot open"), "%s", givt_last_error());
    st_close(&f);
    tu_rmtree(dir);
}

// A failed st_open holds nothing (checkpoint.c's load_train_state returns without st_close on failure,
// which leaked the path): the struct is left zeroed, and st_close on it stays safe.
TEST(st_open_failure_frees_everything) {
    char dir[256];
    tu_mkdtemp(dir, "st");
    const char *path = tu_path(dir, "x.safetensors");
    const char *h = "{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    write_raw(path, h, strlen(h), 7);  // the data buffer is a byte short: fails after the header is parsed
    static const StFile zero;
    StFile f;
    CHECK(st_open(&f, path) == -1 && tu_error_has(path, "\"t\""), "%s", givt_last_error());
    CHECK(!memcmp(&f, &zero, sizeof f), "a failed st_open kept path %p, header %p, tensors %p", (void *)f.path,
          (void *)f.header, (void *)f.tensors);
    st_close(&f);
    CHECK(st_open(&f, tu_path(dir, "none.safetensors")) == -1 && !memcmp(&f, &zero, sizeof f));
    st_close(&f);
    tu_rmtree(dir);
}

TEST(st_unsupported_dtype_is_named) {
    char dir[256];
    tu_mkdtemp(dir, "st");
    const char *path = tu_path(dir, "i64.safetensors");
    const char *h = "{\"steps\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[0,16]}}";
    write_raw(path, h, strlen(h), 16);
    StFile f;
    CHECK(st_open(&f, path) == 0, "%s", givt_last_error());
    float out[2];
    CHECK(st_read_f32(&f, 0, out) == -1);
    CHECK(tu_error_has(path, "tensor \"steps\": dtype I64 is not supported"), "%s", givt_last_error());
    st_close(&f);
    tu_rmtree(dir);
}

// Every truncation of a valid file, and random byte flips in its header, fail cleanly.
TEST(st_truncations_and_corruptions) {
    char dir[256];
    tu_mkdtemp(dir, "st");
    const char *path = tu_path(dir, "full.safetensors"), *cut = tu_path(dir, "cut.safetensors");
    float a[12] = {1, 2, 3}, b[3] = {4, 5, 6};
    StWriteTensor ts[] = {{"a", 2, {3, 4}, a}, {"b", 1, {3}, b}};
    CHECK(st_write(path, ts, 2, NULL, 0) == 0, "%s", givt_last_error());
    size_t n;
    char *full = fs_read_text(path, &n);
    StFile f;
    for (size_t len = 0; len < n; len++) {
        tu_put_bytes(cut, full, len);
        CHECK(st_open(&f, cut) == -1, "truncated to %zu of %zu bytes accepted", len, n);
        CHECK(strstr(givt_last_error(), cut) != NULL, "%s", givt_last_error());
        st_close(&f);
    }
    Rng rng;
    rng_seed(&rng, 3);
    size_t hl = (size_t)(unsigned char)full[0];
    for (int trial = 0; trial < 3000; trial++) {
        char *m = xmalloc(n);
        memcpy(m, full, n);
        int flips = 1 + (int)(rng_next(&rng) % 3);
        for (int k = 0; k < flips; k++) m[8 + rng_next(&rng) % hl] = (char)(rng_next(&rng) & 0xff);
        tu_put_bytes(cut, m, n);
        if (st_open(&f, cut) == 0) {
            float buf[64];
            for (int i = 0; i < f.count; i++)
                if (f.tensors[i].numel <= 64) (void)st_read_f32(&f, i, buf);
        } else {
            CHECK(strstr(givt_last_error(), cut) != NULL && !strchr(givt_last_error(), '\n'), "%s", givt_last_error());
        }
        st_close(&f);
        free(m);
    }
    free(full);
    tu_rmtree(dir);
}

TEST(st_write_errors) {
    char dir[256];
    tu_mkdtemp(dir, "st");
    const char *path = tu_path(dir, "w.safetensors");
    float a[2] = {0};
    StWriteTensor dup[] = {{"x", 1, {2}, a}, {"x", 1, {2}, a}};
    CHECK(st_write(path, dup, 2, NULL, 0) == -1 && tu_error_has(path, "\"x\" given twice"));
    StWriteTensor meta_name[] = {{"__metadata__", 1, {2}, a}};
    CHECK(st_write(path, meta_name, 1, NULL, 0) == -1 && tu_error_has(path, "__metadata__"));
    StWriteTensor neg[] = {{"n", 1, {-2}, a}};
    CHECK(st_write(path, neg, 1, NULL, 0) == -1 && tu_error_has(path, "\"n\": negative"));
    StMeta m2[] = {{"k", "v"}, {"k", "w"}};
    CHECK(st_write(path, NULL, 0, m2, 2) == -1 && tu_error_has(path, "\"k\" given twice"));
    CHECK(!fs_path_exists(path), "a failed write left a file");
    path = tu_path(dir, "no/such/dir/w.safetensors");
    CHECK(st_write(path, dup, 1, NULL, 0) == -1 && strstr(givt_last_error(), "no/such/dir"), "%s", givt_last_error());
    path = tu_path(dir, "fmt.safetensors");
    StMeta fmt[] = {{"format", "np"}};
    CHECK(st_write(path, dup, 1, fmt, 1) == 0, "%s", givt_last_error());
    StFile f;
    CHECK(st_open(&f, path) == 0 && f.n_meta == 1 && strcmp(st_metadata(&f, "format"), "np") == 0);
    st_close(&f);
    tu_rmtree(dir);
}
