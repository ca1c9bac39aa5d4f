/* Binding: the parameter table (the list of every weight) and the trainable model.
 *
 *   param_specs(vision_config: dict, lm_config: dict, kv_groups=None)
 *       -> [(prefix alternatives tuple, name, shape tuple)]   (model/params.h)
 *   TrainableModel(checkpoint, vision_config, lm_config, backend=None)  (model/trainable.h) */
#include "python/binding.h"

#include "core/threads.h"
#include "model/params.h"
#include "model/trainable.h"

static int parse_configs(PyObject *vd, PyObject *ld, dm_vision_config *vc, dm_llm_config *lc) {
    return dm_py_vision_config(vd, vc) && dm_py_llm_config(ld, lc);
}

/* The table's entries as Python tuples. */
static PyObject *specs_list(const dm_params *p) {
    PyObject *out = PyList_New(p->n);
    if (!out) return NULL;
    for (int64_t i = 0; i < p->n; i++) {
        const dm_param_entry *e = &p->entries[i];
        Py_ssize_t np = 0;
        while (e->prefixes && e->prefixes[np]) np++;
        PyObject *pre = PyTuple_New(np);
        if (!pre) goto fail;
        for (Py_ssize_t j = 0; j < np; j++) {
            PyObject *s = PyUnicode_FromString(e->prefixes[j]);
            if (!s) {
                Py_DECREF(pre);
                goto fail;
            }
            PyTuple_SET_ITEM(pre, j, s);
        }
        PyObject *shape = e->ndim == 2 ? Py_BuildValue("(LL)", (long long)e->shape[0], (long long)e->shape[1])
                                       : Py_BuildValue("(L)", (long long)e->shape[0]);
        PyObject *t = shape ? Py_BuildValue("(NsN)", pre, e->suffix, shape) : NULL;
        if (!t) {
            if (!shape) Py_DECREF(pre);
            goto fail;
        }
        PyList_SET_ITEM(out, i, t);
    }
    return out;
fail:
    Py_DECREF(out);
    return NULL;
}

static PyObject *py_param_specs(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"vision_config", "lm_config", "kv_groups", NULL};
    PyObject *vd, *ld, *g_obj = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!O!|O", kwlist, &PyDict_Type, &vd, &PyDict_Type, &ld, &g_obj))
        return NULL;
    dm_vision_config vc;
    dm_llm_config lc;
    if (!parse_configs(vd, ld, &vc, &lc)) return NULL;
    long long groups = lc.n_heads;
    if (g_obj != Py_None) {
        groups = PyLong_AsLongLong(g_obj);
        if (groups == -1 && PyErr_Occurred()) return NULL;
    }
    dm_params p = {0};
    dm_status st = vision_params(&vc, NULL, dm_params_collect, &p);
    if (st == DM_OK) st = dm_llm_params(&lc, groups, NULL, dm_params_collect, &p);
    if (st != DM_OK) {
        dm_params_free(&p);
        return dm_py_raise(st);
    }
    PyObject *out = specs_list(&p);
    dm_params_free(&p);
    return out;
}

/* ---------------- TrainableModel ---------------- */

typedef struct {
    PyObject_HEAD
    dm_trainable *t;
} TrainableObject;

static void Trainable_dealloc(TrainableObject *self) {
    dm_trainable_free(self->t);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Trainable_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"checkpoint", "vision_config", "lm_config", "backend", "checkpointing", NULL};
    PyObject *ck_obj, *vd, *ld, *backend_obj = Py_None;
    int ckpt = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO!O!|Op", kwlist, &ck_obj, &PyDict_Type, &vd, &PyDict_Type, &ld,
                                     &backend_obj, &ckpt))
        return NULL;
    struct dm_checkpoint *ck = dm_py_checkpoint(ck_obj);
    if (!ck) return NULL;
    dm_backend backend = DM_BACKEND_ONEDNN;
    if (backend_obj != Py_None && !dm_py_backend(backend_obj, &backend)) return NULL;
    dm_vision_config vc;
    dm_llm_config lc;
    if (!parse_configs(vd, ld, &vc, &lc)) return NULL;
    dm_trainable *t = NULL;
    dm_status st;
    Py_BEGIN_ALLOW_THREADS
    dm_threads_enter();
    st = dm_trainable_create(ck, &vc, &lc, backend, &t);
    Py_END_ALLOW_THREADS
    if (st != DM_OK) return dm_py_raise(st);
    t->checkpointing = ckpt;
    TrainableObject *self = (TrainableObject *)type->tp_alloc(type, 0);
    if (!self) {
        dm_trainable_free(t);
        return NULL;
    }
    self->t = t; /* the masters are copies: the checkpoint may be closed */
    return (PyObject *)self;
}

