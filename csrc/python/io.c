/* Binding: io. densemllm._core.Checkpoint wraps a dm_checkpoint (mmap'd,
 * validated safetensors files); get() hands out zero-copy read-only arrays that
 * keep the Checkpoint alive. densemllm._core.CheckpointError(ValueError) is
 * raised for malformed files. */
#include "python/binding.h"

#include "core/threads.h"
#include "io/safetensors.h"

static PyObject *CheckpointError;

typedef struct {
    PyObject_HEAD
    dm_checkpoint *ckpt;
    int busy; /* a conversion runs without the GIL: refuse concurrent access */
} CheckpointObject;

static PyTypeObject CheckpointType;

struct dm_checkpoint *dm_py_checkpoint(PyObject *obj) {
    if (!obj || !PyObject_TypeCheck(obj, &CheckpointType)) {
        PyErr_Format(PyExc_TypeError, "expected a densemllm._core.Checkpoint, got %s",
                     obj ? Py_TYPE(obj)->tp_name : "NULL");
        return NULL;
    }
    CheckpointObject *c = (CheckpointObject *)obj;
    if (c->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Checkpoint is being converted in another thread");
        return NULL;
    }
    return c->ckpt;
}

/* Malformed content -> CheckpointError, OS-level failures -> OSError subclass
 * chosen by errno (FileNotFoundError, PermissionError, ...). */
static PyObject *raise_open_error(dm_status st, int err) {
    if (st == DM_ERR_IO && err) {
        PyObject *exc = PyObject_CallFunction(PyExc_OSError, "is", err, dm_last_error());
        if (exc) {
            PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
            Py_DECREF(exc);
        }
        return NULL;
    }
    if (st == DM_ERR_VALUE || st == DM_ERR_IO) {
        PyErr_SetString(CheckpointError, dm_last_error());
        return NULL;
    }
    return dm_py_raise(st);
}

static PyObject *Checkpoint_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"paths", NULL};
    PyObject *paths_obj;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O:Checkpoint", kwlist, &paths_obj)) return NULL;
    if (PyUnicode_Check(paths_obj) || PyBytes_Check(paths_obj) || !PySequence_Check(paths_obj))
        return PyErr_Format(PyExc_TypeError, "Checkpoint(paths): paths must be a list of file paths, got %s",
                            Py_TYPE(paths_obj)->tp_name);
    PyObject *seq = PySequence_Fast(paths_obj, "paths must be a sequence");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n < 1 || n > 100000) {
        Py_DECREF(seq);
        return PyErr_Format(PyExc_ValueError, "Checkpoint(paths): need 1 to 100000 files, got %zd", n);
    }
    PyObject **encoded = PyMem_Calloc((size_t)n, sizeof *encoded);
    const char **paths = PyMem_Calloc((size_t)n, sizeof *paths);
    PyObject *result = NULL;
    if (!encoded || !paths) {
        PyErr_NoMemory();
        goto out;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        /* os.fspath + filesystem encoding: accepts str, bytes and pathlib.Path. */
        if (!PyUnicode_FSConverter(PySequence_Fast_GET_ITEM(seq, i), &encoded[i])) goto out;
        paths[i] = PyBytes_AS_STRING(encoded[i]);
        if ((size_t)PyBytes_GET_SIZE(encoded[i]) != strlen(paths[i])) {
            PyErr_SetString(PyExc_ValueError, "Checkpoint(paths): embedded NUL in a path");
            goto out;
        }
    }
    dm_checkpoint *ckpt = NULL;
    dm_status st;
    int err;
    Py_BEGIN_ALLOW_THREADS
    st = dm_checkpoint_open(paths, (int)n, &ckpt);
    err = dm_checkpoint_open_errno();
    Py_END_ALLOW_THREADS
    if (st != DM_OK) {
        raise_open_error(st, err);
        goto out;
    }
    CheckpointObject *self = (CheckpointObject *)type->tp_alloc(type, 0);
    if (!self) {
        dm_checkpoint_close(ckpt);
        goto out;
    }
    self->ckpt = ckpt;
    result = (PyObject *)self;
out:
    if (encoded)
        for (Py_ssize_t i = 0; i < n; i++) Py_XDECREF(encoded[i]);
    PyMem_Free(encoded);
    PyMem_Free(paths);
    Py_DECREF(seq);
    return result;
}

