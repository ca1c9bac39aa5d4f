/* oneDNN backend (v3 C API). bf16 weights are read in place from the mmap'd
 * checkpoint as a "ba"-strided B matrix; activations are rounded to bf16 for the
 * product and accumulate in f32 (what AMX / AVX512-BF16 compute). f32 weights
 * use the f32 matmul with default fpmath (no implicit down-conversion). int8
 * weights (quantized at load) meet per-token int8 activations (int32 sums). */
#include <oneapi/dnnl/dnnl.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "backend/matmul.h"
#include "core/alloc.h"
#include "core/quant.h"

static dnnl_engine_t dm_engine;
static dnnl_status_t dm_engine_status = dnnl_runtime_error;
static pthread_once_t dm_engine_once = PTHREAD_ONCE_INIT;

static void engine_init(void) { dm_engine_status = dnnl_engine_create(&dm_engine, dnnl_cpu, 0); }

static dm_status dnnl_fail(dnnl_status_t s, const char *what) {
    return dm_fail(DM_ERR_BACKEND, "oneDNN %s failed (status %d)", what, (int)s);
}

/* Primitive cache keyed by the full problem. Entries are never evicted (a
 * primitive may be executing on another thread); once full, further shapes get
 * a primitive built per call (oneDNN's own cache still makes that cheap).
 *
 * Thread safety: one cached primitive is executed by any number of threads at
 * once (Python threads sharing a model, or two models of the same shapes). With
 * oneDNN's default library-managed scratchpad that gave wrong results (the
 * primitive's scratch memory is shared by concurrent executions), so primitives
 * are built with a user-managed scratchpad: every execution passes its own,
 * from the calling thread's grow-only buffer below. */
typedef struct {
    int64_t M, N, K;
    dnnl_data_type_t wdt, bdt;
    int accumulate;
    dnnl_primitive_t prim;
    dnnl_memory_desc_t scratch_md; /* the primitive's scratchpad layout (owned) */
    size_t scratch_bytes;
} prim_entry;

#define CACHE_CAP 512
static prim_entry dm_cache[CACHE_CAP];
static int dm_cache_len;
static pthread_mutex_t dm_cache_lock = PTHREAD_MUTEX_INITIALIZER;

static dnnl_data_type_t to_dnnl(dm_dtype t) {
    switch (t) {
    case DM_F32: return dnnl_f32;
    case DM_BF16: return dnnl_bf16;
    case DM_F16: return dnnl_f16;
    default: return dnnl_data_type_undef;
    }
}

/* Builds the primitive and its scratchpad descriptor into out->prim / out->scratch_md. */
static dm_status build_primitive(prim_entry *out) {
    const prim_entry *key = out;
    dnnl_memory_desc_t src_md = NULL, wei_md = NULL, bias_md = NULL, dst_md = NULL;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t post_ops = NULL;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_status_t s;
    dm_status st = DM_OK;
    dnnl_dims_t src_dims = {key->M, key->K}, src_strides = {key->K, 1};
    dnnl_dims_t wei_dims = {key->K, key->N}, wei_strides = {1, key->K};
    dnnl_dims_t dst_dims = {key->M, key->N}, dst_strides = {key->N, 1};
    dnnl_dims_t bias_dims = {1, key->N}, bias_strides = {key->N, 1};
    dnnl_data_type_t sdt = key->wdt == dnnl_f32 ? dnnl_f32 : key->wdt;
    /* int8: s8 x s8 with int32 accumulation; the scales are applied by the caller */
    const dnnl_data_type_t ddt = key->wdt == dnnl_s8 ? dnnl_s32 : dnnl_f32;

#define CHECK(call, what) \
    if ((s = (call)) != dnnl_success) { st = dnnl_fail(s, what); goto done; }
    CHECK(dnnl_memory_desc_create_with_strides(&src_md, 2, src_dims, sdt, src_strides), "src desc");
    CHECK(dnnl_memory_desc_create_with_strides(&wei_md, 2, wei_dims, key->wdt, wei_strides), "weight desc");
    CHECK(dnnl_memory_desc_create_with_strides(&dst_md, 2, dst_dims, ddt, dst_strides), "dst desc");
    if (key->bdt != dnnl_data_type_undef)
        CHECK(dnnl_memory_desc_create_with_strides(&bias_md, 2, bias_dims, key->bdt, bias_strides), "bias desc");
    CHECK(dnnl_primitive_attr_create(&attr), "attr");
    CHECK(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user), "scratchpad mode");
    if (key->accumulate) {
        CHECK(dnnl_post_ops_create(&post_ops), "post-ops");
        CHECK(dnnl_post_ops_append_sum(post_ops, 1.0f, 0, dnnl_data_type_undef), "sum post-op");
        CHECK(dnnl_primitive_attr_set_post_ops(attr, post_ops), "set post-ops");
    }
    CHECK(dnnl_matmul_primitive_desc_create(&pd, dm_engine, src_md, wei_md, bias_md, dst_md, attr),
          "matmul descriptor");
    CHECK(dnnl_memory_desc_clone(&out->scratch_md, dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0)),
          "scratchpad desc");
    out->scratch_bytes = dnnl_memory_desc_get_size(out->scratch_md);
    if ((s = dnnl_primitive_create(&out->prim, pd)) != dnnl_success) {
        dnnl_memory_desc_destroy(out->scratch_md);
        out->scratch_md = NULL;
        st = dnnl_fail(s, "matmul primitive");
    }
