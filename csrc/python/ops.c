/* Binding: single ops and their backwards on NumPy arrays, for tests only
 * (tests/test_backward_ops.py checks each against torch.autograd). Not a public
 * API: the training engine calls the ops from C. Every function validates
 * shapes, releases the GIL around the op and returns new arrays unless an
 * accumulate-into array is passed. */
#include "python/binding.h"

#include <string.h>

#include "core/threads.h"
#include "ops/activation.h"
#include "ops/attention.h"
#include "ops/embedding.h"
#include "ops/norm.h"
#include "ops/rope.h"
#include "ops/swiglu.h"

/* C-contiguous f32 array of ndim dims; dims[] receives the shape. NULL + exception otherwise. */
static float *f32_array(PyObject *obj, const char *what, int ndim, npy_intp *dims) {
    if (!dm_py_check_array(obj, what, NPY_FLOAT32, ndim)) return NULL;
    PyArrayObject *a = (PyArrayObject *)obj;
    for (int i = 0; i < ndim; i++) dims[i] = PyArray_DIM(a, i);
    return PyArray_DATA(a);
}

/* 2-D f32 array whose rows may be strided (a column slice of a wider array):
 * unit column stride, row stride a positive multiple of 4 bytes of at least the
 * row. ld receives the row stride in elements. writable: also require that. */
static float *row_array(PyObject *obj, const char *what, npy_intp *rows, npy_intp *cols, int64_t *ld,
                        int writable) {
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s: expected a numpy.ndarray, got %s", what, Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    if (PyArray_TYPE(a) != NPY_FLOAT32 || PyArray_NDIM(a) != 2) {
        PyErr_Format(PyExc_TypeError, "%s: expected a 2-D float32 array", what);
        return NULL;
    }
    npy_intp s0 = PyArray_STRIDE(a, 0), s1 = PyArray_STRIDE(a, 1);
    *rows = PyArray_DIM(a, 0);
    *cols = PyArray_DIM(a, 1);
    if ((s1 != 4 && *cols > 1) || s0 % 4 != 0 || (*rows > 1 && s0 / 4 < *cols) || !PyArray_ISALIGNED(a)) {
        PyErr_Format(PyExc_ValueError, "%s: rows must be contiguous with a row stride >= the row", what);
        return NULL;
    }
    if (writable && !PyArray_ISWRITEABLE(a)) {
        PyErr_Format(PyExc_ValueError, "%s: array is read-only", what);
        return NULL;
    }
    *ld = *rows > 1 ? s0 / 4 : *cols;
    if (*ld < *cols) *ld = *cols;
    return PyArray_DATA(a);
}

static int expect_dims(const char *what, int ndim, const npy_intp *got, const npy_intp *want) {
    for (int i = 0; i < ndim; i++)
        if (got[i] != want[i]) {
            PyErr_Format(PyExc_ValueError, "%s: axis %d has length %zd, expected %zd", what, i, got[i], want[i]);
            return 0;
        }
    return 1;
}

static PyArrayObject *new_f32(int ndim, const npy_intp *dims) {
    return (PyArrayObject *)PyArray_ZEROS(ndim, (npy_intp *)dims, NPY_FLOAT32, 0);
}

#define F32(a) ((float *)PyArray_DATA(a))

/* Optional accumulate-into argument: a writable contiguous f32 array of `dims`
 * (then *acc = 1 and a new reference is returned), else a fresh zero array. */
static PyArrayObject *out_or_new(PyObject *obj, const char *what, int ndim, const npy_intp *dims, int *acc) {
    if (obj && obj != Py_None) {
        npy_intp got[4];
        if (!f32_array(obj, what, ndim, got) || !expect_dims(what, ndim, got, dims)) return NULL;
        if (!PyArray_ISWRITEABLE((PyArrayObject *)obj))
            return (PyArrayObject *)PyErr_Format(PyExc_ValueError, "%s: array is read-only", what);
        Py_INCREF(obj);
        *acc = 1;
        return (PyArrayObject *)obj;
    }
    *acc = 0;
    return new_f32(ndim, dims);
}

/* ---- linear ---- */

/* op_matmul_dx(dy[M,N], w[N,K] (f32, or uint16 bf16 bits with bf16=True), backend, dx=None)
 * -> dx: dx = dy W, or dx += dy W into a given (row-strided) dx. */
