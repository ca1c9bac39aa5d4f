/* Binding: the NTP-M loss family (densemllm/losses.py builds the CSR arrays). */
#include "python/binding.h"

#include <string.h>

#include "core/threads.h"
#include "train/ntpm.h"


/* ntpm_loss(logits, pos_offsets, pos_ids, *, valid_mask=None, valid_offsets=None,
 *           valid_ids=None, labels=None, k=32, variant="ntpm", reduction="sum",
 *           gamma=2.0, alpha=0.25, ohem_ratio=3.0, bf16=False, threads=0,
 *           grad=True, out=None)
 *   -> (loss: float, token_losses: f32[L] | None, grad, n_active: int)
 * token_losses is returned for reduction="none" only. grad: True -> f32 [L, V],
 * False -> None, "sparse" -> (ids int32 [L, S], values f32 [L, S], count int64 [L])
 * (token i's nonzero entries are the first count[i] of its row, ids ascending). */
static PyObject *py_ntpm_loss(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"logits", "pos_offsets", "pos_ids", "valid_mask", "valid_offsets", "valid_ids",
                             "labels", "k", "variant", "reduction", "gamma", "alpha", "ohem_ratio", "bf16",
                             "threads", "grad", "out", NULL};
    PyObject *logits_obj, *po_obj, *pi_obj, *mask_obj = Py_None, *vo_obj = Py_None, *vi_obj = Py_None,
                                                  *labels_obj = Py_None, *out_obj = Py_None;
    long long k = 32;
    const char *variant = "ntpm", *reduction = "sum";
    double gamma = 2.0, alpha = 0.25, ohem_ratio = 3.0;
    int bf16 = 0, threads = 0, want_grad = 1, want_sparse = 0;
    PyObject *grad_obj = Py_True;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|$OOOOLssdddpiOO", kwlist, &logits_obj, &po_obj, &pi_obj,
                                     &mask_obj, &vo_obj, &vi_obj, &labels_obj, &k, &variant, &reduction, &gamma,
                                     &alpha, &ohem_ratio, &bf16, &threads, &grad_obj, &out_obj))
        return NULL;
    if (grad_obj == Py_True) {
        want_grad = 1;
    } else if (grad_obj == Py_False) {
        want_grad = 0;
    } else if (PyUnicode_Check(grad_obj) && PyUnicode_CompareWithASCIIString(grad_obj, "sparse") == 0) {
        want_grad = 0;
        want_sparse = 1;
    } else {
        return PyErr_Format(PyExc_ValueError, "grad must be True, False or 'sparse', got %R", grad_obj);
    }
    if (want_sparse && out_obj != Py_None)
        return PyErr_Format(PyExc_ValueError, "out is for the dense gradient, not grad='sparse'");

    ntpm_args a;
    memset(&a, 0, sizeof a);
    a.variant = NTPM_VARIANT_COUNT;
    for (int v = 0; v < NTPM_VARIANT_COUNT; v++)
        if (strcmp(variant, ntpm_variant_names[v]) == 0) a.variant = (ntpm_variant)v;
    if (a.variant == NTPM_VARIANT_COUNT)
        return PyErr_Format(PyExc_ValueError,
                            "variant must be one of 'ntpm', 'bce', 'individual', 'balanced', 'focal', "
                            "'ohem', 'ntp_ce', got '%s'", variant);
    if (strcmp(reduction, "sum") == 0) a.reduction = NTPM_REDUCE_SUM;
    else if (strcmp(reduction, "mean") == 0) a.reduction = NTPM_REDUCE_MEAN;
    else if (strcmp(reduction, "none") == 0) a.reduction = NTPM_REDUCE_NONE;
    else return PyErr_Format(PyExc_ValueError, "reduction must be 'sum', 'mean' or 'none', got '%s'", reduction);
    if (k < 0) return PyErr_Format(PyExc_ValueError, "k must be >= 0, got %lld", k);
    if (threads < 0) return PyErr_Format(PyExc_ValueError, "threads must be >= 0, got %d", threads);

    if (!dm_py_check_array(logits_obj, "logits", bf16 ? NPY_UINT16 : NPY_FLOAT32, 2)) return NULL;
    PyArrayObject *logits = (PyArrayObject *)logits_obj;
    npy_intp L = PyArray_DIM(logits, 0), V = PyArray_DIM(logits, 1);
    if (V < 1) return PyErr_Format(PyExc_ValueError, "logits: need at least one vocabulary column");

    npy_intp n_pos, n_valid;
    if (po_obj == Py_None) return PyErr_Format(PyExc_TypeError, "pos_offsets: expected a numpy.ndarray, got None");
    if (!dm_py_opt_int64_array(po_obj, "pos_offsets", L + 1, &a.pos_offsets, NULL)) return NULL;
    if (pi_obj == Py_None) return PyErr_Format(PyExc_TypeError, "pos_ids: expected a numpy.ndarray, got None");
    if (!dm_py_opt_int64_array(pi_obj, "pos_ids", -1, &a.pos_ids, &n_pos)) return NULL;
    if (!dm_py_opt_int64_array(vo_obj, "valid_offsets", L + 1, &a.valid_offsets, NULL)) return NULL;
    if (!dm_py_opt_int64_array(vi_obj, "valid_ids", -1, &a.valid_ids, &n_valid)) return NULL;
    if ((vo_obj == Py_None) != (vi_obj == Py_None))
        return PyErr_Format(PyExc_ValueError, "valid_offsets and valid_ids go together");
    if (!dm_py_opt_int64_array(labels_obj, "labels", L, &a.labels, NULL)) return NULL;
    if (mask_obj != Py_None) {
        if (!dm_py_check_array(mask_obj, "valid_mask", NPY_UINT8, 1)) return NULL;
        if (PyArray_DIM((PyArrayObject *)mask_obj, 0) != V)
            return PyErr_Format(PyExc_ValueError, "valid_mask: expected length %zd (the vocabulary), got %zd", V,
                                PyArray_DIM((PyArrayObject *)mask_obj, 0));
        a.valid_mask = PyArray_DATA((PyArrayObject *)mask_obj);
    }
    a.L = L;
    a.V = V;
    a.n_pos = n_pos;
    a.n_valid = n_valid;
    a.k = k;
    a.gamma = gamma;
    a.alpha = alpha;
    a.ohem_ratio = ohem_ratio;
    a.threads = threads;
    if (bf16) a.logits_bf16 = PyArray_DATA(logits);
    else a.logits = PyArray_DATA(logits);

    PyArrayObject *grad = NULL, *tl = NULL;
    int grad_zeroed = 0;
    if (want_grad) {
        if (out_obj != Py_None) {
            if (!dm_py_check_array(out_obj, "out", NPY_FLOAT32, 2)) return NULL;
            grad = (PyArrayObject *)out_obj;
            if (PyArray_DIM(grad, 0) != L || PyArray_DIM(grad, 1) != V)
                return PyErr_Format(PyExc_ValueError, "out: expected shape (%zd, %zd)", L, V);
            const char *g0 = PyArray_BYTES(grad), *l0 = PyArray_BYTES(logits);
            if (g0 < l0 + PyArray_NBYTES(logits) && l0 < g0 + PyArray_NBYTES(grad))
                return PyErr_Format(PyExc_ValueError, "out must not overlap logits");
            if (!PyArray_ISWRITEABLE(grad)) return PyErr_Format(PyExc_ValueError, "out is read-only");
            Py_INCREF(grad);
        } else {
            npy_intp dims[2] = {L, V};
            /* zeros come from calloc: only the nonzero entries are written */
            grad = (PyArrayObject *)PyArray_ZEROS(2, dims, NPY_FLOAT32, 0);
            if (!grad) return NULL;
            grad_zeroed = 1;
        }
    } else if (out_obj != Py_None) {
        return PyErr_Format(PyExc_ValueError, "out given but grad=False");
    }
    if (a.reduction == NTPM_REDUCE_NONE) {
        npy_intp dims[1] = {L};
        tl = (PyArrayObject *)PyArray_SimpleNew(1, dims, NPY_FLOAT32);
        if (!tl) { Py_XDECREF(grad); return NULL; }
    }

    PyArrayObject *sp_ids = NULL, *sp_vals = NULL, *sp_count = NULL;
    ntpm_sparse_grad sparse = {0};
    if (want_sparse) {
        dm_status s0 = ntpm_sparse_stride(&a, &sparse.stride);
        if (s0 != DM_OK) {
            Py_XDECREF(tl);
            return dm_py_raise(s0);
        }
        npy_intp d2[2] = {L, (npy_intp)sparse.stride}, d1[1] = {L};
        sp_ids = (PyArrayObject *)PyArray_SimpleNew(2, d2, NPY_INT32);
        sp_vals = (PyArrayObject *)PyArray_SimpleNew(2, d2, NPY_FLOAT32);
        sp_count = (PyArrayObject *)PyArray_SimpleNew(1, d1, NPY_INT64);
        if (!sp_ids || !sp_vals || !sp_count) {
            Py_XDECREF(sp_ids);
            Py_XDECREF(sp_vals);
            Py_XDECREF(sp_count);
            Py_XDECREF(tl);
            return NULL;
        }
        sparse.ids = PyArray_DATA(sp_ids);
        sparse.vals = PyArray_DATA(sp_vals);
        sparse.count = PyArray_DATA(sp_count);
    }

    double loss = 0;
    int64_t n_active = 0;
    dm_status st;
    Py_BEGIN_ALLOW_THREADS
    st = ntpm_forward_backward(&a, &loss, tl ? (float *)PyArray_DATA(tl) : NULL,
                               grad ? (float *)PyArray_DATA(grad) : NULL, grad_zeroed,
                               want_sparse ? &sparse : NULL, &n_active);
    Py_END_ALLOW_THREADS
    if (st != DM_OK) {
        Py_XDECREF(grad);
        Py_XDECREF(tl);
        Py_XDECREF(sp_ids);
        Py_XDECREF(sp_vals);
        Py_XDECREF(sp_count);
        return dm_py_raise(st);
    }
    PyObject *tl_res = tl ? (PyObject *)tl : (Py_INCREF(Py_None), Py_None);
    if (want_sparse)
        return Py_BuildValue("(dN(NNN)L)", loss, tl_res, sp_ids, sp_vals, sp_count, (long long)n_active);
    PyObject *g_res = grad ? (PyObject *)grad : (Py_INCREF(Py_None), Py_None);
    return Py_BuildValue("(dNNL)", loss, tl_res, g_res, (long long)n_active);
}

static PyMethodDef ntpm_methods[] = {
    {"ntpm_loss", (PyCFunction)(void (*)(void))py_ntpm_loss, METH_VARARGS | METH_KEYWORDS,
     "NTP-M loss family, value and gradient (use densemllm.ntpm_loss)."},
    {NULL, NULL, 0, NULL},
};

int dm_py_register_ntpm(PyObject *m) { return PyModule_AddFunctions(m, ntpm_methods); }
