// evaluate: the mean loss of a model over a data set, or over one part of a training run's split,
// with the data read by the data module (data.c) exactly as the trainer reads them: the same windows,
// the same validation windows for the same configuration, the same labels. givt-eval's library part.
#ifndef GIVT_EVALUATE_H
#define GIVT_EVALUATE_H

#include <stddef.h>
#include <stdint.h>

#include "data.h"
#include "model.h"
#include "train_config.h"

// The DataConfig the trainer opens for configuration c, in one process (the split does not depend on
// the ranks): kind, files, seq_len, input_dim, dummy count, seed, val_size, labels, num_classes.
void evaluate_data_config(const TrainConfig *c, DataConfig *dc);

// The window length for evaluating spec (a [data] path: file, list or glob) without a configuration:
// the first file's T when it is an (N, T, D) file with T <= block_size; otherwise block_size, with a
// one-line note into note (else note is ""): longer sequences are cut into windows of block_size
// vectors, and an (M, D) stream into windows of block_size. -1 (givt_fail) when the first file cannot
// be opened.
int evaluate_default_seq_len(const char *spec, int block_size, int *seq_len, char *note, size_t n);

typedef struct {
    double loss_sum;   // the Gaussian NLL summed over the values measured, without 0.5*log(2 pi)
    int64_t count;     // values measured: windows x T x D
    int64_t windows;   // windows measured
    int64_t total;     // windows in the split
    int stopped;       // a stop signal (stop_signal.h) came first: windows < total
} EvalResult;

// Runs model m with weights w over split s of ds in batches of B windows in ascending order (the
// trainer's validation order and sums), with the windows' labels when ds has labels, and "no label"
// for a class-conditional model when it has none. Checks first that the activations of B windows
// fit in the backend's free memory. progress: a line on stderr, refreshed in place. -1 (givt_fail)
// on a data error (NaN, a changed file) or when B does not fit; 0 otherwise, r->stopped after a stop
// signal.
int evaluate_loss(GivtModel *m, const Weights *w, Dataset *ds, DataSplit s, int B, int progress, EvalResult *r);

#endif
