/* Binding: the MLA language model, generation sessions, and sampling.
 *
 *   LanguageModel(checkpoint, config: dict, backend="onednn")
 *   Session(lm)  .extend(ids, vision=None, grid=None, output="none"|"last"|"logits"|"hidden")
 *   sample(logits, history, rng_state, do_sample, temperature, top_k, top_p, repetition_penalty)
 *   rng_state(seed) -> uint64[4]
 *
 * The config dict carries the text-config fields under their Hugging Face
 * names plus the rope settings flattened (see densemllm/llm.py). */
#include "python/binding.h"

#include "backend/gemv.h"
#include "core/threads.h"
#include "io/safetensors.h"
#include "model/llm.h"
#include "model/sample.h"
#include "model/session.h"
#include "ops/swiglu.h"

/* ---- LanguageModel ------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    dm_llm *llm;
    PyObject *checkpoint; /* keeps the mmap'd weights alive */
} LanguageModelObject;

static PyTypeObject LanguageModelType;
static PyTypeObject SessionType;

/* Required / optional numeric items of the config dict. */
static int cfg_int(PyObject *d, const char *key, int required, int64_t dflt, int64_t *out) {
    PyObject *v = PyDict_GetItemString(d, key); /* borrowed */
    if (!v || v == Py_None) {
        if (required) {
            PyErr_Format(PyExc_ValueError, "language model config: missing '%s'", key);
            return 0;
        }
        *out = dflt;
        return 1;
    }
    if (!PyLong_Check(v)) {
        PyErr_Format(PyExc_TypeError, "language model config: '%s' must be an int, got %s", key,
                     Py_TYPE(v)->tp_name);
        return 0;
    }
    long long x = PyLong_AsLongLong(v);
    if (x == -1 && PyErr_Occurred()) return 0;
    *out = x;
    return 1;
}

static int cfg_float(PyObject *d, const char *key, int required, double dflt, double *out) {
    PyObject *v = PyDict_GetItemString(d, key);
    if (!v || v == Py_None) {
        if (required) {
            PyErr_Format(PyExc_ValueError, "language model config: missing '%s'", key);
            return 0;
        }
        *out = dflt;
        return 1;
    }
    if (!PyFloat_Check(v) && !PyLong_Check(v)) {
        PyErr_Format(PyExc_TypeError, "language model config: '%s' must be a number, got %s", key,
                     Py_TYPE(v)->tp_name);
        return 0;
    }
    *out = PyFloat_AsDouble(v);
    return !(*out == -1.0 && PyErr_Occurred());
}