static void Checkpoint_dealloc(CheckpointObject *self) {
    dm_checkpoint_close(self->ckpt);
    self->ckpt = NULL;
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static dm_checkpoint *ready(CheckpointObject *self) { return dm_py_checkpoint((PyObject *)self); }

/* Index of `name` (a str) or -1 with KeyError set. Linear lookup through find
 * would lose the file; dm_checkpoint_at walks the sorted array by bisection. */
static int64_t index_of(dm_checkpoint *c, PyObject *name_obj, int raise) {
    if (!PyUnicode_Check(name_obj)) {
        if (raise) PyErr_Format(PyExc_TypeError, "tensor name must be a str, got %s", Py_TYPE(name_obj)->tp_name);
        return -2;
    }
    const char *name = PyUnicode_AsUTF8(name_obj);
    if (!name) return -2;
    int64_t lo = 0, hi = dm_checkpoint_count(c);
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        const char *mn;
        dm_checkpoint_at(c, mid, &mn, NULL, NULL);
        int r = strcmp(mn, name);
        if (r == 0) return mid;
        if (r < 0) lo = mid + 1;
        else hi = mid;
    }
    if (raise) PyErr_Format(PyExc_KeyError, "no tensor %R in the checkpoint", name_obj);
    return -1;
}

static PyObject *Checkpoint_names(CheckpointObject *self, PyObject *unused) {
    dm_checkpoint *c = ready(self);
    if (!c) return NULL;
    int64_t n = dm_checkpoint_count(c);
    PyObject *list = PyList_New((Py_ssize_t)n);
    if (!list) return NULL;
    for (int64_t i = 0; i < n; i++) {
        const char *name;
        dm_checkpoint_at(c, i, &name, NULL, NULL);
        PyObject *s = PyUnicode_FromString(name);
        if (!s) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, s);
    }
    return list;
}

static PyObject *Checkpoint_info(CheckpointObject *self, PyObject *name_obj) {
    dm_checkpoint *c = ready(self);
    if (!c) return NULL;
    int64_t i = index_of(c, name_obj, 1);
    if (i < 0) return NULL;
    dm_tensor v;
    const char *file;
    dm_checkpoint_at(c, i, NULL, &v, &file);
    PyObject *shape = PyTuple_New(v.ndim);
    if (!shape) return NULL;
    for (int d = 0; d < v.ndim; d++) {
        PyObject *x = PyLong_FromLongLong(v.shape[d]);
        if (!x) {
            Py_DECREF(shape);
            return NULL;
        }
        PyTuple_SET_ITEM(shape, d, x);
    }
    return Py_BuildValue("(sNs)", dm_dtype_name(v.dtype), shape, file);
}

static int npy_type(dm_dtype t) {
    switch (t) {
    case DM_F32: return NPY_FLOAT32;
    case DM_BF16: return NPY_UINT16; /* raw bf16 bits */
    case DM_F16: return NPY_FLOAT16;
    case DM_F64: return NPY_FLOAT64;
    case DM_I8: return NPY_INT8;
    case DM_U8: return NPY_UINT8;
    case DM_I16: return NPY_INT16;
    case DM_U16: return NPY_UINT16;
    case DM_I32: return NPY_INT32;
    case DM_U32: return NPY_UINT32;
    case DM_I64: return NPY_INT64;
    case DM_U64: return NPY_UINT64;
    case DM_BOOL: return NPY_BOOL;
    default: return -1;
    }
}

static PyObject *Checkpoint_get(CheckpointObject *self, PyObject *name_obj) {
    dm_checkpoint *c = ready(self);
    if (!c) return NULL;
    int64_t i = index_of(c, name_obj, 1);
    if (i < 0) return NULL;
    dm_tensor v;
    dm_checkpoint_at(c, i, NULL, &v, NULL);
    int tn = npy_type(v.dtype);
    if (tn < 0) return PyErr_Format(PyExc_TypeError, "tensor %R: dtype %s has no numpy equivalent", name_obj,
                                    dm_dtype_name(v.dtype));
    npy_intp dims[DM_MAX_DIMS];
    for (int d = 0; d < v.ndim; d++) dims[d] = (npy_intp)v.shape[d];
    /* Read-only: the mapping is PROT_READ, a write would segfault. */
    PyObject *arr = PyArray_New(&PyArray_Type, v.ndim, dims, tn, NULL, (void *)v.data, 0,
                                NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED, NULL);
    if (!arr) return NULL;
    Py_INCREF(self);
    if (PyArray_SetBaseObject((PyArrayObject *)arr, (PyObject *)self) < 0) {
        Py_DECREF(arr);
        return NULL;
    }
    return arr;
}

