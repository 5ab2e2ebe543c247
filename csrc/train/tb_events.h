// tb_events: TensorBoard event files written by hand: TFRecord framing around serialized Event
// protobufs holding scalars, as `tensorboard --logdir` reads them.
//
// A file is a sequence of records: uint64 length (little-endian), uint32 masked CRC-32C of those 8
// bytes, the data, uint32 masked CRC-32C of the data (mask: ((crc >> 15) | (crc << 17)) + 0xa282ead8).
// The data is an Event: wall_time (field 1, double), step (2, int64), and one of file_version (3,
// string; "brain.Event:2" in the first event of a file), summary (5) { value (1) { tag (1, string),
// simple_value (2, float) } ... } or session_log (7) { status (1): START (1) }.
// TensorBoard (file version 2) drops, at a SessionLog START of step s, every event it has read with a
// step >= s: a run resumed from a checkpoint says START at its first step, so that the steps an earlier
// run logged after that checkpoint (before it was stopped or killed) give way to the new ones, as
// metrics.jsonl's lines do.
#ifndef GIVT_TB_EVENTS_H
#define GIVT_TB_EVENTS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

// CRC-32C (Castagnoli, reflected polynomial 0x82f63b78) of n bytes: tb_crc32c("123456789") = 0xe3069283.
uint32_t tb_crc32c(const void *data, size_t n);
// The masked form that TFRecord stores.
uint32_t tb_masked_crc32c(const void *data, size_t n);

// Writes one record (the framing above) of n bytes of data to f; 0, or -1 on a write error (givt_fail).
int tb_write_record(FILE *f, const void *data, size_t n);

// Serialized Events into buf of cap bytes; the length, or 0 when it would not fit.
size_t tb_encode_version_event(uint8_t *buf, size_t cap, double wall_time);
size_t tb_encode_start_event(uint8_t *buf, size_t cap, double wall_time, int64_t step);
size_t tb_encode_scalars_event(uint8_t *buf, size_t cap, double wall_time, int64_t step, int n,
                               const char *const *tags, const float *values);

// An event file being written.
typedef struct {
    FILE *f;
    char *path;
} TbWriter;

// Creates dir/events.out.tfevents.<seconds>.<microseconds>.<host>.<pid> (a new file per run, so a resumed
// run adds one beside the earlier ones; TensorBoard reads them in name order, which is the order they
// were made in, and a resumed run's steps replace those logged after its checkpoint) and writes its
// first events: file_version, and a SessionLog START at first_step (the first step this run can log).
int tb_open(TbWriter *w, const char *dir, int64_t first_step);
// One event at step with n scalars (non-finite values are left out), then the file is flushed.
int tb_write_scalars(TbWriter *w, int64_t step, int n, const char *const *tags, const double *values);
void tb_close(TbWriter *w);

#endif
