/* Binding: vision (attention kernel, preprocessing, the vision tower). */
#include "python/binding.h"

#include "core/threads.h"
#include "ops/attention.h"

/* attention(q f32[Tq,H,Dk], k f32[Tk,Hkv,Dk], v f32[Tk,Hkv,Dv], *, scale, causal=False,
 *           segments=None) -> f32[Tq,H,Dv] */
static PyObject *py_attention(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"q", "k", "v", "scale", "causal", "segments", NULL};
    PyObject *q_obj, *k_obj, *v_obj, *seg_obj = Py_None;
    double scale = NAN; /* required keyword */
    int causal = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|$dpO", kwlist, &q_obj, &k_obj, &v_obj, &scale,
                                     &causal, &seg_obj))
        return NULL;
    if (!dm_py_check_array(q_obj, "q", NPY_FLOAT32, 3) || !dm_py_check_array(k_obj, "k", NPY_FLOAT32, 3) ||
        !dm_py_check_array(v_obj, "v", NPY_FLOAT32, 3))
        return NULL;
    PyArrayObject *q = (PyArrayObject *)q_obj, *k = (PyArrayObject *)k_obj, *v = (PyArrayObject *)v_obj;
    dm_attn_args a = {0};
    a.Tq = PyArray_DIM(q, 0);
    a.Tk = PyArray_DIM(k, 0);
    npy_intp H = PyArray_DIM(q, 1), Hkv = PyArray_DIM(k, 1), Dk = PyArray_DIM(q, 2),
             Dv = PyArray_DIM(v, 2);
    if (PyArray_DIM(k, 2) != Dk)
        return PyErr_Format(PyExc_ValueError, "k head dim %zd != q head dim %zd", PyArray_DIM(k, 2), Dk);
    if (PyArray_DIM(v, 0) != a.Tk || PyArray_DIM(v, 1) != Hkv)
        return PyErr_Format(PyExc_ValueError, "v must have shape (%lld, %zd, Dv)", (long long)a.Tk, Hkv);
    if (H <= 0 || Hkv <= 0 || Dk <= 0 || Dv <= 0 || H > INT32_MAX || Dk > 65536 || Dv > 65536)
        return PyErr_Format(PyExc_ValueError, "attention: bad head counts / dims");
    if (H % Hkv != 0)
        return PyErr_Format(PyExc_ValueError, "q heads (%zd) must be a multiple of kv heads (%zd)", H, Hkv);
    if (causal && a.Tq > a.Tk)
        return PyErr_Format(PyExc_ValueError, "causal attention needs Tq <= Tk (got %lld > %lld)",
                            (long long)a.Tq, (long long)a.Tk);
    if (!isfinite(scale)) return PyErr_Format(PyExc_ValueError, "scale= is required and must be finite");
    a.H = (int)H;
    a.Hkv = (int)Hkv;
    a.Dk = (int)Dk;
    a.Dv = (int)Dv;
    a.scale = (float)scale;
    a.causal = causal;
    PyArrayObject *seg = NULL;
    if (seg_obj != Py_None) {
        seg = (PyArrayObject *)PyArray_FROMANY(seg_obj, NPY_INT64, 1, 1, NPY_ARRAY_CARRAY);
        if (!seg) return NULL;
        npy_intp n = PyArray_DIM(seg, 0);
        const int64_t *b = PyArray_DATA(seg);
        if (a.Tq != a.Tk) {
            Py_DECREF(seg);
            return PyErr_Format(PyExc_ValueError, "segments need Tq == Tk");
        }
        if (n < 2 || b[0] != 0 || b[n - 1] != a.Tk) {
            Py_DECREF(seg);
            return PyErr_Format(PyExc_ValueError,
                                "segments must be >= 2 increasing boundaries from 0 to Tk=%lld",
                                (long long)a.Tk);
        }
        for (npy_intp i = 0; i + 1 < n; i++)
            if (b[i + 1] <= b[i]) {
                Py_DECREF(seg);
                return PyErr_Format(PyExc_ValueError, "segment boundaries must strictly increase");
            }
        a.segments = b;
        a.n_seg = n - 1;
    }
    npy_intp dims[3] = {(npy_intp)a.Tq, H, Dv};
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(3, dims, NPY_FLOAT32);
    if (!out) {
        Py_XDECREF(seg);
        return NULL;
    }
    dm_status st;
    Py_BEGIN_ALLOW_THREADS
    dm_threads_enter();
    st = attention_forward(PyArray_DATA(out), PyArray_DATA(q), PyArray_DATA(k), PyArray_DATA(v), &a);
    Py_END_ALLOW_THREADS
    Py_XDECREF(seg);
    if (st != DM_OK) {
        Py_DECREF(out);
        return dm_py_raise(st);
    }
    return (PyObject *)out;
}

static PyMethodDef vision_methods[] = {
    {"attention", (PyCFunction)(void (*)(void))py_attention, METH_VARARGS | METH_KEYWORDS,
     "attention(q, k, v, *, scale, causal=False, segments=None): streaming softmax attention."},
    {NULL, NULL, 0, NULL},
};

int dm_py_register_vision(PyObject *m) { return PyModule_AddFunctions(m, vision_methods); }
