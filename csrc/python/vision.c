/* Binding: vision (attention kernel, preprocessing, the vision tower). */
#include "python/binding.h"

#include "core/threads.h"
#include "model/vision.h"
#include "ops/attention.h"
#include "ops/resize.h"

/* attention(q f32[Tq,H,Dk], k f32[Tk,Hkv,Dk], v f32[Tk,Hkv,Dv], *, scale, causal=False,
 *           segments=None) -> f32[Tq,H,Dv] */
static PyObject *py_attention(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"q", "k", "v", "scale", "causal", "segments", "bf16", NULL};
    PyObject *q_obj, *k_obj, *v_obj, *seg_obj = Py_None;
    double scale = NAN; /* required keyword */
    int causal = 0, bf16 = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|$dpOp", kwlist, &q_obj, &k_obj, &v_obj, &scale,
                                     &causal, &seg_obj, &bf16))
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
    a.bf16 = bf16;
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


/* ---------------- images ---------------- */

/* A uint8 image array [H, W] or [H, W, C] with any strides (broadcasts, views:
 * a huge broadcast image is never copied). Sets dims and byte strides. */
/* Largest input image in pixels (PIL's decompression-bomb threshold is of this order;
 * the per-side limit is densemllm.image.MAX_SIDE). Checked before any resampling loop,
 * whose cost grows with the source size even when the array is a zero-stride broadcast
 * of a few bytes. Exported as _core.MAX_IMAGE_PIXELS for the tasks' scale= bound. */
#define DM_MAX_IMAGE_PIXELS (1LL << 28)

static int image_view(PyObject *obj, PyArrayObject **arr, int64_t dims[3], int64_t strides[3]) {
    if (!PyArray_Check(obj))
        return PyErr_Format(PyExc_TypeError, "image: expected a numpy.ndarray, got %s", Py_TYPE(obj)->tp_name), 0;
    PyArrayObject *a = (PyArrayObject *)obj;
    if (PyArray_TYPE(a) != NPY_UINT8)
        return PyErr_Format(PyExc_TypeError, "image: expected dtype uint8, got %S", (PyObject *)PyArray_DESCR(a)), 0;
    int nd = PyArray_NDIM(a);
    if (nd != 2 && nd != 3)
        return PyErr_Format(PyExc_ValueError, "image: expected a 2-D (H, W) or 3-D (H, W, C) array, got %d-D", nd), 0;
    dims[0] = PyArray_DIM(a, 0);
    dims[1] = PyArray_DIM(a, 1);
    dims[2] = nd == 3 ? PyArray_DIM(a, 2) : 1;
    strides[0] = PyArray_STRIDE(a, 0);
    strides[1] = PyArray_STRIDE(a, 1);
    strides[2] = nd == 3 ? PyArray_STRIDE(a, 2) : 1;
    if (dims[0] <= 0 || dims[1] <= 0 || dims[2] <= 0)
        return PyErr_Format(PyExc_ValueError, "image: empty image of shape (%lld, %lld, %lld)",
                            (long long)dims[0], (long long)dims[1], (long long)dims[2]), 0;
    if (dims[0] * dims[1] > DM_MAX_IMAGE_PIXELS)
        return PyErr_Format(PyExc_ValueError, "image: %lld x %lld = %lld pixels exceeds the limit of %lld",
                            (long long)dims[0], (long long)dims[1], (long long)(dims[0] * dims[1]),
                            DM_MAX_IMAGE_PIXELS), 0;
    *arr = a;
    return 1;
}

/* resize_bilinear_aa(img uint8 [H,W(,C)], out_h, out_w) -> uint8 [out_h, out_w, C],
 * bit-exact to torch's uint8 antialiased bilinear interpolate */
static PyObject *py_resize(PyObject *self, PyObject *args) {
    PyObject *img;
    long long oh, ow;
    if (!PyArg_ParseTuple(args, "OLL", &img, &oh, &ow)) return NULL;
    PyArrayObject *a;
    int64_t d[3], st[3];
    if (!image_view(img, &a, d, st)) return NULL;
    if (oh <= 0 || ow <= 0 || oh > (1 << 20) || ow > (1 << 20))
        return PyErr_Format(PyExc_ValueError, "output size must be in 1..2^20, got %lld x %lld", oh, ow);
    npy_intp dims[3] = {(npy_intp)oh, (npy_intp)ow, (npy_intp)d[2]};
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(3, dims, NPY_UINT8);
    if (!out) return NULL;
    dm_status s;
    Py_BEGIN_ALLOW_THREADS
    dm_threads_enter();
    s = resize_bilinear_aa_u8(PyArray_DATA(out), PyArray_DATA(a), d[0], d[1], d[2], st[0], st[1], st[2],
                              oh, ow);
    Py_END_ALLOW_THREADS
    if (s != DM_OK) {
        Py_DECREF(out);
        return dm_py_raise(s);
    }
    return (PyObject *)out;
}

