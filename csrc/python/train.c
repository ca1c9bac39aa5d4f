/* Binding: the parameter table (the list of every weight) and the trainable model.
 *
 *   param_specs(vision_config: dict, lm_config: dict, kv_groups=None)
 *       -> [(prefix alternatives tuple, name, shape tuple)]   (model/params.h)
 *   TrainableModel(checkpoint, vision_config, lm_config, backend=None)  (model/trainable.h) */
#include "python/binding.h"

#include "core/threads.h"
#include "model/params.h"

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

static PyMethodDef train_methods[] = {
    {"param_specs", (PyCFunction)(void (*)(void))py_param_specs, METH_VARARGS | METH_KEYWORDS,
     "param_specs(vision_config, lm_config, kv_groups=None) -> [(prefixes, name, shape)]: every weight of "
     "the model in the order of the parameter table (the one list of names and shapes)."},
    {NULL, NULL, 0, NULL},
};

int dm_py_register_train(PyObject *m) { return PyModule_AddFunctions(m, train_methods); }
