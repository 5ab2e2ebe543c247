// ini: a small INI reader that keeps the file name and line of every entry.
#include "ini.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs.h"
#include "util.h"

void ini_init(IniFile *ini) { memset(ini, 0, sizeof *ini); }

void ini_free(IniFile *ini) {
    for (int i = 0; i < ini->count; i++) {
        free(ini->entries[i].section);
        free(ini->entries[i].key);
        free(ini->entries[i].value);
        free(ini->entries[i].where);
    }
    for (int i = 0; i < ini->nsections; i++) {
        free(ini->sections[i].name);
        free(ini->sections[i].where);
    }
    free(ini->entries);
    free(ini->sections);
    ini_init(ini);
}

static char *dup_range(const char *s, size_t n) {
    char *d = xmalloc(n + 1);
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

static char *dup_printf_where(const char *file, int line) {
    size_t n = strlen(file) + 24;
    char *w = xmalloc(n);
    snprintf(w, n, "%s:%d", file, line);
    return w;
}

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v'; }

// Trims [*b, *e) of surrounding whitespace.
static void trim(const char **b, const char **e) {
    while (*b < *e && is_space(**b)) (*b)++;
    while (*e > *b && is_space((*e)[-1])) (*e)--;
}

static void append_entry(IniFile *ini, char *section, char *key, char *value, char *where, int line) {
    if (ini->count == ini->cap) {
        ini->cap = ini->cap ? 2 * ini->cap : 32;
        ini->entries = xrealloc(ini->entries, (size_t)ini->cap * sizeof *ini->entries);
    }
    ini->entries[ini->count++] = (IniEntry){section, key, value, where, line};
}

static void append_section(IniFile *ini, char *name, char *where) {
    if (ini->nsections == ini->csections) {
        ini->csections = ini->csections ? 2 * ini->csections : 8;
        ini->sections = xrealloc(ini->sections, (size_t)ini->csections * sizeof *ini->sections);
    }
    ini->sections[ini->nsections++] = (IniSection){name, where};
}

const IniEntry *ini_find(const IniFile *ini, const char *section, const char *key) {
    for (int i = ini->count - 1; i >= 0; i--)
        if (!strcmp(ini->entries[i].section, section) && !strcmp(ini->entries[i].key, key))
            return &ini->entries[i];
    return NULL;
}

// Is [b, e) from here on only whitespace, or whitespace then a comment?
static int rest_is_blank_or_comment(const char *b, const char *e) {
    while (b < e && is_space(*b)) b++;
    return b == e || *b == '#' || *b == ';';
}

// Reads the value in [b, e) (already trimmed on the left by the caller): either a double-quoted
// string (with \" and \\ escapes) followed by nothing but an optional comment, or plain text up to
// a '#' or ';' that starts the value or follows whitespace. With comments == 0 (overrides) the
// plain text is taken whole. Returns a new string, or NULL with *why set.
static char *parse_value(const char *b, const char *e, int comments, const char **why) {
    trim(&b, &e);
    if (b < e && *b == '"') {
        char *out = xmalloc((size_t)(e - b) + 1);
        size_t n = 0;
        const char *p = b + 1;
        for (; p < e && *p != '"'; p++) {
            if (*p == '\\' && p + 1 < e && (p[1] == '"' || p[1] == '\\')) p++;
            out[n++] = *p;
        }
        if (p == e) {
            free(out);
            *why = "unterminated quoted value";
            return NULL;
        }
        if (comments ? !rest_is_blank_or_comment(p + 1, e) : p + 1 != e) {
            free(out);
            *why = "text after the closing quote";
            return NULL;
        }
        out[n] = '\0';
        return out;
    }
    const char *end = e;
    if (comments) {
        for (const char *p = b; p < e; p++) {
            if ((*p == '#' || *p == ';') && (p == b || is_space(p[-1]))) {
                end = p;
                break;
            }
        }
        trim(&b, &end);
    }
    return dup_range(b, (size_t)(end - b));
}

static int valid_name(const char *b, const char *e) {
    if (b == e) return 0;
    for (const char *p = b; p < e; p++)
        if (is_space(*p) || *p == '=' || *p == '[' || *p == ']' || *p == '"' || *p == '#' || *p == ';')
            return 0;
    return 1;
}

int ini_parse_n(IniFile *ini, const char *text, size_t len, const char *file_name) {
    const char *section = NULL;  // points into ini->sections
    int first_new = ini->count;
    const char *p = text, *end = text + len;
    if (len >= 3 && (unsigned char)p[0] == 0xEF && (unsigned char)p[1] == 0xBB && (unsigned char)p[2] == 0xBF)
        p += 3;
    for (int line = 1; p < end; line++) {
        // a line ends at "\n", "\r\n" or a lone "\r" (old Mac files), or at the end of the text
        const char *b = p, *e = p;
        while (e < end && *e != '\n' && *e != '\r') e++;
        p = e;
        if (p < end && *p == '\r') p++;
        if (p < end && *p == '\n') p++;
        const char *nul = memchr(b, '\0', (size_t)(e - b));
        if (nul)
            return givt_fail("%s:%d: contains a NUL byte (column %d): not a text file, or a damaged one", file_name,
                             line, (int)(nul - b) + 1);
        trim(&b, &e);
        if (b == e || *b == '#' || *b == ';') continue;
        if (*b == '[') {
            const char *close = memchr(b, ']', (size_t)(e - b));
            if (!close) return givt_fail("%s:%d: section header without a closing ']'", file_name, line);
            if (!rest_is_blank_or_comment(close + 1, e))
                return givt_fail("%s:%d: text after the section header", file_name, line);
            const char *nb = b + 1, *ne = close;
            trim(&nb, &ne);
            if (!valid_name(nb, ne))
                return givt_fail("%s:%d: bad section name \"%.*s\"", file_name, line, (int)(close - b - 1), b + 1);
            append_section(ini, dup_range(nb, (size_t)(ne - nb)), dup_printf_where(file_name, line));
            section = ini->sections[ini->nsections - 1].name;
            continue;
        }
        const char *eq = memchr(b, '=', (size_t)(e - b));
        if (!eq) {
            return givt_fail("%s:%d: expected \"key = value\" or \"[section]\", got \"%.*s\"", file_name, line,
                             (int)(e - b), b);
        }
        const char *kb = b, *ke = eq;
        trim(&kb, &ke);
        if (!valid_name(kb, ke)) return givt_fail("%s:%d: bad key \"%.*s\"", file_name, line, (int)(ke - kb), kb);
        if (!section)
            return givt_fail("%s:%d: key \"%.*s\" outside any [section]", file_name, line, (int)(ke - kb), kb);
        const char *why = NULL;
        char *value = parse_value(eq + 1, e, 1, &why);
        if (!value)
            return givt_fail("%s:%d: [%s] %.*s: %s", file_name, line, section, (int)(ke - kb), kb, why);
        char *key = dup_range(kb, (size_t)(ke - kb));
        for (int i = first_new; i < ini->count; i++) {
            const IniEntry *o = &ini->entries[i];
            if (!strcmp(o->section, section) && !strcmp(o->key, key)) {
                int rc = givt_fail("%s:%d: [%s] %s: duplicate key (first set at line %d)", file_name, line,
                                   section, key, o->line);
                free(key);
                free(value);
                return rc;
            }
        }
        append_entry(ini, dup_range(section, strlen(section)), key, value, dup_printf_where(file_name, line),
                     line);
    }
    return 0;
}

int ini_parse(IniFile *ini, const char *text, const char *file_name) {
    return ini_parse_n(ini, text, strlen(text), file_name);
}

int ini_load(IniFile *ini, const char *path) {
    size_t len;
    char *text = fs_read_text_max(path, GIVT_TEXT_MAX_BYTES, &len);
    if (!text) return -1;
    int rc = ini_parse_n(ini, text, len, path);
    free(text);
    return rc;
}

int ini_add_override(IniFile *ini, const char *arg, int n) {
    const char *eq = strchr(arg, '=');
    const char *dot = eq ? memchr(arg, '.', (size_t)(eq - arg)) : NULL;
    if (!eq || !dot)
        return givt_fail("override %d: \"%s\": expected section.key=value (for example train.lr=3e-4)", n, arg);
    const char *sb = arg, *se = dot, *kb = dot + 1, *ke = eq;
    trim(&sb, &se);
    trim(&kb, &ke);
    if (!valid_name(sb, se) || !valid_name(kb, ke))
        return givt_fail("override %d: \"%s\": expected section.key=value (for example train.lr=3e-4)", n, arg);
    const char *why = NULL;
    char *value = parse_value(eq + 1, eq + strlen(eq), 0, &why);
    if (!value) return givt_fail("override %d: [%.*s] %.*s: %s", n, (int)(se - sb), sb, (int)(ke - kb), kb, why);
    char where[32];
    snprintf(where, sizeof where, "override %d", n);
    append_entry(ini, dup_range(sb, (size_t)(se - sb)), dup_range(kb, (size_t)(ke - kb)), value,
                 dup_range(where, strlen(where)), n);
    return 0;
}