/* vision_target_size(H, W, max_num_patches, patch_size, merge_size) -> (OH, OW); the sizes
 * come from the checkpoint's vision_config (no defaults here) */
static PyObject *py_target_size(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"height", "width", "max_num_patches", "patch_size", "merge_size", NULL};
    long long H, W, maxp, patch, merge;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "LLLLL", kwlist, &H, &W, &maxp, &patch, &merge)) return NULL;
    if (patch <= 0 || merge <= 0 || patch > 4096 || merge > 64)
        return PyErr_Format(PyExc_ValueError, "bad patch/merge size %lld/%lld", patch, merge);
    if (H > (1LL << 40) || W > (1LL << 40)) return PyErr_Format(PyExc_ValueError, "image too large");
    int64_t oh, ow;
    dm_status s = vision_target_size(H, W, patch, merge, maxp, &oh, &ow);
    if (s != DM_OK) return dm_py_raise(s);
    return Py_BuildValue("(LL)", (long long)oh, (long long)ow);
}

/* preprocess(img uint8 [H,W,C], max_num_patches, patch_size, merge_size)
 *   -> (patches f32 [gh*gw, C*p*p], (gh, gw), (OH, OW)) */
static PyObject *py_preprocess(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"image", "max_num_patches", "patch_size", "merge_size", NULL};
    PyObject *img;
    long long maxp, patch, merge;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OLLL", kwlist, &img, &maxp, &patch, &merge)) return NULL;
    if (patch <= 0 || merge <= 0 || patch > 4096 || merge > 64)
        return PyErr_Format(PyExc_ValueError, "bad patch/merge size %lld/%lld", patch, merge);
    if (maxp > (1LL << 24)) return PyErr_Format(PyExc_ValueError, "max_num_patches %lld too large", maxp);
    PyArrayObject *a;
    int64_t d[3], st[3];
    if (!image_view(img, &a, d, st)) return NULL;
    int64_t oh, ow;
    dm_status s = vision_target_size(d[0], d[1], patch, merge, maxp, &oh, &ow);
    if (s != DM_OK) return dm_py_raise(s);
    npy_intp dims[2] = {(npy_intp)((oh / patch) * (ow / patch)), (npy_intp)(d[2] * patch * patch)};
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(2, dims, NPY_FLOAT32);
    if (!out) return NULL;
    Py_BEGIN_ALLOW_THREADS
    dm_threads_enter();
    s = vision_preprocess(PyArray_DATA(out), PyArray_DATA(a), d[0], d[1], d[2], st[0], st[1], st[2], oh, ow,
                          patch, merge);
    Py_END_ALLOW_THREADS
    if (s != DM_OK) {
        Py_DECREF(out);
        return dm_py_raise(s);
    }
    return Py_BuildValue("(N(LL)(LL))", out, (long long)(oh / patch), (long long)(ow / patch),
                         (long long)oh, (long long)ow);
}

/* ---------------- VisionTower ---------------- */

typedef struct {
    PyObject_HEAD
    dm_vision *v;
    PyObject *checkpoint; /* keeps the mmap alive */
} VisionTowerObject;

static int cfg_get_int(PyObject *d, const char *key, int64_t *out) {
    PyObject *v = PyDict_GetItemString(d, key);
    if (!v) return PyErr_Format(PyExc_ValueError, "vision config: missing '%s'", key), 0;
    if (!PyLong_Check(v) || PyBool_Check(v))
        return PyErr_Format(PyExc_TypeError, "vision config: '%s' must be an integer", key), 0;
    long long x = PyLong_AsLongLong(v);
    if (x == -1 && PyErr_Occurred()) return 0;
    if (x <= 0 || x > (1LL << 30)) return PyErr_Format(PyExc_ValueError, "vision config: '%s'=%lld out of range", key, x), 0;
    *out = x;
    return 1;
}

static int cfg_get_float(PyObject *d, const char *key, double dflt, float *out) {
    PyObject *v = PyDict_GetItemString(d, key);
    double x = dflt;
    if (v) {
        if (!PyFloat_Check(v) && !(PyLong_Check(v) && !PyBool_Check(v)))
            return PyErr_Format(PyExc_TypeError, "vision config: '%s' must be a number", key), 0;
        x = PyFloat_AsDouble(v);
        if (x == -1.0 && PyErr_Occurred()) return 0;
    }
    if (!(x > 0) || !isfinite(x)) return PyErr_Format(PyExc_ValueError, "vision config: '%s' must be > 0", key), 0;
    *out = (float)x;
    return 1;
}