static PyObject *py_matmul_dx(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"dy", "w", "backend", "dx", "bf16", NULL};
    PyObject *dy_o, *w_o, *be_o, *dx_o = Py_None;
    int bf16 = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|Op", kwlist, &dy_o, &w_o, &be_o, &dx_o, &bf16)) return NULL;
    dm_backend be;
    dm_tensor w;
    npy_intp M, N, M2, K2;
    int64_t ldy, ldx;
    if (!dm_py_backend(be_o, &be) || !dm_py_weight_view(w_o, "w", bf16, &w)) return NULL;
    if (w.ndim != 2) return PyErr_Format(PyExc_ValueError, "w: expected a 2-D array, got %d-D", w.ndim);
    const float *dy = row_array(dy_o, "dy", &M, &N, &ldy, 0);
    if (!dy) return NULL;
    if (N != w.shape[0])
        return PyErr_Format(PyExc_ValueError, "dy: axis 1 has length %zd, expected %lld (w rows)", N,
                            (long long)w.shape[0]);
    PyArrayObject *dx;
    int acc = 0;
    if (dx_o != Py_None) {
        float *p = row_array(dx_o, "dx", &M2, &K2, &ldx, 1);
        if (!p) return NULL;
        if (M2 != M || K2 != w.shape[1])
            return PyErr_Format(PyExc_ValueError, "dx: expected shape (%zd, %lld)", M, (long long)w.shape[1]);
        Py_INCREF(dx_o);
        dx = (PyArrayObject *)dx_o;
        acc = 1;
    } else {
        npy_intp d[2] = {M, (npy_intp)w.shape[1]};
        if (!(dx = new_f32(2, d))) return NULL;
        ldx = w.shape[1];
    }
    dm_status st;
    dm_threads_enter();
    Py_BEGIN_ALLOW_THREADS
    st = dm_matmul_dx(be, F32(dx), ldx, dy, ldy, &w, M, acc);
    Py_END_ALLOW_THREADS
    if (st != DM_OK) {
        Py_DECREF(dx);
        return dm_py_raise(st);
    }
    return (PyObject *)dx;
}

/* op_matmul_dw(dy[M,N], x[M,K], backend, dw=None) -> dw[N,K] (= dy^T x, or += into dw). */
static PyObject *py_matmul_dw(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"dy", "x", "backend", "dw", NULL};
    PyObject *dy_o, *x_o, *be_o, *dw_o = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|O", kwlist, &dy_o, &x_o, &be_o, &dw_o)) return NULL;
    dm_backend be;
    npy_intp M, N, M2, K;
    int64_t ldy, ldx;
    if (!dm_py_backend(be_o, &be)) return NULL;
    const float *dy = row_array(dy_o, "dy", &M, &N, &ldy, 0);
    if (!dy) return NULL;
    const float *x = row_array(x_o, "x", &M2, &K, &ldx, 0);
    if (!x) return NULL;
    if (M2 != M) return PyErr_Format(PyExc_ValueError, "x: axis 0 has length %zd, expected %zd (dy rows)", M2, M);
    npy_intp d[2] = {N, K};
    int acc;
    PyArrayObject *dw = out_or_new(dw_o, "dw", 2, d, &acc);
    if (!dw) return NULL;
    dm_status st;
    dm_threads_enter();
    Py_BEGIN_ALLOW_THREADS
    st = dm_matmul_dw(be, F32(dw), dy, ldy, x, ldx, M, N, K, acc);
    Py_END_ALLOW_THREADS
    if (st != DM_OK) {
        Py_DECREF(dw);
        return dm_py_raise(st);
    }
    return (PyObject *)dw;
}

/* op_bias_grad(dy[M,N], db=None) -> db[N]. */
static PyObject *py_bias_grad(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"dy", "db", NULL};
    PyObject *dy_o, *db_o = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|O", kwlist, &dy_o, &db_o)) return NULL;
    npy_intp M, N;
    int64_t ldy;
    const float *dy = row_array(dy_o, "dy", &M, &N, &ldy, 0);
    if (!dy) return NULL;
    npy_intp d[1] = {N};
    int acc;
    PyArrayObject *db = out_or_new(db_o, "db", 1, d, &acc);
    if (!db) return NULL;
    dm_threads_enter();
    Py_BEGIN_ALLOW_THREADS
    dm_bias_grad(F32(db), dy, ldy, M, N, acc);
    Py_END_ALLOW_THREADS
    return (PyObject *)db;
}

/* op_linear_backward(dy[M,N], x[M,K], w[N,K] f32, backend, need_dx=True, need_db=True)
 * -> (dx | None, dw, db | None) through dm_linear_backward (fresh zeroed buffers). */
