/* Binding: dense decoding (dense/dense.h) and RLE (dense/rle.h).
 * Inputs are validated here; every heavy call runs with the GIL released. */
#include "python/binding.h"

#include <limits.h>
#include <string.h>

#include "core/threads.h"
#include "dense/dense.h"
#include "dense/rle.h"
#include "model/session.h"

/* ---- RLE ------------------------------------------------------------------- */

/* rle_encode(map int32 ndarray, C-contiguous) -> str */
/* K, the number of classes of a CSR (offsets [K+1], ids) pair, or -1 with ValueError. */
static npy_intp class_count(PyArrayObject *o, PyArrayObject *ids) {
    npy_intp K = PyArray_DIM(o, 0) - 1;
    if (K < 1) {
        PyErr_Format(PyExc_ValueError, "offsets must have K+1 >= 2 entries");
        return -1;
    }
    const int64_t *off = PyArray_DATA(o);
    if (off[K] != PyArray_DIM(ids, 0)) {
        PyErr_Format(PyExc_ValueError, "offsets[-1] = %lld but there are %zd ids", (long long)off[K],
                     PyArray_DIM(ids, 0));
        return -1;
    }
    return K;
}

static PyObject *py_rle_encode(PyObject *self, PyObject *arg) {
    if (!dm_py_check_array(arg, "map", NPY_INT32, -1)) return NULL;
    PyArrayObject *a = (PyArrayObject *)arg;
    const int32_t *data = PyArray_DATA(a);
    int64_t n = (int64_t)PyArray_SIZE(a);
    size_t len = 0;
    dm_status st;
    Py_BEGIN_ALLOW_THREADS
    st = rle_encoded_length(data, n, &len);
    Py_END_ALLOW_THREADS
    if (st != DM_OK) return dm_py_raise(st);
    if (len > (size_t)PY_SSIZE_T_MAX) return PyErr_NoMemory();
    PyObject *s = PyUnicode_New((Py_ssize_t)len, 127);
    if (!s) return NULL;
    char *buf = (char *)PyUnicode_1BYTE_DATA(s);
    size_t wrote = 0;
    Py_BEGIN_ALLOW_THREADS
    st = rle_encode(data, n, buf, len, &wrote);
    Py_END_ALLOW_THREADS
    if (st != DM_OK) { Py_DECREF(s); return dm_py_raise(st); }
    return s;
}

/* rle_decode(text str|bytes, n) -> int32[n] */
static PyObject *py_rle_decode(PyObject *self, PyObject *args) {
    PyObject *text;
    long long n;
    if (!PyArg_ParseTuple(args, "OL", &text, &n)) return NULL;
    const char *buf;
    Py_ssize_t len;
    if (PyUnicode_Check(text)) {
        buf = PyUnicode_AsUTF8AndSize(text, &len);
        if (!buf) return NULL;
    } else if (PyBytes_Check(text)) {
        buf = PyBytes_AS_STRING(text);
        len = PyBytes_GET_SIZE(text);
    } else {
        return PyErr_Format(PyExc_TypeError, "rle text must be str or bytes, got %s",
                            Py_TYPE(text)->tp_name);
    }
    if (n < 0 || n > (long long)PY_SSIZE_T_MAX / 4)
        return PyErr_Format(PyExc_ValueError, "rle: map size %lld out of range", n);
    npy_intp dims[1] = {(npy_intp)n};
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(1, dims, NPY_INT32);
    if (!out) return NULL;
    dm_status st;
    Py_INCREF(text); /* keep buf alive while the GIL is released */
    Py_BEGIN_ALLOW_THREADS
    st = rle_decode(buf, (size_t)len, PyArray_DATA(out), (int64_t)n, NULL);
    Py_END_ALLOW_THREADS
    Py_DECREF(text);
    if (st != DM_OK) { Py_DECREF(out); return dm_py_raise(st); }
    return (PyObject *)out;
}

/* ---- dense decoding -------------------------------------------------------- */

static int parse_size(PyObject *obj, int64_t *oh, int64_t *ow) {
    long long a, b;
    if (!PyTuple_Check(obj) || !PyArg_ParseTuple(obj, "LL", &a, &b)) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "size must be a tuple (height, width) of ints, got %R", obj);
        return 0;
    }
    if (a <= 0 || b <= 0 || a > (1 << 20) || b > (1 << 20)) {
        PyErr_Format(PyExc_ValueError, "size must be positive and at most 2^20, got (%lld, %lld)", a, b);
        return 0;
    }
    *oh = a;
    *ow = b;
    return 1;
}