/* find_weight(prefixes, name, shape) -> array: dm_checkpoint_weight from Python
 * (the lookup model builders use: first prefix that has `name`, shape checked). */
static PyObject *Checkpoint_find_weight(CheckpointObject *self, PyObject *args) {
    PyObject *prefixes_obj, *shape_obj;
    const char *name;
    if (!PyArg_ParseTuple(args, "OsO:find_weight", &prefixes_obj, &name, &shape_obj)) return NULL;
    dm_checkpoint *c = ready(self);
    if (!c) return NULL;
    PyObject *pseq = PySequence_Fast(prefixes_obj, "prefixes must be a list of str");
    if (!pseq) return NULL;
    PyObject *sseq = PySequence_Fast(shape_obj, "shape must be a sequence of ints");
    if (!sseq) {
        Py_DECREF(pseq);
        return NULL;
    }
    PyObject *result = NULL;
    Py_ssize_t np_ = PySequence_Fast_GET_SIZE(pseq), nd = PySequence_Fast_GET_SIZE(sseq);
    const char **prefixes = PyMem_Calloc((size_t)np_ + 1, sizeof *prefixes);
    int64_t shape[DM_MAX_DIMS];
    if (!prefixes) {
        PyErr_NoMemory();
        goto out;
    }
    if (nd > DM_MAX_DIMS) {
        PyErr_Format(PyExc_ValueError, "shape has %zd dimensions (at most %d)", nd, DM_MAX_DIMS);
        goto out;
    }
    for (Py_ssize_t i = 0; i < np_; i++) {
        PyObject *p = PySequence_Fast_GET_ITEM(pseq, i);
        if (!PyUnicode_Check(p)) {
            PyErr_SetString(PyExc_TypeError, "prefixes must be a list of str");
            goto out;
        }
        if (!(prefixes[i] = PyUnicode_AsUTF8(p))) goto out;
    }
    for (Py_ssize_t i = 0; i < nd; i++) {
        long long v = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(sseq, i));
        if (v == -1 && PyErr_Occurred()) goto out;
        shape[i] = v;
    }
    dm_tensor view;
    dm_status st = dm_checkpoint_weight(c, prefixes, name, (int)nd, shape, &view);
    if (st != DM_OK) {
        dm_py_raise(st);
        goto out;
    }
    /* Return it through get() so the array holds the Checkpoint alive. */
    for (int64_t i = 0; i < dm_checkpoint_count(c); i++) {
        const char *nm;
        dm_tensor v;
        dm_checkpoint_at(c, i, &nm, &v, NULL);
        if (v.data == view.data && v.dtype == view.dtype && v.ndim == view.ndim &&
            memcmp(v.shape, view.shape, sizeof v.shape) == 0) {
            PyObject *s = PyUnicode_FromString(nm);
            if (s) {
                result = Checkpoint_get(self, s);
                Py_DECREF(s);
            }
            break;
        }
    }
out:
    PyMem_Free(prefixes);
    Py_DECREF(pseq);
    Py_DECREF(sseq);
    return result;
}

static PyObject *convert(CheckpointObject *self, int widen) {
    dm_checkpoint *c = ready(self);
    if (!c) return NULL;
    dm_status st;
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    dm_threads_enter();
    st = widen ? dm_checkpoint_widen_f32(c) : dm_checkpoint_narrow_bf16(c);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    if (st != DM_OK) return dm_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *Checkpoint_widen_f32(CheckpointObject *self, PyObject *unused) { return convert(self, 1); }
static PyObject *Checkpoint_narrow_bf16(CheckpointObject *self, PyObject *unused) { return convert(self, 0); }

static PyObject *Checkpoint_quantize_int8(CheckpointObject *self, PyObject *names_obj) {
    dm_checkpoint *c = ready(self);
    if (!c) return NULL;
    PyObject *seq = PySequence_Fast(names_obj, "quantize_int8: names must be a sequence of str");
    if (!seq) return NULL;
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    const char **names = PyMem_Calloc((size_t)(n ? n : 1), sizeof *names);
    if (!names) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *it = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyUnicode_Check(it) || !(names[i] = PyUnicode_AsUTF8(it))) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_TypeError, "quantize_int8: names[%zd] must be a str, got %s", i,
                             Py_TYPE(it)->tp_name);
            PyMem_Free(names);
            Py_DECREF(seq);
            return NULL;
        }
    }
    dm_status st;
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    dm_threads_enter();
    st = dm_checkpoint_quantize_i8(c, names, (int64_t)n);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    PyMem_Free(names);
    Py_DECREF(seq);
    if (st != DM_OK) return dm_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *Checkpoint_preload(CheckpointObject *self, PyObject *unused) {
    dm_checkpoint *c = ready(self);
    if (!c) return NULL;
    int64_t n;
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    dm_threads_enter();
    n = dm_checkpoint_preload(c);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    return PyLong_FromLongLong((long long)n);
}

