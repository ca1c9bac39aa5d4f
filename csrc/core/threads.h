/* One thread count for everything: our OpenMP loops, oneDNN (GNU OpenMP build,
 * so the same pool) and OpenBLAS (its own pthreads pool). */
#ifndef DM_CORE_THREADS_H
#define DM_CORE_THREADS_H

void dm_set_num_threads(int n);   /* n <= 0: all cores */
int dm_get_num_threads(void);

/* Call at the start of every parallel entry point: OpenMP's thread count is
 * per calling thread, and Python may call us from any thread. */
void dm_threads_enter(void);

#endif