/* class_logits(hidden f32[T,D], head f32|uint16[V,D], offsets int64[K+1], ids int64[n],
 *              *, bf16=False, backend="onednn") -> f32[T,K] */
static PyObject *py_class_logits(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"hidden", "head", "offsets", "ids", "bf16", "backend", NULL};
    PyObject *h_obj, *w_obj, *o_obj, *i_obj, *backend_obj = NULL;
    int bf16 = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOO|$pO", kwlist, &h_obj, &w_obj, &o_obj, &i_obj,
                                     &bf16, &backend_obj))
        return NULL;
    dm_backend backend = DM_BACKEND_ONEDNN;
    if (backend_obj && !dm_py_backend(backend_obj, &backend)) return NULL;
    if (!dm_py_check_array(h_obj, "hidden", NPY_FLOAT32, 2)) return NULL;
    if (!dm_py_check_array(o_obj, "offsets", NPY_INT64, 1)) return NULL;
    if (!dm_py_check_array(i_obj, "ids", NPY_INT64, 1)) return NULL;
    dm_tensor head;
    if (!dm_py_weight_view(w_obj, "head", bf16, &head)) return NULL;
    PyArrayObject *h = (PyArrayObject *)h_obj, *o = (PyArrayObject *)o_obj, *ids = (PyArrayObject *)i_obj;
    if (head.ndim != 2 || head.shape[1] != PyArray_DIM(h, 1))
        return PyErr_Format(PyExc_ValueError, "head must be [vocab, %zd] (the hidden size)",
                            PyArray_DIM(h, 1));
    npy_intp K = class_count(o, ids);
    if (K < 0) return NULL;
    const int64_t *off = PyArray_DATA(o);
    npy_intp dims[2] = {PyArray_DIM(h, 0), K};
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(2, dims, NPY_FLOAT32);
    if (!out) return NULL;
    dm_status st;
    Py_BEGIN_ALLOW_THREADS
    dm_threads_enter();
    st = dense_class_logits(backend, PyArray_DATA(out), PyArray_DATA(h), dims[0], PyArray_DIM(h, 1),
                            &head, off, PyArray_DATA(ids), K);
    Py_END_ALLOW_THREADS
    if (st != DM_OK) { Py_DECREF(out); return dm_py_raise(st); }
    return (PyObject *)out;
}

/* upsample_bilinear(x f32[h,w,C], (oh, ow)) -> f32[oh,ow,C] */
static PyObject *py_upsample_bilinear(PyObject *self, PyObject *args) {
    PyObject *x_obj, *size;
    if (!PyArg_ParseTuple(args, "OO", &x_obj, &size)) return NULL;
    if (!dm_py_check_array(x_obj, "x", NPY_FLOAT32, 3)) return NULL;
    int64_t oh, ow;
    if (!parse_size(size, &oh, &ow)) return NULL;
    PyArrayObject *x = (PyArrayObject *)x_obj;
    npy_intp C = PyArray_DIM(x, 2);
    if (PyArray_DIM(x, 0) < 1 || PyArray_DIM(x, 1) < 1 || C < 1)
        return PyErr_Format(PyExc_ValueError, "x must be a non-empty [h, w, C] array");
    npy_intp dims[3] = {(npy_intp)oh, (npy_intp)ow, C};
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(3, dims, NPY_FLOAT32);
    if (!out) return NULL;
    dm_status st;
    Py_BEGIN_ALLOW_THREADS
    dm_threads_enter();
    st = dense_upsample_bilinear(PyArray_DATA(out), PyArray_DATA(x), PyArray_DIM(x, 0),
                                 PyArray_DIM(x, 1), C, oh, ow);
    Py_END_ALLOW_THREADS
    if (st != DM_OK) { Py_DECREF(out); return dm_py_raise(st); }
    return (PyObject *)out;
}

/* upsample_argmax(x f32[h,w,C], (oh, ow), background=False, bg_scale=0.25, bg_score=0.5)
 * -> int32[oh,ow] */
