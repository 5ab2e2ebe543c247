// hf: the Hugging Face folder of a GIVT model (config.json + model.safetensors, float32), as the
// seed's GIVT.from_pretrained reads it; also table-shaped safetensors files (EMA, optimizer state).
#ifndef GIVT_HF_H
#define GIVT_HF_H

#include "model.h"
#include "safetensors.h"

// Reads <folder>/config.json: keys of GIVT.md, absent ones take the defaults, unknown ones (written by
// transformers: model_type, architectures, torch_dtype, ...) are ignored; then givt_config_validate.
int hf_read_config(const char *folder, GivtConfig *cfg);
int hf_read_config_json(const char *path, GivtConfig *cfg);  // the same, given the file's path
// Writes config.json (every GIVT.md key, "model_type": "givt", "architectures": ["GIVT"]) atomically.
int hf_write_config_json(const char *path, const GivtConfig *cfg);

// Reads <folder>/model.safetensors into params_host (pt->total floats: each tensor at its offset, the
// padding between them zeroed; files hold the tensors only, end to end): every table tensor must be
// there with its exact shape (F32, F16 or BF16), no other tensor may be, and every value must be
// finite (a NaN or infinity fails, naming the file, the tensor and the first bad element).
int hf_load_weights(const char *folder, const ParamTable *pt, float *params_host);
// Creates folder (mkdir -p) and writes config.json and model.safetensors, each atomically.
int hf_save(const char *folder, const GivtConfig *cfg, const ParamTable *pt, const float *params_host);

// A safetensors file holding one float32 tensor per table entry (the table's names and shapes),
// e.g. model.safetensors, ema.safetensors or the AdamW moments; meta adds to {"format": "pt"}.
int hf_save_tensors(const char *path, const ParamTable *pt, const float *params_host, const StMeta *meta,
                    int n_meta);
int hf_load_tensors(const char *path, const ParamTable *pt, float *params_host);  // checked as above

// ---- the same, for a weight set of a model in backend memory (staged through one host copy) ---
// w: the model's weights (&m->w) or another set (an EMA); a load fills its master weights and its
// compute copy. A failed load leaves w as it was (nothing is uploaded until the whole file is read
// and checked).
int hf_model_load_tensors(GivtModel *m, const char *path, Weights *w);        // as hf_load_tensors
int hf_model_load_weights(GivtModel *m, const char *folder, Weights *w);      // as hf_load_weights
// The weights a program's --ema chooses: folder's model.safetensors, or with ema its ema.safetensors
// (the EMA weights a givt-train checkpoint with [train] ema on holds; "--ema: PATH: no such file" when
// it has none). givt-sample and givt-eval load through this.
int hf_model_load_checkpoint_weights(GivtModel *m, const char *folder, int ema, Weights *w);
int hf_model_save_tensors(GivtModel *m, const char *path, const Weights *w);  // as hf_save_tensors
int hf_model_save(GivtModel *m, const char *folder, const Weights *w);        // as hf_save, with m->cfg

#endif
