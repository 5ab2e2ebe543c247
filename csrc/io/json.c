// json: a small strict JSON parser with typed lookups, and a buffer for writing JSON text.
#include "json.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

#define JSON_MAX_NUMBER 512  // longest number token, in characters

typedef struct {
    const char *s;
    size_t len, pos;
    int line;
    size_t line_start;  // offset of the first byte of the current line
    const char *what;
    int failed;
} Parser;

static int p_fail(Parser *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int p_fail(Parser *p, const char *fmt, ...) {
    if (p->failed) return -1;
    p->failed = 1;
    char reason[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    return givt_fail("%s: invalid JSON at line %d, column %zu: %s", p->what, p->line,
                     p->pos - p->line_start + 1, reason);
}

static int p_peek(const Parser *p) { return p->pos < p->len ? (unsigned char)p->s[p->pos] : -1; }

static void skip_ws(Parser *p) {
    while (p->pos < p->len) {
        char c = p->s[p->pos];
        if (c == '\n') {
            p->line++;
            p->line_start = p->pos + 1;
        } else if (c != ' ' && c != '\t' && c != '\r') {
            return;
        }
        p->pos++;
    }
}

static const char *describe_char(int c, char *buf, size_t n) {
    if (c < 0) return "end of input";
    if (c >= 0x20 && c < 0x7f) snprintf(buf, n, "'%c'", c);
    else snprintf(buf, n, "byte 0x%02x", c);
    return buf;
}

static int expect_literal(Parser *p, const char *lit) {
    size_t n = strlen(lit);
    if (p->len - p->pos < n || memcmp(p->s + p->pos, lit, n) != 0)
        return p_fail(p, "unexpected token (expected \"%s\")", lit);
    p->pos += n;
    return 0;
}

// ---- strings ------------------------------------------------------------------------------
static void put_byte(JsonBuf *b, unsigned char c) { json_buf_append(b, (const char *)&c, 1); }

static void put_utf8(JsonBuf *b, uint32_t cp) {
    if (cp < 0x80) {
        put_byte(b, (unsigned char)cp);
    } else if (cp < 0x800) {
        put_byte(b, (unsigned char)(0xc0 | (cp >> 6)));
        put_byte(b, (unsigned char)(0x80 | (cp & 0x3f)));
    } else if (cp < 0x10000) {
        put_byte(b, (unsigned char)(0xe0 | (cp >> 12)));
        put_byte(b, (unsigned char)(0x80 | ((cp >> 6) & 0x3f)));
        put_byte(b, (unsigned char)(0x80 | (cp & 0x3f)));
    } else {
        put_byte(b, (unsigned char)(0xf0 | (cp >> 18)));
        put_byte(b, (unsigned char)(0x80 | ((cp >> 12) & 0x3f)));
        put_byte(b, (unsigned char)(0x80 | ((cp >> 6) & 0x3f)));
        put_byte(b, (unsigned char)(0x80 | (cp & 0x3f)));
    }
}

static int hex4(Parser *p, uint32_t *out) {
    if (p->len - p->pos < 4) return p_fail(p, "truncated \\u escape");
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p->s[p->pos + i];
        int d = c >= '0' && c <= '9' ? c - '0'
              : c >= 'a' && c <= 'f' ? c - 'a' + 10
              : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) return p_fail(p, "bad hex digit in \\u escape");
        v = v * 16 + (uint32_t)d;
    }
    p->pos += 4;
    *out = v;
    return 0;
}

