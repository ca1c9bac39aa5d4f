#include "core/interrupt.h"

#include <stdatomic.h>
#include <time.h>

#include "core/status.h"

static _Atomic(dm_interrupt_hook) dm_hook;
static _Thread_local long long dm_last_ask_ms = -1;

void dm_set_interrupt_hook(dm_interrupt_hook hook) { atomic_store(&dm_hook, hook); }

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int dm_interrupted(void) {
    dm_interrupt_hook hook = atomic_load(&dm_hook);
    if (!hook) return 0;
    long long t = now_ms();
    if (dm_last_ask_ms >= 0 && t - dm_last_ask_ms < DM_INTERRUPT_INTERVAL_MS) return 0;
    dm_last_ask_ms = t;
    return hook();
}

dm_status dm_interrupt_status(void) { return dm_fail(DM_ERR_INTERRUPTED, "interrupted"); }
