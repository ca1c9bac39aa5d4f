/* Binding: llm (functions are added by the issue that builds this area). */
#include "python/binding.h"

static PyMethodDef llm_methods[] = {
    {NULL, NULL, 0, NULL},
};

int dm_py_register_llm(PyObject *m) { return PyModule_AddFunctions(m, llm_methods); }
