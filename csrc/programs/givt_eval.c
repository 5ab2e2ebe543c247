// givt-eval: the mean Gaussian NLL of a model (a Hugging Face folder or a givt-train checkpoint) over
// .npy data, or over the training or validation windows of a run (--config): the data module reads
// them as the trainer does (evaluate.h), so --split val is the trainer's validation.
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "evaluate.h"
#include "fs.h"
#include "hf.h"
#include "model.h"
#include "stop_signal.h"

static void usage(FILE *out) {
    fprintf(out,
            "usage: givt-eval FOLDER [DATA] [--config TRAIN.ini] [--split all|train|val] [--labels LABELS.npy]\n"
            "                 [--ema] [--seq-len L] [--batch-size N] [--device auto|cpu|cuda] [--precision no|bf16]\n"
            "  FOLDER     a Hugging Face style folder (config.json + model.safetensors) or a givt-train checkpoint\n"
            "  DATA       .npy data as [data] path takes them: a file, a comma-separated list or a glob of\n"
            "             (N, T, D) sequences or (M, D) streams, float32 or float16, D = input_dim\n"
            "Prints the mean Gaussian NLL over all values of the windows (the seed's forward().loss) as\n"
            "'loss = <value>', and nats/dim and bits/dim of the full likelihood.\n"
            "  --config INI     a run's train.ini: its data, seq_len, seed, val_size, labels and batch_size,\n"
            "                   so that --split val is the trainer's held-out windows (DATA, --labels and\n"
            "                   --seq-len replace its values when given) [FOLDER/train.ini with --split train|val]\n"
            "  --split S        all: every window, in file order [all]; train or val: that part of the run's split\n"
            "  --labels L       int32/int64 (N,): the class of each sequence, for class-conditional models (as\n"
            "                   [data] labels); without labels such a model is evaluated with \"no label\"\n"
            "  --ema            the checkpoint's ema.safetensors (what the trainer validates with when [train]\n"
            "                   ema is on) instead of model.safetensors\n"
            "  --seq-len L      window length: longer sequences and (M, D) streams are cut into windows of L\n"
            "                   [T of the data when <= block_size, else block_size; with --config its seq_len]\n"
            "  --batch-size N   windows per forward pass [8; with --config its batch_size]\n"
            "  --device D       auto (cuda when present, else cpu) [auto], cpu or cuda\n"
            "  --precision P    no (float32 compute) [no] or bf16 (bfloat16 compute where the backend has it)\n");
}

typedef struct {
    const char *folder, *data, *config, *labels, *device;
    DataSplit split;
    int batch, seq_len, ema;
    Precision precision;
} Args;

// Is argv[*i] option name, as "--name V" or "--name=V"? *v gets V (NULL when missing).
static int is_opt(int argc, char **argv, int *i, const char *name, const char **v) {
    size_t n = strlen(name);
    if (strncmp(argv[*i], name, n) != 0 || (argv[*i][n] != '\0' && argv[*i][n] != '=')) return 0;
    *v = argv[*i][n] == '=' ? argv[*i] + n + 1 : (*i + 1 < argc ? argv[++*i] : NULL);
    return 1;
}

// An option with a value into a; 1 when argv[*i] was one (its result in *rc), else 0.
static int value_option(int argc, char **argv, int *i, Args *a, int *rc) {
    const char *v;
    long x = 0;
    *rc = 0;
    if (is_opt(argc, argv, i, "--batch-size", &v)) {
        *rc = util_parse_long_option("--batch-size", v, 1, 1 << 20, &x);
        a->batch = (int)x;
    } else if (is_opt(argc, argv, i, "--seq-len", &v)) {
        *rc = util_parse_long_option("--seq-len", v, 1, 1 << 30, &x);
        a->seq_len = (int)x;
    } else if (is_opt(argc, argv, i, "--device", &v)) {
        char names[128];
        backend_device_names(names, sizeof names, ", ");
        *rc = (a->device = v) ? 0 : givt_fail("--device: expected one of %s", names);
    } else if (is_opt(argc, argv, i, "--precision", &v)) {
        *rc = !v ? givt_fail("--precision: expected no or bf16") : backend_precision_parse(v, &a->precision);
    } else if (is_opt(argc, argv, i, "--split", &v)) {
        *rc = data_split_parse(v, &a->split) ? givt_fail("--split: %s", givt_last_error()) : 0;
    } else if (is_opt(argc, argv, i, "--config", &v)) {
        *rc = (a->config = v) ? 0 : givt_fail("--config: expected a file (a run's train.ini)");
    } else if (is_opt(argc, argv, i, "--labels", &v)) {
        *rc = (a->labels = v) ? 0 : givt_fail("--labels: expected a file (int32/int64, one label per sequence)");
    } else {
        return 0;
    }
    return 1;
}