/* An optional 1-D int64 array argument of exactly `n` entries (n < 0: any). */
static int int_array(PyObject *obj, const char *what, npy_intp n, PyArrayObject **out) {
    *out = NULL;
    if (obj == Py_None) return 1;
    if (!dm_py_check_array(obj, what, NPY_INT64, 1)) return 0;
    if (n >= 0 && PyArray_DIM((PyArrayObject *)obj, 0) != n)
        return PyErr_Format(PyExc_ValueError, "%s: expected %zd entries, got %zd", what, (Py_ssize_t)n,
                            (Py_ssize_t)PyArray_DIM((PyArrayObject *)obj, 0)), 0;
    *out = (PyArrayObject *)obj;
    return 1;
}

#define IDATA(a) ((a) ? (const int64_t *)PyArray_DATA(a) : NULL)
#define ILEN(a) ((a) ? (int64_t)PyArray_DIM(a, 0) : 0)

static PyObject *Trainable_forward_backward(TrainableObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"input_ids", "patches", "grid_h", "grid_w", "labels", "pos_offsets", "pos_ids",
                             "valid_offsets", "valid_ids", "token_set", "ntp_labels", "k", "variant", "gamma",
                             "alpha", "ohem_ratio", "vision_denom", "text_denom", "padding_idx", NULL};
    PyObject *ids_o, *pat_o = Py_None, *lab_o = Py_None, *po_o = Py_None, *pi_o = Py_None, *vo_o = Py_None;
    PyObject *vi_o = Py_None, *ts_o = Py_None, *nl_o = Py_None;
    long long gh = 0, gw = 0, k = 32;
    int variant = 0;
    double gamma = 2.0, alpha = 0.25, ohem = 3.0, vden = 0.0, tden = 0.0;
    long long padding_idx = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|$OLLOOOOOOOLidddddL", kwlist, &ids_o, &pat_o, &gh, &gw, &lab_o,
                                     &po_o, &pi_o, &vo_o, &vi_o, &ts_o, &nl_o, &k, &variant, &gamma, &alpha, &ohem,
                                     &vden, &tden, &padding_idx))
        return NULL;
    const dm_trainable *t = self->t;
    PyArrayObject *ids, *lab, *po, *pi, *vo, *vi, *ts, *nl;
    if (!int_array(ids_o, "input_ids", -1, &ids) || !ids)
        return ids ? NULL : (PyErr_Occurred() ? NULL : PyErr_Format(PyExc_TypeError, "input_ids is required"));
    const npy_intp T = PyArray_DIM(ids, 0);
    if (T <= 0) return PyErr_Format(PyExc_ValueError, "input_ids: empty (at least one token is needed)");
    npy_intp M = 0;
    dm_train_inputs in;
    memset(&in, 0, sizeof in);
    if (pat_o != Py_None) {
        if (!dm_py_check_array(pat_o, "patches", NPY_FLOAT32, 2)) return NULL;
        const int64_t mg = t->vcfg.merge, pd = t->vcfg.channels * t->vcfg.patch * t->vcfg.patch;
        if (gh <= 0 || gw <= 0 || gh % mg || gw % mg || gh > (1 << 16) || gw > (1 << 16))
            return PyErr_Format(PyExc_ValueError, "grid (%lld, %lld) must be positive multiples of %lld", gh, gw,
                                (long long)mg);
        PyArrayObject *p = (PyArrayObject *)pat_o;
        if (PyArray_DIM(p, 0) != gh * gw || PyArray_DIM(p, 1) != pd)
            return PyErr_Format(PyExc_ValueError, "patches: expected shape (%lld, %lld), got (%zd, %zd)", gh * gw,
                                (long long)pd, PyArray_DIM(p, 0), PyArray_DIM(p, 1));
        M = (npy_intp)((gh / mg) * (gw / mg));
        in.patches = PyArray_DATA(p);
        in.gh = gh;
        in.gw = gw;
    }
    if (!int_array(lab_o, "labels", T, &lab) || !int_array(po_o, "vision positive offsets", M + 1, &po) ||
        !int_array(pi_o, "vision positive ids", -1, &pi) || !int_array(vo_o, "vision valid offsets", -1, &vo) ||
        !int_array(vi_o, "vision valid ids", -1, &vi) || !int_array(ts_o, "vision token sets", M, &ts) ||
        !int_array(nl_o, "vision labels", M, &nl))
        return NULL;
    if (po && !pi) return PyErr_Format(PyExc_ValueError, "vision positive offsets given without ids");
    if ((vo != NULL) != (vi != NULL)) return PyErr_Format(PyExc_ValueError, "vision valid sets need offsets and ids");
    if (vo && ILEN(vo) < 1) return PyErr_Format(PyExc_ValueError, "vision valid offsets: need at least one entry");
    if (vo && !ts && ILEN(vo) - 1 != M)
        return PyErr_Format(PyExc_ValueError, "vision valid sets: %lld sets for %zd tokens and no token_set",
                            (long long)(ILEN(vo) - 1), (Py_ssize_t)M);
    if (k < 0) return PyErr_Format(PyExc_ValueError, "k must be >= 0, got %lld", k);
    if (variant < 0 || variant >= NTPM_VARIANT_COUNT)
        return PyErr_Format(PyExc_ValueError, "variant %d out of range", variant);
    in.ids = IDATA(ids);
    in.T = T;
    in.labels = IDATA(lab);
    in.pos_offsets = IDATA(po);
    in.pos_ids = IDATA(pi);
    in.n_pos = ILEN(pi);
    in.n_sets = vo ? ILEN(vo) - 1 : 0;
    in.valid_offsets = IDATA(vo);
    in.valid_ids = IDATA(vi);
    in.n_valid = ILEN(vi);
    in.token_set = IDATA(ts);
    in.ntp_labels = IDATA(nl);
    in.k = k;
    in.variant = (ntpm_variant)variant;
    in.gamma = gamma;
    in.alpha = alpha;
    in.ohem_ratio = ohem;
    in.vision_denom = vden;
    in.text_denom = tden;
    in.padding_idx = padding_idx < (long long)t->lcfg.vocab ? padding_idx : -1;
    dm_train_result r;
    dm_status st;
    Py_BEGIN_ALLOW_THREADS
    dm_threads_enter();
    st = dm_trainable_forward_backward(self->t, &in, &r);
    Py_END_ALLOW_THREADS
    if (st != DM_OK) return dm_py_raise(st);
    return Py_BuildValue("{s:d,s:d,s:d,s:L,s:L,s:K,s:L}", "loss", r.loss, "text_loss", r.text_loss, "vision_loss",
                         r.vision_loss, "n_text", (long long)r.n_text, "n_vision", (long long)r.n_vision,
                         "act_bytes", (unsigned long long)r.act_bytes, "head_workspace",
                         (long long)r.head_workspace);
}

