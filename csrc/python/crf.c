/* Binding: DenseCRF mean-field refinement (densemllm/crf.py checks and converts first). */
#include "python/binding.h"

#include <math.h>
#include <stdint.h>

#include "dense/crf.h"

/* crf_inference(image u8[h, w, 3] | None, probs f32[h, w, C], *, sxy_gaussian, compat_gaussian,
 *               sxy_bilateral, srgb, compat_bilateral, iterations, clip) -> Q f32[h, w, C] */
static PyObject *py_crf_inference(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"image", "probs", "sxy_gaussian", "compat_gaussian", "sxy_bilateral", "srgb",
                             "compat_bilateral", "iterations", "clip", NULL};
    PyObject *im_obj, *p_obj;
    /* every parameter is required (the defaults live in densemllm/crf.py only) */
    crf_params p = {NAN, NAN, NAN, NAN, NAN, INT32_MIN, NAN};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|$fffffif", kwlist, &im_obj, &p_obj, &p.sxy_gaussian,
                                     &p.compat_gaussian, &p.sxy_bilateral, &p.srgb, &p.compat_bilateral,
                                     &p.iterations, &p.clip))
        return NULL;
    if (isnan(p.sxy_gaussian) || isnan(p.compat_gaussian) || isnan(p.sxy_bilateral) || isnan(p.srgb) ||
        isnan(p.compat_bilateral) || p.iterations == INT32_MIN || isnan(p.clip))
        return PyErr_Format(PyExc_TypeError, "crf_inference: pass every parameter (sxy_gaussian, compat_gaussian, "
                            "sxy_bilateral, srgb, compat_bilateral, iterations, clip), none may be NaN");
    if (!dm_py_check_array(p_obj, "probs", NPY_FLOAT32, 3)) return NULL;
    PyArrayObject *probs = (PyArrayObject *)p_obj;
    npy_intp h = PyArray_DIM(probs, 0), w = PyArray_DIM(probs, 1), C = PyArray_DIM(probs, 2);
    const uint8_t *image = NULL;
    if (im_obj != Py_None) {
        if (!dm_py_check_array(im_obj, "image", NPY_UINT8, 3)) return NULL;
        PyArrayObject *im = (PyArrayObject *)im_obj;
        if (PyArray_DIM(im, 0) != h || PyArray_DIM(im, 1) != w || PyArray_DIM(im, 2) != 3)
            return PyErr_Format(PyExc_ValueError, "image: expected shape (%zd, %zd, 3) to match probs, got (%zd, %zd, %zd)",
                                h, w, PyArray_DIM(im, 0), PyArray_DIM(im, 1), PyArray_DIM(im, 2));
        image = PyArray_DATA(im);
    } else if (p.compat_bilateral > 0) {
        return PyErr_Format(PyExc_ValueError, "image: the bilateral kernel (compat_bilateral = %g > 0) needs the image",
                            (double)p.compat_bilateral);
    }
    PyArrayObject *q = (PyArrayObject *)PyArray_SimpleNew(3, PyArray_DIMS(probs), NPY_FLOAT32);
    if (!q) return NULL;
    dm_status st;
    /* the arrays stay referenced by the caller's frame while the GIL is released */
    Py_BEGIN_ALLOW_THREADS
    st = crf_inference(PyArray_DATA(q), PyArray_DATA(probs), image, h, w, C, &p);
    Py_END_ALLOW_THREADS
    if (st != DM_OK) {
        Py_DECREF(q);
        return dm_py_raise(st);
    }
    return (PyObject *)q;
}

/* crf_lattice_filter(features f32[n, d], values f32[n, C]) -> f32[n, C]: the permutohedral
 * approximation of sum_j exp(-|f_i - f_j|^2 / 2) values[j] (tests compare it with exact sums). */
static PyObject *py_crf_lattice_filter(PyObject *self, PyObject *args) {
    PyObject *f_obj, *v_obj;
    if (!PyArg_ParseTuple(args, "OO", &f_obj, &v_obj)) return NULL;
    if (!dm_py_check_array(f_obj, "features", NPY_FLOAT32, 2)) return NULL;
    if (!dm_py_check_array(v_obj, "values", NPY_FLOAT32, 2)) return NULL;
    PyArrayObject *f = (PyArrayObject *)f_obj, *v = (PyArrayObject *)v_obj;
    npy_intp n = PyArray_DIM(f, 0), d = PyArray_DIM(f, 1), C = PyArray_DIM(v, 1);
    if (PyArray_DIM(v, 0) != n)
        return PyErr_Format(PyExc_ValueError, "values: expected %zd rows (one per feature row), got %zd", n,
                            PyArray_DIM(v, 0));
    if (d < 1 || d > CRF_MAX_DIM)
        return PyErr_Format(PyExc_ValueError, "features: need 1 <= d <= %d columns, got %zd", CRF_MAX_DIM, d);
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(2, PyArray_DIMS(v), NPY_FLOAT32);
    if (!out) return NULL;
    dm_status st;
    Py_BEGIN_ALLOW_THREADS
    st = crf_lattice_filter(PyArray_DATA(out), PyArray_DATA(v), PyArray_DATA(f), n, (int)d, C);
    Py_END_ALLOW_THREADS
    if (st != DM_OK) {
        Py_DECREF(out);
        return dm_py_raise(st);
    }
    return (PyObject *)out;
}

static PyMethodDef crf_methods[] = {
    {"crf_inference", (PyCFunction)(void (*)(void))py_crf_inference, METH_VARARGS | METH_KEYWORDS,
     "DenseCRF mean-field marginals (use densemllm.dense_crf)."},
    {"crf_lattice_filter", py_crf_lattice_filter, METH_VARARGS,
     "crf_lattice_filter(features f32[n, d], values f32[n, C]) -> permutohedral Gaussian filter."},
    {NULL, NULL, 0, NULL},
};

int dm_py_register_crf(PyObject *m) { return PyModule_AddFunctions(m, crf_methods); }