#undef CHECK
done:
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (post_ops) dnnl_post_ops_destroy(post_ops);
    if (attr) dnnl_primitive_attr_destroy(attr);
    if (src_md) dnnl_memory_desc_destroy(src_md);
    if (wei_md) dnnl_memory_desc_destroy(wei_md);
    if (bias_md) dnnl_memory_desc_destroy(bias_md);
    if (dst_md) dnnl_memory_desc_destroy(dst_md);
    return st;
}

/* Fills key->prim / scratch_md / scratch_bytes from the cache (*owned = 0) or
 * with a fresh primitive the caller destroys (*owned = 1). */
static dm_status get_primitive(prim_entry *key, int *owned) {
    pthread_mutex_lock(&dm_cache_lock);
    for (int i = 0; i < dm_cache_len; i++) {
        const prim_entry *e = &dm_cache[i];
        if (e->M == key->M && e->N == key->N && e->K == key->K && e->wdt == key->wdt &&
            e->bdt == key->bdt && e->accumulate == key->accumulate) {
            *key = *e;
            *owned = 0;
            pthread_mutex_unlock(&dm_cache_lock);
            return DM_OK;
        }
    }
    pthread_mutex_unlock(&dm_cache_lock);
    DM_TRY(build_primitive(key));
    pthread_mutex_lock(&dm_cache_lock);
    if (dm_cache_len < CACHE_CAP) {
        dm_cache[dm_cache_len++] = *key;
        *owned = 0;
    } else {
        *owned = 1;
    }
    pthread_mutex_unlock(&dm_cache_lock);
    return DM_OK;
}

/* Per-thread, grow-only buffers for the bf16 copy of the activations and for the
 * primitive's scratchpad: a fresh allocation per call paid malloc + first-touch
 * page faults on every product (~35 MB for a 4096x4304 input). Each keeps the
 * largest size seen by the calling thread (one per Python thread) and is freed by
 * the key's destructor at thread exit. */
typedef struct {
    void *data; /* bf16 activations */
    size_t cap; /* bytes */
    void *scratch;
    size_t scratch_cap;
    void *q, *acc; /* int8 path: quantized activations + their scales, int32 products */
    size_t q_cap, acc_cap;
} act_buffer;

static pthread_key_t dm_act_key;
static pthread_once_t dm_act_once = PTHREAD_ONCE_INIT;

static void act_buffer_free(void *p) {
    act_buffer *b = p;
    dm_free(b->data);
    dm_free(b->scratch);
    dm_free(b->q);
    dm_free(b->acc);
    dm_free(b);
}

static void act_key_init(void) { pthread_key_create(&dm_act_key, act_buffer_free); }

