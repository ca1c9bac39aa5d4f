/* Binding: build information, threads, and the raw matmul (for backend tests). */
#include <string.h>

#include "python/binding.h"

#include "core/interrupt.h"
#include "core/threads.h"

PyObject *dm_py_raise(dm_status status) {
    PyObject *exc;
    /* The interrupt hook already set the signal handler's exception (KeyboardInterrupt). */
    if (status == DM_ERR_INTERRUPTED && PyErr_Occurred()) return NULL;
    switch (status) {
    case DM_ERR_INTERRUPTED: exc = PyExc_KeyboardInterrupt; break;
    case DM_ERR_TYPE: exc = PyExc_TypeError; break;
    case DM_ERR_IO: exc = PyExc_OSError; break;
    case DM_ERR_NOMEM: exc = PyExc_MemoryError; break;
    case DM_ERR_INDEX: exc = PyExc_IndexError; break;
    case DM_ERR_BACKEND: exc = PyExc_RuntimeError; break;
    case DM_ERR_NOTIMPL: exc = PyExc_NotImplementedError; break;
    default: exc = PyExc_ValueError; break;
    }
    PyErr_SetString(exc, dm_last_error());
    return NULL;
}

int dm_py_check_array(PyObject *obj, const char *what, int type_num, int ndim) {
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s: expected a numpy.ndarray, got %s", what,
                     Py_TYPE(obj)->tp_name);
        return 0;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    if (PyArray_TYPE(a) != type_num) {
        PyArray_Descr *want = PyArray_DescrFromType(type_num);
        PyErr_Format(PyExc_TypeError, "%s: expected dtype %S, got %S", what, (PyObject *)want,
                     (PyObject *)PyArray_DESCR(a));
        Py_XDECREF(want);
        return 0;
    }
    if (ndim >= 0 && PyArray_NDIM(a) != ndim) {
        PyErr_Format(PyExc_ValueError, "%s: expected a %d-D array, got %d-D", what, ndim,
                     PyArray_NDIM(a));
        return 0;
    }
    if (!PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a)) {
        PyErr_Format(PyExc_ValueError,
                     "%s: array must be C-contiguous and aligned (use numpy.ascontiguousarray)", what);
        return 0;
    }
    return 1;
}

int dm_py_weight_view(PyObject *obj, const char *what, int is_bf16, dm_tensor *out) {
    memset(out, 0, sizeof *out); /* row_scale and every field not set below stay zero */
    if (!dm_py_check_array(obj, what, is_bf16 ? NPY_UINT16 : NPY_FLOAT32, -1)) return 0;
    PyArrayObject *a = (PyArrayObject *)obj;
    if (PyArray_NDIM(a) < 1 || PyArray_NDIM(a) > DM_MAX_DIMS) {
        PyErr_Format(PyExc_ValueError, "%s: expected 1 to %d dimensions", what, DM_MAX_DIMS);
        return 0;
    }
    out->data = PyArray_DATA(a);
    out->dtype = is_bf16 ? DM_BF16 : DM_F32;
    out->ndim = PyArray_NDIM(a);
    for (int i = 0; i < out->ndim; i++) out->shape[i] = PyArray_DIM(a, i);
    return 1;
}

int dm_py_backend(PyObject *obj, dm_backend *out) {
    const char *name = PyUnicode_Check(obj) ? PyUnicode_AsUTF8(obj) : NULL;
    if (name && strcmp(name, "onednn") == 0) { *out = DM_BACKEND_ONEDNN; return 1; }
    if (name && strcmp(name, "openblas") == 0) { *out = DM_BACKEND_OPENBLAS; return 1; }
    PyErr_Format(PyExc_ValueError, "backend must be 'onednn' or 'openblas', got %R", obj);
    return 0;
}

static PyObject *py_build_info(PyObject *self, PyObject *unused) {
    return Py_BuildValue("{s:s,s:s,s:s,s:s,s:i}", "onednn", dm_onednn_version(), "onednn_isa",
                         dm_onednn_isa(), "openblas", dm_openblas_version(), "openblas_core",
                         dm_openblas_core(), "threads", dm_get_num_threads());
}

static PyObject *py_set_num_threads(PyObject *self, PyObject *arg) {
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 0 || n > 4096) return PyErr_Format(PyExc_ValueError, "threads must be 0..4096, got %ld", n);
    dm_set_num_threads((int)n);
    Py_RETURN_NONE;
}

static PyObject *py_get_num_threads(PyObject *self, PyObject *unused) {
    return PyLong_FromLong(dm_get_num_threads());
}

/* matmul(x f32[M,K], w f32|uint16(bf16)[N,K], bias=None, *, bf16=False, backend="onednn",
 *        out=None) -> f32[M,N]; with out given, accumulates into it. */