int dm_py_llm_config(PyObject *d, dm_llm_config *out) {
    if (!PyDict_Check(d)) return PyErr_Format(PyExc_TypeError, "language model config must be a dict"), 0;
    dm_llm_config c = {0};
    int64_t b_interleave, b_bias, b_tied, b_yarn, b_trunc;
    if (!cfg_int(d, "vocab_size", 1, 0, &c.vocab) || !cfg_int(d, "hidden_size", 1, 0, &c.hidden) ||
        !cfg_int(d, "intermediate_size", 1, 0, &c.inter) ||
        !cfg_int(d, "num_hidden_layers", 1, 0, &c.n_layers) ||
        !cfg_int(d, "num_attention_heads", 1, 0, &c.n_heads) ||
        !cfg_int(d, "num_key_value_heads", 0, -1, &c.n_kv_heads) ||
        !cfg_int(d, "q_lora_rank", 0, 0, &c.q_lora) || !cfg_int(d, "kv_lora_rank", 1, 0, &c.kv_lora) ||
        !cfg_int(d, "qk_nope_head_dim", 1, 0, &c.nope) ||
        !cfg_int(d, "qk_rope_head_dim", 1, 0, &c.rope) || !cfg_int(d, "v_head_dim", 1, 0, &c.vdim) ||
        !cfg_int(d, "max_position_embeddings", 1, 0, &c.max_pos) ||
        !cfg_float(d, "rms_norm_eps", 0, 1e-6, &c.eps) ||
        !cfg_int(d, "rope_interleave", 0, 1, &b_interleave) ||
        !cfg_int(d, "attention_bias", 0, 0, &b_bias) ||
        !cfg_int(d, "tie_word_embeddings", 0, 1, &b_tied) ||
        !cfg_int(d, "image_token_id", 0, 128264, &c.image_token_id) ||
        !cfg_int(d, "rope_yarn", 0, 0, &b_yarn) || !cfg_float(d, "rope_theta", 1, 0, &c.rope_params.theta) ||
        !cfg_float(d, "rope_factor", 0, 0, &c.rope_params.factor) ||
        !cfg_float(d, "rope_original_max_position_embeddings", 0, 0, &c.rope_params.original_max_pos) ||
        !cfg_float(d, "rope_beta_fast", 0, 0, &c.rope_params.beta_fast) ||
        !cfg_float(d, "rope_beta_slow", 0, 0, &c.rope_params.beta_slow) ||
        !cfg_float(d, "rope_mscale", 0, 0, &c.rope_params.mscale) ||
        !cfg_float(d, "rope_mscale_all_dim", 0, 0, &c.rope_params.mscale_all_dim) ||
        !cfg_float(d, "rope_attention_factor", 0, 0, &c.rope_params.attention_factor) ||
        !cfg_int(d, "rope_truncate", 0, 1, &b_trunc))
        return 0;
    if (c.n_kv_heads < 0) c.n_kv_heads = c.n_heads;
    c.rope_interleave = b_interleave != 0;
    c.attention_bias = b_bias != 0;
    c.tied = b_tied != 0;
    c.rope_params.yarn = b_yarn != 0;
    c.rope_params.truncate = b_trunc != 0;
    *out = c;
    return 1;
}

static PyObject *LanguageModel_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"checkpoint", "config", "backend", NULL};
    PyObject *ck_obj, *cfg_obj, *backend_obj = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO!|O", kwlist, &ck_obj, &PyDict_Type, &cfg_obj,
                                     &backend_obj))
        return NULL;
    struct dm_checkpoint *ck = dm_py_checkpoint(ck_obj);
    if (!ck) return NULL;
    dm_backend backend = DM_BACKEND_ONEDNN;
    if (backend_obj && backend_obj != Py_None && !dm_py_backend(backend_obj, &backend)) return NULL;
    dm_llm_config c;
    if (!dm_py_llm_config(cfg_obj, &c)) return NULL;
    dm_llm *llm = NULL;
    dm_status st = dm_llm_create(ck, &c, backend, &llm);
    if (st != DM_OK) return dm_py_raise(st);
    LanguageModelObject *self = (LanguageModelObject *)type->tp_alloc(type, 0);
    if (!self) {
        dm_llm_free(llm);
        return NULL;
    }
    self->llm = llm;
    Py_INCREF(ck_obj);
    self->checkpoint = ck_obj;
    return (PyObject *)self;
}

