/* Shared helpers of the binding layer: the only part of csrc/ that sees Python.
 * Each area file (python/<area>.c) defines dm_py_register_<area>(module). */
#ifndef DM_PYTHON_BINDING_H
#define DM_PYTHON_BINDING_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#ifndef DM_PY_MODULE_MAIN
#define NO_IMPORT_ARRAY
#endif
#define PY_ARRAY_UNIQUE_SYMBOL dm_numpy_api
#include <numpy/arrayobject.h>

#include "backend/matmul.h"
#include "core/status.h"
#include "core/tensor.h"
#include "model/llm.h"
#include "model/vision.h"

/* Raise the Python exception matching a failed core status (message from the
 * core's thread-local error). Returns NULL so callers can `return dm_py_raise(s);`. */
PyObject *dm_py_raise(dm_status status);

/* Require a C-contiguous, aligned ndarray of `type_num` with `ndim` dims (-1: any).
 * Raises TypeError/ValueError naming `what`; returns 0 on failure. Borrowed. */
int dm_py_check_array(PyObject *obj, const char *what, int type_num, int ndim);
/* Optional 1-D int64 array of length n (n < 0: any length): 1 and NULL data for None,
 * 0 with an exception set on a wrong type or length. */
int dm_py_opt_int64_array(PyObject *obj, const char *what, npy_intp n, const int64_t **data, npy_intp *len);

/* View a float32 / uint16(=bf16 bits) ndarray as a 2-D weight tensor. */
int dm_py_weight_view(PyObject *obj, const char *what, int is_bf16, dm_tensor *out);

/* Parse a backend name ("onednn" | "openblas"). */
int dm_py_backend(PyObject *obj, dm_backend *out);

/* The dm_checkpoint behind a densemllm._core.Checkpoint object (TypeError + NULL
 * for anything else). Borrowed: the Python object keeps it alive. */
struct dm_checkpoint;
struct dm_checkpoint *dm_py_checkpoint(PyObject *obj);

/* The dm_session behind a densemllm._core.Session (TypeError + NULL otherwise;
 * RuntimeError while another thread runs it). Borrowed. See model/session.h. */
struct dm_session;
struct dm_session *dm_py_session(PyObject *obj);

/* Config dicts (densemllm.vision.vision_config_dict / densemllm.llm.lm_config_dict)
 * parsed into the core's structs; 0 with a Python exception on bad input. */
int dm_py_vision_config(PyObject *d, dm_vision_config *out);
int dm_py_llm_config(PyObject *d, dm_llm_config *out);

int dm_py_register_core(PyObject *m);
int dm_py_register_io(PyObject *m);
int dm_py_register_vision(PyObject *m);
int dm_py_register_llm(PyObject *m);
int dm_py_register_dense(PyObject *m);
int dm_py_register_ntpm(PyObject *m);
int dm_py_register_train(PyObject *m);
int dm_py_register_ops(PyObject *m);
int dm_py_register_train_optim(PyObject *m);
int dm_py_register_crf(PyObject *m);

#endif
