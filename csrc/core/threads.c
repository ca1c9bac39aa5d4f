#include "core/threads.h"

#include <omp.h>
#include <stdatomic.h>

#include "backend/matmul.h"

static atomic_int dm_threads = 0;

void dm_set_num_threads(int n) {
    if (n <= 0) n = omp_get_num_procs();
    atomic_store(&dm_threads, n);
    omp_set_num_threads(n);
    dm_openblas_set_threads(n);
}

int dm_get_num_threads(void) {
    int n = atomic_load(&dm_threads);
    return n > 0 ? n : omp_get_num_procs();
}

void dm_threads_enter(void) { omp_set_num_threads(dm_get_num_threads()); }