static void LanguageModel_dealloc(LanguageModelObject *self) {
    dm_llm_free(self->llm);
    Py_XDECREF(self->checkpoint);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *LanguageModel_get_kv(LanguageModelObject *self, void *c) {
    return PyLong_FromLongLong(dm_llm_kv_floats_per_token(self->llm) * (long long)sizeof(float));
}

static PyObject *LanguageModel_get_attn_mode(LanguageModelObject *self, void *c) {
    static const char *names[] = {"auto", "expanded", "absorbed"};
    return PyUnicode_FromString(names[self->llm->attn_mode]);
}

static int LanguageModel_set_attn_mode(LanguageModelObject *self, PyObject *v, void *c) {
    const char *s = v && PyUnicode_Check(v) ? PyUnicode_AsUTF8(v) : NULL;
    if (s && !strcmp(s, "auto")) self->llm->attn_mode = DM_ATTN_AUTO;
    else if (s && !strcmp(s, "expanded")) self->llm->attn_mode = DM_ATTN_EXPANDED;
    else if (s && !strcmp(s, "absorbed")) self->llm->attn_mode = DM_ATTN_ABSORBED;
    else {
        PyErr_Format(PyExc_ValueError, "attn_mode must be 'auto', 'expanded' or 'absorbed', got %R", v);
        return -1;
    }
    return 0;
}

static PyObject *LanguageModel_get_rope(LanguageModelObject *self, void *c) {
    const dm_llm *m = self->llm;
    npy_intp n = (npy_intp)(m->cfg.rope / 2);
    PyObject *a = PyArray_SimpleNew(1, &n, NPY_FLOAT32);
    if (!a) return NULL;
    memcpy(PyArray_DATA((PyArrayObject *)a), m->inv_freq, (size_t)n * sizeof(float));
    return Py_BuildValue("Ndd", a, (double)m->attn_factor, (double)m->scale);
}

static PyGetSetDef LanguageModel_getset[] = {
    {"kv_bytes_per_token", (getter)LanguageModel_get_kv, NULL,
     "KV cache bytes per token (all layers; latent + k_rot in f32)", NULL},
    {"attn_mode", (getter)LanguageModel_get_attn_mode, (setter)LanguageModel_set_attn_mode,
     "'auto' (by cost), 'expanded' or 'absorbed' MLA attention (equal results)", NULL},
    {"rope", (getter)LanguageModel_get_rope, NULL, "(inv_freq, cos/sin factor, softmax scale)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject LanguageModelType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "densemllm._core.LanguageModel",
    .tp_doc = "LanguageModel(checkpoint, config: dict, backend='onednn'): the MLA decoder over a Checkpoint.",
    .tp_basicsize = sizeof(LanguageModelObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = LanguageModel_new,
    .tp_dealloc = (destructor)LanguageModel_dealloc,
    .tp_getset = LanguageModel_getset,
};

/* ---- Session ------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    dm_session *s;
    PyObject *lm;
    int busy; /* an extend runs without the GIL */
} SessionObject;

struct dm_session *dm_py_session(PyObject *obj) {
    if (!obj || !PyObject_TypeCheck(obj, &SessionType)) {
        PyErr_Format(PyExc_TypeError, "expected a densemllm._core.Session, got %s",
                     obj ? Py_TYPE(obj)->tp_name : "NULL");
        return NULL;
    }
    SessionObject *so = (SessionObject *)obj;
    if (so->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Session is in use by another thread");
        return NULL;
    }
    return so->s;
}

static PyObject *Session_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"lm", NULL};
    PyObject *lm;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!", kwlist, &LanguageModelType, &lm)) return NULL;
    dm_session *s = NULL;
    dm_status st = dm_session_create(((LanguageModelObject *)lm)->llm, &s);
    if (st != DM_OK) return dm_py_raise(st);
    SessionObject *self = (SessionObject *)type->tp_alloc(type, 0);
    if (!self) {
        dm_session_free(s);
        return NULL;
    }
    self->s = s;
    Py_INCREF(lm);
    self->lm = lm;
    return (PyObject *)self;
}