static PyObject *Trainable_zero_grad(TrainableObject *self, PyObject *unused) {
    Py_BEGIN_ALLOW_THREADS
    dm_trainable_zero_grad(self->t);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* {canonical name: float32 ndarray view} of the masters or the gradients. */
static PyObject *Trainable_tensors(TrainableObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"grad", NULL};
    int grad = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|p", kwlist, &grad)) return NULL;
    const dm_params *p = &self->t->params;
    PyObject *d = PyDict_New();
    if (!d) return NULL;
    for (int64_t i = 0; i < p->n; i++) {
        const dm_param_entry *e = &p->entries[i];
        npy_intp dims[2] = {(npy_intp)e->shape[0], (npy_intp)e->shape[1]};
        float *data = grad ? dm_params_grad(p, i) : dm_params_master(p, i);
        PyObject *a = PyArray_SimpleNewFromData(e->ndim, dims, NPY_FLOAT32, data);
        if (!a) goto fail;
        Py_INCREF(self);
        if (PyArray_SetBaseObject((PyArrayObject *)a, (PyObject *)self) < 0 || PyDict_SetItemString(d, e->name, a) < 0) {
            Py_DECREF(a);
            goto fail;
        }
        Py_DECREF(a);
    }
    return d;
fail:
    Py_DECREF(d);
    return NULL;
}

static PyObject *Trainable_act_bytes(TrainableObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"T", "grid_h", "grid_w", "checkpointing", NULL};
    long long T, gh = 0, gw = 0;
    int ck = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "L|LLp", kwlist, &T, &gh, &gw, &ck)) return NULL;
    if (T <= 0 || T > self->t->lcfg.max_pos) return PyErr_Format(PyExc_ValueError, "T=%lld out of range", T);
    const int64_t mg = self->t->vcfg.merge;
    if (gh < 0 || gw < 0 || gh % mg || gw % mg || gh > (1 << 16) || gw > (1 << 16))
        return PyErr_Format(PyExc_ValueError, "grid (%lld, %lld) must be multiples of %lld", gh, gw, (long long)mg);
    return PyLong_FromSize_t(dm_trainable_act_bytes(self->t, T, gh, gw, ck < 0 ? self->t->checkpointing : ck));
}

