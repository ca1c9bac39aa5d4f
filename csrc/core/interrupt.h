/* Cooperative interruption of long loops (Ctrl-C while the GIL is released).
 *
 * The core never installs signal handlers. Long loops call dm_interrupted() between
 * steps (one layer of the LLM or the vision tower) and, when it answers nonzero, free
 * their buffers and return DM_ERR_INTERRUPTED without committing any state (a session
 * keeps its position), so the model stays usable. The answer comes from a hook the
 * embedding application installs (the Python binding: Python's pending-signal check,
 * see csrc/python/core.c); without a hook nothing is ever interrupted. The hook is
 * asked at most once per DM_INTERRUPT_INTERVAL_MS per thread, so its cost (the binding
 * briefly re-acquires the GIL) stays off the per-layer path of small models. */
#ifndef DM_CORE_INTERRUPT_H
#define DM_CORE_INTERRUPT_H

#include "core/status.h"

#define DM_INTERRUPT_INTERVAL_MS 20

typedef int (*dm_interrupt_hook)(void);

void dm_set_interrupt_hook(dm_interrupt_hook hook);

/* Nonzero when the hook says stop (the caller returns dm_interrupt_status()). */
int dm_interrupted(void);

/* DM_ERR_INTERRUPTED with the message "interrupted". */
dm_status dm_interrupt_status(void);

#endif
