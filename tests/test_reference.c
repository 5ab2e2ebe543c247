// test_reference: the CPU engine's forward (loss, mu, std) and every gradient against the float64 PyTorch reference in tests/reference.bin.
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fs.h"
#include "harness.h"
#include "model.h"
#include "refdata.h"

// Tolerances. The engine is float32 throughout (double only in the loss sum), the reference float64:
// - loss: relative 1e-5 (a mean of O(1) terms, each within a few float32 ulps of the exact value)
// - mu, std: max per-element |got - want| / max(|want|, floor) <= 1e-4, floor = max(1e-6,
//   0.1 * rms(want)): a few hundred float32 roundings through 2 layers land near 1e-7..1e-6
//   absolute on O(1) values. The floor is relative to the tensor's scale because an element
//   that cancels to near zero carries the absolute error of its O(1) terms: in case b PyTorch's
//   own float32 forward is 4.7e-7 off at most (rms of mu 0.48), 5e-5 relative on an element of
//   4e-3, and this engine was 1.5e-4 relative on a small element with a floor of 1e-6 only.
// - each gradient tensor: ||got - want|| / ||want|| <= 1e-4 (norm-wise: elements that cancel to
//   near zero would make a per-element test meaningless)
#define TOL_LOSS 1e-5
#define TOL_OUT 1e-4
#define OUT_FLOOR_MIN 1e-6
#define OUT_FLOOR_REL 0.1
#define TOL_GRAD 1e-4

static Backend *g_be;  // the CPU backend, for the cases of one test

static int upload_weights(GivtModel *m, const RefCase *rc) {
    const ParamTable *pt = &m->table;
    int ok = 1;
    CHECK(rc->nparams == pt->count, "%s: reference has %d tensors, model table %d", rc->label, rc->nparams,
          pt->count);
    for (int i = 0; i < pt->count; i++) {
        const ParamSpec *s = &pt->specs[i];
        const RefTensor *t = ref_find(rc->params, rc->nparams, s->name);
        if (!t) {
            t_fail_at(__FILE__, __LINE__, "%s: reference lacks %s", rc->label, s->name);
            ok = 0;
            continue;
        }
        int same = t->ndim == s->ndim && t->numel == s->numel && t->shape[0] == s->shape[0] &&
                   (s->ndim == 1 || t->shape[1] == s->shape[1]);
        if (!same) {
            t_fail_at(__FILE__, __LINE__, "%s: %s: reference shape differs from the table's", rc->label, s->name);
            ok = 0;
            continue;
        }
        float *host = xmalloc(s->numel * sizeof(float));
        for (size_t j = 0; j < s->numel; j++) host[j] = (float)t->data[j];  // exact: stored as float32
        m->be->ops->upload(m->be, m->w.master + s->offset, host, s->numel * sizeof(float));
        free(host);
    }
    // every table tensor found by name, and param_table_find agrees with the table
    for (int i = 0; i < rc->nparams; i++) CHECK(param_table_find(pt, rc->params[i].name) >= 0, "%s", rc->params[i].name);
    return ok;
}

// max over elements of |got - want| / max(|want|, floor), floor = max(1e-6, 0.1 * rms(want))
static double max_rel(const float *got, const double *want, size_t n) {
    double ss = 0;
    for (size_t i = 0; i < n; i++) ss += want[i] * want[i];
    double floor_ = fmax(OUT_FLOOR_MIN, OUT_FLOOR_REL * sqrt(ss / (double)n));
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want[i]) / fmax(fabs(want[i]), floor_);
        if (!(d <= worst)) worst = d;  // NaN propagates as a failure
    }
    return worst;
}