static PyObject *py_linear_backward(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"dy", "x", "w", "backend", "need_dx", "need_db", NULL};
    PyObject *dy_o, *x_o, *w_o, *be_o;
    int need_dx = 1, need_db = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOO|pp", kwlist, &dy_o, &x_o, &w_o, &be_o, &need_dx, &need_db))
        return NULL;
    dm_backend be;
    dm_tensor w;
    npy_intp dyd[2] = {0, 0}, xd[2] = {0, 0};
    if (!dm_py_backend(be_o, &be) || !dm_py_weight_view(w_o, "w", 0, &w)) return NULL;
    if (w.ndim != 2) return PyErr_Format(PyExc_ValueError, "w: expected a 2-D array, got %d-D", w.ndim);
    const float *dy = f32_array(dy_o, "dy", 2, dyd), *x = dy ? f32_array(x_o, "x", 2, xd) : NULL;
    if (!dy || !x) return NULL;
    npy_intp want_dy[2] = {dyd[0], (npy_intp)w.shape[0]}, want_x[2] = {dyd[0], (npy_intp)w.shape[1]};
    if (!expect_dims("dy", 2, dyd, want_dy) || !expect_dims("x", 2, xd, want_x)) return NULL;
    npy_intp dwd[2] = {(npy_intp)w.shape[0], (npy_intp)w.shape[1]}, dbd[1] = {(npy_intp)w.shape[0]};
    PyArrayObject *dx = need_dx ? new_f32(2, xd) : NULL, *dw = new_f32(2, dwd), *db = need_db ? new_f32(1, dbd) : NULL;
    if ((need_dx && !dx) || !dw || (need_db && !db)) {
        Py_XDECREF(dx);
        Py_XDECREF(dw);
        Py_XDECREF(db);
        return NULL;
    }
    dm_status st;
    dm_threads_enter();
    Py_BEGIN_ALLOW_THREADS
    st = dm_linear_backward(be, dx ? F32(dx) : NULL, F32(dw), db ? F32(db) : NULL, dy, x, &w, dyd[0], 0);
    Py_END_ALLOW_THREADS
    if (st != DM_OK) {
        Py_XDECREF(dx);
        Py_DECREF(dw);
        Py_XDECREF(db);
        return dm_py_raise(st);
    }
    PyObject *dxr = dx ? (PyObject *)dx : (Py_INCREF(Py_None), Py_None);
    PyObject *dbr = db ? (PyObject *)db : (Py_INCREF(Py_None), Py_None);
    return Py_BuildValue("(NNN)", dxr, (PyObject *)dw, dbr);
}

/* ---- norms ---- */

/* op_layernorm_forward(x[n,d], w[d], b[d] | None, eps) -> (out, mean[n], rstd[n]) */
static PyObject *py_layernorm_forward(PyObject *self, PyObject *args) {
    PyObject *x_o, *w_o, *b_o;
    float eps;
    if (!PyArg_ParseTuple(args, "OOOf", &x_o, &w_o, &b_o, &eps)) return NULL;
    npy_intp xd[2], wd[1], bd[1];
    const float *x = f32_array(x_o, "x", 2, xd), *w = x ? f32_array(w_o, "w", 1, wd) : NULL;
    if (!x || !w) return NULL;
    const float *b = NULL;
    if (b_o != Py_None && !(b = f32_array(b_o, "b", 1, bd))) return NULL;
    npy_intp want[1] = {xd[1]};
    if (!expect_dims("w", 1, wd, want) || (b && !expect_dims("b", 1, bd, want))) return NULL;
    npy_intp nd[1] = {xd[0]};
    PyArrayObject *out = new_f32(2, xd), *mean = new_f32(1, nd), *rstd = new_f32(1, nd);
    if (!out || !mean || !rstd) {
        Py_XDECREF(out);
        Py_XDECREF(mean);
        Py_XDECREF(rstd);
        return NULL;
    }
    dm_threads_enter();
    Py_BEGIN_ALLOW_THREADS
    layernorm_forward_save(F32(out), xd[1], x, xd[1], xd[0], xd[1], w, b, eps, F32(mean), F32(rstd));
    Py_END_ALLOW_THREADS
    return Py_BuildValue("(NNN)", out, mean, rstd);
}

/* op_layernorm_backward(dout[n,d], x, mean[n], rstd[n], w[d], with_bias, dx=None) -> (dx, dw, db | None)
 * dx given: dx += (accumulate); dw / db always fresh. */
static PyObject *py_layernorm_backward(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"dout", "x", "mean", "rstd", "w", "with_bias", "dx", NULL};
    PyObject *g_o, *x_o, *m_o, *r_o, *w_o, *dx_o = Py_None;
    int with_bias;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOp|O", kwlist, &g_o, &x_o, &m_o, &r_o, &w_o, &with_bias, &dx_o))
        return NULL;
    npy_intp gd[2], xd[2], md[1], rd[1], wd[1];
    const float *g = f32_array(g_o, "dout", 2, gd);
    const float *x = g ? f32_array(x_o, "x", 2, xd) : NULL;
    const float *mean = x ? f32_array(m_o, "mean", 1, md) : NULL;
    const float *rstd = mean ? f32_array(r_o, "rstd", 1, rd) : NULL;
    const float *w = rstd ? f32_array(w_o, "w", 1, wd) : NULL;
    if (!w) return NULL;
    npy_intp nn[1] = {gd[0]}, dd[1] = {gd[1]};
    if (!expect_dims("x", 2, xd, gd) || !expect_dims("mean", 1, md, nn) || !expect_dims("rstd", 1, rd, nn) ||
        !expect_dims("w", 1, wd, dd))
        return NULL;
    int acc;
    PyArrayObject *dx = out_or_new(dx_o, "dx", 2, gd, &acc);
    PyArrayObject *dw = new_f32(1, dd), *db = with_bias ? new_f32(1, dd) : NULL;
    if (!dx || !dw || (with_bias && !db)) {
        Py_XDECREF(dx);
        Py_XDECREF(dw);
        Py_XDECREF(db);
        return NULL;
    }
    dm_threads_enter();
    Py_BEGIN_ALLOW_THREADS
    layernorm_backward(F32(dx), gd[1], F32(dw), db ? F32(db) : NULL, g, gd[1], x, gd[1], mean, rstd, w, gd[0], gd[1],
                       acc);
    Py_END_ALLOW_THREADS
    PyObject *dbr = db ? (PyObject *)db : (Py_INCREF(Py_None), Py_None);
    return Py_BuildValue("(NNN)", dx, dw, dbr);
}

