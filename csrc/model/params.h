/* The parameter table: the one list of every weight of the model (checkpoint
 * name, shape) and, for training, its f32 master value and gradient.
 *
 * The model builders (vision_params, merger and llm_params) enumerate their
 * weights as slots: name under its prefix alternatives, shape, and where the
 * model struct wants it (a view for matrices, an f32 pointer for the small norm
 * vectors). A binder decides what a slot gets:
 *   - dm_param_bind_checkpoint: a view into the mmap'd checkpoint (inference;
 *     vectors widened into the slot's own storage),
 *   - dm_params_bind: views of the table's f32 masters (training: the forward
 *     reads the weights the optimizer updates, through the same views),
 *   - a listing binder with no model at all (Python's expected_weights, the
 *     table layout itself).
 * So names and shapes are written once, in the builder. */
#ifndef DM_MODEL_PARAMS_H
#define DM_MODEL_PARAMS_H

#include <stdint.h>

#include "core/status.h"
#include "core/tensor.h"

struct dm_checkpoint;

typedef struct {
    const char *const *prefixes; /* NULL-terminated alternatives; [0] is the canonical one */
    const char *name;            /* after the prefix, e.g. "encoder.layers.3.mlp.fc1.weight" */
    int ndim;                    /* 1 or 2 */
    int64_t shape[2];
    dm_tensor *view;   /* a weight the matmuls read: bind a view here (NULL when listing) */
    float **vec;       /* a small f32 vector (norm weights): set the pointer here */
    float *vec_store;  /* room for shape[0] floats the checkpoint binder widens into */
} dm_param_slot;

typedef dm_status (*dm_param_bind_fn)(void *ctx, const dm_param_slot *slot);

/* Inference binder: ctx is a const dm_checkpoint*. */
dm_status dm_param_bind_checkpoint(void *ctx, const dm_param_slot *slot);

/* ---- the training table ---- */

typedef struct {
    char name[192];   /* canonical checkpoint name (first prefix alternative) */
    const char *const *prefixes;
    char suffix[160]; /* name after the prefix */
    int ndim;
    int64_t shape[2];
    int64_t offset, numel; /* in floats, into data (master) and data + total (grad) */
} dm_param_entry;

typedef struct {
    dm_param_entry *entries;
    int64_t n, cap;
    int64_t total;  /* floats of all masters */
    float *data;    /* one allocation: [total] masters, then [total] gradients */
    int64_t cursor; /* dm_params_bind's position (slots come in listing order) */
} dm_params;

/* Listing binder: appends the slot to the table (ctx is a dm_params*). */
dm_status dm_params_collect(void *ctx, const dm_param_slot *slot);

/* Allocate data for the collected entries (gradients zeroed) and fill the
 * masters from the checkpoint (any float dtype, widened to f32). Every tensor is
 * looked up and shape-checked before anything is copied. */
dm_status dm_params_load(dm_params *p, const struct dm_checkpoint *ck);

/* Binder over loaded masters (ctx is a dm_params*, cursor reset to 0 first):
 * views are F32 into data, vectors point into data. */
dm_status dm_params_bind(void *ctx, const dm_param_slot *slot);

void dm_params_free(dm_params *p);

static inline float *dm_params_master(const dm_params *p, int64_t i) { return p->data + p->entries[i].offset; }
static inline float *dm_params_grad(const dm_params *p, int64_t i) {
    return p->data + p->total + p->entries[i].offset;
}

/* The gradient buffer of a master value bound by dm_params_bind (a view's data
 * or a vector pointer); NULL when `w` is not inside the masters. */
float *dm_params_grad_of(const dm_params *p, const void *w);

/* Index of an entry by canonical name, -1 if absent. */
int64_t dm_params_find(const dm_params *p, const char *name);

#endif
