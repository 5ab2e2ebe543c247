// fuzz_ini: the INI parser, "section.key=value" overrides and the validation of givt-train's
// configuration (train_config_load_string), then what a validated configuration feeds: the
// parameter table (param_table_build) and the activation memory estimate (model_acts_bytes).
//
// Input: INI text, then up to 8 overrides, separated by NUL bytes:
//   "[model]\nnum_layers = 2\n...\0train.lr=3e-4\0data.kind=dummy"
// Properties checked beyond "no crash, no sanitizer report, no exit":
//   - the table has 4 + 7 L tensors whose slots tile its total (each at a multiple of PARAM_ALIGN but
//     fc2, right after fc1; each slot holds its numel and less than PARAM_ALIGN of padding) and
//     whose sizes add up to its params;
//   - the activation estimate for training is not below the one for inference (no wrapped size);
//   - the resolved configuration written by train_config_write_ini loads back to the same values.
#define FUZZ_WITH_TRAIN_CONFIG  // fuzz_check_config_round_trip
#include "fuzz_util.h"

#include "model.h"
#include "train_config.h"
#include "util.h"

#define MAX_OVERRIDES 8

static void check_table(const GivtConfig *m) {
    ParamTable pt;
    param_table_build(&pt, m);
    FUZZ_CHECK(pt.count == 4 + P_PER_LAYER * m->num_layers, "count %d, num_layers %d", pt.count, m->num_layers);
    size_t end = 0, params = 0;
    for (int i = 0; i < pt.count; i++) {
        const ParamSpec *s = &pt.specs[i];
        int fc2 = strstr(s->name, ".mlp.fc2.") != NULL;
        FUZZ_CHECK(s->offset == end, "tensor %s at offset %zu, expected %zu", s->name, s->offset, end);
        FUZZ_CHECK(fc2 || s->offset % PARAM_ALIGN == 0, "tensor %s at offset %zu: not aligned", s->name, s->offset);
        FUZZ_CHECK(s->slot >= s->numel && s->slot - s->numel < PARAM_ALIGN, "tensor %s: numel %zu, slot %zu", s->name,
                   s->numel, s->slot);
        FUZZ_CHECK(s->shape[0] > 0 && (s->ndim == 1 || s->shape[1] > 0), "tensor %s: shape [%d, %d]", s->name,
                   s->shape[0], s->shape[1]);
        end = s->offset + s->slot;
        params += s->numel;
    }
    FUZZ_CHECK(end == pt.total, "slots end at %zu, total %zu", end, pt.total);
    FUZZ_CHECK(params == pt.params, "sizes add up to %zu, params %zu", params, pt.params);
    FUZZ_CHECK(param_table_find(&pt, "model.head.weight") == pt.head, "head not found");
    FUZZ_CHECK(param_table_find(&pt, "model.embed.weight") == pt.embed, "embed not found");
    param_table_free(&pt);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *parts[1 + MAX_OVERRIDES];  // the INI text, then the overrides
    int n;
    char *buf = fuzz_split_at_nul(data, size, parts, 1 + MAX_OVERRIDES, &n);
    TrainConfig *c = malloc(sizeof *c);
    if (train_config_load_string(c, parts[0], "fuzz.ini", n - 1, parts + 1) == 0) {
        FUZZ_CHECK(train_config_validate(c) == 0, "loaded but does not validate: %s", givt_last_error());
        const GivtConfig *m = &c->model;
        FUZZ_MAGNITUDE(m->num_layers);
        FUZZ_MAGNITUDE(m->hidden_dim);
        FUZZ_MAGNITUDE(m->intermediate_dim);
        FUZZ_MAGNITUDE(m->input_dim);
        FUZZ_MAGNITUDE(m->num_heads);
        FUZZ_MAGNITUDE(m->block_size);
        FUZZ_MAGNITUDE(c->train.batch_size);
        FUZZ_MAGNITUDE(c->data.seq_len);
        check_table(&c->model);
        // training keeps every buffer inference has, and more: a smaller estimate means a size wrapped
        static Backend *be;  // the CPU backend's sizes (the attention state it saves); opened once
        if (!be) be = backend_open("cpu", PRECISION_NO);
        size_t train = model_acts_bytes(&c->model, be, c->train.batch_size, c->data.seq_len, 1,
                                        c->train.gradient_checkpointing);
        size_t infer = model_acts_bytes(&c->model, be, c->train.batch_size, c->data.seq_len, 0, 0);
        FUZZ_CHECK(train >= infer, "activations: training %zu bytes < inference %zu bytes", train, infer);
        fuzz_check_config_round_trip(c);
    }
    free(c);
    free(buf);
    return 0;
}