static PyObject *py_matmul(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "w", "bias", "bf16", "backend", "out", NULL};
    PyObject *x_obj, *w_obj, *bias_obj = Py_None, *backend_obj = NULL, *out_obj = Py_None;
    int bf16 = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|O$pOO", kwlist, &x_obj, &w_obj, &bias_obj, &bf16,
                                     &backend_obj, &out_obj))
        return NULL;
    dm_backend backend = DM_BACKEND_ONEDNN;
    if (backend_obj && !dm_py_backend(backend_obj, &backend)) return NULL;
    if (!dm_py_check_array(x_obj, "x", NPY_FLOAT32, 2)) return NULL;
    dm_tensor w, bias;
    if (!dm_py_weight_view(w_obj, "w", bf16, &w)) return NULL;
    if (w.ndim != 2) return PyErr_Format(PyExc_ValueError, "w: expected a 2-D array");
    if (bias_obj != Py_None && !dm_py_weight_view(bias_obj, "bias", bf16, &bias)) return NULL;
    PyArrayObject *x = (PyArrayObject *)x_obj;
    npy_intp M = PyArray_DIM(x, 0);
    if (PyArray_DIM(x, 1) != w.shape[1])
        return PyErr_Format(PyExc_ValueError, "x has %zd columns but w has %lld", PyArray_DIM(x, 1),
                            (long long)w.shape[1]);
    PyArrayObject *out;
    int accumulate = out_obj != Py_None;
    if (accumulate) {
        if (!dm_py_check_array(out_obj, "out", NPY_FLOAT32, 2)) return NULL;
        out = (PyArrayObject *)out_obj;
        if (PyArray_DIM(out, 0) != M || PyArray_DIM(out, 1) != w.shape[0])
            return PyErr_Format(PyExc_ValueError, "out must have shape (%zd, %lld)", M,
                                (long long)w.shape[0]);
        Py_INCREF(out);
    } else {
        npy_intp dims[2] = {M, (npy_intp)w.shape[0]};
        out = (PyArrayObject *)PyArray_SimpleNew(2, dims, NPY_FLOAT32);
        if (!out) return NULL;
    }
    dm_status st;
    Py_BEGIN_ALLOW_THREADS
    dm_threads_enter();
    st = dm_matmul(backend, PyArray_DATA(out), PyArray_DATA(x), &w,
                   bias_obj != Py_None ? &bias : NULL, M, accumulate);
    Py_END_ALLOW_THREADS
    if (st != DM_OK) {
        Py_DECREF(out);
        return dm_py_raise(st);
    }
    return (PyObject *)out;
}

/* Ctrl-C during long C loops (core/interrupt.h). Signals are handled by Python in the
 * main thread only, so other threads never take the GIL here. In the main thread the
 * GIL is re-acquired for the check: PyErr_CheckSignals runs the Python handler
 * (KeyboardInterrupt by default, or the user's) and leaves its exception set for the
 * binding to return once the loop has unwound. */
static unsigned long dm_main_thread_id;

static int py_interrupt_hook(void) {
    if (PyThread_get_thread_ident() != dm_main_thread_id) return 0;
    PyGILState_STATE g = PyGILState_Ensure();
    int stop = PyErr_CheckSignals() < 0;
    PyGILState_Release(g);
    return stop;
}

static int install_interrupt_hook(void) {
    PyObject *threading = PyImport_ImportModule("threading");
    if (!threading) return -1;
    PyObject *main = PyObject_CallMethod(threading, "main_thread", NULL);
    Py_DECREF(threading);
    if (!main) return -1;
    PyObject *ident = PyObject_GetAttrString(main, "ident");
    Py_DECREF(main);
    if (!ident) return -1;
    dm_main_thread_id = PyLong_AsUnsignedLong(ident);
    Py_DECREF(ident);
    if (PyErr_Occurred()) return -1;
    dm_set_interrupt_hook(py_interrupt_hook);
    return 0;
}

static PyMethodDef core_methods[] = {
    {"build_info", py_build_info, METH_NOARGS, "Versions of oneDNN/OpenBLAS, ISA, threads."},
    {"set_num_threads", py_set_num_threads, METH_O, "Set the thread count (0 = all cores)."},
    {"get_num_threads", py_get_num_threads, METH_NOARGS, "Current thread count."},
    {"matmul", (PyCFunction)(void (*)(void))py_matmul, METH_VARARGS | METH_KEYWORDS,
     "matmul(x, w, bias=None, *, bf16=False, backend='onednn', out=None): x . w^T + bias."},
    {NULL, NULL, 0, NULL},
};

int dm_py_register_core(PyObject *m) {
    if (install_interrupt_hook() < 0) return -1;
    return PyModule_AddFunctions(m, core_methods);
}

/* Optional 1-D int64 array of length n (n < 0: any length); NULL pointer for None. */
int dm_py_opt_int64_array(PyObject *obj, const char *what, npy_intp n, const int64_t **data, npy_intp *len) {
    *data = NULL;
    if (len) *len = 0;
    if (obj == Py_None) return 1;
    if (!dm_py_check_array(obj, what, NPY_INT64, 1)) return 0;
    npy_intp got = PyArray_DIM((PyArrayObject *)obj, 0);
    if (n >= 0 && got != n) {
        PyErr_Format(PyExc_ValueError, "%s: expected length %zd, got %zd", what, n, got);
        return 0;
    }
    *data = PyArray_DATA((PyArrayObject *)obj);
    if (len) *len = got;
    return 1;
}