static PyObject *Trainable_get_ckpt(TrainableObject *self, void *c) { return PyBool_FromLong(self->t->checkpointing); }
static int Trainable_set_ckpt(TrainableObject *self, PyObject *v, void *c) {
    int b = v ? PyObject_IsTrue(v) : -1;
    if (b < 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "checkpointing: cannot delete");
        return -1;
    }
    pthread_mutex_lock(&self->t->lock);
    self->t->checkpointing = b;
    pthread_mutex_unlock(&self->t->lock);
    return 0;
}
static PyObject *Trainable_get_chunk(TrainableObject *self, void *c) {
    return PyLong_FromLongLong((long long)self->t->head_chunk_bytes);
}
static int Trainable_set_chunk(TrainableObject *self, PyObject *v, void *c) {
    long long x = v ? PyLong_AsLongLong(v) : -1;
    if (x == -1 && (!v || PyErr_Occurred())) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "head_chunk_bytes: cannot delete");
        return -1;
    }
    pthread_mutex_lock(&self->t->lock);
    self->t->head_chunk_bytes = x;
    pthread_mutex_unlock(&self->t->lock);
    return 0;
}
static PyObject *Trainable_get_numel(TrainableObject *self, void *c) {
    int64_t n = 0;
    for (int64_t i = 0; i < self->t->params.n; i++) n += self->t->params.entries[i].numel;
    return PyLong_FromLongLong((long long)n);
}

static PyGetSetDef Trainable_getset[] = {
    {"checkpointing", (getter)Trainable_get_ckpt, (setter)Trainable_set_ckpt,
     "recompute each layer's activations in the backward instead of storing them", NULL},
    {"head_chunk_bytes", (getter)Trainable_get_chunk, (setter)Trainable_set_chunk,
     "logits budget of the loss heads (<= 0: the default)", NULL},
    {"num_parameters", (getter)Trainable_get_numel, NULL, "number of trainable scalars", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef Trainable_methods[] = {
    {"forward_backward", (PyCFunction)(void (*)(void))Trainable_forward_backward, METH_VARARGS | METH_KEYWORDS,
     "forward_backward(input_ids, *, patches, grid_h, grid_w, labels, pos_offsets, pos_ids, valid_offsets, "
     "valid_ids, token_set, ntp_labels, k, variant, gamma, alpha, ohem_ratio, vision_denom, text_denom, padding_idx) -> dict "
     "(GIL released; gradients accumulate)."},
    {"zero_grad", (PyCFunction)Trainable_zero_grad, METH_NOARGS, "zero every gradient"},
    {"tensors", (PyCFunction)(void (*)(void))Trainable_tensors, METH_VARARGS | METH_KEYWORDS,
     "tensors(grad=False) -> {name: float32 view of the master (or gradient)}"},
    {"act_bytes", (PyCFunction)(void (*)(void))Trainable_act_bytes, METH_VARARGS | METH_KEYWORDS,
     "act_bytes(T, grid_h=0, grid_w=0, checkpointing=current) -> bytes of saved activations of such a step"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject TrainableType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "densemllm._core.TrainableModel",
    .tp_basicsize = sizeof(TrainableObject),
    .tp_dealloc = (destructor)Trainable_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "TrainableModel(checkpoint, vision_config, lm_config, backend=None, checkpointing=False): f32 master "
              "weights, whole-model forward + backward in C.",
    .tp_methods = Trainable_methods,
    .tp_getset = Trainable_getset,
    .tp_new = Trainable_new,
};

static PyMethodDef train_methods[] = {
    {"param_specs", (PyCFunction)(void (*)(void))py_param_specs, METH_VARARGS | METH_KEYWORDS,
     "param_specs(vision_config, lm_config, kv_groups=None) -> [(prefixes, name, shape)]: every weight of "
     "the model in the order of the parameter table (the one list of names and shapes)."},
    {NULL, NULL, 0, NULL},
};

int dm_py_register_train(PyObject *m) {
    if (PyType_Ready(&TrainableType) < 0) return -1;
    Py_INCREF(&TrainableType);
    if (PyModule_AddObject(m, "TrainableModel", (PyObject *)&TrainableType) < 0) {
        Py_DECREF(&TrainableType);
        return -1;
    }
    return PyModule_AddFunctions(m, train_methods);
}
