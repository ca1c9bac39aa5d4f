/* Binding: dense (functions are added by the issue that builds this area). */
#include "python/binding.h"

static PyMethodDef dense_methods[] = {
    {NULL, NULL, 0, NULL},
};

int dm_py_register_dense(PyObject *m) { return PyModule_AddFunctions(m, dense_methods); }
