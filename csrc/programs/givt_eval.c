// givt-eval: the mean Gaussian NLL of a Hugging Face GIVT folder over an .npy data set (N, T, D).
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data.h"
#include "hf.h"
#include "model.h"
#include "stop_signal.h"

static void usage(FILE *out) {
    fprintf(out,
            "usage: givt-eval FOLDER DATA.npy [--batch-size N] [--device auto|cpu|cuda] [--precision no|bf16]\n"
            "  FOLDER     a Hugging Face style folder: config.json + model.safetensors\n"
            "  DATA.npy   float32 or float16 array of shape (N, T, D), T <= block_size, D = input_dim\n"
            "Prints the mean Gaussian NLL over all N*T*D values (the seed's forward().loss),\n"
            "as 'loss = <value>', and nats/dim and bits/dim of the full likelihood.\n"
            "  --batch-size N   sequences per forward pass [8]\n"
            "  --device D       auto (cuda when present, else cpu) [auto], cpu or cuda\n"
            "  --precision P    no (float32 compute) [no] or bf16 (bfloat16 compute where the backend has it)\n");
}

static int parse_args(int argc, char **argv, const char **folder, const char **data, int *batch,
                      const char **device, Precision *precision) {
    int npos = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            exit(0);
        } else if (!strcmp(argv[i], "--batch-size") || !strncmp(argv[i], "--batch-size=", 13)) {
            const char *v = argv[i][12] == '=' ? argv[i] + 13 : (i + 1 < argc ? argv[++i] : NULL);
            long b = 0;
            if (util_parse_long_option("--batch-size", v, 1, 1 << 20, &b) != 0) return -1;
            *batch = (int)b;
        } else if (!strcmp(argv[i], "--device") || !strncmp(argv[i], "--device=", 9)) {
            *device = argv[i][8] == '=' ? argv[i] + 9 : (i + 1 < argc ? argv[++i] : NULL);
            if (!*device) {
                char names[128];
                backend_device_names(names, sizeof names, ", ");
                return givt_fail("--device: expected one of %s", names);
            }
        } else if (!strcmp(argv[i], "--precision") || !strncmp(argv[i], "--precision=", 12)) {
            const char *v = argv[i][11] == '=' ? argv[i] + 12 : (i + 1 < argc ? argv[++i] : NULL);
            if (!v) return givt_fail("--precision: expected no or bf16");
            if (backend_precision_parse(v, precision) != 0) return -1;
        } else if (argv[i][0] == '-' && argv[i][1]) {
            return givt_fail("unknown option %s (see --help)", argv[i]);
        } else if (npos == 0) {
            *folder = argv[i], npos++;
        } else if (npos == 1) {
            *data = argv[i], npos++;
        } else {
            return givt_fail("unexpected argument %s (see --help)", argv[i]);
        }
    }
    if (npos != 2) return givt_fail("expected FOLDER and DATA.npy (see --help)");
    return 0;
}

static int load_model(GivtModel *m, const char *folder, Backend *be) {
    GivtConfig cfg;
    if (hf_read_config(folder, &cfg) != 0) return -1;
    // the weights, the RoPE tables and one host copy of the weights while loading
    size_t need = size_add(model_weights_bytes(&cfg, be), size_mul(givt_config_num_params(&cfg), sizeof(float)));
    size_t free_bytes, total_bytes;
    backend_mem_info(be, &free_bytes, &total_bytes);
    double avail = (double)free_bytes;
    char nb[32], av[32];
    if (need == SIZE_MAX || (avail > 0 && (double)need > avail))
        return givt_fail("%s/config.json: the model's %zu parameters (hidden_dim = %d, intermediate_dim = %d, "
                         "num_layers = %d) need %s but %s are available",
                         folder, givt_config_num_params(&cfg), cfg.hidden_dim, cfg.intermediate_dim, cfg.num_layers,
                         util_human_bytes(nb, (double)need), util_human_bytes(av, avail));
    if (model_create(m, &cfg, be) != 0) return -1;
    return hf_model_load_weights(m, folder, &m->w);
}

static int open_data(Dataset *ds, const char *path, const GivtConfig *cfg) {
    DataConfig dc;
    data_config_default(&dc);
    dc.kind = DATA_NPY;
    dc.path = path;
    dc.seq_len = 0;  // the file's own T
    dc.input_dim = cfg->input_dim;
    dc.val_size = 0;
    if (data_open(ds, &dc) != 0) return -1;
    if (ds->nfiles != 1 || npy_ndim(&ds->files[0]) != 3)
        return givt_fail("%s: expected one array of shape (N, T, D)", path);
    if (data_seq_len(ds) > cfg->block_size)
        return givt_fail("%s: sequences of T = %d are longer than the model's block_size = %d", path,
                         data_seq_len(ds), cfg->block_size);
    return 0;
}