static act_buffer *thread_buffers(void) {
    pthread_once(&dm_act_once, act_key_init);
    act_buffer *b = pthread_getspecific(dm_act_key);
    if (!b) {
        b = dm_calloc(1, sizeof *b, "matmul activation buffer");
        if (!b) return NULL;
        if (pthread_setspecific(dm_act_key, b) != 0) {
            dm_free(b);
            dm_fail(DM_ERR_NOMEM, "matmul activation buffer: pthread_setspecific failed");
            return NULL;
        }
    }
    return b;
}

static uint16_t *act_buffer_get(size_t n) {
    act_buffer *b = thread_buffers();
    return b ? dm_grow(&b->data, &b->cap, n * sizeof(uint16_t), "matmul bf16 activations") : NULL;
}

/* The calling thread's scratchpad of at least n bytes (n may be 0). */
static void *scratch_get(size_t n) {
    act_buffer *b = thread_buffers();
    return b ? dm_grow(&b->scratch, &b->scratch_cap, n, "matmul scratchpad") : NULL;
}

static dm_status make_memory(dnnl_memory_t *mem, int64_t d0, int64_t d1, int64_t s0, int64_t s1,
                             dnnl_data_type_t dt, const void *ptr) {
    dnnl_memory_desc_t md;
    dnnl_dims_t dims = {d0, d1}, strides = {s0, s1};
    dnnl_status_t s = dnnl_memory_desc_create_with_strides(&md, 2, dims, dt, strides);
    if (s != dnnl_success) return dnnl_fail(s, "memory desc");
    s = dnnl_memory_create(mem, md, dm_engine, (void *)ptr);
    dnnl_memory_desc_destroy(md);
    return s == dnnl_success ? DM_OK : dnnl_fail(s, "memory");
}

/* Run the cached primitive for `key` on src [M,K] (type sdt), the weights as a
 * "ba"-strided [K,N] B matrix, dst [M,N] (type ddt) and an optional bias. */
static dm_status execute(prim_entry *key, const void *src, dnnl_data_type_t sdt, const void *wei, void *dst,
                         dnnl_data_type_t ddt, const dm_tensor *bias) {
    const int64_t M = key->M, N = key->N, K = key->K;
    int owned = 0;
    dnnl_memory_t msrc = NULL, mwei = NULL, mdst = NULL, mbias = NULL, mscratch = NULL;
    dnnl_stream_t stream = NULL;
    dm_status st = get_primitive(key, &owned);
    if (st != DM_OK) goto done;
    void *scratch = scratch_get(key->scratch_bytes);
    if (!scratch) { st = DM_ERR_NOMEM; goto done; }
    dnnl_status_t s = dnnl_memory_create(&mscratch, key->scratch_md, dm_engine, scratch);
    if (s != dnnl_success) { st = dnnl_fail(s, "scratchpad memory"); goto done; }
    if ((st = make_memory(&msrc, M, K, K, 1, sdt, src)) != DM_OK) goto done;
    if ((st = make_memory(&mwei, K, N, 1, K, key->wdt, wei)) != DM_OK) goto done;
    if ((st = make_memory(&mdst, M, N, N, 1, ddt, dst)) != DM_OK) goto done;
    if (bias && (st = make_memory(&mbias, 1, N, N, 1, key->bdt, bias->data)) != DM_OK) goto done;
    s = dnnl_stream_create(&stream, dm_engine, dnnl_stream_default_flags);
    if (s != dnnl_success) { st = dnnl_fail(s, "stream"); goto done; }
    dnnl_exec_arg_t args[5] = {{DNNL_ARG_SRC, msrc}, {DNNL_ARG_WEIGHTS, mwei}, {DNNL_ARG_DST, mdst},
                               {DNNL_ARG_SCRATCHPAD, mscratch}, {DNNL_ARG_BIAS, mbias}};
    s = dnnl_primitive_execute(key->prim, stream, bias ? 5 : 4, args);
    if (s == dnnl_success) s = dnnl_stream_wait(stream);
    if (s != dnnl_success) st = dnnl_fail(s, "matmul execution");
done:
    if (stream) dnnl_stream_destroy(stream);
    if (msrc) dnnl_memory_destroy(msrc);
    if (mwei) dnnl_memory_destroy(mwei);
    if (mdst) dnnl_memory_destroy(mdst);
    if (mbias) dnnl_memory_destroy(mbias);
    if (mscratch) dnnl_memory_destroy(mscratch);
    if (owned && key->prim) dnnl_primitive_destroy(key->prim);
    if (owned && key->scratch_md) dnnl_memory_desc_destroy(key->scratch_md);
    return st;
}