// Gradient checkpointing recomputes each layer in backward: the loss and every gradient must be
// the same bits as without it.
static void check_checkpointing_is_bit_exact(const RefCase *rc, const float *xh, double loss, const float *g) {
    GivtModel m;
    CHECK(model_create(&m, &rc->cfg, g_be) == 0, "%s", givt_last_error());
    int B = rc->B, T = rc->T;
    size_t btd = (size_t)B * T * rc->cfg.input_dim;
    model_alloc_acts(&m, B, T, 1, 1);
    model_alloc_grads(&m);
    if (!upload_weights(&m, rc)) return model_free(&m);
    float *xd = m.be->ops->alloc(m.be, btd * sizeof(float));
    m.be->ops->upload(m.be, xd, xh, btd * sizeof(float));
    model_zero_grads(&m);
    ModelLoss L = model_eval_loss(&m, &m.w, xd, B, T, rc->full);
    model_loss(&m, m.scalars + SCALAR_LOSS_SUM, 1.0f);  // the gradient of the mean loss
    model_backward(&m, &m.w);
    float *g2 = xmalloc(m.table.total * sizeof(float));
    m.be->ops->download(m.be, g2, m.grads, m.table.total * sizeof(float));
    CHECK(L.loss == loss, "%s: loss with checkpointing %.17g vs %.17g", rc->label, L.loss, loss);
    CHECK(memcmp(g, g2, m.table.total * sizeof(float)) == 0, "%s: gradients differ with checkpointing", rc->label);
    free(g2);
    m.be->ops->free(m.be, xd);
    model_free(&m);
}

// The gradients of the mean loss (after a forward pass of m on the case's input) against the
// case's, tensor by tensor: ||diff|| / ||ref|| <= TOL_GRAD (||diff|| when the reference is exactly 0,
// as bos is in a class-conditional model). Returns the worst ratio, its tensor in *worst_name and the
// gradients (host copy, to be freed) in *g.
static double check_gradients(GivtModel *m, const RefCase *rc, float **g, const char **worst_name) {
    model_zero_grads(m);
    model_loss(m, m->scalars + SCALAR_LOSS_SUM, 1.0f);
    model_backward(m, &m->w);
    *g = xmalloc(m->table.total * sizeof(float));
    m->be->ops->download(m->be, *g, m->grads, m->table.total * sizeof(float));
    double worst = 0;
    for (int i = 0; i < m->table.count; i++) {
        const ParamSpec *s = &m->table.specs[i];
        const RefTensor *t = ref_find(rc->grads, rc->ngrads, s->name);
        CHECK(t && t->numel == s->numel, "%s: reference gradient %s missing or misshapen", rc->label, s->name);
        if (!t || t->numel != s->numel) continue;
        double dd = 0, rr = 0;
        for (size_t j = 0; j < s->numel; j++) {
            double d = (double)(*g)[s->offset + j] - t->data[j];
            dd += d * d;
            rr += t->data[j] * t->data[j];
        }
        double ratio = rr == 0 ? sqrt(dd) : sqrt(dd) / sqrt(rr);
        CHECK(ratio <= TOL_GRAD, "%s: grad %s: ||diff||/||ref|| = %.3g (tol %g, ||ref|| = %.4g)", rc->label, s->name,
              ratio, TOL_GRAD, sqrt(rr));
        if (!(ratio <= worst)) worst = ratio, *worst_name = s->name;
    }
    return worst;
}