/* op_rmsnorm_forward(x[n,d], w[d], eps) -> (out, rstd[n]) */
static PyObject *py_rmsnorm_forward(PyObject *self, PyObject *args) {
    PyObject *x_o, *w_o;
    float eps;
    if (!PyArg_ParseTuple(args, "OOf", &x_o, &w_o, &eps)) return NULL;
    npy_intp xd[2], wd[1];
    const float *x = f32_array(x_o, "x", 2, xd), *w = x ? f32_array(w_o, "w", 1, wd) : NULL;
    if (!x || !w) return NULL;
    npy_intp want[1] = {xd[1]}, nd[1] = {xd[0]};
    if (!expect_dims("w", 1, wd, want)) return NULL;
    PyArrayObject *out = new_f32(2, xd), *rstd = new_f32(1, nd);
    if (!out || !rstd) {
        Py_XDECREF(out);
        Py_XDECREF(rstd);
        return NULL;
    }
    dm_threads_enter();
    Py_BEGIN_ALLOW_THREADS
    rmsnorm_forward_save(F32(out), xd[1], x, xd[1], xd[0], xd[1], w, eps, F32(rstd));
    Py_END_ALLOW_THREADS
    return Py_BuildValue("(NN)", out, rstd);
}

/* op_rmsnorm_backward(dout[n,d], x, rstd[n], w[d], dx=None) -> (dx, dw) */
static PyObject *py_rmsnorm_backward(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"dout", "x", "rstd", "w", "dx", NULL};
    PyObject *g_o, *x_o, *r_o, *w_o, *dx_o = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOO|O", kwlist, &g_o, &x_o, &r_o, &w_o, &dx_o)) return NULL;
    npy_intp gd[2], xd[2], rd[1], wd[1];
    const float *g = f32_array(g_o, "dout", 2, gd);
    const float *x = g ? f32_array(x_o, "x", 2, xd) : NULL;
    const float *rstd = x ? f32_array(r_o, "rstd", 1, rd) : NULL;
    const float *w = rstd ? f32_array(w_o, "w", 1, wd) : NULL;
    if (!w) return NULL;
    npy_intp nn[1] = {gd[0]}, dd[1] = {gd[1]};
    if (!expect_dims("x", 2, xd, gd) || !expect_dims("rstd", 1, rd, nn) || !expect_dims("w", 1, wd, dd)) return NULL;
    int acc;
    PyArrayObject *dx = out_or_new(dx_o, "dx", 2, gd, &acc), *dw = new_f32(1, dd);
    if (!dx || !dw) {
        Py_XDECREF(dx);
        Py_XDECREF(dw);
        return NULL;
    }
    dm_threads_enter();
    Py_BEGIN_ALLOW_THREADS
    rmsnorm_backward(F32(dx), gd[1], F32(dw), g, gd[1], x, gd[1], rstd, w, gd[0], gd[1], acc);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("(NN)", dx, dw);
}

/* ---- activations ---- */

/* op_activation_backward(kind: "gelu_tanh" | "gelu", dy, x, dx=None) -> dx (any shape, contiguous) */
static PyObject *py_activation_backward(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"kind", "dy", "x", "dx", NULL};
    const char *kind;
    PyObject *dy_o, *x_o, *dx_o = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "sOO|O", kwlist, &kind, &dy_o, &x_o, &dx_o)) return NULL;
    int tanh_kind = strcmp(kind, "gelu_tanh") == 0;
    if (!tanh_kind && strcmp(kind, "gelu") != 0)
        return PyErr_Format(PyExc_ValueError, "kind must be 'gelu_tanh' or 'gelu', got '%s'", kind);
    if (!dm_py_check_array(dy_o, "dy", NPY_FLOAT32, -1) || !dm_py_check_array(x_o, "x", NPY_FLOAT32, -1)) return NULL;
    npy_intp n = PyArray_SIZE((PyArrayObject *)dy_o);
    if (PyArray_SIZE((PyArrayObject *)x_o) != n)
        return PyErr_Format(PyExc_ValueError, "x: %zd elements, expected %zd (dy)", PyArray_SIZE((PyArrayObject *)x_o), n);
    npy_intp d[1] = {n};
    int acc;
    PyArrayObject *dx = out_or_new(dx_o, "dx", 1, d, &acc);
    if (!dx) return NULL;
    const float *dy = PyArray_DATA((PyArrayObject *)dy_o), *x = PyArray_DATA((PyArrayObject *)x_o);
    dm_threads_enter();
    Py_BEGIN_ALLOW_THREADS
    if (tanh_kind) gelu_tanh_backward(F32(dx), dy, x, n, acc);
    else gelu_backward(F32(dx), dy, x, n, acc);
    Py_END_ALLOW_THREADS
    return (PyObject *)dx;
}

