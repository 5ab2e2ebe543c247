// tb_events: TensorBoard event files: TFRecord framing, the Event protobuf's few fields, the file (see
// tb_events.h).
#define _GNU_SOURCE
#include "tb_events.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fs.h"
#include "util.h"

// ---- CRC-32C and the record ---------------------------------------------------------------
uint32_t tb_crc32c(const void *data, size_t n) {
    const uint8_t *p = data;
    uint32_t crc = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        crc ^= p[i];
        for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0x82f63b78u & (0u - (crc & 1u)));
    }
    return crc ^ 0xffffffffu;
}

uint32_t tb_masked_crc32c(const void *data, size_t n) {
    uint32_t crc = tb_crc32c(data, n);
    return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

static void put_le(uint8_t *out, uint64_t v, int bytes) {
    for (int i = 0; i < bytes; i++) out[i] = (uint8_t)(v >> (8 * i));
}

int tb_write_record(FILE *f, const void *data, size_t n) {
    uint8_t head[12], tail[4];
    put_le(head, (uint64_t)n, 8);
    put_le(head + 8, tb_masked_crc32c(head, 8), 4);
    put_le(tail, tb_masked_crc32c(data, n), 4);
    if (fwrite(head, 1, sizeof head, f) != sizeof head || fwrite(data, 1, n, f) != n ||
        fwrite(tail, 1, sizeof tail, f) != sizeof tail)
        return givt_fail("writing a TensorBoard record failed: %s", strerror(errno));
    return 0;
}

// ---- the protobuf wire format: only what an Event of scalars needs --------------------------
typedef struct {
    uint8_t *buf;
    size_t cap, len;
    int overflow;
} Pb;

static void pb_bytes(Pb *pb, const void *p, size_t n) {
    if (pb->overflow || n > pb->cap - pb->len) {
        pb->overflow = 1;
        return;
    }
    memcpy(pb->buf + pb->len, p, n);
    pb->len += n;
}

static void pb_varint(Pb *pb, uint64_t v) {
    uint8_t b[10];
    int n = 0;
    do {
        b[n++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
        v >>= 7;
    } while (v);
    pb_bytes(pb, b, (size_t)n);
}

static size_t varint_size(uint64_t v) {
    size_t n = 1;
    while (v > 0x7f) v >>= 7, n++;
    return n;
}

static void pb_key(Pb *pb, int field, int wire_type) { pb_varint(pb, (uint64_t)(field << 3 | wire_type)); }

// A fixed-width field: wire type 1 (64-bit) or 5 (32-bit), its n bytes little-endian.
static void pb_fixed(Pb *pb, int field, int wire_type, uint64_t bits, int n) {
    uint8_t b[8];
    put_le(b, bits, n);
    pb_key(pb, field, wire_type);
    pb_bytes(pb, b, (size_t)n);
}

static void pb_double(Pb *pb, int field, double v) {
    uint64_t bits;
    memcpy(&bits, &v, 8);
    pb_fixed(pb, field, 1, bits, 8);
}

static void pb_float(Pb *pb, int field, float v) {
    uint32_t bits;
    memcpy(&bits, &v, 4);
    pb_fixed(pb, field, 5, bits, 4);
}

static void pb_string(Pb *pb, int field, const void *s, size_t n) {
    pb_key(pb, field, 2);
    pb_varint(pb, n);
    pb_bytes(pb, s, n);
}

// wall_time and step, left out at 0 as proto3 serializers do (the bytes then match theirs)
static void event_head(Pb *pb, double wall_time, int64_t step) {
    if (wall_time != 0.0) pb_double(pb, 1, wall_time);
    if (step != 0) {
        pb_key(pb, 2, 0);
        pb_varint(pb, (uint64_t)step);
    }
}

size_t tb_encode_version_event(uint8_t *buf, size_t cap, double wall_time) {
    Pb pb = {buf, cap, 0, 0};
    event_head(&pb, wall_time, 0);
    pb_string(&pb, 3, "brain.Event:2", strlen("brain.Event:2"));
    return pb.overflow ? 0 : pb.len;
}

size_t tb_encode_start_event(uint8_t *buf, size_t cap, double wall_time, int64_t step) {
    Pb pb = {buf, cap, 0, 0};
    event_head(&pb, wall_time, step);
    const uint8_t start[] = {0x08, 0x01};  // SessionLog { status (1) = START (1) }
    pb_string(&pb, 7, start, sizeof start);
    return pb.overflow ? 0 : pb.len;
}

// Summary.Value { tag = 1; simple_value = 2 }
static size_t encode_value(uint8_t *buf, size_t cap, const char *tag, float value) {
    Pb pb = {buf, cap, 0, 0};
    pb_string(&pb, 1, tag, strlen(tag));
    pb_float(&pb, 2, value);
    return pb.overflow ? 0 : pb.len;
}

size_t tb_encode_scalars_event(uint8_t *buf, size_t cap, double wall_time, int64_t step, int n,
                               const char *const *tags, const float *values) {
    Pb pb = {buf, cap, 0, 0};
    event_head(&pb, wall_time, step);
    size_t summary_len = 0, lens[64];
    uint8_t value[256];
    if (n > 64) return 0;
    for (int i = 0; i < n; i++) {  // Summary { repeated Value value = 1 }: each value's length first
        lens[i] = encode_value(value, sizeof value, tags[i], values[i]);
        if (!lens[i]) return 0;
        summary_len += 1 + varint_size(lens[i]) + lens[i];
    }
    pb_key(&pb, 5, 2);
    pb_varint(&pb, summary_len);
    for (int i = 0; i < n; i++) {
        encode_value(value, sizeof value, tags[i], values[i]);
        pb_string(&pb, 1, value, lens[i]);
    }
    return pb.overflow ? 0 : pb.len;
}

// ---- the file -----------------------------------------------------------------------------
static double wall_clock_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int write_event(TbWriter *w, const uint8_t *ev, size_t n) {
    if (!n) return givt_fail("%s: a TensorBoard event did not fit its buffer", w->path);
    if (tb_write_record(w->f, ev, n) != 0 || fflush(w->f) != 0)
        return givt_fail("%s: cannot write: %s", w->path, strerror(errno));
    return 0;
}

int tb_open(TbWriter *w, const char *dir, int64_t first_step) {
    char host[256] = "localhost", name[512];
    if (gethostname(host, sizeof host) != 0) snprintf(host, sizeof host, "localhost");
    host[sizeof host - 1] = '\0';
    for (char *c = host; *c; c++)
        if (*c == '/') *c = '_';
    // seconds and microseconds first: TensorBoard reads a folder's event files in name order
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    snprintf(name, sizeof name, "events.out.tfevents.%010ld.%06ld.%s.%ld", (long)now.tv_sec, now.tv_nsec / 1000, host,
             (long)getpid());
    w->path = fs_path_join(dir, name);
    w->f = fopen(w->path, "wbx");
    if (!w->f) {
        int rc = givt_fail("%s: cannot create: %s", w->path, strerror(errno));
        free(w->path);
        w->path = NULL;
        return rc;
    }
    uint8_t ev[64], start[64];
    double now_s = wall_clock_s();
    if (write_event(w, ev, tb_encode_version_event(ev, sizeof ev, now_s)) != 0 ||
        write_event(w, start, tb_encode_start_event(start, sizeof start, now_s, first_step)) != 0) {
        tb_close(w);
        return -1;
    }
    return 0;
}

int tb_write_scalars(TbWriter *w, int64_t step, int n, const char *const *tags, const double *values) {
    const char *t[16];
    float v[16];
    int k = 0;
    for (int i = 0; i < n && k < 16; i++)
        if (isfinite(values[i])) t[k] = tags[i], v[k++] = (float)values[i];
    uint8_t ev[2048];
    return write_event(w, ev, tb_encode_scalars_event(ev, sizeof ev, wall_clock_s(), step, k, t, v));
}

void tb_close(TbWriter *w) {
    if (w->f) fclose(w->f);
    free(w->path);
    w->f = NULL;
    w->path = NULL;
}