static void run_case(const RefCase *rc) {
    GivtModel m;
    int rcode = model_create(&m, &rc->cfg, g_be);
    CHECK(rcode == 0, "%s: model_create: %s", rc->label, givt_last_error());
    if (rcode != 0) return;
    int B = rc->B, T = rc->T, D = rc->cfg.input_dim;
    size_t btd = (size_t)B * T * D;
    model_alloc_acts(&m, B, T, 1, 0);
    model_alloc_grads(&m);
    if (!upload_weights(&m, rc)) {
        model_free(&m);
        return;
    }
    float *xh = xmalloc(btd * sizeof(float));
    for (size_t i = 0; i < btd; i++) xh[i] = (float)rc->x.data[i];
    float *xd = m.be->ops->alloc(m.be, btd * sizeof(float));
    m.be->ops->upload(m.be, xd, xh, btd * sizeof(float));

    ModelLoss L = model_eval_loss(&m, &m.w, xd, B, T, rc->full);
    double loss_rel = fabs(L.loss - rc->loss) / fabs(rc->loss);
    CHECK(loss_rel <= TOL_LOSS, "%s: loss %.10g, reference %.10g (rel %.3g, tol %g)", rc->label, L.loss, rc->loss,
          loss_rel, TOL_LOSS);
    CHECK(L.count == (long)btd, "%s: count %ld", rc->label, L.count);
    double c = rc->full ? 0.5 * log(2.0 * 3.14159265358979323846) : 0.0;
    CHECK(fabs(L.loss_sum / (double)btd + c - rc->loss) <= TOL_LOSS * fabs(rc->loss), "%s: loss_sum %.10g",
          rc->label, L.loss_sum);

    float *mu = xmalloc(btd * sizeof(float)), *sd = xmalloc(btd * sizeof(float));
    model_get_mu_std(&m, mu, sd);
    double mu_rel = max_rel(mu, rc->mu.data, btd);
    double sd_rel = max_rel(sd, rc->std.data, btd);
    CHECK(mu_rel <= TOL_OUT, "%s: mu max rel error %.3g (tol %g)", rc->label, mu_rel, TOL_OUT);
    CHECK(sd_rel <= TOL_OUT, "%s: std max rel error %.3g (tol %g)", rc->label, sd_rel, TOL_OUT);

    const char *worst_name = "";
    float *g = NULL;
    double worst = check_gradients(&m, rc, &g, &worst_name);
    printf("  %-24s loss rel %.2e  mu %.2e  std %.2e  worst grad %.2e (%s)\n", rc->label, loss_rel, mu_rel, sd_rel,
           worst, worst_name);
    check_checkpointing_is_bit_exact(rc, xh, L.loss, g);

    free(g);
    free(mu);
    free(sd);
    free(xh);
    m.be->ops->free(m.be, xd);
    model_free(&m);
}

TEST(reference_forward_backward) {
    RefData rd;
    const char *path = refdata_default_path();
    int rcode = refdata_load(&rd, path);
    CHECK(rcode == 0, "%s", givt_last_error());
    if (rcode != 0) return;
    CHECK(rd.ncases >= 4, "%d cases", rd.ncases);
    g_be = backend_open("cpu", PRECISION_NO);
    for (int i = 0; i < rd.ncases; i++) run_case(&rd.cases[i]);
    backend_close(g_be);
    refdata_free(&rd);
}

// The reader rejects a missing file and a truncated one, naming the file.
TEST(reference_reader_errors) {
    RefData rd;
    CHECK(refdata_load(&rd, "tests/no-such-reference.bin") == -1);
    CHECK(strstr(givt_last_error(), "tests/no-such-reference.bin") != NULL, "%s", givt_last_error());

    size_t len = 0;
    char *buf = fs_read_text(refdata_default_path(), &len);
    CHECK(buf != NULL, "%s", givt_last_error());
    if (!buf) return;
    char tmp[] = "/tmp/givt_ref_truncXXXXXX";
    int fd = mkstemp(tmp);
    CHECK(fd >= 0);
    if (fd >= 0) {
        FILE *fp = fdopen(fd, "wb");
        fwrite(buf, 1, len / 2, fp);
        fclose(fp);
        CHECK(refdata_load(&rd, tmp) == -1);
        CHECK(strstr(givt_last_error(), tmp) != NULL, "%s", givt_last_error());
        fp = fopen(tmp, "wb");
        fwrite("GIVTREF2", 1, 8, fp);
        fwrite(buf + 8, 1, len - 8, fp);
        fclose(fp);
        CHECK(refdata_load(&rd, tmp) == -1);
        remove(tmp);
    }
    free(buf);
}

// The optional AdamW section is present for the first case and self-consistent.
TEST(reference_train_section) {
    RefData rd;
    int rcode = refdata_load(&rd, refdata_default_path());
    CHECK(rcode == 0, "%s", givt_last_error());
    if (rcode != 0) return;
    const RefCase *rc = &rd.cases[0];
    CHECK(rc->has_train);
    if (rc->has_train) {
        CHECK(rc->train.nsteps == 3, "%d", rc->train.nsteps);
        CHECK(rc->train.nfinal == rc->nparams);
        CHECK_CLOSE(rc->train.losses[0], rc->loss, 1e-12);
        CHECK(rc->train.lr_used[0] == 0.0);  // the inverse-sqrt warmup starts at factor 0
    }
    refdata_free(&rd);
}