static dm_status matmul_int8(float *out, const float *x, const dm_tensor *w, const dm_tensor *bias, int64_t M,
                             int accumulate);

dm_status dm_matmul_onednn(float *out, const float *x, const dm_tensor *w,
                           const dm_tensor *bias, int64_t M, int accumulate) {
    /* f16 weights would need f16 activations; the OpenBLAS path widens them. */
    if (w->dtype == DM_F16) return dm_matmul_openblas(out, x, w, bias, M, accumulate);
    pthread_once(&dm_engine_once, engine_init);
    if (dm_engine_status != dnnl_success) return dnnl_fail(dm_engine_status, "engine creation");
    if (w->dtype == DM_I8) return matmul_int8(out, x, w, bias, M, accumulate);

    const int64_t N = w->shape[0], K = w->shape[1];
    prim_entry key = {M, N, K, to_dnnl(w->dtype), bias ? to_dnnl(bias->dtype) : dnnl_data_type_undef,
                      accumulate ? 1 : 0, NULL, NULL, 0};
    if (bias && key.bdt == dnnl_data_type_undef)
        return dm_fail(DM_ERR_TYPE, "matmul: bias dtype %s unsupported", dm_dtype_name(bias->dtype));

    const void *src = x;
    uint16_t *x16 = NULL;
    if (key.wdt == dnnl_bf16) {
        x16 = act_buffer_get((size_t)(M * K));
        if (!x16) return DM_ERR_NOMEM;
        #pragma omp parallel for schedule(static)
        for (int64_t m = 0; m < M; m++) dm_f32_to_bf16_n(x16 + m * K, x + m * K, (size_t)K);
        src = x16;
    }

    return execute(&key, src, key.wdt == dnnl_f32 ? dnnl_f32 : key.wdt, w->data, out, dnnl_f32, bias);
}

/* int8 weights (per-row scales sw) meet activations quantized per token (sx):
 * out[m,n] (+)= sx[m] sw[n] sum_k xq[m,k] wq[n,k] (+ bias[n]); the int32 sums come
 * from oneDNN (VNNI / AMX-INT8), the scaling pass is ours. */
static dm_status matmul_int8(float *out, const float *x, const dm_tensor *w, const dm_tensor *bias, int64_t M,
                             int accumulate) {
    const int64_t N = w->shape[0], K = w->shape[1];
    act_buffer *b = thread_buffers();
    if (!b) return DM_ERR_NOMEM;
    char *qb = dm_grow(&b->q, &b->q_cap, (size_t)(M * K) + 64 + (size_t)M * sizeof(float), "matmul int8 activations");
    int32_t *acc = dm_grow(&b->acc, &b->acc_cap, (size_t)(M * N) * sizeof(int32_t), "matmul int32 products");
    float *bias_f = bias ? dm_alloc((size_t)N, sizeof(float), "matmul bias") : NULL;
    if (!qb || !acc || (bias && !bias_f)) {
        dm_free(bias_f);
        return DM_ERR_NOMEM;
    }
    if (bias) dm_tensor_to_f32(bias, bias_f);
    int8_t *xq = (int8_t *)qb;
    float *sx = (float *)(qb + ((size_t)(M * K) + 63) / 64 * 64);
    /* one scale per token (core/quant.h) */
    #pragma omp parallel for schedule(static)
    for (int64_t m = 0; m < M; m++) {
        sx[m] = dm_quant_scale(dm_absmax(x + m * K, K), 127.0f);
        dm_quantize_i8(xq + m * K, x + m * K, K, 1.0f / sx[m]);
    }
    prim_entry key = {M, N, K, dnnl_s8, dnnl_data_type_undef, 0, NULL, NULL, 0};
    dm_status st = execute(&key, xq, dnnl_s8, w->data, acc, dnnl_s32, NULL);
    if (st == DM_OK) {
        const float *sw = w->row_scale;
        #pragma omp parallel for schedule(static)
        for (int64_t m = 0; m < M; m++) {
            const int32_t *a = acc + m * N;
            float *o = out + m * N;
            const float s_m = sx[m];
            #pragma omp simd
            for (int64_t n = 0; n < N; n++) {
                float v = (float)a[n] * (s_m * sw[n]) + (bias_f ? bias_f[n] : 0.0f);
                o[n] = accumulate ? o[n] + v : v;
            }
        }
    }
    dm_free(bias_f);
    return st;
}