/* op_swiglu_forward(gate[n], up[n]) -> out; op_swiglu_backward(dout, gate, up) -> (dgate, dup) */
static int swiglu_args(PyObject *g_o, PyObject *u_o, PyObject *d_o, npy_intp *n) {
    if (!dm_py_check_array(g_o, "gate", NPY_FLOAT32, 1) || !dm_py_check_array(u_o, "up", NPY_FLOAT32, 1)) return 0;
    if (d_o && !dm_py_check_array(d_o, "dout", NPY_FLOAT32, 1)) return 0;
    *n = PyArray_DIM((PyArrayObject *)g_o, 0);
    if (PyArray_DIM((PyArrayObject *)u_o, 0) != *n || (d_o && PyArray_DIM((PyArrayObject *)d_o, 0) != *n)) {
        PyErr_Format(PyExc_ValueError, "up / dout: expected length %zd (gate)", *n);
        return 0;
    }
    return 1;
}

static PyObject *py_swiglu_forward(PyObject *self, PyObject *args) {
    PyObject *g_o, *u_o;
    npy_intp n;
    if (!PyArg_ParseTuple(args, "OO", &g_o, &u_o) || !swiglu_args(g_o, u_o, NULL, &n)) return NULL;
    PyArrayObject *out = new_f32(1, &n);
    if (!out) return NULL;
    const float *g = PyArray_DATA((PyArrayObject *)g_o), *u = PyArray_DATA((PyArrayObject *)u_o);
    dm_threads_enter();
    Py_BEGIN_ALLOW_THREADS
    swiglu_forward_out(F32(out), g, u, n);
    Py_END_ALLOW_THREADS
    return (PyObject *)out;
}

/* dgate / dup given (both): added to (accumulate) */
static PyObject *py_swiglu_backward(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"dout", "gate", "up", "dgate", "dup", NULL};
    PyObject *d_o, *g_o, *u_o, *dg_o = Py_None, *du_o = Py_None;
    npy_intp n;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|OO", kwlist, &d_o, &g_o, &u_o, &dg_o, &du_o) ||
        !swiglu_args(g_o, u_o, d_o, &n))
        return NULL;
    if ((dg_o == Py_None) != (du_o == Py_None))
        return PyErr_Format(PyExc_ValueError, "dgate and dup go together");
    int acc, acc2;
    PyArrayObject *dg = out_or_new(dg_o, "dgate", 1, &n, &acc), *du = dg ? out_or_new(du_o, "dup", 1, &n, &acc2) : NULL;
    if (!dg || !du) {
        Py_XDECREF(dg);
        Py_XDECREF(du);
        return NULL;
    }
    const float *d = PyArray_DATA((PyArrayObject *)d_o), *g = PyArray_DATA((PyArrayObject *)g_o),
                *u = PyArray_DATA((PyArrayObject *)u_o);
    dm_threads_enter();
    Py_BEGIN_ALLOW_THREADS
    swiglu_backward(F32(dg), F32(du), d, g, u, n, acc);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("(NN)", dg, du);
}

/* ---- rope ---- */

/* op_rope1d(x[T,H,W], inv_freq[dim/2], attn_factor, offset, pos0, interleave, backward)
 * -> copy of x with the slices [offset, offset+dim) of every head rotated (or
 * the backward applied). */