// ---- mixture heads and class conditioning: tests/reference_mix.bin (version 2) ------------------
// The same tolerances: loss 1e-5 relative, the head output y like mu and std above (1e-4 with the
// floor), each gradient 1e-4 norm-wise; gradient checkpointing bit for bit.
static void run_mix_case(const RefCase *rc) {
    GivtModel m;
    int rcode = model_create(&m, &rc->cfg, g_be);
    CHECK(rcode == 0, "%s: model_create: %s", rc->label, givt_last_error());
    if (rcode != 0) return;
    int B = rc->B, T = rc->T, D = rc->cfg.input_dim, W = givt_config_head_out(&rc->cfg);
    size_t btd = (size_t)B * T * D, btw = (size_t)B * T * W;
    model_alloc_acts(&m, B, T, 1, 0);
    model_alloc_grads(&m);
    if (!upload_weights(&m, rc)) return model_free(&m);
    int32_t labels[64];
    CHECK(B <= 64);
    for (int b = 0; b < B && b < 64; b++) labels[b] = rc->cfg.num_classes ? (int32_t)rc->labels.data[b] : 0;
    const int32_t *lab = rc->cfg.num_classes ? labels : NULL;
    float *xh = xmalloc(btd * sizeof(float)), *y = xmalloc(btw * sizeof(float));
    for (size_t i = 0; i < btd; i++) xh[i] = (float)rc->x.data[i];
    float *xd = m.be->ops->alloc(m.be, btd * sizeof(float));
    m.be->ops->upload(m.be, xd, xh, btd * sizeof(float));

    ModelLoss L = model_eval_loss_cond(&m, &m.w, xd, lab, B, T, rc->full);
    double loss_rel = fabs(L.loss - rc->loss) / fabs(rc->loss);
    CHECK(loss_rel <= TOL_LOSS, "%s: loss %.10g, reference %.10g (rel %.3g, tol %g)", rc->label, L.loss, rc->loss,
          loss_rel, TOL_LOSS);
    const cval *yd = model_forward_cond(&m, &m.w, xd, lab, B, T);
    m.be->ops->download(m.be, y, yd, btw * sizeof(float));
    double y_rel = max_rel(y, rc->y.data, btw);
    CHECK(y_rel <= TOL_OUT, "%s: head output max rel error %.3g (tol %g)", rc->label, y_rel, TOL_OUT);

    const char *worst_name = "";
    float *g = NULL;
    double worst = check_gradients(&m, rc, &g, &worst_name);
    printf("  %-24s k=%d classes=%d loss rel %.2e  y %.2e  worst grad %.2e (%s)\n", rc->label, rc->cfg.num_mixtures,
           rc->cfg.num_classes, loss_rel, y_rel, worst, worst_name);
    free(g), free(xh), free(y);
    m.be->ops->free(m.be, xd);
    model_free(&m);
}

TEST(reference_mixture_and_classes) {
    RefData rd;
    int rcode = refdata_load(&rd, refdata_mix_path());
    CHECK(rcode == 0, "%s", givt_last_error());
    if (rcode != 0) return;
    CHECK(rd.ncases >= 3 && rd.version == 2, "%d cases, version %d", rd.ncases, rd.version);
    int k3 = 0, classes = 0;
    g_be = backend_open("cpu", PRECISION_NO);
    for (int i = 0; i < rd.ncases; i++) {
        k3 += rd.cases[i].cfg.num_mixtures == 3;
        classes += rd.cases[i].cfg.num_classes > 0;
        run_mix_case(&rd.cases[i]);
    }
    CHECK(k3 >= 1 && classes >= 1, "the file must hold a k = 3 case and a class-conditional one");
    backend_close(g_be);
    refdata_free(&rd);
}