const char *dm_onednn_version(void) {
    static char buf[96];
    const dnnl_version_t *v = dnnl_version();
    snprintf(buf, sizeof buf, "%d.%d.%d (%s)", v->major, v->minor, v->patch, v->hash ? v->hash : "?");
    return buf;
}

const char *dm_onednn_isa(void) {
    switch (dnnl_get_effective_cpu_isa()) {
    case dnnl_cpu_isa_avx512_core_amx_fp16:
    case dnnl_cpu_isa_avx512_core_amx: return "AVX-512 + AMX (bf16 matmul on AMX tiles)";
    case dnnl_cpu_isa_avx512_core_fp16:
    case dnnl_cpu_isa_avx512_core_bf16: return "AVX-512 + AVX512-BF16";
    case dnnl_cpu_isa_avx512_core_vnni:
    case dnnl_cpu_isa_avx512_core: return "AVX-512 (bf16 emulated)";
    case dnnl_cpu_isa_avx2_vnni_2:
    case dnnl_cpu_isa_avx2_vnni:
    case dnnl_cpu_isa_avx2: return "AVX2 (bf16 emulated)";
    default: return "SSE4.1/AVX (bf16 emulated)";
    }
}

/* ---- transposed products of the linear backward (see matmul.h) ----
 * One strided matmul dst[m,n] (+)= sum_k src[m,k] wei[k,n]: the transposes are
 * only strides in the memory descriptors. The primitive is built per call
 * (oneDNN's own primitive cache makes a repeat shape cheap) and not kept in
 * the forward's cache above. */
typedef struct {
    int64_t M, K, N;
    dnnl_data_type_t dt;          /* src and weights (f32, or bf16 for a bf16 W) */
    const void *src, *wei;
    int64_t src_s0, src_s1, wei_s0, wei_s1;
    float *dst;
    int64_t dst_s0;
    int accumulate;
} strided_matmul;

static dm_status run_strided_matmul(const strided_matmul *p) {
    pthread_once(&dm_engine_once, engine_init);
    if (dm_engine_status != dnnl_success) return dnnl_fail(dm_engine_status, "engine creation");
    dnnl_memory_desc_t src_md = NULL, wei_md = NULL, dst_md = NULL;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t post_ops = NULL;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_t prim = NULL;
    dnnl_memory_t msrc = NULL, mwei = NULL, mdst = NULL;
    dnnl_stream_t stream = NULL;
    dnnl_status_t s;
    dm_status st = DM_OK;
    dnnl_dims_t src_dims = {p->M, p->K}, src_strides = {p->src_s0, p->src_s1};
    dnnl_dims_t wei_dims = {p->K, p->N}, wei_strides = {p->wei_s0, p->wei_s1};
    dnnl_dims_t dst_dims = {p->M, p->N}, dst_strides = {p->dst_s0, 1};
#define CHECK(call, what) \
    if ((s = (call)) != dnnl_success) { st = dnnl_fail(s, what); goto done; }
    CHECK(dnnl_memory_desc_create_with_strides(&src_md, 2, src_dims, p->dt, src_strides), "src desc");
    CHECK(dnnl_memory_desc_create_with_strides(&wei_md, 2, wei_dims, p->dt, wei_strides), "weight desc");
    CHECK(dnnl_memory_desc_create_with_strides(&dst_md, 2, dst_dims, dnnl_f32, dst_strides), "dst desc");
    CHECK(dnnl_primitive_attr_create(&attr), "attr");
    if (p->accumulate) {
        CHECK(dnnl_post_ops_create(&post_ops), "post-ops");
        CHECK(dnnl_post_ops_append_sum(post_ops, 1.0f, 0, dnnl_data_type_undef), "sum post-op");
        CHECK(dnnl_primitive_attr_set_post_ops(attr, post_ops), "set post-ops");
    }
    CHECK(dnnl_matmul_primitive_desc_create(&pd, dm_engine, src_md, wei_md, NULL, dst_md, attr),
          "matmul descriptor (backward)");
    CHECK(dnnl_primitive_create(&prim, pd), "matmul primitive (backward)");
    CHECK(dnnl_memory_create(&msrc, src_md, dm_engine, (void *)p->src), "src memory");
    CHECK(dnnl_memory_create(&mwei, wei_md, dm_engine, (void *)p->wei), "weight memory");
    CHECK(dnnl_memory_create(&mdst, dst_md, dm_engine, p->dst), "dst memory");
    CHECK(dnnl_stream_create(&stream, dm_engine, dnnl_stream_default_flags), "stream");
    dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, msrc}, {DNNL_ARG_WEIGHTS, mwei}, {DNNL_ARG_DST, mdst}};
    CHECK(dnnl_primitive_execute(prim, stream, 3, args), "matmul execution (backward)");
    CHECK(dnnl_stream_wait(stream), "stream wait");
