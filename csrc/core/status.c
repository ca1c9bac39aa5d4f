#include "core/status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define DM_MSG_CAP 2048

static _Thread_local char dm_msg[DM_MSG_CAP];

dm_status dm_fail(dm_status status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(dm_msg, sizeof dm_msg, fmt, ap);
    va_end(ap);
    return status;
}

dm_status dm_fail_context(dm_status status, const char *fmt, ...) {
    char prefix[512];
    char old[DM_MSG_CAP];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, dm_msg, sizeof old);
    snprintf(dm_msg, sizeof dm_msg, "%.511s%.1500s", prefix, old);
    return status;
}

const char *dm_last_error(void) { return dm_msg[0] ? dm_msg : "unknown error"; }

void dm_clear_error(void) { dm_msg[0] = 0; }
