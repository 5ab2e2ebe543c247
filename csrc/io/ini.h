// ini: a small INI reader ([section], key = value, # and ; comments, quoted values) that keeps the
// file name and line of every entry, plus "section.key=value" command-line overrides.
#ifndef GIVT_INI_H
#define GIVT_INI_H

#include <stddef.h>

// One "key = value" (or one override). where is the location used in messages: "FILE:LINE" for a
// file entry, "override N" for the N-th command-line override (1-based).
typedef struct {
    char *section;
    char *key;
    char *value;  // trimmed, quotes removed, escapes (\" and \\ inside quotes) resolved
    char *where;
    int line;     // 1-based line in the file; for overrides, the override's number
} IniEntry;

// One "[section]" header, kept so that an unknown section can be reported at its header.
typedef struct {
    char *name;
    char *where;
} IniSection;

typedef struct {
    IniEntry *entries;  // in file order, then overrides in command-line order
    int count, cap;
    IniSection *sections;
    int nsections, csections;
} IniFile;

void ini_init(IniFile *ini);
void ini_free(IniFile *ini);
// Parses text[0..len) (file_name is used only in messages) and appends its entries. Lines end at
// "\n", "\r\n" or a lone "\r". On a malformed line, a key outside any section, a duplicate key or a
// NUL byte: -1 with "FILE:LINE: reason" recorded via givt_fail.
int ini_parse_n(IniFile *ini, const char *text, size_t len, const char *file_name);
// The same for a NUL-terminated text.
int ini_parse(IniFile *ini, const char *text, const char *file_name);
// Reads path and parses all of it (a NUL byte in the file is an error, not its end).
int ini_load(IniFile *ini, const char *path);
// Parses one command-line override "section.key=value" (the value may be quoted) and appends it
// with where = "override N". A later override of the same key is kept after an earlier one.
int ini_add_override(IniFile *ini, const char *arg, int n);
// The last entry for section/key, or NULL.
const IniEntry *ini_find(const IniFile *ini, const char *section, const char *key);

#endif