static PyObject *py_rope1d(PyObject *self, PyObject *args) {
    PyObject *x_o, *f_o;
    float af;
    long long offset, pos0;
    int interleave, backward;
    if (!PyArg_ParseTuple(args, "OOfLLpp", &x_o, &f_o, &af, &offset, &pos0, &interleave, &backward)) return NULL;
    npy_intp xd[3], fd[1];
    const float *x = f32_array(x_o, "x", 3, xd), *f = x ? f32_array(f_o, "inv_freq", 1, fd) : NULL;
    if (!f) return NULL;
    const npy_intp dim = 2 * fd[0];
    if (dim <= 0 || dim > 1024)
        return PyErr_Format(PyExc_ValueError, "inv_freq: rotary dim %zd must be in [2, 1024]", dim);
    if (offset < 0 || offset + dim > xd[2])
        return PyErr_Format(PyExc_ValueError, "offset %lld + rotary dim %zd exceeds the head width %zd", offset, dim,
                            xd[2]);
    PyArrayObject *y = new_f32(3, xd);
    if (!y) return NULL;
    memcpy(F32(y), x, (size_t)PyArray_NBYTES(y));
    dm_threads_enter();
    Py_BEGIN_ALLOW_THREADS
    if (backward)
        rope1d_backward(F32(y) + offset, xd[0], xd[1], xd[1] * xd[2], xd[2], (int)dim, pos0, f, af, interleave);
    else
        rope1d_forward(F32(y) + offset, xd[0], xd[1], xd[1] * xd[2], xd[2], (int)dim, pos0, f, af, interleave);
    Py_END_ALLOW_THREADS
    return (PyObject *)y;
}

/* op_rope2d(x[N,H,hd], rows int32[N], cols int32[N], theta, backward) -> rotated copy */
static PyObject *py_rope2d(PyObject *self, PyObject *args) {
    PyObject *x_o, *r_o, *c_o;
    float theta;
    int backward;
    if (!PyArg_ParseTuple(args, "OOOfp", &x_o, &r_o, &c_o, &theta, &backward)) return NULL;
    npy_intp xd[3];
    const float *x = f32_array(x_o, "x", 3, xd);
    if (!x || !dm_py_check_array(r_o, "rows", NPY_INT32, 1) || !dm_py_check_array(c_o, "cols", NPY_INT32, 1))
        return NULL;
    if (PyArray_DIM((PyArrayObject *)r_o, 0) != xd[0] || PyArray_DIM((PyArrayObject *)c_o, 0) != xd[0])
        return PyErr_Format(PyExc_ValueError, "rows / cols: expected length %zd (tokens)", xd[0]);
    if (xd[2] % 4 || xd[2] <= 0 || xd[2] > 2048)
        return PyErr_Format(PyExc_ValueError, "head dim %zd must be a positive multiple of 4 up to 2048", xd[2]);
    npy_intp td[2] = {xd[0], xd[2] / 2};
    PyArrayObject *y = new_f32(3, xd), *ct = new_f32(2, td), *sn = new_f32(2, td);
    if (!y || !ct || !sn) {
        Py_XDECREF(y);
        Py_XDECREF(ct);
        Py_XDECREF(sn);
        return NULL;
    }
    memcpy(F32(y), x, (size_t)PyArray_NBYTES(y));
    const int32_t *rows = PyArray_DATA((PyArrayObject *)r_o), *cols = PyArray_DATA((PyArrayObject *)c_o);
    dm_threads_enter();
    Py_BEGIN_ALLOW_THREADS
    rope2d_tables(F32(ct), F32(sn), rows, cols, xd[0], (int)xd[2], theta);
    if (backward) rope2d_backward(F32(y), xd[0], xd[1], xd[1] * xd[2], (int)xd[2], F32(ct), F32(sn));
    else rope2d_forward(F32(y), xd[0], xd[1], xd[1] * xd[2], (int)xd[2], F32(ct), F32(sn));
    Py_END_ALLOW_THREADS
    Py_DECREF(ct);
    Py_DECREF(sn);
    return (PyObject *)y;
}

/* ---- embedding ---- */

/* op_embedding_forward(E[V,D] f32, ids int64[T]) -> out[T,D] (rows of negative ids stay 0) */
static PyObject *py_embedding_forward(PyObject *self, PyObject *args) {
    PyObject *e_o, *i_o;
    if (!PyArg_ParseTuple(args, "OO", &e_o, &i_o)) return NULL;
    dm_tensor E;
    if (!dm_py_weight_view(e_o, "E", 0, &E) || !dm_py_check_array(i_o, "ids", NPY_INT64, 1)) return NULL;
    if (E.ndim != 2) return PyErr_Format(PyExc_ValueError, "E: expected a 2-D array, got %d-D", E.ndim);
    npy_intp d[2] = {PyArray_DIM((PyArrayObject *)i_o, 0), (npy_intp)E.shape[1]};
    PyArrayObject *out = new_f32(2, d);
    if (!out) return NULL;
    const int64_t *ids = PyArray_DATA((PyArrayObject *)i_o);
    dm_status st;
    dm_threads_enter();
    Py_BEGIN_ALLOW_THREADS
    st = embedding_forward(F32(out), d[1], &E, ids, d[0]);
    Py_END_ALLOW_THREADS
    if (st != DM_OK) {
        Py_DECREF(out);
        return dm_py_raise(st);
    }
    return (PyObject *)out;
}

