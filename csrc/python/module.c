/* densemllm._core: module definition; each area registers its own functions. */
#define DM_PY_MODULE_MAIN
#include "python/binding.h"

static struct PyModuleDef dm_module = {
    PyModuleDef_HEAD_INIT, "densemllm._core",
    "C core of densemllm (use the densemllm package, not this module directly).", -1, NULL,
};

PyMODINIT_FUNC PyInit__core(void) {
    import_array();
    PyObject *m = PyModule_Create(&dm_module);
    if (!m) return NULL;
    if (dm_py_register_core(m) < 0 || dm_py_register_io(m) < 0 || dm_py_register_vision(m) < 0 ||
        dm_py_register_llm(m) < 0 || dm_py_register_dense(m) < 0 || dm_py_register_ntpm(m) < 0 ||
        dm_py_register_train(m) < 0 || dm_py_register_ops(m) < 0 ||
        dm_py_register_train_optim(m) < 0 || dm_py_register_crf(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