static int parse_args(int argc, char **argv, Args *a) {
    int npos = 0, rc;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            exit(0);
        } else if (!strcmp(argv[i], "--ema")) {
            a->ema = 1;
        } else if (value_option(argc, argv, &i, a, &rc)) {
            if (rc) return -1;
        } else if (argv[i][0] == '-' && argv[i][1]) {
            return givt_fail("unknown option %s (see --help)", argv[i]);
        } else if (npos < 2) {
            *(npos++ ? &a->data : &a->folder) = argv[i];
        } else {
            return givt_fail("unexpected argument %s (see --help)", argv[i]);
        }
    }
    if (!a->folder || (!a->data && !a->config && a->split == DATA_SPLIT_ALL))
        return givt_fail("expected FOLDER and DATA.npy, or FOLDER and --config TRAIN.ini (see --help)");
    return 0;
}

static int load_model(GivtModel *m, const Args *a, Backend *be) {
    GivtConfig cfg;
    if (hf_read_config(a->folder, &cfg) != 0) return -1;
    // the weights, the RoPE tables and one host copy of the weights while loading
    size_t need = size_add(model_weights_bytes(&cfg, be), size_mul(givt_config_num_params(&cfg), sizeof(float)));
    size_t free_bytes, total_bytes;
    backend_mem_info(be, &free_bytes, &total_bytes);
    double avail = (double)free_bytes;
    char nb[32], av[32];
    if (need == SIZE_MAX || (avail > 0 && (double)need > avail))
        return givt_fail("%s/config.json: the model's %zu parameters (hidden_dim = %d, intermediate_dim = %d, "
                         "num_layers = %d) need %s but %s are available",
                         a->folder, givt_config_num_params(&cfg), cfg.hidden_dim, cfg.intermediate_dim, cfg.num_layers,
                         util_human_bytes(nb, (double)need), util_human_bytes(av, avail));
    if (model_create(m, &cfg, be) != 0) return -1;
    return hf_model_load_checkpoint_weights(m, a->folder, a->ema, &m->w);
}

// "section.key=\"value\"" (quoted, as an override reads it) into a new string.
static char *override(const char *key, const char *value) {
    size_t n = strlen(key) + 2 * strlen(value) + 4;
    char *s = xmalloc(n), *p = s + sprintf(s, "%s=\"", key);
    for (const char *v = value; *v; v++) {
        if (*v == '"' || *v == '\\') *p++ = '\\';
        *p++ = *v;
    }
    strcpy(p, "\"");
    return s;
}

// The run's configuration (--config, or FOLDER/train.ini for --split train|val) into tc, with DATA,
// --labels and --seq-len in place of its values; its [model] must be the folder's config.json.
static int load_run_config(const Args *a, const GivtConfig *model, TrainConfig *tc, char **ini) {
    *ini = a->config ? xstrdup(a->config) : fs_path_join(a->folder, "train.ini");
    if (!a->config && !fs_path_exists(*ini))
        return givt_fail("--split %s needs the run's configuration: --config TRAIN.ini (givt-train writes it to "
                         "out_dir/train.ini and into every checkpoint; %s has none)",
                         data_split_name(a->split), a->folder);
    char *ov[6], seq[48];
    int n = 0;
    ov[n++] = xstrdup("train.resume_from_ckpt=");  // what resumes or initialises a run does not matter here
    ov[n++] = xstrdup("train.init_from=");
    if (a->data) ov[n++] = xstrdup("data.kind=npy"), ov[n++] = override("data.path", a->data);
    if (a->labels) ov[n++] = override("data.labels", a->labels);
    if (a->seq_len) snprintf(seq, sizeof seq, "data.seq_len=%d", a->seq_len), ov[n++] = xstrdup(seq);
    int rc = train_config_load(tc, *ini, n, ov);
    for (int i = 0; i < n; i++) free(ov[i]);
    char va[64], vb[64];
    const char *key = rc ? NULL : givt_config_diff(&tc->model, model, va, vb, sizeof va);
    if (key)
        rc = givt_fail("%s: [model] %s = %s, but %s/config.json has %s = %s: evaluate a model with the configuration "
                       "it was trained with",
                       *ini, key, va, a->folder, key, vb);
    return rc;
}

// Without a configuration: DATA as [data] path, windows of --seq-len (or the default), no split.
static int plain_data_config(const Args *a, const GivtConfig *model, DataConfig *dc) {
    data_config_default(dc);
    dc->kind = DATA_NPY;
    dc->path = a->data;
    dc->input_dim = model->input_dim;
    dc->labels_path = a->labels;
    dc->num_classes = model->num_classes;
    dc->seq_len = a->seq_len;
    if (a->seq_len > model->block_size)
        return givt_fail("--seq-len %d: at most the model's block_size = %d", a->seq_len, model->block_size);
    char note[1024];
    if (!a->seq_len && evaluate_default_seq_len(a->data, model->block_size, &dc->seq_len, note, sizeof note)) return -1;
    if (!a->seq_len && note[0]) fprintf(stderr, "givt-eval: note: %s\n", note);
    return 0;
}