int dm_py_vision_config(PyObject *d, dm_vision_config *out) {
    if (!PyDict_Check(d)) return PyErr_Format(PyExc_TypeError, "vision config must be a dict"), 0;
    dm_vision_config c;
    memset(&c, 0, sizeof c);
    if (!cfg_get_int(d, "hidden_size", &c.hidden) || !cfg_get_int(d, "num_attention_heads", &c.heads) ||
        !cfg_get_int(d, "intermediate_size", &c.ffn) || !cfg_get_int(d, "num_hidden_layers", &c.layers) ||
        !cfg_get_int(d, "patch_size", &c.patch) || !cfg_get_int(d, "num_channels", &c.channels) ||
        !cfg_get_int(d, "spatial_merge_size", &c.merge) || !cfg_get_int(d, "out_hidden_size", &c.out_hidden) ||
        !cfg_get_int(d, "window_size", &c.window_size) ||
        !cfg_get_float(d, "layer_norm_eps", 1e-6, &c.ln_eps) ||
        !cfg_get_float(d, "merger_eps", 1e-6, &c.merger_eps) ||
        !cfg_get_float(d, "rope_theta", 10000.0, &c.rope_theta))
        return 0;
    if (c.layers > DM_VISION_MAX_LAYERS)
        return PyErr_Format(PyExc_ValueError, "vision config: at most %d layers", DM_VISION_MAX_LAYERS), 0;
    PyObject *act = PyDict_GetItemString(d, "hidden_act");
    const char *an = act && PyUnicode_Check(act) ? PyUnicode_AsUTF8(act) : "gelu_pytorch_tanh";
    if (!an) return 0;
    if (!strcmp(an, "gelu_pytorch_tanh") || !strcmp(an, "gelu_tanh") || !strcmp(an, "gelu_new"))
        c.gelu_tanh = 1;
    else if (!strcmp(an, "gelu"))
        c.gelu_tanh = 0;
    else
        return PyErr_Format(PyExc_ValueError, "vision config: unsupported hidden_act '%s'", an), 0;
    PyObject *fa = PyDict_GetItemString(d, "fullatt_block_indexes");
    if (fa && fa != Py_None) {
        PyObject *seq = PySequence_Fast(fa, "vision config: fullatt_block_indexes must be a sequence");
        if (!seq) return 0;
        for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
            long long li = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(seq, i));
            if (li == -1 && PyErr_Occurred()) {
                Py_DECREF(seq);
                return 0;
            }
            if (li < 0 || li >= c.layers) {
                Py_DECREF(seq);
                return PyErr_Format(PyExc_ValueError, "fullatt_block_indexes: %lld out of range", li), 0;
            }
            c.full_attn[li] = 1;
        }
        Py_DECREF(seq);
    }
    *out = c;
    return 1;
}

static PyObject *VisionTower_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"checkpoint", "config", "backend", NULL};
    PyObject *ck_obj, *d, *backend_obj = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO!|O", kwlist, &ck_obj, &PyDict_Type, &d, &backend_obj))
        return NULL;
    struct dm_checkpoint *ck = dm_py_checkpoint(ck_obj);
    if (!ck) return NULL;
    dm_backend backend = DM_BACKEND_ONEDNN;
    if (backend_obj != Py_None && !dm_py_backend(backend_obj, &backend)) return NULL;
    dm_vision_config c;
    if (!dm_py_vision_config(d, &c)) return NULL;
    dm_vision *v;
    dm_status s = vision_create(ck, &c, backend, &v);
    if (s != DM_OK) return dm_py_raise(s);
    VisionTowerObject *self = (VisionTowerObject *)type->tp_alloc(type, 0);
    if (!self) {
        vision_destroy(v);
        return NULL;
    }
    self->v = v;
    Py_INCREF(ck_obj);
    self->checkpoint = ck_obj;
    return (PyObject *)self;
}

