#include "core/tensor.h"

#include <stdio.h>
#include <string.h>

static void shape_str(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t used = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && used < cap; i++)
        used += (size_t)snprintf(buf + used, cap - used, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (used < cap) snprintf(buf + used, cap - used, "]");
}

dm_status dm_tensor_expect(const dm_tensor *t, const char *what, int ndim, const int64_t *shape) {
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == shape[i];
    if (ok) return DM_OK;
    char want[160], got[160];
    shape_str(want, sizeof want, ndim, shape);
    shape_str(got, sizeof got, t->ndim, t->shape);
    return dm_fail(DM_ERR_VALUE, "%s: expected shape %s, got %s", what, want, got);
}

dm_status dm_tensor_row_f32(const dm_tensor *t, int64_t r, float *out) {
    if (t->ndim != 2 || r < 0 || r >= t->shape[0])
        return dm_fail(DM_ERR_INDEX, "row %lld out of range", (long long)r);
    int64_t d = t->shape[1];
    const char *base = (const char *)t->data + (size_t)r * (size_t)d * dm_dtype_size(t->dtype);
    if (!dm_to_f32_n(out, base, t->dtype, (size_t)d))
        return dm_fail(DM_ERR_TYPE, "tensor dtype %s is not a float type", dm_dtype_name(t->dtype));
    return DM_OK;
}

dm_status dm_tensor_to_f32(const dm_tensor *t, float *out) {
    if (!dm_to_f32_n(out, t->data, t->dtype, (size_t)dm_tensor_numel(t)))
        return dm_fail(DM_ERR_TYPE, "tensor dtype %s is not a float type", dm_dtype_name(t->dtype));
    return DM_OK;
}