// The notes that say what is evaluated when it may not be what was meant.
static void notes(const Args *a, const GivtConfig *model, const DataConfig *dc, const TrainConfig *tc, const char *ini) {
    if (model->num_classes > 0 && !(dc->labels_path && *dc->labels_path))
        fprintf(stderr,
                "givt-eval: note: the model is class-conditional (num_classes = %d) and no labels were given: every "
                "window is evaluated with the \"no label\" class (--labels FILE for the conditional loss)\n",
                model->num_classes);
    if (tc && tc->train.ema > 0 && !a->ema)
        fprintf(stderr,
                "givt-eval: note: %s has [train] ema = %g: the trainer's val_loss is of the EMA weights (--ema "
                "evaluates those)\n",
                ini, tc->train.ema);
}

// The data set (and batch size) for a: a run's configuration, or DATA alone.
static int open_data(const Args *a, const GivtConfig *model, Dataset *ds, int *batch, TrainConfig *tc) {
    if (a->labels && model->num_classes == 0)
        return givt_fail("--labels %s: the model %s is unconditional (num_classes = 0 in its config.json): it takes "
                         "no labels",
                         a->labels, a->folder);
    int use_config = a->config || a->split != DATA_SPLIT_ALL;
    char *ini = NULL;
    DataConfig dc;
    int rc = use_config ? load_run_config(a, model, tc, &ini) : plain_data_config(a, model, &dc);
    if (rc == 0 && use_config) evaluate_data_config(tc, &dc);
    if (rc == 0) notes(a, model, &dc, use_config ? tc : NULL, ini);
    if (rc == 0 && (rc = data_open(ds, &dc)) == 0 && data_split_size(ds, a->split) < 1)
        rc = givt_fail("%s: the %s split holds no windows ([train] val_size = %lld)", ini, data_split_name(a->split),
                       (long long)dc.val_size);
    if (rc == 0 && a->split != DATA_SPLIT_ALL)
        printf("split = %s: %lld of %lld windows (%s: seed %llu, val_size %lld)\n", data_split_name(a->split),
               (long long)data_split_size(ds, a->split), (long long)data_num_windows(ds), ini,
               (unsigned long long)dc.seed, (long long)dc.val_size);
    *batch = a->batch ? a->batch : use_config ? tc->train.batch_size : 8;
    free(ini);
    return rc;
}

static int report(const Args *a, const EvalResult *r, const Dataset *ds, int D) {
    if (r->stopped) {  // a stop signal: what was measured is said as such, never as the whole set's loss
        fprintf(stderr, "givt-eval: stopped by %s after %lld of %lld windows", strsignal(stop_requested()),
                (long long)r->windows, (long long)r->total);
        if (r->count > 0) fprintf(stderr, ": their mean loss is %.9g (not the data set's)", r->loss_sum / (double)r->count);
        fputc('\n', stderr);
        return STOP_EXIT_STATUS;
    }
    double loss = r->loss_sum / (double)r->count, nats = loss + 0.5 * GIVT_LOG_2PI;
    printf("loss = %.9g\n", loss);
    printf("nats/dim = %.9g\n", nats);
    printf("bits/dim = %.9g\n", nats / log(2.0));
    printf("sequences = %lld, T = %d, D = %d%s\n", (long long)r->windows, data_seq_len(ds), D,
           a->ema ? " (EMA weights)" : "");
    if (isfinite(loss)) return 0;
    fprintf(stderr, "givt-eval: the loss is %g, not a finite number\n", loss);
    return 1;
}

// Every path out of main, errors included, frees what was allocated (the sanitizer run checks it).
int main(int argc, char **argv) {
    Args a = {.device = "auto", .precision = PRECISION_NO};
    int rc = 1, batch = 8;
    Backend *be = NULL;
    GivtModel m;
    Dataset ds;
    EvalResult r;
    memset(&m, 0, sizeof m);
    memset(&ds, 0, sizeof ds);
    TrainConfig *tc = xcalloc(1, sizeof *tc);
    if (stop_signals_init("givt-eval") != 0 || parse_args(argc, argv, &a) != 0 ||
        !(be = backend_open(a.device, a.precision)) || load_model(&m, &a, be) != 0 ||
        open_data(&a, &m.cfg, &ds, &batch, tc) != 0 || evaluate_loss(&m, &m.w, &ds, a.split, batch, 1, &r) != 0)
        fprintf(stderr, "givt-eval: %s\n", givt_last_error());
    else
        rc = report(&a, &r, &ds, m.cfg.input_dim);
    data_close(&ds);
    model_free(&m);
    backend_close(be);
    free(tc);
    return rc;
}