/* op_embedding_backward(dout[T,D], ids int64[T], V, dE=None) -> dE[V,D] (+= into dE when given) */
static PyObject *py_embedding_backward(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"dout", "ids", "V", "dE", NULL};
    PyObject *g_o, *i_o, *de_o = Py_None;
    long long V;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOL|O", kwlist, &g_o, &i_o, &V, &de_o)) return NULL;
    npy_intp gd[2];
    const float *g = f32_array(g_o, "dout", 2, gd);
    if (!g || !dm_py_check_array(i_o, "ids", NPY_INT64, 1)) return NULL;
    if (PyArray_DIM((PyArrayObject *)i_o, 0) != gd[0])
        return PyErr_Format(PyExc_ValueError, "ids: expected length %zd (dout rows)", gd[0]);
    if (V <= 0 || V > ((long long)1 << 31))
        return PyErr_Format(PyExc_ValueError, "V must be in [1, 2^31], got %lld", V);
    npy_intp d[2] = {(npy_intp)V, gd[1]};
    int acc;
    PyArrayObject *dE = out_or_new(de_o, "dE", 2, d, &acc);
    if (!dE) return NULL;
    const int64_t *ids = PyArray_DATA((PyArrayObject *)i_o);
    dm_status st;
    dm_threads_enter();
    Py_BEGIN_ALLOW_THREADS
    st = embedding_backward(F32(dE), V, gd[1], ids, gd[0], g, gd[1]);
    Py_END_ALLOW_THREADS
    if (st != DM_OK) {
        Py_DECREF(dE);
        return dm_py_raise(st);
    }
    return (PyObject *)dE;
}

/* ---- attention ---- */

/* Shapes q[Tq,H,Dk], k[Tk,Hkv,Dk], v[Tk,Hkv,Dv] (contiguous) into args; segments:
 * None or int64 boundaries [n_seg+1]. */
static int attn_setup(PyObject *q_o, PyObject *k_o, PyObject *v_o, PyObject *seg_o, float scale, int causal,
                      dm_attn_args *a, npy_intp *qd, npy_intp *kd, npy_intp *vd) {
    memset(a, 0, sizeof *a);
    if (!f32_array(q_o, "q", 3, qd) || !f32_array(k_o, "k", 3, kd) || !f32_array(v_o, "v", 3, vd)) return 0;
    if (kd[0] != vd[0] || kd[1] != vd[1]) {
        PyErr_Format(PyExc_ValueError, "v: expected %zd tokens x %zd heads (k's)", kd[0], kd[1]);
        return 0;
    }
    if (qd[2] != kd[2]) {
        PyErr_Format(PyExc_ValueError, "k: head dim %zd, expected %zd (q's)", kd[2], qd[2]);
        return 0;
    }
    if (qd[1] > 4096 || kd[1] > 4096 || qd[2] > 4096 || vd[2] > 4096) {
        PyErr_Format(PyExc_ValueError, "heads and head dims must be <= 4096");
        return 0;
    }
    a->Tq = qd[0];
    a->Tk = kd[0];
    a->H = (int)qd[1];
    a->Hkv = (int)kd[1];
    a->Dk = (int)qd[2];
    a->Dv = (int)vd[2];
    a->scale = scale;
    a->causal = causal;
    if (seg_o != Py_None) {
        if (!dm_py_check_array(seg_o, "segments", NPY_INT64, 1)) return 0;
        npy_intp ns = PyArray_DIM((PyArrayObject *)seg_o, 0);
        if (ns < 2) {
            PyErr_Format(PyExc_ValueError, "segments: need at least 2 boundaries, got %zd", ns);
            return 0;
        }
        a->segments = PyArray_DATA((PyArrayObject *)seg_o);
        a->n_seg = ns - 1;
    }
    return 1;
}

/* op_attention_forward(q, k, v, scale, causal=False, segments=None) -> (out[Tq,H,Dv], lse[Tq,H]) */
static PyObject *py_attention_forward(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"q", "k", "v", "scale", "causal", "segments", NULL};
    PyObject *q_o, *k_o, *v_o, *seg_o = Py_None;
    float scale;
    int causal = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOf|pO", kwlist, &q_o, &k_o, &v_o, &scale, &causal, &seg_o))
        return NULL;
    dm_attn_args a;
    npy_intp qd[3], kd[3], vd[3];
    if (!attn_setup(q_o, k_o, v_o, seg_o, scale, causal, &a, qd, kd, vd)) return NULL;
    npy_intp od[3] = {qd[0], qd[1], vd[2]}, ld[2] = {qd[0], qd[1]};
    PyArrayObject *out = new_f32(3, od), *lse = new_f32(2, ld);
    if (!out || !lse) {
        Py_XDECREF(out);
        Py_XDECREF(lse);
        return NULL;
    }
    a.lse = F32(lse);
    const float *q = PyArray_DATA((PyArrayObject *)q_o), *k = PyArray_DATA((PyArrayObject *)k_o),
                *v = PyArray_DATA((PyArrayObject *)v_o);
    dm_status st;
    dm_threads_enter();
    Py_BEGIN_ALLOW_THREADS
    st = attention_forward(F32(out), q, k, v, &a);
    Py_END_ALLOW_THREADS
    if (st != DM_OK) {
        Py_DECREF(out);
        Py_DECREF(lse);
        return dm_py_raise(st);
    }
    return Py_BuildValue("(NN)", out, lse);
}