#undef CHECK
done:
    if (stream) dnnl_stream_destroy(stream);
    if (msrc) dnnl_memory_destroy(msrc);
    if (mwei) dnnl_memory_destroy(mwei);
    if (mdst) dnnl_memory_destroy(mdst);
    if (prim) dnnl_primitive_destroy(prim);
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (post_ops) dnnl_post_ops_destroy(post_ops);
    if (attr) dnnl_primitive_attr_destroy(attr);
    if (src_md) dnnl_memory_desc_destroy(src_md);
    if (wei_md) dnnl_memory_desc_destroy(wei_md);
    if (dst_md) dnnl_memory_desc_destroy(dst_md);
    return st;
}

dm_status dm_matmul_dx_onednn(float *dx, int64_t ldx, const float *dy, int64_t ldy, const dm_tensor *w,
                              int64_t M, int accumulate) {
    /* f16 weights would need f16 gradients; the OpenBLAS path widens them. */
    if (w->dtype == DM_F16) return dm_matmul_dx_openblas(dx, ldx, dy, ldy, w, M, accumulate);
    const int64_t N = w->shape[0], K = w->shape[1];
    /* dx[M,K] = dy[M,N] . W[N,K]: the product's reduction runs over N */
    strided_matmul p = {.M = M, .K = N, .N = K, .dt = to_dnnl(w->dtype), .src = dy, .wei = w->data,
                        .src_s0 = ldy, .src_s1 = 1, .wei_s0 = K, .wei_s1 = 1, .dst = dx, .dst_s0 = ldx,
                        .accumulate = accumulate ? 1 : 0};
    if (w->dtype == DM_BF16) { /* bf16 W meets bf16-rounded dy, as in the forward */
        uint16_t *dy16 = act_buffer_get((size_t)(M * N));
        if (!dy16) return DM_ERR_NOMEM;
        #pragma omp parallel for schedule(static)
        for (int64_t m = 0; m < M; m++) dm_f32_to_bf16_n(dy16 + m * N, dy + m * ldy, (size_t)N);
        p.src = dy16;
        p.src_s0 = N;
    }
    return run_strided_matmul(&p);
}

dm_status dm_matmul_dw_onednn(float *dw, const float *dy, int64_t ldy, const float *x, int64_t ldx,
                              int64_t M, int64_t N, int64_t K, int accumulate) {
    /* dw[N,K] = dy^T[N,M] . x[M,K]: dy read transposed through its strides */
    strided_matmul p = {.M = N, .K = M, .N = K, .dt = dnnl_f32, .src = dy, .wei = x, .src_s0 = 1,
                        .src_s1 = ldy, .wei_s0 = ldx, .wei_s1 = 1, .dst = dw, .dst_s0 = K,
                        .accumulate = accumulate ? 1 : 0};
    return run_strided_matmul(&p);
}
