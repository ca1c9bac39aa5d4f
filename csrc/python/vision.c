/* Binding: vision (functions are added by the issue that builds this area). */
#include "python/binding.h"

static PyMethodDef vision_methods[] = {
    {NULL, NULL, 0, NULL},
};

int dm_py_register_vision(PyObject *m) { return PyModule_AddFunctions(m, vision_methods); }
