/* A mutational driver for the libFuzzer harnesses in this folder, for machines without
 * clang (CI builds it with gcc + ASan + UBSan; tests/test_fuzz.py). It is not coverage
 * guided: it runs every seed, then random mutations of the seeds (bit flips, random and
 * grammar bytes, inserts, deletes, duplicated ranges, truncation, splices of two seeds)
 * for a fixed time. A crash or a sanitizer report ends the process with an error; the
 * input that caused it is written first (crash-input in the working directory). The
 * coverage-guided run is `make fuzz` (libFuzzer).
 *
 *   fuzz_TARGET SECONDS SEED DIR...
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum { DRV_MAX_SEEDS = 4096, DRV_MAX_SEED_BYTES = 1 << 20, DRV_MAX_INPUT = 1 << 16 };

static uint8_t *seeds[DRV_MAX_SEEDS];
static size_t seed_len[DRV_MAX_SEEDS];
static int n_seeds;
static uint64_t rng_state;
static const uint8_t *current;
static size_t current_len;

static uint64_t next_u64(void) { /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1DULL;
}
static size_t below(size_t n) { return n ? (size_t)(next_u64() % n) : 0; }

static void load_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) { fprintf(stderr, "driver: cannot open %s\n", dir); exit(2); }
    struct dirent *e;
    while ((e = readdir(d)) && n_seeds < DRV_MAX_SEEDS) {
        if (e->d_name[0] == '.') continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        FILE *f = fopen(path, "rb");
        if (!f) continue;
        uint8_t *buf = malloc(DRV_MAX_SEED_BYTES);
        size_t n = buf ? fread(buf, 1, DRV_MAX_SEED_BYTES, f) : 0;
        fclose(f);
        if (!buf) exit(2);
        seeds[n_seeds] = buf;
        seed_len[n_seeds++] = n;
    }
    closedir(d);
}

/* Run one input from an exact-size heap copy, so that reading one byte past the end is
 * a heap overflow ASan reports. */
static void run(const uint8_t *data, size_t n) {
    uint8_t *copy = malloc(n ? n : 1);
    if (!copy) exit(2);
    memcpy(copy, data, n);
    current = copy;
    current_len = n;
    LLVMFuzzerTestOneInput(copy, n);
    free(copy);
}

static void save_current(void) {
    FILE *f = fopen("crash-input", "wb");
    if (f) { fwrite(current, 1, current_len, f); fclose(f); }
}
/* ASan calls this before it reports an error; a harness's own abort() (a broken
 * invariant) comes through SIGABRT. */
void __asan_on_error(void) { save_current(); }
static void on_abort(int sig) {
    save_current();
    signal(sig, SIG_DFL);
    raise(sig);
}

static size_t mutate(uint8_t *buf, size_t n) {
    static const uint8_t grammar[] = "{}[]\",:0123456789-+.eE \\ntfu";
    int rounds = 1 + (int)below(8);
    for (int r = 0; r < rounds; r++) {
        switch (below(9)) {
        case 0: if (n) buf[below(n)] ^= (uint8_t)(1u << below(8)); break;
        case 1: if (n) buf[below(n)] = (uint8_t)next_u64(); break;
        case 2: if (n) buf[below(n)] = grammar[below(sizeof grammar - 1)]; break;
        case 3: if (n) buf[below(n)] = (uint8_t[]){0, 0xff, 0x7f, 0x80}[below(4)]; break;
        case 4: /* insert a byte */
            if (n < DRV_MAX_INPUT) { size_t at = below(n + 1); memmove(buf + at + 1, buf + at, n - at); buf[at] = (uint8_t)next_u64(); n++; }
            break;
        case 5: /* delete a range */
            if (n) { size_t at = below(n), len = 1 + below(n - at < 16 ? n - at : 16); memmove(buf + at, buf + at + len, n - at - len); n -= len; }
            break;
        case 6: /* duplicate a range */
            if (n) {
                size_t at = below(n), len = 1 + below(n - at < 32 ? n - at : 32);
                if (n + len <= DRV_MAX_INPUT) { memmove(buf + at + len, buf + at, n - at); n += len; }
            }
            break;
        case 7: n = below(n + 1); break; /* truncate */
        default: { /* splice: the tail of another seed */
            int s = (int)below((size_t)n_seeds);
            size_t at = below(n + 1), from = below(seed_len[s] + 1), len = seed_len[s] - from;
            if (at + len > DRV_MAX_INPUT) len = DRV_MAX_INPUT - at;
            memcpy(buf + at, seeds[s] + from, len);
            n = at + len;
        }
        }
    }
    return n;
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: %s SECONDS SEED DIR...\n", argv[0]); return 2; }
    double seconds = atof(argv[1]);
    rng_state = strtoull(argv[2], NULL, 10) * 0x9E3779B97F4A7C15ULL + 1;
    signal(SIGABRT, on_abort);
    for (int i = 3; i < argc; i++) load_dir(argv[i]);
    if (!n_seeds) { fprintf(stderr, "driver: no seeds\n"); return 2; }
    for (int i = 0; i < n_seeds; i++) run(seeds[i], seed_len[i]);
    uint8_t *buf = malloc(DRV_MAX_INPUT + 64);
    if (!buf) return 2;
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    long long execs = n_seeds;
    for (;;) {
        int s = (int)below((size_t)n_seeds);
        size_t n = seed_len[s] < DRV_MAX_INPUT ? seed_len[s] : DRV_MAX_INPUT;
        memcpy(buf, seeds[s], n);
        n = mutate(buf, n);
        run(buf, n);
        execs++;
        if ((execs & 63) == 0) {
            clock_gettime(CLOCK_MONOTONIC, &t);
            if ((double)(t.tv_sec - t0.tv_sec) + 1e-9 * (double)(t.tv_nsec - t0.tv_nsec) >= seconds) break;
        }
    }
    printf("driver: %d seeds, %lld executions, no crash\n", n_seeds, execs);
    free(buf);
    for (int i = 0; i < n_seeds; i++) free(seeds[i]);
    return 0;
}
