/* Status codes and the thread-local error message.
 *
 * Every core function that can fail returns a dm_status. On failure it also leaves
 * a message (what went wrong and where: tensor name, file, shape) that the Python
 * binding turns into the matching exception. The core never aborts or prints. */
#ifndef DM_CORE_STATUS_H
#define DM_CORE_STATUS_H

typedef enum {
    DM_OK = 0,
    DM_ERR_VALUE,    /* bad argument or data -> ValueError */
    DM_ERR_TYPE,     /* wrong dtype / kind -> TypeError */
    DM_ERR_IO,       /* file system / malformed file -> OSError or ValueError */
    DM_ERR_NOMEM,    /* allocation failed -> MemoryError */
    DM_ERR_INDEX,    /* id or position out of range -> IndexError */
    DM_ERR_BACKEND,  /* oneDNN / OpenBLAS refused -> RuntimeError */
    DM_ERR_NOTIMPL,  /* not supported yet -> NotImplementedError */
    DM_ERR_INTERRUPTED, /* stopped by the interrupt hook (core/interrupt.h) -> KeyboardInterrupt */
} dm_status;

/* Record a formatted message for the calling thread and return `status`. */
dm_status dm_fail(dm_status status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Prepend context ("while loading x: ") to the current message; returns status. */
dm_status dm_fail_context(dm_status status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

const char *dm_last_error(void);
void dm_clear_error(void);

/* Propagate a failing status from an expression. */
#define DM_TRY(expr)                      \
    do {                                  \
        dm_status dm_try_s_ = (expr);     \
        if (dm_try_s_ != DM_OK) return dm_try_s_; \
    } while (0)

#endif
