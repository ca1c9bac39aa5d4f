/* Binding: the training engine's loss heads (train/loss.h) and optimizer
 * (train/adamw.h). densemllm/losses.py and densemllm/train/optim.py build the arguments. */
#include "python/binding.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "train/adamw.h"
#include "train/loss.h"



/* Optional writable f32 [rows, cols] gradient buffer. */
static int opt_grad(PyObject *obj, const char *what, npy_intp rows, npy_intp cols, float **data) {
    *data = NULL;
    if (obj == Py_None) return 1;
    if (!dm_py_check_array(obj, what, NPY_FLOAT32, 2)) return 0;
    PyArrayObject *a = (PyArrayObject *)obj;
    if (PyArray_DIM(a, 0) != rows || PyArray_DIM(a, 1) != cols) {
        PyErr_Format(PyExc_ValueError, "%s: expected shape (%zd, %zd), got (%zd, %zd)", what, rows, cols,
                     PyArray_DIM(a, 0), PyArray_DIM(a, 1));
        return 0;
    }
    if (!PyArray_ISWRITEABLE(a)) {
        PyErr_Format(PyExc_ValueError, "%s is read-only", what);
        return 0;
    }
    *data = PyArray_DATA(a);
    return 1;
}

static int overlaps(PyObject *a, PyObject *b) {
    if (a == Py_None || b == Py_None) return 0;
    const char *p = PyArray_BYTES((PyArrayObject *)a), *q = PyArray_BYTES((PyArrayObject *)b);
    return p < q + PyArray_NBYTES((PyArrayObject *)b) && q < p + PyArray_NBYTES((PyArrayObject *)a);
}

/* Common head arguments: h f32 [T, H], w f32 or bf16-bits [V, H], dh, dw. */
static int head_args(PyObject *h_obj, PyObject *w_obj, int bf16, PyObject *dh_obj, PyObject *dw_obj,
                     PyObject *backend_obj, long long chunk_bytes, int threads, dm_head *hd, dm_tensor *w) {
    memset(hd, 0, sizeof *hd);
    if (!dm_py_check_array(h_obj, "h", NPY_FLOAT32, 2)) return 0;
    if (!dm_py_weight_view(w_obj, "w", bf16, w)) return 0;
    if (w->ndim != 2) {
        PyErr_Format(PyExc_ValueError, "w: expected a 2-D [V, H] array, got %d dimensions", w->ndim);
        return 0;
    }
    PyArrayObject *h = (PyArrayObject *)h_obj;
    hd->T = PyArray_DIM(h, 0);
    hd->H = PyArray_DIM(h, 1);
    if (w->shape[1] != hd->H) {
        PyErr_Format(PyExc_ValueError, "w: expected %zd columns (the hidden size of h), got %lld", (Py_ssize_t)hd->H,
                     (long long)w->shape[1]);
        return 0;
    }
    hd->h = PyArray_DATA(h);
    hd->w = w;
    if (!opt_grad(dh_obj, "dh", hd->T, hd->H, &hd->dh)) return 0;
    if (!opt_grad(dw_obj, "dw", (npy_intp)w->shape[0], hd->H, &hd->dw)) return 0;
    if (overlaps(dh_obj, h_obj) || overlaps(dw_obj, h_obj) || overlaps(dw_obj, w_obj) || overlaps(dh_obj, w_obj) ||
        overlaps(dh_obj, dw_obj)) {
        PyErr_SetString(PyExc_ValueError, "dh and dw must not overlap h, w or each other");
        return 0;
    }
    if (!dm_py_backend(backend_obj, &hd->backend)) return 0;
    if (threads < 0) {
        PyErr_Format(PyExc_ValueError, "threads must be >= 0, got %d", threads);
        return 0;
    }
    hd->threads = threads;
    hd->chunk_bytes = chunk_bytes;
    return 1;
}

/* head_ce(h, w, targets, *, ignore_index=-100, weight=1.0, denom=0.0, dh=None, dw=None,
 *         bf16=False, backend="onednn", chunk_bytes=0, threads=0)
 *   -> (loss, n_counted, workspace_bytes); dh / dw accumulate in place. */