static void VisionTower_dealloc(VisionTowerObject *self) {
    vision_destroy(self->v);
    Py_XDECREF(self->checkpoint);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* encode(patches f32 [gh*gw, C*p*p], gh, gw) -> f32 [gh/m*gw/m, out_hidden] */
static PyObject *VisionTower_encode(VisionTowerObject *self, PyObject *args) {
    PyObject *p_obj;
    long long gh, gw;
    if (!PyArg_ParseTuple(args, "OLL", &p_obj, &gh, &gw)) return NULL;
    if (!dm_py_check_array(p_obj, "patches", NPY_FLOAT32, 2)) return NULL;
    const dm_vision_config *c = &self->v->cfg;
    PyArrayObject *p = (PyArrayObject *)p_obj;
    if (gh <= 0 || gw <= 0 || gh % c->merge || gw % c->merge || gh > (1 << 16) || gw > (1 << 16))
        return PyErr_Format(PyExc_ValueError, "grid (%lld, %lld) must be positive multiples of %lld",
                            gh, gw, (long long)c->merge);
    const int64_t pd = c->channels * c->patch * c->patch;
    if (PyArray_DIM(p, 0) != gh * gw || PyArray_DIM(p, 1) != pd)
        return PyErr_Format(PyExc_ValueError, "patches must have shape (%lld, %lld), got (%zd, %zd)",
                            gh * gw, (long long)pd, PyArray_DIM(p, 0), PyArray_DIM(p, 1));
    npy_intp dims[2] = {(npy_intp)(gh / c->merge * (gw / c->merge)), (npy_intp)c->out_hidden};
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(2, dims, NPY_FLOAT32);
    if (!out) return NULL;
    dm_status s;
    Py_BEGIN_ALLOW_THREADS
    dm_threads_enter();
    s = vision_encode(self->v, PyArray_DATA(p), gh, gw, PyArray_DATA(out));
    Py_END_ALLOW_THREADS
    if (s != DM_OK) {
        Py_DECREF(out);
        return dm_py_raise(s);
    }
    return (PyObject *)out;
}

static PyMethodDef VisionTower_methods[] = {
    {"encode", (PyCFunction)VisionTower_encode, METH_VARARGS,
     "encode(patches, gh, gw) -> float32 [gh/2*gw/2, out_hidden] (GIL released)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject VisionTowerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "densemllm._core.VisionTower",
    .tp_basicsize = sizeof(VisionTowerObject),
    .tp_dealloc = (destructor)VisionTower_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "VisionTower(checkpoint, config: dict, backend=None): the vision tower + merger in C.",
    .tp_methods = VisionTower_methods,
    .tp_new = VisionTower_new,
};

static PyObject *py_attention_bf16_available(PyObject *self, PyObject *unused) {
    return PyBool_FromLong(attention_bf16_available());
}

static PyObject *py_attention_bf16_kernel(PyObject *self, PyObject *unused) {
    return PyUnicode_FromString(attention_bf16_kernel());
}

static PyObject *py_attention_set_amx(PyObject *self, PyObject *on) {
    int v = PyObject_IsTrue(on);
    if (v < 0) return NULL;
    attention_set_amx(v);
    Py_RETURN_NONE;
}

static PyMethodDef vision_methods[] = {
    {"attention", (PyCFunction)(void (*)(void))py_attention, METH_VARARGS | METH_KEYWORDS,
     "attention(q, k, v, *, scale, causal=False, segments=None, bf16=False): streaming softmax attention "
     "(bf16=True: bf16 products on AMX or AVX512-BF16 where available)."},
    {"attention_bf16_available", py_attention_bf16_available, METH_NOARGS,
     "1 when attention(bf16=True) runs bf16 products (AMX or AVX512-BF16) on this machine."},
    {"attention_bf16_kernel", py_attention_bf16_kernel, METH_NOARGS,
     "the kernel attention(bf16=True) runs now: 'amx', 'avx512_bf16' or 'none'."},
    {"attention_set_amx", py_attention_set_amx, METH_O,
     "attention_set_amx(on): allow AMX for bf16 attention (off: the AVX512-BF16 kernel; tests, benchmarks)."},
    {"resize_bilinear_aa", py_resize, METH_VARARGS,
     "resize_bilinear_aa(img uint8, out_h, out_w) -> uint8 [out_h, out_w, C] (torch uint8 antialias bilinear, bit-exact)."},
    {"vision_target_size", (PyCFunction)(void (*)(void))py_target_size, METH_VARARGS | METH_KEYWORDS,
     "vision_target_size(height, width, max_num_patches, patch_size, merge_size) -> (H, W)."},
    {"preprocess", (PyCFunction)(void (*)(void))py_preprocess, METH_VARARGS | METH_KEYWORDS,
     "preprocess(image uint8, max_num_patches, patch_size, merge_size) -> (patches, (gh, gw), (H, W))."},
    {NULL, NULL, 0, NULL},
};

int dm_py_register_vision(PyObject *m) {
    if (PyType_Ready(&VisionTowerType) < 0) return -1;
    /* The bound densemllm/config.py applies to vision_config.num_hidden_layers. */
    if (PyModule_AddIntConstant(m, "VISION_MAX_LAYERS", DM_VISION_MAX_LAYERS) < 0) return -1;
    if (PyModule_AddIntConstant(m, "MAX_IMAGE_PIXELS", (long)DM_MAX_IMAGE_PIXELS) < 0) return -1;
    Py_INCREF(&VisionTowerType);
    if (PyModule_AddObject(m, "VisionTower", (PyObject *)&VisionTowerType) < 0) {
        Py_DECREF(&VisionTowerType);
        return -1;
    }
    return PyModule_AddFunctions(m, vision_methods);
}
