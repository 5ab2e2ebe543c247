// json: a small strict JSON parser (RFC 8259, with depth and size limits) with typed lookups, and a
// growable buffer for writing JSON text.
#ifndef GIVT_JSON_H
#define GIVT_JSON_H

#include <stddef.h>
#include <stdint.h>

#define JSON_MAX_DEPTH 64              // nesting of arrays and objects
#define JSON_MAX_TEXT ((size_t)1 << 30)  // longest input accepted, in bytes

typedef enum { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } JsonType;

typedef struct JsonValue JsonValue;
struct JsonValue {
    JsonType type;
    int line, col;       // where the value starts in the text (1-based), for messages
    int boolean;         // JSON_BOOL
    double number;       // JSON_NUMBER
    int is_int;          // JSON_NUMBER written without fraction or exponent and within int64
    int64_t integer;     // exact value when is_int
    char *str;           // JSON_STRING: NUL-terminated, UTF-8 (may hold \u0000: see str_len)
    size_t str_len;
    int count;           // JSON_ARRAY / JSON_OBJECT: number of elements / members
    JsonValue *items;    // elements, or member values
    char **keys;         // JSON_OBJECT: member keys (NUL-terminated)
};

// Parses text[0..len) as one JSON value (duplicate object keys are rejected). On error returns
// NULL after givt_fail("<what>: invalid JSON at line L, column C: <reason>").
JsonValue *json_parse(const char *text, size_t len, const char *what);
void json_free(JsonValue *v);

const char *json_type_name(JsonType t);
// Member of an object by key, or NULL when absent (or when obj is not an object).
const JsonValue *json_get(const JsonValue *obj, const char *key);
// Element i of an array, or NULL when out of range (or when arr is not an array).
const JsonValue *json_at(const JsonValue *arr, int i);

// Typed getters: 0 on success; on a type mismatch -1 after givt_fail("<what>: expected ..., got ...").
int json_as_int64(const JsonValue *v, int64_t *out, const char *what);
int json_as_int(const JsonValue *v, int *out, const char *what);  // also checks the int range
int json_as_double(const JsonValue *v, double *out, const char *what);  // integers too
int json_as_bool(const JsonValue *v, int *out, const char *what);
int json_as_string(const JsonValue *v, const char **out, const char *what);
// Checks the type of an array or object (or any type) with the same kind of message.
int json_expect(const JsonValue *v, JsonType t, const char *what);

// ---- writing ------------------------------------------------------------------------------
typedef struct {
    char *data;  // NUL-terminated
    size_t len, cap;
} JsonBuf;

void json_buf_init(JsonBuf *b);
void json_buf_free(JsonBuf *b);
void json_buf_append(JsonBuf *b, const char *s, size_t n);
void json_buf_puts(JsonBuf *b, const char *s);
void json_buf_printf(JsonBuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
// Appends s as a quoted JSON string, escaping quotes, backslashes and control characters. The
// output is always valid UTF-8: when s is not (a stray byte, an overlong form, a surrogate, a code
// point past U+10FFFF), nothing is appended and -1 is returned after givt_fail("string \"...\" is
// not valid UTF-8 (byte 0xNN at offset K)").
int json_buf_string(JsonBuf *b, const char *s);
// Appends x as Python's json writes a float: the shortest decimal that reads back as x ("4.0",
// "1000000.0", "1e-08"). -1 (givt_fail) when x is not finite.
int json_buf_double(JsonBuf *b, double x);

#endif