static void Session_dealloc(SessionObject *self) {
    dm_session_free(self->s);
    Py_XDECREF(self->lm);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Session_extend(SessionObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"ids", "vision", "grid", "output", NULL};
    PyObject *ids_obj, *vis_obj = Py_None, *grid_obj = Py_None;
    const char *output = "none";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|OOs", kwlist, &ids_obj, &vis_obj, &grid_obj, &output))
        return NULL;
    if (!dm_py_session((PyObject *)self)) return NULL;
    const dm_llm *m = dm_session_model(self->s);
    int kind;
    if (!strcmp(output, "none")) kind = DM_OUT_NONE;
    else if (!strcmp(output, "last")) kind = DM_OUT_LAST_LOGITS;
    else if (!strcmp(output, "logits")) kind = DM_OUT_ALL_LOGITS;
    else if (!strcmp(output, "hidden")) kind = DM_OUT_ALL_HIDDEN;
    else return PyErr_Format(PyExc_ValueError, "output must be 'none', 'last', 'logits' or 'hidden', got '%s'", output);
    if (!dm_py_check_array(ids_obj, "ids", NPY_INT64, 1)) return NULL;
    PyArrayObject *ids = (PyArrayObject *)ids_obj;
    int64_t T = PyArray_DIM(ids, 0);
    if (T == 0) return PyErr_Format(PyExc_ValueError, "empty input: at least one token id is needed");
    const float *vis = NULL;
    int64_t n_vis = 0, gh = 0, gw = 0;
    if (vis_obj != Py_None) {
        if (!dm_py_check_array(vis_obj, "vision embeddings", NPY_FLOAT32, 2)) return NULL;
        PyArrayObject *va = (PyArrayObject *)vis_obj;
        if (PyArray_DIM(va, 1) != m->cfg.hidden)
            return PyErr_Format(PyExc_ValueError, "vision embeddings: expected [n, %lld] (the LLM hidden size), got [%lld, %lld]",
                                (long long)m->cfg.hidden, (long long)PyArray_DIM(va, 0), (long long)PyArray_DIM(va, 1));
        vis = PyArray_DATA(va);
        n_vis = PyArray_DIM(va, 0);
    }
    if (grid_obj != Py_None) {
        long long a, b;
        if (!PyArg_ParseTuple(grid_obj, "LL;grid must be a (grid_h, grid_w) tuple of ints", &a, &b)) return NULL;
        if (a <= 0 || b <= 0) return PyErr_Format(PyExc_ValueError, "grid must be positive, got (%lld, %lld)", a, b);
        gh = a;
        gw = b;
    }
    PyObject *out = NULL;
    float *outp = NULL;
    if (kind != DM_OUT_NONE) {
        npy_intp dims[2] = {(npy_intp)T, (npy_intp)(kind == DM_OUT_ALL_HIDDEN ? m->cfg.hidden : m->cfg.vocab)};
        if (kind == DM_OUT_LAST_LOGITS) out = PyArray_SimpleNew(1, dims + 1, NPY_FLOAT32);
        else out = PyArray_SimpleNew(2, dims, NPY_FLOAT32);
        if (!out) return NULL;
        outp = PyArray_DATA((PyArrayObject *)out);
    }
    /* keep the inputs alive and unchanged while the GIL is released */
    Py_INCREF(ids_obj);
    Py_INCREF(vis_obj);
    self->busy = 1;
    dm_status st;
    Py_BEGIN_ALLOW_THREADS
    dm_threads_enter();
    st = dm_session_extend(self->s, PyArray_DATA(ids), T, vis, n_vis, gh, gw, kind, outp);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    Py_DECREF(ids_obj);
    Py_DECREF(vis_obj);
    if (st != DM_OK) {
        Py_XDECREF(out);
        return dm_py_raise(st);
    }
    if (!out) Py_RETURN_NONE;
    return out;
}

static PyObject *Session_vision_hidden(SessionObject *self, PyObject *unused) {
    if (!dm_py_session((PyObject *)self)) return NULL;
    int64_t n;
    const float *h;
    dm_session_vision_hidden(self->s, &n, &h);
    const int64_t D = dm_session_model(self->s)->cfg.hidden;
    npy_intp dims[2] = {(npy_intp)n, (npy_intp)D};
    PyObject *a = PyArray_SimpleNew(2, dims, NPY_FLOAT32);
    if (!a) return NULL;
    if (n) memcpy(PyArray_DATA((PyArrayObject *)a), h, (size_t)(n * D) * sizeof(float));
    return a;
}

static PyObject *Session_vision_positions(SessionObject *self, PyObject *unused) {
    if (!dm_py_session((PyObject *)self)) return NULL;
    int64_t n;
    const float *h;
    dm_session_vision_hidden(self->s, &n, &h);
    npy_intp dims[1] = {(npy_intp)n};
    PyObject *a = PyArray_SimpleNew(1, dims, NPY_INT64);
    if (!a) return NULL;
    if (n) memcpy(PyArray_DATA((PyArrayObject *)a), dm_session_vision_positions(self->s), (size_t)n * sizeof(int64_t));
    return a;
}

static PyObject *Session_get_position(SessionObject *self, void *c) {
    return PyLong_FromLongLong(dm_session_position(self->s));
}

