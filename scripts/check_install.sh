#!/usr/bin/env bash
# check_install: `make install` into a scratch PREFIX, then a user's program built against it the way
# a user would (pkg-config givt) in a folder with its own util.h and its own functions named as
# unprefixed helpers often are (read_file_text, mkdir_p, rng_seed, xmalloc_at, ...). It must compile
# (the installed headers find each other under include/givt/, never the user's util.h), link (every
# global symbol of libgivt carries its module's prefix, so none collides) and run (opens the CPU
# backend through the registry, reads a file through fs_read_text). Exits non-zero on any failure.
#   bash scripts/check_install.sh [BUILD]     (BUILD: the build folder make uses, default build)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
prefix="$tmp/prefix"
make -s -j"$(nproc)" BUILD="$BUILD" PREFIX="$prefix" install >"$tmp/install.log" 2>&1 ||
  { cat "$tmp/install.log"; echo "check_install: make install failed" >&2; exit 1; }

for f in bin/givt-train bin/givt-sample bin/givt-latents lib/libgivt.a lib/pkgconfig/givt.pc include/givt/model.h \
         share/givt/configs/base.ini share/givt/configs/digits.ini share/givt/scripts/show_samples.py; do
  [[ -e $prefix/$f ]] || { echo "check_install: make install left out $f" >&2; exit 1; }
done

user="$tmp/user"
mkdir -p "$user"
cat >"$user/util.h" <<'EOF'
/* the user's own util.h: must not be the one givt's headers include */
#ifndef USER_UTIL_H
#define USER_UTIL_H
#define USER_UTIL_INCLUDED 1
int read_file_text(const char *path);
#endif
EOF

cat >"$user/helpers.c" <<'EOF'
/* the user's own helpers, named as libgivt's were before they carried module prefixes: linked
   together with libgivt.a (whose fs.o, util.o, rng.o and half.o main.c pulls in) they must not
   collide */
#include <stddef.h>
#include <stdint.h>
#include "util.h"
int read_file_text(const char *path) { return path ? 1 : 0; }
int mkdir_p(const char *path) { return path ? 2 : 0; }
void *xmalloc_at(size_t n, const char *file, int line) { (void)n, (void)file, (void)line; return NULL; }
int atomic_write(void) { return 3; }
char *path_join(void) { return NULL; }
double time_now_s(void) { return 5.0; }
uint64_t mix64(uint64_t z) { return z + 1; }
uint16_t f32_to_bf16(float f) { return (uint16_t)f; }
int range_ok(void) { return 6; }
EOF
cat >"$user/main.c" <<'EOF'
#include <stdio.h>
#include <stdlib.h>

#include "util.h"            /* the user's */
#include <givt/backend.h>    /* givt's, which include givt's own util.h from their folder */
#include <givt/fs.h>
#include <givt/half.h>
#include <givt/model.h>
#include <givt/rng.h>

#if !USER_UTIL_INCLUDED
#error "the user's util.h was not included"
#endif
#ifndef GIVT_UTIL_H
#error "givt's util.h was not included by givt's headers"
#endif

int mkdir_p(const char *path);

int main(int argc, char **argv) {
    (void)argc;
    size_t len = 0;
    char *text = fs_read_text(argv[0], &len); /* givt's, reading this program itself */
    if (!text || len == 0) return fprintf(stderr, "fs_read_text failed: %s\n", givt_last_error()), 1;
    free(text);
    Rng r;
    rng_seed(&r, 1);
    char why[256] = "";
    if (!backend_available("cpu", why, sizeof why)) return fprintf(stderr, "cpu backend: %s\n", why), 1;
    printf("user program: %d backends registered, bf16(1.5) = 0x%04x, uniform %.3f; its own "
           "read_file_text %d, mkdir_p %d\n", backend_registry_count(), half_f32_to_bf16(1.5f), rng_uniform(&r),
           read_file_text("x"), mkdir_p("y"));
    return 0;
}
EOF
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
# shellcheck disable=SC2046
cc -std=c11 -Wall -Wextra -Werror -I"$user" $(pkg-config --cflags givt) "$user/main.c" "$user/helpers.c" \
  -o "$user/prog" $(pkg-config --libs givt) ||
  { echo "check_install: the user's program did not build against the installed givt" >&2; exit 1; }
"$user/prog" || { echo "check_install: the user's program failed" >&2; exit 1; }
echo "check_install: ok (headers under include/givt/, built with pkg-config givt beside a user's own util.h and helpers)"