// Every path out of main, errors included, frees what was allocated (the sanitizer run checks it).
int main(int argc, char **argv) {
    const char *folder = NULL, *data_path = NULL, *device = "auto";
    Precision precision = PRECISION_NO;
    int batch = 8, rc = 1;
    Backend *be = NULL;
    GivtModel m;
    Dataset ds;
    memset(&m, 0, sizeof m);
    memset(&ds, 0, sizeof ds);
    float *host = NULL, *x = NULL;
    if (stop_signals_init("givt-eval") != 0 || parse_args(argc, argv, &folder, &data_path, &batch, &device, &precision) != 0 ||
        !(be = backend_open(device, precision)) ||
        load_model(&m, folder, be) != 0 || open_data(&ds, data_path, &m.cfg) != 0) {
        fprintf(stderr, "givt-eval: %s\n", givt_last_error());
        goto done;
    }
    int T = data_seq_len(&ds), D = m.cfg.input_dim;
    int64_t n = data_num_windows(&ds);
    if (batch > n) batch = (int)n;
    size_t acts = model_acts_bytes(&m.cfg, be, batch, T, 0, 0), free_bytes, total_bytes;
    backend_mem_info(be, &free_bytes, &total_bytes);
    double avail = (double)free_bytes;
    if (acts == SIZE_MAX || (avail > 0 && (double)acts > avail)) {
        char ab[32], av[32];
        fprintf(stderr, "givt-eval: --batch-size %d of T = %d needs %s of activations but %s are available: lower --batch-size\n",
                batch, T, util_human_bytes(ab, (double)acts), util_human_bytes(av, avail));
        goto done;
    }
    model_alloc_acts(&m, batch, T, 0, 0);
    host = xmalloc((size_t)batch * T * D * sizeof(float));
    x = be->ops->alloc(be, (size_t)batch * T * D * sizeof(float));
    double sum = 0.0, t0 = util_time_now_s();
    long count = 0;
    int tty = isatty(fileno(stderr));
    int64_t nbatches = (n + batch - 1) / batch;
    int64_t k = 0, seen = 0;
    for (; k < nbatches && !stop_requested(); k++) {
        int got = data_all_batch(&ds, k, batch, host);
        if (got < 0) {
            if (tty) fputc('\n', stderr);
            fprintf(stderr, "givt-eval: %s\n", givt_last_error());
            goto done;
        }
        be->ops->upload(be, x, host, (size_t)got * T * D * sizeof(float));
        ModelLoss l = model_eval_loss(&m, &m.w, x, got, T, 0);
        sum += l.loss_sum;
        count += l.count;
        seen += got;
        if (tty && (k % 16 == 15 || k + 1 == nbatches))
            fprintf(stderr, "\reval %lld/%lld sequences, %.1f s", (long long)((k + 1) * batch < n ? (k + 1) * batch : n),
                    (long long)n, util_time_now_s() - t0);
    }
    if (tty) fputc('\n', stderr);
    if (k < nbatches) {  // a stop signal: what was measured is said as such, never as the whole set's loss
        fprintf(stderr, "givt-eval: stopped by %s after %lld of %lld sequences", strsignal(stop_requested()),
                (long long)seen, (long long)n);
        if (count > 0) fprintf(stderr, ": their mean loss is %.9g (not the data set's)", sum / (double)count);
        fputc('\n', stderr);
        rc = STOP_EXIT_STATUS;
        goto done;
    }
    double loss = sum / (double)count, nats = loss + 0.5 * GIVT_LOG_2PI;
    printf("loss = %.9g\n", loss);
    printf("nats/dim = %.9g\n", nats);
    printf("bits/dim = %.9g\n", nats / log(2.0));
    printf("sequences = %lld, T = %d, D = %d\n", (long long)n, T, D);
    rc = isfinite(loss) ? 0 : 1;
    if (rc) fprintf(stderr, "givt-eval: the loss is %g, not a finite number\n", loss);
done:
    if (x) be->ops->free(be, x);
    free(host);
    data_close(&ds);
    model_free(&m);
    backend_close(be);
    return rc;
}