static PyObject *py_upsample_argmax(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "size", "background", "bg_scale", "bg_score", NULL};
    PyObject *x_obj, *size;
    int background = 0;
    float bg_scale = 0.25f, bg_score = 0.5f;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|pff", kwlist, &x_obj, &size, &background,
                                     &bg_scale, &bg_score))
        return NULL;
    if (!dm_py_check_array(x_obj, "x", NPY_FLOAT32, 3)) return NULL;
    int64_t oh, ow;
    if (!parse_size(size, &oh, &ow)) return NULL;
    PyArrayObject *x = (PyArrayObject *)x_obj;
    if (PyArray_DIM(x, 0) < 1 || PyArray_DIM(x, 1) < 1 || PyArray_DIM(x, 2) < 1)
        return PyErr_Format(PyExc_ValueError, "x must be a non-empty [h, w, C] array");
    if (PyArray_DIM(x, 2) > INT32_MAX - 1)
        return PyErr_Format(PyExc_ValueError, "too many channels");
    npy_intp dims[2] = {(npy_intp)oh, (npy_intp)ow};
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(2, dims, NPY_INT32);
    if (!out) return NULL;
    dm_status st;
    Py_BEGIN_ALLOW_THREADS
    dm_threads_enter();
    st = dense_upsample_argmax(PyArray_DATA(out), PyArray_DATA(x), PyArray_DIM(x, 0),
                               PyArray_DIM(x, 1), PyArray_DIM(x, 2), oh, ow, background, bg_scale,
                               bg_score);
    Py_END_ALLOW_THREADS
    if (st != DM_OK) { Py_DECREF(out); return dm_py_raise(st); }
    return (PyObject *)out;
}

/* scores(z f32[..., C], temperature=0.2, background=False, bg_scale=0.25, bg_score=0.5)
 * -> f32[..., C] (softmax) or f32[..., C+1] (background first) */
static PyObject *py_scores(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"z", "temperature", "background", "bg_scale", "bg_score", NULL};
    PyObject *z_obj;
    float temperature = 0.2f, bg_scale = 0.25f, bg_score = 0.5f;
    int background = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|fpff", kwlist, &z_obj, &temperature, &background,
                                     &bg_scale, &bg_score))
        return NULL;
    if (!dm_py_check_array(z_obj, "z", NPY_FLOAT32, -1)) return NULL;
    PyArrayObject *z = (PyArrayObject *)z_obj;
    int nd = PyArray_NDIM(z);
    if (nd < 1 || PyArray_DIM(z, nd - 1) < 1)
        return PyErr_Format(PyExc_ValueError, "z must have a non-empty last (class) axis");
    if (!background && !(temperature > 0.0f))
        return PyErr_Format(PyExc_ValueError, "temperature must be > 0, got %g", (double)temperature);
    npy_intp C = PyArray_DIM(z, nd - 1), dims[NPY_MAXDIMS];
    for (int i = 0; i < nd; i++) dims[i] = PyArray_DIM(z, i);
    dims[nd - 1] = C + (background ? 1 : 0);
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(nd, dims, NPY_FLOAT32);
    if (!out) return NULL;
    dm_status st;
    Py_BEGIN_ALLOW_THREADS
    dm_threads_enter();
    st = dense_scores(PyArray_DATA(out), PyArray_DATA(z), PyArray_SIZE(z) / C, C, temperature,
                      background, bg_scale, bg_score);
    Py_END_ALLOW_THREADS
    if (st != DM_OK) { Py_DECREF(out); return dm_py_raise(st); }
    return (PyObject *)out;
}

/* depth_dequantize(bins f32[...], mode "linear"|"log", dmin, dmax, nbins=1000, scale=1.0)
 * -> f32[...] metres, NaN where invalid */
static PyObject *py_depth_dequantize(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"bins", "mode", "dmin", "dmax", "nbins", "scale", NULL};
    PyObject *b_obj;
    const char *mode_s;
    float dmin, dmax, scale = 1.0f;
    int nbins = 1000;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Osff|if", kwlist, &b_obj, &mode_s, &dmin, &dmax,
                                     &nbins, &scale))
        return NULL;
    if (!dm_py_check_array(b_obj, "bins", NPY_FLOAT32, -1)) return NULL;
    dense_depth_mode mode;
    if (strcmp(mode_s, "linear") == 0) mode = DENSE_DEPTH_LINEAR;
    else if (strcmp(mode_s, "log") == 0) mode = DENSE_DEPTH_LOG;
    else return PyErr_Format(PyExc_ValueError, "mode must be 'linear' or 'log', got %s", mode_s);
    PyArrayObject *b = (PyArrayObject *)b_obj;
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(PyArray_NDIM(b), PyArray_DIMS(b), NPY_FLOAT32);
    if (!out) return NULL;
    dm_status st;
    Py_BEGIN_ALLOW_THREADS
    dm_threads_enter();
    st = dense_depth_dequantize(PyArray_DATA(out), PyArray_DATA(b), PyArray_SIZE(b), mode, dmin, dmax,
                                nbins, scale);
    Py_END_ALLOW_THREADS
    if (st != DM_OK) { Py_DECREF(out); return dm_py_raise(st); }
    return (PyObject *)out;
}