/* op_attention_backward(dout, q, k, v, out, lse, scale, causal=False, segments=None) -> (dq, dk, dv) */
static PyObject *py_attention_backward(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"dout", "q", "k", "v", "out", "lse", "scale", "causal", "segments", NULL};
    PyObject *g_o, *q_o, *k_o, *v_o, *o_o, *l_o, *seg_o = Py_None;
    float scale;
    int causal = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOOf|pO", kwlist, &g_o, &q_o, &k_o, &v_o, &o_o, &l_o, &scale,
                                     &causal, &seg_o))
        return NULL;
    dm_attn_args a;
    npy_intp qd[3], kd[3], vd[3], gd[3], od[3], ld[2];
    if (!attn_setup(q_o, k_o, v_o, seg_o, scale, causal, &a, qd, kd, vd)) return NULL;
    npy_intp want_o[3] = {qd[0], qd[1], vd[2]}, want_l[2] = {qd[0], qd[1]};
    const float *g = f32_array(g_o, "dout", 3, gd);
    const float *o = g ? f32_array(o_o, "out", 3, od) : NULL;
    const float *lse = o ? f32_array(l_o, "lse", 2, ld) : NULL;
    if (!lse || !expect_dims("dout", 3, gd, want_o) || !expect_dims("out", 3, od, want_o) ||
        !expect_dims("lse", 2, ld, want_l))
        return NULL;
    PyArrayObject *dq = new_f32(3, qd), *dk = new_f32(3, kd), *dv = new_f32(3, vd);
    if (!dq || !dk || !dv) {
        Py_XDECREF(dq);
        Py_XDECREF(dk);
        Py_XDECREF(dv);
        return NULL;
    }
    const float *q = PyArray_DATA((PyArrayObject *)q_o), *k = PyArray_DATA((PyArrayObject *)k_o),
                *v = PyArray_DATA((PyArrayObject *)v_o);
    dm_status st;
    dm_threads_enter();
    Py_BEGIN_ALLOW_THREADS
    st = attention_backward(F32(dq), F32(dk), F32(dv), g, q, k, v, o, lse, &a);
    Py_END_ALLOW_THREADS
    if (st != DM_OK) {
        Py_DECREF(dq);
        Py_DECREF(dk);
        Py_DECREF(dv);
        return dm_py_raise(st);
    }
    return Py_BuildValue("(NNN)", dq, dk, dv);
}

#define KW(f) (PyCFunction)(void (*)(void))(f), METH_VARARGS | METH_KEYWORDS
static PyMethodDef ops_methods[] = {
    {"op_matmul_dx", KW(py_matmul_dx), "test-only: dx (+)= dy . w (backend/matmul.h)"},
    {"op_matmul_dw", KW(py_matmul_dw), "test-only: dw (+)= dy^T . x"},
    {"op_bias_grad", KW(py_bias_grad), "test-only: db (+)= column sums of dy"},
    {"op_linear_backward", KW(py_linear_backward), "test-only: (dx, dw, db) of a linear layer"},
    {"op_layernorm_forward", py_layernorm_forward, METH_VARARGS, "test-only: layernorm saving mean/rstd"},
    {"op_layernorm_backward", KW(py_layernorm_backward), "test-only: layernorm backward"},
    {"op_rmsnorm_forward", py_rmsnorm_forward, METH_VARARGS, "test-only: rmsnorm saving rstd"},
    {"op_rmsnorm_backward", KW(py_rmsnorm_backward), "test-only: rmsnorm backward"},
    {"op_activation_backward", KW(py_activation_backward), "test-only: gelu / gelu_tanh backward"},
    {"op_swiglu_forward", py_swiglu_forward, METH_VARARGS, "test-only: silu(gate) * up"},
    {"op_swiglu_backward", KW(py_swiglu_backward), "test-only: swiglu backward"},
    {"op_rope1d", py_rope1d, METH_VARARGS, "test-only: 1D rope forward / backward on a copy"},
    {"op_rope2d", py_rope2d, METH_VARARGS, "test-only: 2D (vision) rope forward / backward on a copy"},
    {"op_embedding_forward", py_embedding_forward, METH_VARARGS, "test-only: token embedding gather"},
    {"op_embedding_backward", KW(py_embedding_backward), "test-only: token embedding scatter-add"},
    {"op_attention_forward", KW(py_attention_forward), "test-only: attention forward with lse"},
    {"op_attention_backward", KW(py_attention_backward), "test-only: attention backward"},
    {NULL, NULL, 0, NULL},
};
#undef KW

int dm_py_register_ops(PyObject *m) { return PyModule_AddFunctions(m, ops_methods); }