static PyObject *Session_get_kv_bytes(SessionObject *self, void *c) {
    return PyLong_FromLongLong(dm_session_kv_bytes(self->s));
}

static PyObject *Session_get_grid(SessionObject *self, void *c) {
    int64_t gh, gw;
    dm_session_vision_grid(self->s, &gh, &gw);
    if (!gh) Py_RETURN_NONE;
    return Py_BuildValue("(LL)", (long long)gh, (long long)gw);
}

static PyMethodDef Session_methods[] = {
    {"extend", (PyCFunction)(void (*)(void))Session_extend, METH_VARARGS | METH_KEYWORDS,
     "extend(ids: int64[T], vision=None: float32[n, hidden], grid=None, output='none'|'last'|'logits'|'hidden')\n"
     "Run T new tokens through the model, appending to the KV cache."},
    {"vision_hidden", (PyCFunction)Session_vision_hidden, METH_NOARGS,
     "Final-normalised hidden states of the image's vision tokens, float32 [n, hidden] (a copy)."},
    {"vision_positions", (PyCFunction)Session_vision_positions, METH_NOARGS,
     "Sequence positions of the vision tokens, int64 [n]."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Session_getset[] = {
    {"position", (getter)Session_get_position, NULL, "tokens consumed so far", NULL},
    {"kv_bytes", (getter)Session_get_kv_bytes, NULL, "KV cache bytes in use", NULL},
    {"vision_grid", (getter)Session_get_grid, NULL, "(grid_h, grid_w) of merged vision tokens, or None", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject SessionType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "densemllm._core.Session",
    .tp_doc = "Session(lm): KV cache and position of one sequence.",
    .tp_basicsize = sizeof(SessionObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Session_new,
    .tp_dealloc = (destructor)Session_dealloc,
    .tp_methods = Session_methods,
    .tp_getset = Session_getset,
};

/* ---- sampling ----------------------------------------------------------- */

static PyObject *py_rng_state(PyObject *self, PyObject *arg) {
    unsigned long long seed = PyLong_AsUnsignedLongLongMask(arg);
    if (PyErr_Occurred()) return NULL;
    npy_intp n = 4;
    PyObject *a = PyArray_SimpleNew(1, &n, NPY_UINT64);
    if (!a) return NULL;
    dm_rng r;
    dm_rng_seed(&r, (uint64_t)seed);
    memcpy(PyArray_DATA((PyArrayObject *)a), r.s, sizeof r.s);
    return a;
}

static PyObject *py_sample(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"logits", "history", "rng_state", "do_sample", "temperature", "top_k",
                             "top_p", "repetition_penalty", NULL};
    PyObject *lo, *hi, *rs;
    int do_sample = 1;
    double temperature = 1.0, top_p = 1.0, rep = 1.0;
    long long top_k = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|pdLdd", kwlist, &lo, &hi, &rs, &do_sample, &temperature,
                                     &top_k, &top_p, &rep))
        return NULL;
    if (!dm_py_check_array(lo, "logits", NPY_FLOAT32, 1) || !dm_py_check_array(hi, "history", NPY_INT64, 1) ||
        !dm_py_check_array(rs, "rng_state", NPY_UINT64, 1))
        return NULL;
    if (PyArray_DIM((PyArrayObject *)rs, 0) != 4)
        return PyErr_Format(PyExc_ValueError, "rng_state must have 4 elements (from rng_state(seed))");
    if (!PyArray_ISWRITEABLE((PyArrayObject *)lo) || !PyArray_ISWRITEABLE((PyArrayObject *)rs))
        return PyErr_Format(PyExc_ValueError, "logits and rng_state must be writeable (they are updated in place)");
    if (temperature < 0) return PyErr_Format(PyExc_ValueError, "temperature must be >= 0, got %g", temperature);
    if (!(top_p > 0 && top_p <= 1)) return PyErr_Format(PyExc_ValueError, "top_p must be in (0, 1], got %g", top_p);
    if (!(rep > 0)) return PyErr_Format(PyExc_ValueError, "repetition_penalty must be > 0, got %g", rep);
    if (top_k < 0) return PyErr_Format(PyExc_ValueError, "top_k must be >= 0, got %lld", top_k);
    dm_sample_params p = {.do_sample = do_sample, .temperature = (float)temperature, .top_k = top_k,
                          .top_p = (float)top_p, .repetition_penalty = (float)rep};
    dm_rng r;
    memcpy(r.s, PyArray_DATA((PyArrayObject *)rs), sizeof r.s);
    int64_t tok = -1;
    dm_status st;
    Py_BEGIN_ALLOW_THREADS
    st = dm_sample(PyArray_DATA((PyArrayObject *)lo), PyArray_DIM((PyArrayObject *)lo, 0),
                   PyArray_DATA((PyArrayObject *)hi), PyArray_DIM((PyArrayObject *)hi, 0), &p, &r, &tok);
    Py_END_ALLOW_THREADS
    if (st != DM_OK) return dm_py_raise(st);
    memcpy(PyArray_DATA((PyArrayObject *)rs), r.s, sizeof r.s);
    return PyLong_FromLongLong(tok);
}

static PyObject *py_set_gemv(PyObject *self, PyObject *arg) {
    int on = PyObject_IsTrue(arg);
    if (on < 0) return NULL;
    int was = dm_gemv_enabled();
    dm_gemv_set_enabled(on);
    return PyBool_FromLong(was);
}

/* swiglu(gate f32[n], up f32[n]) -> silu(gate) * up (a new array; for tests). */
static PyObject *py_swiglu(PyObject *self, PyObject *args) {
    PyObject *g, *u;
    if (!PyArg_ParseTuple(args, "OO", &g, &u)) return NULL;
    if (!dm_py_check_array(g, "gate", NPY_FLOAT32, 1) || !dm_py_check_array(u, "up", NPY_FLOAT32, 1)) return NULL;
    npy_intp n = PyArray_DIM((PyArrayObject *)g, 0);
    if (PyArray_DIM((PyArrayObject *)u, 0) != n)
        return PyErr_Format(PyExc_ValueError, "gate and up must have the same length");
    PyObject *out = PyArray_NewCopy((PyArrayObject *)g, NPY_CORDER);
    if (!out) return NULL;
    Py_BEGIN_ALLOW_THREADS
    dm_threads_enter();
    swiglu_forward(PyArray_DATA((PyArrayObject *)out), PyArray_DATA((PyArrayObject *)u), n);
    Py_END_ALLOW_THREADS
    return out;
}

static PyMethodDef llm_methods[] = {
    {"swiglu", (PyCFunction)py_swiglu, METH_VARARGS, "swiglu(gate, up) -> silu(gate) * up, float32 (tests)."},
    {"set_gemv", (PyCFunction)py_set_gemv, METH_O,
     "set_gemv(enabled) -> previous: route matmuls with M <= 4 through the bf16/f32 GEMV fast path\n"
     "(default on; off sends them to oneDNN / OpenBLAS, for tests and benchmarks)."},
    {"rng_state", (PyCFunction)py_rng_state, METH_O, "rng_state(seed) -> uint64[4] xoshiro256** state"},
    {"sample", (PyCFunction)(void (*)(void))py_sample, METH_VARARGS | METH_KEYWORDS,
     "sample(logits, history, rng_state, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,\n"
     "       repetition_penalty=1.0) -> int. HF semantics; logits and rng_state are updated in place."},
    {NULL, NULL, 0, NULL},
};

int dm_py_register_llm(PyObject *m) {
    if (PyType_Ready(&LanguageModelType) < 0 || PyType_Ready(&SessionType) < 0) return -1;
    Py_INCREF(&LanguageModelType);
    if (PyModule_AddObject(m, "LanguageModel", (PyObject *)&LanguageModelType) < 0) {
        Py_DECREF(&LanguageModelType);
        return -1;
    }
    Py_INCREF(&SessionType);
    if (PyModule_AddObject(m, "Session", (PyObject *)&SessionType) < 0) {
        Py_DECREF(&SessionType);
        return -1;
    }
    return PyModule_AddFunctions(m, llm_methods);
}