static PyObject *Checkpoint_files(CheckpointObject *self, PyObject *unused) {
    dm_checkpoint *c = ready(self);
    if (!c) return NULL;
    int n = dm_checkpoint_file_count(c);
    PyObject *list = PyList_New(n);
    if (!list) return NULL;
    for (int i = 0; i < n; i++) {
        PyObject *s = PyUnicode_DecodeFSDefault(dm_checkpoint_file(c, i));
        if (!s) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, s);
    }
    return list;
}

static Py_ssize_t Checkpoint_len(CheckpointObject *self) {
    dm_checkpoint *c = ready(self);
    if (!c) return -1;
    return (Py_ssize_t)dm_checkpoint_count(c);
}

static int Checkpoint_contains(CheckpointObject *self, PyObject *name_obj) {
    dm_checkpoint *c = ready(self);
    if (!c) return -1;
    if (!PyUnicode_Check(name_obj)) return 0;
    int64_t i = index_of(c, name_obj, 0);
    if (i == -2) return -1;
    return i >= 0;
}

static PyMethodDef Checkpoint_methods[] = {
    {"names", (PyCFunction)Checkpoint_names, METH_NOARGS, "names() -> list of tensor names (sorted)."},
    {"info", (PyCFunction)Checkpoint_info, METH_O, "info(name) -> (dtype str, shape tuple, file path)."},
    {"get", (PyCFunction)Checkpoint_get, METH_O,
     "get(name) -> read-only numpy array viewing the mapped data (BF16 as uint16 bits)."},
    {"widen_f32", (PyCFunction)Checkpoint_widen_f32, METH_NOARGS,
     "Replace BF16/F16 tensors by owned float32 copies (dtype='f32' load)."},
    {"narrow_bf16", (PyCFunction)Checkpoint_narrow_bf16, METH_NOARGS,
     "Replace F32/F16 tensors by owned bf16 copies (dtype='bf16' load of a float32 file)."},
    {"find_weight", (PyCFunction)Checkpoint_find_weight, METH_VARARGS,
     "find_weight(prefixes, name, shape) -> array of the first prefix+name present; shape checked."},
    {"quantize_int8", (PyCFunction)Checkpoint_quantize_int8, METH_O,
     "quantize_int8(names): the named 2-D weights become owned int8 copies with per-row f32 scales."},
    {"preload", (PyCFunction)Checkpoint_preload, METH_NOARGS,
     "preload() -> bytes: fault in the mapped weights now (madvise + one read per page)."},
    {"files", (PyCFunction)Checkpoint_files, METH_NOARGS, "files() -> list of the safetensors paths."},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods Checkpoint_as_sequence = {
    .sq_length = (lenfunc)Checkpoint_len,
    .sq_contains = (objobjproc)Checkpoint_contains,
};

static PyTypeObject CheckpointType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "densemllm._core.Checkpoint",
    .tp_doc = "Checkpoint(paths): validated, memory-mapped safetensors files (shards merged).",
    .tp_basicsize = sizeof(CheckpointObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Checkpoint_new,
    .tp_dealloc = (destructor)Checkpoint_dealloc,
    .tp_methods = Checkpoint_methods,
    .tp_as_sequence = &Checkpoint_as_sequence,
};

static PyMethodDef io_methods[] = {
    {NULL, NULL, 0, NULL},
};

int dm_py_register_io(PyObject *m) {
    if (PyModule_AddFunctions(m, io_methods) < 0) return -1;
    if (PyType_Ready(&CheckpointType) < 0) return -1;
    Py_INCREF(&CheckpointType);
    if (PyModule_AddObject(m, "Checkpoint", (PyObject *)&CheckpointType) < 0) {
        Py_DECREF(&CheckpointType);
        return -1;
    }
    CheckpointError = PyErr_NewException("densemllm._core.CheckpointError", PyExc_ValueError, NULL);
    if (!CheckpointError) return -1;
    if (PyModule_AddObject(m, "CheckpointError", CheckpointError) < 0) {
        Py_DECREF(CheckpointError);
        return -1;
    }
    Py_INCREF(CheckpointError); /* the module's reference was stolen; keep ours */
    return 0;
}
