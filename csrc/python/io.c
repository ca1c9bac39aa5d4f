/* Binding: io (functions are added by the issue that builds this area). */
#include "python/binding.h"

static PyMethodDef io_methods[] = {
    {NULL, NULL, 0, NULL},
};

int dm_py_register_io(PyObject *m) { return PyModule_AddFunctions(m, io_methods); }