static PyObject *py_head_ce(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"h", "w", "targets", "ignore_index", "weight", "denom", "dh", "dw", "bf16", "backend",
                             "chunk_bytes", "threads", NULL};
    PyObject *h_obj, *w_obj, *t_obj, *dh_obj = Py_None, *dw_obj = Py_None, *backend_obj = NULL;
    long long ignore_index = -100, chunk_bytes = 0;
    double weight = 1.0, denom = 0.0;
    int bf16 = 0, threads = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|$LddOOpOLi", kwlist, &h_obj, &w_obj, &t_obj, &ignore_index,
                                     &weight, &denom, &dh_obj, &dw_obj, &bf16, &backend_obj, &chunk_bytes, &threads))
        return NULL;
    PyObject *default_backend = NULL;
    if (!backend_obj) backend_obj = default_backend = PyUnicode_FromString("onednn");
    dm_head hd;
    dm_tensor w;
    int ok = head_args(h_obj, w_obj, bf16, dh_obj, dw_obj, backend_obj, chunk_bytes, threads, &hd, &w);
    Py_XDECREF(default_backend);
    if (!ok) return NULL;
    const int64_t *targets;
    if (!dm_py_opt_int64_array(t_obj, "targets", (npy_intp)hd.T, &targets, NULL)) return NULL;
    if (t_obj == Py_None) return PyErr_Format(PyExc_TypeError, "targets: expected a numpy.ndarray, got None");
    double loss = 0;
    int64_t n = 0, ws = 0;
    dm_status st;
    Py_BEGIN_ALLOW_THREADS
    st = dm_head_ce(&hd, targets, ignore_index, weight, denom, &loss, &n, &ws);
    Py_END_ALLOW_THREADS
    if (st != DM_OK) return dm_py_raise(st);
    return Py_BuildValue("(dLL)", loss, (long long)n, (long long)ws);
}

/* head_ntpm(h, w, pos_offsets, pos_ids, *, rows=None, valid_offsets=None, valid_ids=None,
 *           token_set=None, labels=None, k=32, variant="ntpm", gamma=2.0, alpha=0.25,
 *           ohem_ratio=3.0, weight=1.0, denom=0.0, dh=None, dw=None, bf16=False,
 *           backend="onednn", chunk_bytes=0, threads=0)
 *   -> (loss, n_active, workspace_bytes). L = len(pos_offsets) - 1. With valid sets,
 *   n_sets = len(valid_offsets) - 1. */
static PyObject *py_head_ntpm(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"h", "w", "pos_offsets", "pos_ids", "rows", "valid_offsets", "valid_ids", "token_set",
                             "labels", "k", "variant", "gamma", "alpha", "ohem_ratio", "weight", "denom", "dh",
                             "dw", "bf16", "backend", "chunk_bytes", "threads", NULL};
    PyObject *h_obj, *w_obj, *po_obj, *pi_obj, *rows_obj = Py_None, *vo_obj = Py_None, *vi_obj = Py_None,
                                              *ts_obj = Py_None, *lab_obj = Py_None, *dh_obj = Py_None,
                                              *dw_obj = Py_None, *backend_obj = NULL;
    long long k = 32, chunk_bytes = 0;
    const char *variant = "ntpm";
    double gamma = 2.0, alpha = 0.25, ohem_ratio = 3.0, weight = 1.0, denom = 0.0;
    int bf16 = 0, threads = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOO|$OOOOOLsdddddOOpOLi", kwlist, &h_obj, &w_obj, &po_obj, &pi_obj,
                                     &rows_obj, &vo_obj, &vi_obj, &ts_obj, &lab_obj, &k, &variant, &gamma, &alpha,
                                     &ohem_ratio, &weight, &denom, &dh_obj, &dw_obj, &bf16, &backend_obj,
                                     &chunk_bytes, &threads))
        return NULL;
    PyObject *default_backend = NULL;
    if (!backend_obj) backend_obj = default_backend = PyUnicode_FromString("onednn");
    dm_head hd;
    dm_tensor w;
    int ok = head_args(h_obj, w_obj, bf16, dh_obj, dw_obj, backend_obj, chunk_bytes, threads, &hd, &w);
    Py_XDECREF(default_backend);
    if (!ok) return NULL;

    dm_head_ntpm_args a;
    memset(&a, 0, sizeof a);
    a.variant = NTPM_VARIANT_COUNT;
    for (int v = 0; v < NTPM_VARIANT_COUNT; v++)
        if (strcmp(variant, ntpm_variant_names[v]) == 0) a.variant = (ntpm_variant)v;
    if (a.variant == NTPM_VARIANT_COUNT)
        return PyErr_Format(PyExc_ValueError,
                            "variant must be one of 'ntpm', 'bce', 'individual', 'balanced', 'focal', 'ohem', "
                            "'ntp_ce', got '%s'", variant);
    if (po_obj == Py_None || pi_obj == Py_None)
        return PyErr_Format(PyExc_TypeError, "pos_offsets and pos_ids are required arrays");
    npy_intp n_off, n_pos, n_voff = 0, n_valid = 0;
    if (!dm_py_opt_int64_array(po_obj, "pos_offsets", -1, &a.pos_offsets, &n_off)) return NULL;
    if (n_off < 1) return PyErr_Format(PyExc_ValueError, "pos_offsets: need at least one entry (L + 1)");
    a.L = n_off - 1;
    if (!dm_py_opt_int64_array(pi_obj, "pos_ids", -1, &a.pos_ids, &n_pos)) return NULL;
    a.n_pos = n_pos;
    if (!dm_py_opt_int64_array(rows_obj, "rows", a.L, &a.rows, NULL)) return NULL;
    if ((vo_obj == Py_None) != (vi_obj == Py_None))
        return PyErr_Format(PyExc_ValueError, "valid_offsets and valid_ids go together");
    if (!dm_py_opt_int64_array(vo_obj, "valid_offsets", -1, &a.valid_offsets, &n_voff)) return NULL;
    if (!dm_py_opt_int64_array(vi_obj, "valid_ids", -1, &a.valid_ids, &n_valid)) return NULL;
    if (vo_obj != Py_None) {
        if (n_voff < 1) return PyErr_Format(PyExc_ValueError, "valid_offsets: need at least one entry (n_sets + 1)");
        a.n_sets = n_voff - 1;
        a.n_valid = n_valid;
        if (a.n_sets == 0) a.valid_offsets = NULL, a.valid_ids = NULL;
    }
    if (!dm_py_opt_int64_array(ts_obj, "token_set", a.L, &a.token_set, NULL)) return NULL;
    if (!dm_py_opt_int64_array(lab_obj, "labels", a.L, &a.labels, NULL)) return NULL;
    if (k < 0) return PyErr_Format(PyExc_ValueError, "k must be >= 0, got %lld", k);
    a.k = k;
    a.gamma = gamma;
    a.alpha = alpha;
    a.ohem_ratio = ohem_ratio;
    double loss = 0;
    int64_t n = 0, ws = 0;
    dm_status st;
    Py_BEGIN_ALLOW_THREADS
    st = dm_head_ntpm(&hd, &a, weight, denom, &loss, &n, &ws);
    Py_END_ALLOW_THREADS
    if (st != DM_OK) return dm_py_raise(st);
    return Py_BuildValue("(dLL)", loss, (long long)n, (long long)ws);
}

