/* Binding: ntpm (functions are added by the issue that builds this area). */
#include "python/binding.h"

static PyMethodDef ntpm_methods[] = {
    {NULL, NULL, 0, NULL},
};

int dm_py_register_ntpm(PyObject *m) { return PyModule_AddFunctions(m, ntpm_methods); }
