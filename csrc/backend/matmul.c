#include "backend/matmul.h"

#include "backend/gemv.h"

dm_status dm_matmul(dm_backend backend, float *out, const float *x, const dm_tensor *w,
                    const dm_tensor *bias, int64_t M, int accumulate) {
    if (w->ndim != 2)
        return dm_fail(DM_ERR_VALUE, "matmul: weight must be 2-D, got %d-D", w->ndim);
    if (w->dtype != DM_F32 && w->dtype != DM_BF16 && w->dtype != DM_F16)
        return dm_fail(DM_ERR_TYPE, "matmul: weight dtype %s is not a float type",
                       dm_dtype_name(w->dtype));
    if (bias && (bias->ndim != 1 || bias->shape[0] != w->shape[0]))
        return dm_fail(DM_ERR_VALUE, "matmul: bias of %lld elements for %lld outputs",
                       (long long)(bias->ndim == 1 ? bias->shape[0] : -1), (long long)w->shape[0]);
    if (M < 0 || w->shape[0] <= 0 || w->shape[1] <= 0)
        return dm_fail(DM_ERR_VALUE, "matmul: empty or negative dimensions");
    if (M == 0) return DM_OK;
    /* decode-sized products: stream the weight rows (backend/gemv.h) */
    if (dm_gemv_applies(backend, w, M)) return dm_gemv(out, x, w, bias, M, accumulate);
    switch (backend) {
    case DM_BACKEND_ONEDNN: return dm_matmul_onednn(out, x, w, bias, M, accumulate);
    case DM_BACKEND_OPENBLAS: return dm_matmul_openblas(out, x, w, bias, M, accumulate);
    }
    return dm_fail(DM_ERR_VALUE, "matmul: unknown backend %d", (int)backend);
}