/* A list/tuple of n f32 1-D-or-more contiguous arrays, all writable unless ro. */
static int f32_list(PyObject *seq, const char *what, Py_ssize_t n, int ro, float **ptr, int64_t *len) {
    if (!PyList_Check(seq) && !PyTuple_Check(seq)) {
        PyErr_Format(PyExc_TypeError, "%s: expected a list of float32 arrays", what);
        return 0;
    }
    if (PySequence_Fast_GET_SIZE(seq) != n) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd arrays, got %zd", what, n, PySequence_Fast_GET_SIZE(seq));
        return 0;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *o = PySequence_Fast_GET_ITEM(seq, i);
        char name[96];
        snprintf(name, sizeof name, "%s[%zd]", what, i);
        if (!dm_py_check_array(o, name, NPY_FLOAT32, -1)) return 0;
        if (!ro && !PyArray_ISWRITEABLE((PyArrayObject *)o)) {
            PyErr_Format(PyExc_ValueError, "%s is read-only", name);
            return 0;
        }
        ptr[i] = PyArray_DATA((PyArrayObject *)o);
        len[i] = PyArray_SIZE((PyArrayObject *)o);
    }
    return 1;
}

/* adamw_step(params, grads, m, v, weight_decay, lr_scale, frozen, *, step, lr, beta1=0.9,
 *            beta2=0.999, eps=1e-8, max_grad_norm=0.0, grad_scale=1.0, threads=0) -> grad_norm
 * params/grads/m/v: lists of n f32 arrays of equal sizes per index (updated in place:
 * params, m, v); weight_decay, lr_scale: f64 [n]; frozen: uint8 [n]. */