// After "\u": one code point, combining a UTF-16 surrogate pair; lone surrogates are errors.
static int unicode_escape(Parser *p, JsonBuf *b) {
    uint32_t cp;
    if (hex4(p, &cp)) return -1;
    if (cp >= 0xdc00 && cp <= 0xdfff) return p_fail(p, "lone low surrogate in \\u escape");
    if (cp >= 0xd800 && cp <= 0xdbff) {
        uint32_t lo;
        if (p->len - p->pos < 2 || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u')
            return p_fail(p, "high surrogate not followed by a low surrogate");
        p->pos += 2;
        if (hex4(p, &lo)) return -1;
        if (lo < 0xdc00 || lo > 0xdfff) return p_fail(p, "high surrogate not followed by a low surrogate");
        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
    }
    put_utf8(b, cp);
    return 0;
}

static int escape(Parser *p, JsonBuf *b) {
    p->pos++;  // the backslash
    int c = p_peek(p);
    p->pos++;
    switch (c) {
    case '"': put_byte(b, '"'); return 0;
    case '\\': put_byte(b, '\\'); return 0;
    case '/': put_byte(b, '/'); return 0;
    case 'b': put_byte(b, '\b'); return 0;
    case 'f': put_byte(b, '\f'); return 0;
    case 'n': put_byte(b, '\n'); return 0;
    case 'r': put_byte(b, '\r'); return 0;
    case 't': put_byte(b, '\t'); return 0;
    case 'u': return unicode_escape(p, b);
    default: p->pos--; return p_fail(p, "invalid escape sequence");
    }
}

// Length of the valid UTF-8 sequence at s[0..n) (lead byte >= 0x80), or 0 if invalid
// (overlong forms, surrogates and code points above U+10FFFF are invalid).
static size_t utf8_seq_len(const unsigned char *s, size_t n) {
    size_t need;
    uint32_t cp, min;
    if (s[0] >= 0xc2 && s[0] <= 0xdf) need = 2, cp = s[0] & 0x1f, min = 0x80;
    else if (s[0] >= 0xe0 && s[0] <= 0xef) need = 3, cp = s[0] & 0x0f, min = 0x800;
    else if (s[0] >= 0xf0 && s[0] <= 0xf4) need = 4, cp = s[0] & 0x07, min = 0x10000;
    else return 0;
    if (n < need) return 0;
    for (size_t i = 1; i < need; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
    return need;
}

static int raw_byte(Parser *p, JsonBuf *b, unsigned char c) {
    if (c < 0x20) return p_fail(p, "unescaped control character 0x%02x in string", c);
    if (c < 0x80) {
        put_byte(b, c);
        p->pos++;
        return 0;
    }
    size_t n = utf8_seq_len((const unsigned char *)p->s + p->pos, p->len - p->pos);
    if (n == 0) return p_fail(p, "invalid UTF-8 in string");
    json_buf_append(b, p->s + p->pos, n);
    p->pos += n;
    return 0;
}

// At the opening quote: parses a string into a new NUL-terminated buffer.
static int parse_string(Parser *p, char **out, size_t *out_len) {
    JsonBuf b;
    json_buf_init(&b);
    p->pos++;
    for (;;) {
        int c = p_peek(p);
        int rc = 0;
        if (c < 0) rc = p_fail(p, "unterminated string");
        else if (c == '"') break;
        else if (c == '\\') rc = escape(p, &b);
        else rc = raw_byte(p, &b, (unsigned char)c);
        if (rc) {
            json_buf_free(&b);
            return -1;
        }
    }
    p->pos++;
    *out = b.data;
    *out_len = b.len;
    return 0;
}

// ---- numbers ------------------------------------------------------------------------------
static size_t scan_digits(Parser *p) {
    size_t start = p->pos;
    while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') p->pos++;
    return p->pos - start;
}

// Exact int64 of a token of the form -?[0-9]+; 0 if it does not fit.
static int token_int64(const char *t, size_t n, int64_t *out) {
    int neg = t[0] == '-';
    uint64_t limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX, v = 0;
    for (size_t i = (size_t)neg; i < n; i++) {
        uint64_t d = (uint64_t)(t[i] - '0');
        if (v > (limit - d) / 10) return 0;
        v = v * 10 + d;
    }
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    return 1;
}

static int parse_number(Parser *p, JsonValue *v) {
    size_t start = p->pos;
    int is_int = 1;
    if (p_peek(p) == '-') p->pos++;
    if (p_peek(p) == '0') p->pos++;
    else if (scan_digits(p) == 0) return p_fail(p, "invalid number");
    if (p_peek(p) == '.') {
        p->pos++;
        is_int = 0;
        if (scan_digits(p) == 0) return p_fail(p, "digits expected after the decimal point");
    }
    if (p_peek(p) == 'e' || p_peek(p) == 'E') {
        p->pos++;
        is_int = 0;
        if (p_peek(p) == '+' || p_peek(p) == '-') p->pos++;
        if (scan_digits(p) == 0) return p_fail(p, "digits expected in the exponent");
    }
    size_t n = p->pos - start;
    if (n > JSON_MAX_NUMBER) {
        p->pos = start;
        return p_fail(p, "number longer than %d characters", JSON_MAX_NUMBER);
    }
    char tok[JSON_MAX_NUMBER + 1];
    memcpy(tok, p->s + start, n);
    tok[n] = '\0';
    v->type = JSON_NUMBER;
    v->number = strtod(tok, NULL);
    if (isinf(v->number)) {
        p->pos = start;
        return p_fail(p, "number out of range");
    }
    v->is_int = is_int && token_int64(tok, n, &v->integer);
    return 0;
}

// ---- values -------------------------------------------------------------------------------
static int parse_value(Parser *p, JsonValue *v, int depth);

static JsonValue *grow_items(JsonValue *items, int count, int *cap) {
    if (count < *cap) return items;
    *cap = *cap ? 2 * *cap : 4;
    return xrealloc(items, (size_t)*cap * sizeof *items);
}

static int parse_array(Parser *p, JsonValue *v, int depth) {
    int cap = 0;
    v->type = JSON_ARRAY;
    p->pos++;
    skip_ws(p);
    if (p_peek(p) == ']') {
        p->pos++;
        return 0;
    }
    for (;;) {
        v->items = grow_items(v->items, v->count, &cap);
        memset(&v->items[v->count], 0, sizeof v->items[0]);
        v->count++;
        if (parse_value(p, &v->items[v->count - 1], depth + 1)) return -1;
        skip_ws(p);
        int c = p_peek(p);
        p->pos++;
        if (c == ']') return 0;
        if (c != ',') {
            char d[32];
            p->pos--;
            return p_fail(p, "expected ',' or ']' in array, got %s", describe_char(c, d, sizeof d));
        }
    }
}

static int cmp_keys(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

// Rejects an object whose keys are not unique (sorted copy, then neighbours).
static int check_unique_keys(Parser *p, const JsonValue *v) {
    if (v->count < 2) return 0;
    char **sorted = xmalloc((size_t)v->count * sizeof *sorted);
    memcpy(sorted, v->keys, (size_t)v->count * sizeof *sorted);
    qsort(sorted, (size_t)v->count, sizeof *sorted, cmp_keys);
    int rc = 0;
    for (int i = 1; i < v->count && rc == 0; i++)
        if (strcmp(sorted[i - 1], sorted[i]) == 0) rc = p_fail(p, "duplicate key \"%.100s\" in object", sorted[i]);
    free(sorted);
    return rc;
}

static int parse_member(Parser *p, JsonValue *v, int depth) {
    char d[32];
    skip_ws(p);
    if (p_peek(p) != '"') return p_fail(p, "expected a string key, got %s", describe_char(p_peek(p), d, sizeof d));
    size_t key_len;
    char *key;
    size_t key_pos = p->pos;
    if (parse_string(p, &key, &key_len)) return -1;
    v->keys[v->count] = key;
    memset(&v->items[v->count], 0, sizeof v->items[0]);
    v->count++;
    if (strlen(key) != key_len) {
        p->pos = key_pos;
        return p_fail(p, "object key contains \\u0000");
    }
    skip_ws(p);
    if (p_peek(p) != ':') return p_fail(p, "expected ':' after key, got %s", describe_char(p_peek(p), d, sizeof d));
    p->pos++;
    return parse_value(p, &v->items[v->count - 1], depth + 1);
}

static int parse_object(Parser *p, JsonValue *v, int depth) {
    int cap = 0;
    v->type = JSON_OBJECT;
    p->pos++;
    skip_ws(p);
    if (p_peek(p) == '}') {
        p->pos++;
        return 0;
    }
    for (;;) {
        if (v->count == cap) {
            v->items = grow_items(v->items, v->count, &cap);
            v->keys = xrealloc(v->keys, (size_t)cap * sizeof *v->keys);
        }
        if (parse_member(p, v, depth)) return -1;
        skip_ws(p);
        int c = p_peek(p);
        if (c == '}') break;
        if (c != ',') {
            char d[32];
            return p_fail(p, "expected ',' or '}' in object, got %s", describe_char(c, d, sizeof d));
        }
        p->pos++;
    }
    p->pos++;
    return check_unique_keys(p, v);
}

static int parse_value(Parser *p, JsonValue *v, int depth) {
    skip_ws(p);
    v->line = p->line;
    v->col = (int)(p->pos - p->line_start + 1);
    if (depth > JSON_MAX_DEPTH) return p_fail(p, "nesting deeper than %d levels", JSON_MAX_DEPTH);
    int c = p_peek(p);
    char d[32];
    switch (c) {
    case '{': return parse_object(p, v, depth);
    case '[': return parse_array(p, v, depth);
    case '"': v->type = JSON_STRING; return parse_string(p, &v->str, &v->str_len);
    case 't': v->type = JSON_BOOL; v->boolean = 1; return expect_literal(p, "true");
    case 'f': v->type = JSON_BOOL; return expect_literal(p, "false");
    case 'n': v->type = JSON_NULL; return expect_literal(p, "null");
    default:
        if (c == '-' || (c >= '0' && c <= '9')) return parse_number(p, v);
        return p_fail(p, "unexpected %s", describe_char(c, d, sizeof d));
    }
}

static void free_children(JsonValue *v) {
    if (v->type == JSON_STRING) free(v->str);
    for (int i = 0; i < v->count; i++) {
        free_children(&v->items[i]);
        if (v->keys) free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
}

void json_free(JsonValue *v) {
    if (!v) return;
    free_children(v);
    free(v);
}

JsonValue *json_parse(const char *text, size_t len, const char *what) {
    Parser p = {.s = text, .len = len, .line = 1, .what = what};
    if (len > JSON_MAX_TEXT) {
        givt_fail("%s: JSON text of %zu bytes is larger than the limit of %zu", what, len, JSON_MAX_TEXT);
        return NULL;
    }
    JsonValue *v = xcalloc(1, sizeof *v);
    int rc = parse_value(&p, v, 0);
    if (rc == 0) {
        skip_ws(&p);
        if (p.pos != p.len) rc = p_fail(&p, "unexpected data after the JSON value");
    }
    if (rc) {
        json_free(v);
        return NULL;
    }
    return v;
}

// ---- lookups ------------------------------------------------------------------------------
const char *json_type_name(JsonType t) {
    switch (t) {
    case JSON_NULL: return "null";
    case JSON_BOOL: return "a boolean";
    case JSON_NUMBER: return "a number";
    case JSON_STRING: return "a string";
    case JSON_ARRAY: return "an array";
    case JSON_OBJECT: return "an object";
    }
    return "?";
}

const JsonValue *json_get(const JsonValue *obj, const char *key) {
    if (!obj || obj->type != JSON_OBJECT) return NULL;
    for (int i = 0; i < obj->count; i++)
        if (strcmp(obj->keys[i], key) == 0) return &obj->items[i];
    return NULL;
}

const JsonValue *json_at(const JsonValue *arr, int i) {
    if (!arr || arr->type != JSON_ARRAY || i < 0 || i >= arr->count) return NULL;
    return &arr->items[i];
}

// "a string "abc"", "the number 3.5", "an array", ... for type-mismatch messages.
static void describe_value(const JsonValue *v, char *buf, size_t n) {
    if (v->type == JSON_STRING) snprintf(buf, n, "a string \"%.40s\"", v->str);
    else if (v->type == JSON_NUMBER) snprintf(buf, n, "the number %.17g", v->number);
    else if (v->type == JSON_BOOL) snprintf(buf, n, "%s", v->boolean ? "true" : "false");
    else snprintf(buf, n, "%s", json_type_name(v->type));
}

static int mismatch(const JsonValue *v, const char *expected, const char *what) {
    char d[96];
    if (!v) return givt_fail("%s: missing (expected %s)", what, expected);
    describe_value(v, d, sizeof d);
    return givt_fail("%s: expected %s, got %s (line %d, column %d)", what, expected, d, v->line, v->col);
}

int json_expect(const JsonValue *v, JsonType t, const char *what) {
    if (v && v->type == t) return 0;
    return mismatch(v, json_type_name(t), what);
}

int json_as_int64(const JsonValue *v, int64_t *out, const char *what) {
    if (!v || v->type != JSON_NUMBER || !v->is_int) return mismatch(v, "an integer", what);
    *out = v->integer;
    return 0;
}

int json_as_int(const JsonValue *v, int *out, const char *what) {
    int64_t x = 0;
    if (json_as_int64(v, &x, what)) return -1;
    if (x < INT_MIN || x > INT_MAX) return mismatch(v, "an integer within the int range", what);
    *out = (int)x;
    return 0;
}

int json_as_double(const JsonValue *v, double *out, const char *what) {
    if (!v || v->type != JSON_NUMBER) return mismatch(v, "a number", what);
    *out = v->number;
    return 0;
}

int json_as_bool(const JsonValue *v, int *out, const char *what) {
    if (!v || v->type != JSON_BOOL) return mismatch(v, "true or false", what);
    *out = v->boolean;
    return 0;
}

int json_as_string(const JsonValue *v, const char **out, const char *what) {
    if (!v || v->type != JSON_STRING) return mismatch(v, "a string", what);
    *out = v->str;
    return 0;
}

// ---- writing ------------------------------------------------------------------------------
void json_buf_init(JsonBuf *b) {
    b->cap = 64;
    b->len = 0;
    b->data = xmalloc(b->cap);
    b->data[0] = '\0';
}

void json_buf_free(JsonBuf *b) {
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

void json_buf_append(JsonBuf *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        while (b->len + n + 1 > b->cap) b->cap *= 2;
        b->data = xrealloc(b->data, b->cap);
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void json_buf_puts(JsonBuf *b, const char *s) { json_buf_append(b, s, strlen(s)); }

void json_buf_printf(JsonBuf *b, const char *fmt, ...) {
    char small[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) givt_die("vsnprintf failed");
    if ((size_t)n < sizeof small) {
        json_buf_append(b, small, (size_t)n);
        return;
    }
    char *big = xmalloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    json_buf_append(b, big, (size_t)n);
    free(big);
}

// Invalid UTF-8 is rejected, not replaced with U+FFFD: the strings written are names (tensor names,
// metadata keys) that must read back exactly as given, so a silently changed one would only fail
// later and less clearly. The message shows the string's start with bytes outside printable ASCII
// as \xNN, so the message itself stays valid UTF-8.
int json_buf_string(JsonBuf *b, const char *s) {
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; u[i];) {
        // (a bound of 4 is safe: utf8_seq_len stops at the first non-continuation byte, the NUL too)
        size_t n = u[i] < 0x80 ? 1 : utf8_seq_len(u + i, 4);
        if (n == 0) {
            char shown[4 * 48 + 8];
            size_t k = 0, j = 0;
            for (; u[j] && j < 48; j++) {
                if (u[j] >= 0x20 && u[j] < 0x7f && u[j] != '"' && u[j] != '\\') shown[k++] = (char)u[j];
                else k += (size_t)snprintf(shown + k, sizeof shown - k, "\\x%02x", u[j]);
            }
            snprintf(shown + k, sizeof shown - k, "%s", u[j] ? "..." : "");
            return givt_fail("string \"%s\" is not valid UTF-8 (byte 0x%02x at offset %zu)", shown, u[i], i);
        }
        i += n;
    }
    put_byte(b, '"');
    for (const unsigned char *c = u; *c; c++) {
        if (*c == '"') json_buf_puts(b, "\\\"");
        else if (*c == '\\') json_buf_puts(b, "\\\\");
        else if (*c == '\n') json_buf_puts(b, "\\n");
        else if (*c == '\r') json_buf_puts(b, "\\r");
        else if (*c == '\t') json_buf_puts(b, "\\t");
        else if (*c < 0x20) json_buf_printf(b, "\\u%04x", *c);
        else put_byte(b, *c);
    }
    put_byte(b, '"');
    return 0;
}

// Like Python's repr(float): the shortest digits that read back as x, in fixed notation when the
// decimal exponent is in [-4, 16) (with at least one decimal: "4.0"), else scientific ("1e-08").
int json_buf_double(JsonBuf *b, double x) {
    if (!isfinite(x)) return givt_fail("cannot write %g as JSON (not a finite number)", x);
    char tok[64];
    int prec = 1;
    for (; prec < 17; prec++) {
        snprintf(tok, sizeof tok, "%.*e", prec - 1, x);
        if (strtod(tok, NULL) == x) break;
    }
    snprintf(tok, sizeof tok, "%.*e", prec - 1, x);
    int exp10 = atoi(strchr(tok, 'e') + 1);
    if (x != 0 && (exp10 < -4 || exp10 >= 16)) {
        json_buf_puts(b, tok);
        return 0;
    }
    int decimals = prec - 1 - exp10;
    json_buf_printf(b, "%.*f", decimals < 1 ? 1 : decimals, x);
    return 0;
}
