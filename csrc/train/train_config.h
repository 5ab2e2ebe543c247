// train_config: the configuration of givt-train ([model], [train], [data]), read from an INI file
// plus "section.key=value" overrides and validated, all driven by one table of keys.
#ifndef GIVT_TRAIN_CONFIG_H
#define GIVT_TRAIN_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "model.h"
#include "optim.h"  // LrSchedule

#define TRAIN_CONFIG_STR_MAX 4096  // longest string value (paths), including the NUL
// Upper limits of [train] and [data] sizes (the [model] ones are model.h's GIVT_MAX_*).
#define TRAIN_MAX_BATCH_SIZE 1048576
#define TRAIN_MAX_GRAD_ACCUM 65536
#define TRAIN_MAX_DUMMY_SIZE ((int64_t)1 << 40)

// Values of the enum keys, in the order of their choices (lr_schedule uses optim.h's LrSchedule,
// mixed_precision backend.h's Precision).
enum { DATA_KIND_NPY, DATA_KIND_DUMMY };
typedef enum { CUDA_GRAPHS_AUTO, CUDA_GRAPHS_ON, CUDA_GRAPHS_OFF } CudaGraphs;  // [train] cuda_graphs
typedef enum { GRAD_REDUCE_FP32, GRAD_REDUCE_BF16 } GradReduceDtype;           // [train] grad_reduce_dtype  // [data] kind (data.h's DataKind is the loader's)

// [train]: the seed's TrainConfig, plus what this engine adds (schedules, checkpoints, device).
typedef struct {
    int batch_size;
    double lr;
    double weight_decay;
    double lr_eps;
    double lr_betas[2];
    double grad_norm;      // 0 = no clipping
    int64_t warmup_steps;
    double timescale;      // of the inverse square root schedule
    int lr_schedule;       // LrSchedule
    double min_lr_ratio;   // cosine: the final lr is lr * min_lr_ratio
    int64_t max_steps;
    int grad_accum_steps;
    double ema;            // power of the Karras-style EMA of the weights; 0 = no EMA (empty in INI)
    int mixed_precision;   // Precision (backend.h): its names are the choices
    int gradient_checkpointing;
    int64_t log_every;
    int64_t val_every;     // 0 = no validation
    int64_t val_size;      // held-out sequences
    int64_t save_every;    // 0 = no periodic checkpoints
    int keep_checkpoints;  // 0 = keep all
    int keep_best;         // the checkpoint of the lowest val_loss is kept out of the keep_checkpoints rotation
    int tensorboard;       // TensorBoard event files in out_dir (rank 0)
    uint64_t seed;
    char out_dir[TRAIN_CONFIG_STR_MAX];
    char resume_from_ckpt[TRAIN_CONFIG_STR_MAX];  // "" | a checkpoint folder | "latest" (in out_dir)
    char init_from[TRAIN_CONFIG_STR_MAX];         // "" | a Hugging Face style folder
    char device[BACKEND_NAME_MAX];                // "auto" or a backend of the registry (backend.h)
    double peak_tflops;                           // of the device, for the MFU figure; 0 = unknown
    int zero;                                     // ZeRO stage: 0 off, 1 AdamW state split over ranks
    double hang_timeout;                          // s without progress that end a multi-rank job; 0 = never
    double label_drop;                            // class-conditional: share of labels replaced by "no label"
    int cuda_graphs;                              // CudaGraphs: the step as a CUDA graph
    int grad_reduce_dtype;                        // GradReduceDtype: of the gradients between ranks
} TrainSettings;

// [data]
typedef struct {
    int kind;                         // DATA_KIND_NPY | DATA_KIND_DUMMY
    char path[TRAIN_CONFIG_STR_MAX];  // npy: a file, a comma-separated list, or a glob
    int seq_len;
    int64_t dummy_size;               // dummy: number of sequences
    char labels[TRAIN_CONFIG_STR_MAX];  // class labels (.npy, one per sequence); "" = none
} DataSettings;

typedef struct {
    GivtConfig model;
    TrainSettings train;
    DataSettings data;
    // Not a key: how many [model] keys train_config_load took from [train] init_from's config.json,
    // those the INI and the overrides leave out (0: none).
    int model_keys_from_init;
} TrainConfig;

// ---- the table of keys --------------------------------------------------------------------
typedef enum {
    CFG_INT,     // int
    CFG_I64,     // int64_t
    CFG_U64,     // uint64_t
    CFG_F64,     // double
    CFG_F64_OPT, // double; empty text <-> 0 (off)
    CFG_PAIR,    // double[2], written "a, b"
    CFG_BOOL,    // int 0/1: true/false, yes/no, 1/0, on/off
    CFG_ENUM,    // int index into choices
    CFG_STR,     // char[TRAIN_CONFIG_STR_MAX]
    CFG_DEVICE,  // char[BACKEND_NAME_MAX]: "auto" or a registry name (backend_device_lookup, any case)
} ConfigType;

typedef struct {
    const char *section, *key;
    ConfigType type;
    size_t offset, size;          // of the field in TrainConfig
    const char *def;              // default as text; NULL: givt_config_default's value ([model])
    const char *help;             // one line
    int range;                    // util.h's RANGE_* flags against lo / hi
    double lo, hi;
    const char *const *choices;   // CFG_ENUM: NULL-terminated
} ConfigKey;

// The table, in section order; *n gets its length.
const ConfigKey *train_config_keys(int *n);

// ---- use ------------------------------------------------------------------------------------
void train_config_default(TrainConfig *c);
// Defaults, then ini_path (may be NULL), then overrides "section.key=value" in order, then
// validation. 0, or -1 with a message "FILE:LINE: [section] key = value: reason" via givt_fail.
int train_config_load(TrainConfig *c, const char *ini_path, int n_overrides, char **overrides);
// As train_config_load, with INI text in memory (file_name names it in messages).
int train_config_load_string(TrainConfig *c, const char *text, const char *file_name, int n_overrides,
                             char **overrides);
// Sets one key from text (as if read from an INI file); where names the source in messages.
int train_config_set(TrainConfig *c, const char *section, const char *key, const char *value,
                     const char *where);
// Ranges of each key and the consistency between keys (files named by data.path must exist).
int train_config_validate(const TrainConfig *c);
// Defaults, then the values of the INI file at path as they are, without validation (a checkpoint's
// train.ini, whose data may have moved since): keys this version does not know are skipped, so are
// values it cannot read. 0, or -1 with givt_fail when the file cannot be read or parsed.
int train_config_read_unchecked(TrainConfig *c, const char *path);
// The [train] and [data] keys whose values differ from old to now, one line each,
// "<indent>[section] key: OLD -> NOW" (resume_from_ckpt left out: it only says where a run starts);
// malloc'd, NULL when none differs. *count (may be NULL) gets the number of lines.
char *train_config_changes(const TrainConfig *old, const TrainConfig *now, const char *indent, int *count);

// The current value of key k as INI text (what train_config_set reads back to the same value).
void train_config_format(const TrainConfig *c, const ConfigKey *k, char *buf, size_t n);
// Every key grouped by section: "  key = default  description (accepted values)".
void train_config_help(FILE *out);
// The resolved configuration as an INI file that train_config_load reads back to the same struct.
int train_config_write_ini(FILE *out, const TrainConfig *c);
// Same, written atomically to path.
int train_config_save(const TrainConfig *c, const char *path);

const char *lr_schedule_name(int s);
const char *train_data_kind_name(int k);

#endif