static PyObject *py_adamw_step(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"params", "grads", "m", "v", "weight_decay", "lr_scale", "frozen", "step", "lr",
                             "beta1", "beta2", "eps", "max_grad_norm", "grad_scale", "threads", NULL};
    PyObject *po, *go, *mo, *vo, *wdo, *lso, *fro;
    long long step = 0;
    double lr = NAN, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, max_norm = 0, grad_scale = 1.0;
    int threads = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOOO|$Lddddddi", kwlist, &po, &go, &mo, &vo, &wdo, &lso, &fro,
                                     &step, &lr, &beta1, &beta2, &eps, &max_norm, &grad_scale, &threads))
        return NULL;
    if (!PyList_Check(po) && !PyTuple_Check(po)) return PyErr_Format(PyExc_TypeError, "params: expected a list of arrays");
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(po);
    if (!dm_py_check_array(wdo, "weight_decay", NPY_FLOAT64, 1) || !dm_py_check_array(lso, "lr_scale", NPY_FLOAT64, 1) ||
        !dm_py_check_array(fro, "frozen", NPY_UINT8, 1))
        return NULL;
    if (PyArray_DIM((PyArrayObject *)wdo, 0) != n || PyArray_DIM((PyArrayObject *)lso, 0) != n ||
        PyArray_DIM((PyArrayObject *)fro, 0) != n)
        return PyErr_Format(PyExc_ValueError, "weight_decay, lr_scale and frozen need %zd entries (one per tensor)", n);
    if (threads < 0) return PyErr_Format(PyExc_ValueError, "threads must be >= 0, got %d", threads);
    float **bufs = dm_alloc((size_t)(4 * n + 1), sizeof(float *), "adamw binding");
    int64_t *lens = dm_alloc((size_t)(4 * n + 1), sizeof(int64_t), "adamw binding");
    dm_adamw_tensor *t = dm_alloc((size_t)(n + 1), sizeof(dm_adamw_tensor), "adamw binding");
    if (!bufs || !lens || !t) {
        dm_free(bufs); dm_free(lens); dm_free(t);
        return PyErr_NoMemory();
    }
    PyObject *res = NULL;
    if (!f32_list(po, "params", n, 0, bufs, lens) || !f32_list(go, "grads", n, 1, bufs + n, lens + n) ||
        !f32_list(mo, "m", n, 0, bufs + 2 * n, lens + 2 * n) || !f32_list(vo, "v", n, 0, bufs + 3 * n, lens + 3 * n))
        goto done;
    const double *wd = PyArray_DATA((PyArrayObject *)wdo), *ls = PyArray_DATA((PyArrayObject *)lso);
    const uint8_t *fr = PyArray_DATA((PyArrayObject *)fro);
    for (Py_ssize_t i = 0; i < n; i++) {
        for (int q = 1; q < 4; q++)
            if (lens[q * n + i] != lens[i]) {
                static const char *names[4] = {"params", "grads", "m", "v"};
                PyErr_Format(PyExc_ValueError, "%s[%zd] has %lld elements but params[%zd] has %lld", names[q], i,
                             (long long)lens[q * n + i], i, (long long)lens[i]);
                goto done;
            }
        t[i].param = bufs[i];
        t[i].grad = bufs[n + i];
        t[i].m = bufs[2 * n + i];
        t[i].v = bufs[3 * n + i];
        t[i].n = lens[i];
        t[i].weight_decay = wd[i];
        t[i].lr_scale = ls[i];
        t[i].frozen = fr[i] != 0;
    }
    dm_adamw_config c = {beta1, beta2, eps, max_norm};
    double norm = 0;
    dm_status st;
    Py_BEGIN_ALLOW_THREADS
    st = dm_adamw_step(&c, t, n, step, lr, grad_scale, &norm, threads);
    Py_END_ALLOW_THREADS
    if (st != DM_OK) {
        dm_py_raise(st);
        goto done;
    }
    res = PyFloat_FromDouble(norm);
done:
    dm_free(bufs);
    dm_free(lens);
    dm_free(t);
    return res;
}

/* lr_at(peak, min, warmup, total, step) -> lr (ValueError for a bad schedule) */
static PyObject *py_lr_at(PyObject *self, PyObject *args) {
    dm_lr_schedule s;
    long long warmup, total, step;
    if (!PyArg_ParseTuple(args, "ddLLL", &s.peak_lr, &s.min_lr, &warmup, &total, &step)) return NULL;
    s.warmup_steps = warmup;
    s.total_steps = total;
    dm_status st = dm_lr_schedule_check(&s);
    if (st != DM_OK) return dm_py_raise(st);
    if (step < 0) return PyErr_Format(PyExc_ValueError, "step must be >= 0, got %lld", step);
    return PyFloat_FromDouble(dm_lr_at(&s, step));
}

static PyMethodDef train_optim_methods[] = {
    {"adamw_step", (PyCFunction)(void (*)(void))py_adamw_step, METH_VARARGS | METH_KEYWORDS,
     "One AdamW step with global-norm clipping (use densemllm.train.optim.AdamW)."},
    {"lr_at", (PyCFunction)py_lr_at, METH_VARARGS, "Learning rate of a 0-based step (warmup + cosine)."},
    {"head_ce", (PyCFunction)(void (*)(void))py_head_ce, METH_VARARGS | METH_KEYWORDS,
     "Next-token cross-entropy fused with the LM head (use densemllm.losses.head_ce_loss)."},
    {"head_ntpm", (PyCFunction)(void (*)(void))py_head_ntpm, METH_VARARGS | METH_KEYWORDS,
     "NTP-M (and variants) fused with the LM head (use densemllm.losses.head_ntpm_loss)."},
    {NULL, NULL, 0, NULL},
};

int dm_py_register_train_optim(PyObject *m) { return PyModule_AddFunctions(m, train_optim_methods); }