/* session_class_logits(session, offsets int64[K+1], ids int64[n]) -> f32[gh2, gw2, K]:
 * the class logits of the session's retained vision tokens (no forward pass), read in
 * place through the session accessors. [n_tokens, K] when the grid is unknown. */
static PyObject *py_session_class_logits(PyObject *self, PyObject *args) {
    PyObject *s_obj, *o_obj, *i_obj;
    if (!PyArg_ParseTuple(args, "OOO", &s_obj, &o_obj, &i_obj)) return NULL;
    struct dm_session *s = dm_py_session(s_obj);
    if (!s) return NULL;
    if (!dm_py_check_array(o_obj, "offsets", NPY_INT64, 1)) return NULL;
    if (!dm_py_check_array(i_obj, "ids", NPY_INT64, 1)) return NULL;
    PyArrayObject *o = (PyArrayObject *)o_obj, *ids = (PyArrayObject *)i_obj;
    npy_intp K = class_count(o, ids);
    if (K < 0) return NULL;
    const int64_t *off = PyArray_DATA(o);
    int64_t n = 0, gh = 0, gw = 0;
    const float *hidden = NULL;
    dm_session_vision_hidden(s, &n, &hidden);
    if (n == 0 || !hidden)
        return PyErr_Format(PyExc_ValueError, "the session holds no vision tokens (prefill with an image)");
    dm_session_vision_grid(s, &gh, &gw);
    const dm_tensor *head = dm_session_lm_head(s);
    if (!head || head->ndim != 2) return PyErr_Format(PyExc_RuntimeError, "the session has no LM head");
    PyArrayObject *out;
    if (gh > 0 && gw > 0 && gh * gw == n) {
        npy_intp dims[3] = {(npy_intp)gh, (npy_intp)gw, K};
        out = (PyArrayObject *)PyArray_SimpleNew(3, dims, NPY_FLOAT32);
    } else {
        npy_intp dims[2] = {(npy_intp)n, K};
        out = (PyArrayObject *)PyArray_SimpleNew(2, dims, NPY_FLOAT32);
    }
    if (!out) return NULL;
    dm_backend backend = dm_session_backend(s);
    dm_status st;
    Py_INCREF(s_obj); /* the session (and its model) stay alive while the GIL is released */
    Py_BEGIN_ALLOW_THREADS
    dm_threads_enter();
    st = dense_class_logits(backend, PyArray_DATA(out), hidden, n, head->shape[1], head, off,
                            PyArray_DATA(ids), K);
    Py_END_ALLOW_THREADS
    Py_DECREF(s_obj);
    if (st != DM_OK) { Py_DECREF(out); return dm_py_raise(st); }
    return (PyObject *)out;
}

#define KW(f) (PyCFunction)(void (*)(void))(f), METH_VARARGS | METH_KEYWORDS
static PyMethodDef dense_methods[] = {
    {"rle_encode", py_rle_encode, METH_O, "rle_encode(map int32) -> str of (value,count) pairs."},
    {"rle_decode", py_rle_decode, METH_VARARGS, "rle_decode(text, n) -> int32[n]; strict."},
    {"dense_class_logits", KW(py_class_logits),
     "dense_class_logits(hidden, head, offsets, ids, *, bf16=False, backend='onednn') -> f32[T,K]."},
    {"dense_upsample_bilinear", py_upsample_bilinear, METH_VARARGS,
     "dense_upsample_bilinear(x f32[h,w,C], (oh, ow)) -> f32[oh,ow,C] (half-pixel centres)."},
    {"dense_upsample_argmax", KW(py_upsample_argmax),
     "dense_upsample_argmax(x, (oh, ow), background=False, bg_scale=0.25, bg_score=0.5) -> int32."},
    {"dense_scores", KW(py_scores),
     "dense_scores(z, temperature=0.2, background=False, bg_scale=0.25, bg_score=0.5) -> f32."},
    {"dense_depth_dequantize", KW(py_depth_dequantize),
     "dense_depth_dequantize(bins f32, mode, dmin, dmax, nbins=1000, scale=1.0) -> metres."},
    {"dense_session_logits", py_session_class_logits, METH_VARARGS,
     "dense_session_logits(session, offsets, ids) -> f32[gh2, gw2, K] from the retained vision states."},
    {NULL, NULL, 0, NULL},
};

int dm_py_register_dense(PyObject *m) { return PyModule_AddFunctions(m, dense_methods); }
