/* Safetensors checkpoints, mmap'd and validated before any tensor is touched.
 *
 * A dm_checkpoint is one or more safetensors files (a single model.safetensors,
 * or the shards named by model.safetensors.index.json). Tensors are exposed as
 * zero-copy dm_tensor views into the mapping; BF16 stays BF16. */
#ifndef DM_IO_SAFETENSORS_H
#define DM_IO_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"
#include "core/tensor.h"

typedef struct dm_checkpoint dm_checkpoint;

/* Open and validate `n_files` safetensors files (all of them fully checked:
 * header length in range, JSON well formed, known dtypes, offsets in range and
 * non-overlapping, byte length = numel * dtype size). Tensor names must be
 * unique across files. On failure *out is NULL and the message names the file
 * (and tensor). */
dm_status dm_checkpoint_open(const char *const *paths, int n_files, dm_checkpoint **out);
void dm_checkpoint_close(dm_checkpoint *c);

int64_t dm_checkpoint_count(const dm_checkpoint *c);
/* i-th tensor (0 <= i < count): name, view, and the file it lives in. */
dm_status dm_checkpoint_at(const dm_checkpoint *c, int64_t i, const char **name, dm_tensor *view,
                           const char **file);

/* Look a tensor up by exact name: DM_OK and the view, or DM_ERR_VALUE
 * ("missing tensor 'name'"). */
dm_status dm_checkpoint_find(const dm_checkpoint *c, const char *name, dm_tensor *view);

/* Find a weight for a model builder: `name` under the first of the NULL-terminated
 * `prefixes` that has it ("" for none), checked to have exactly `shape`. The
 * message names the full tensor name and both shapes. */
dm_status dm_checkpoint_weight(const dm_checkpoint *c, const char *const *prefixes, const char *name,
                               int ndim, const int64_t *shape, dm_tensor *view);

/* Replace every BF16/F16 tensor view by an owned f32 copy (dtype="f32" load).
 * Memory grows by 2x the float weights; only done when the user asks. */
dm_status dm_checkpoint_widen_f32(dm_checkpoint *c);

/* Replace every F32/F16 tensor view by an owned bf16 copy (dtype="bf16" load of
 * an f32 file). A checkpoint is converted at most once (widen or narrow): views
 * handed out before stay valid until close. */
dm_status dm_checkpoint_narrow_bf16(dm_checkpoint *c);

/* errno of the last dm_checkpoint_open on this thread that failed at the OS level
 * (open/fstat/mmap: status DM_ERR_IO), else 0. Lets the binding raise
 * FileNotFoundError / PermissionError. */
int dm_checkpoint_open_errno(void);

/* Replace the named 2-D float weights by owned int8 copies with one f32 scale
 * per row (symmetric: scale = max|row| / 127, values rounded to nearest); the
 * views become DM_I8 with row_scale set (core/tensor.h). All copies are
 * allocated before any is made, so a failure changes nothing; once per checkpoint. */
dm_status dm_checkpoint_quantize_i8(dm_checkpoint *c, const char *const *names, int64_t n_names);

/* Bring every still-mapped tensor's pages into memory and map them
 * (MADV_WILLNEED, then one read per page, in parallel), so the first forward
 * pass takes no page faults. Returns the bytes covered. */
int64_t dm_checkpoint_preload(dm_checkpoint *c);

/* Number of files and the path of the i-th. */
int dm_checkpoint_file_count(const dm_checkpoint *c);
const char *dm_checkpoint_file(const dm_checkpoint *c, int i);

#endif
