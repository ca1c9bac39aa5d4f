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

dm_status dm_tensor_rows_f32(const dm_tensor *t, int64_t r0, int64_t n, float *out) {
    if (t->ndim != 2 || r0 < 0 || n < 0 || r0 + n > t->shape[0])
        return dm_fail(DM_ERR_INDEX, "rows [%lld, %lld) out of range", (long long)r0, (long long)(r0 + n));
    const int64_t d = t->shape[1];
    const char *base = (const char *)t->data + (size_t)r0 * (size_t)d * dm_dtype_size(t->dtype);
    if (t->dtype == DM_I8 && t->row_scale) {
        for (int64_t r = 0; r < n; r++) {
            const int8_t *q = (const int8_t *)base + r * d;
            const float s = t->row_scale[r0 + r];
            float *o = out + r * d;
            for (int64_t c = 0; c < d; c++) o[c] = (float)q[c] * s;
        }
        return DM_OK;
    }
    if (!dm_to_f32_n(out, base, t->dtype, (size_t)(n * d)))
        return dm_fail(DM_ERR_TYPE, "tensor dtype %s is not a float type", dm_dtype_name(t->dtype));
    return DM_OK;
}

dm_status dm_tensor_row_f32(const dm_tensor *t, int64_t r, float *out) {
    if (t->ndim != 2 || r < 0 || r >= t->shape[0])
        return dm_fail(DM_ERR_INDEX, "row %lld out of range", (long long)r);
    return dm_tensor_rows_f32(t, r, 1, out);
}

dm_status dm_tensor_to_f32(const dm_tensor *t, float *out) {
    if (t->dtype == DM_I8 && t->row_scale) return dm_tensor_rows_f32(t, 0, t->shape[0], out);
    if (!dm_to_f32_n(out, t->data, t->dtype, (size_t)dm_tensor_numel(t)))
        return dm_fail(DM_ERR_TYPE, "tensor dtype %s is not a float type", dm_dtype_name(t->dtype));
    return DM_OK;
}
