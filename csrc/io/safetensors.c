/* Safetensors reader: mmap, a strict JSON header parser, and full validation of
 * every file before a single tensor is exposed.
 *
 * Layout of a file: u64 little-endian header length N, N bytes of JSON, then the
 * data section. JSON: {"name": {"dtype": "BF16", "shape": [..], "data_offsets":
 * [begin, end]}, ..., "__metadata__": {"k": "v"}} with offsets relative to the
 * data section. Anything else is rejected with a message naming file and tensor. */
#include "io/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/quant.h"

/* A hostile header must not make us allocate gigabytes; real ones are < 10 MB. */
#define ST_HEADER_CAP ((uint64_t)100 * 1024 * 1024)
#define JSON_MAX_DEPTH 64

/* ------------------------------------------------------------------------- */
/* Strict JSON (RFC 8259) into a small tree. Only what the header needs is kept:
 * strings (decoded, NUL-terminated), integers (exact u64 + sign + overflow flag). */

enum { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ };

typedef struct jv {
    int type;
    int is_int, neg, overflow; /* J_NUM: integral literal and its magnitude */
    uint64_t u;
    char *str; /* J_STR: decoded UTF-8, NUL-terminated */
    size_t len;
    size_t n, cap;   /* J_ARR / J_OBJ: children */
    struct jv *items;
    char **keys;     /* J_OBJ: decoded keys (NUL-terminated) */
    size_t *keylens;
} jv;

typedef struct {
    const char *p, *start, *end;
    const char *err; /* static reason, NULL while fine */
    size_t err_at;
} jparser;

static void jv_free(jv *v) {
    if (v->type == J_STR) free(v->str);
    if (v->type == J_ARR || v->type == J_OBJ) {
        for (size_t i = 0; i < v->n; i++) {
            jv_free(&v->items[i]);
            if (v->keys) free(v->keys[i]);
        }
        free(v->items);
        free(v->keys);
        free(v->keylens);
    }
    memset(v, 0, sizeof *v);
}

static int jfail(jparser *j, const char *why) {
    if (!j->err) {
        j->err = why;
        j->err_at = (size_t)(j->p - j->start);
    }
    return 0;
}

static void jws(jparser *j) {
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) j->p++;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int read_hex4(jparser *j, unsigned *out) {
    if (j->end - j->p < 4) return jfail(j, "truncated \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(j->p[i]);
        if (h < 0) return jfail(j, "bad \\u escape");
        v = v * 16 + (unsigned)h;
    }
    j->p += 4;
    *out = v;
    return 1;
}

/* Length of a valid UTF-8 sequence at p (1..4), 0 if invalid (overlongs,
 * surrogates and code points past U+10FFFF rejected). */
static size_t utf8_len(const unsigned char *p, const unsigned char *end) {
    unsigned c = p[0];
    size_t n;
    unsigned min;
    if (c < 0x80) return 1;
    if ((c & 0xe0) == 0xc0) { n = 2; min = 0x80; c &= 0x1f; }
    else if ((c & 0xf0) == 0xe0) { n = 3; min = 0x800; c &= 0x0f; }
    else if ((c & 0xf8) == 0xf0) { n = 4; min = 0x10000; c &= 0x07; }
    else return 0;
    if ((size_t)(end - p) < n) return 0;
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xc0) != 0x80) return 0;
        c = (c << 6) | (p[i] & 0x3f);
    }
    if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff)) return 0;
    return n;
}

static size_t put_utf8(char *o, unsigned cp) {
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xc0 | (cp >> 6)); o[1] = (char)(0x80 | (cp & 0x3f)); return 2; }
    if (cp < 0x10000) {
        o[0] = (char)(0xe0 | (cp >> 12)); o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (char)(0xf0 | (cp >> 18)); o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3f)); o[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* At the opening quote. The decoded string is never longer than its source. */
static int jstring(jparser *j, char **out, size_t *out_len) {
    j->p++;
    const char *s = j->p;
    while (j->p < j->end && *j->p != '"') {
        if (*j->p == '\\') j->p++;
        if (j->p < j->end) j->p++;
    }
    if (j->p >= j->end) return jfail(j, "unterminated string");
    size_t raw = (size_t)(j->p - s);
    const char *stop = j->p;
    j->p = s;
    char *buf = malloc(raw + 1);
    if (!buf) return jfail(j, "out of memory");
    size_t n = 0;
    while (j->p < stop) {
        unsigned char c = (unsigned char)*j->p;
        if (c < 0x20) { free(buf); return jfail(j, "control character in string"); }
        if (c == '\\') {
            j->p++;
            char e = *j->p++;
            switch (e) {
            case '"': buf[n++] = '"'; break;
            case '\\': buf[n++] = '\\'; break;
            case '/': buf[n++] = '/'; break;
            case 'b': buf[n++] = '\b'; break;
            case 'f': buf[n++] = '\f'; break;
            case 'n': buf[n++] = '\n'; break;
            case 'r': buf[n++] = '\r'; break;
            case 't': buf[n++] = '\t'; break;
            case 'u': {
                unsigned cp, lo;
                if (!read_hex4(j, &cp)) { free(buf); return 0; }
                if (cp >= 0xd800 && cp <= 0xdbff) {
                    if (stop - j->p < 6 || j->p[0] != '\\' || j->p[1] != 'u') {
                        free(buf);
                        return jfail(j, "unpaired surrogate in \\u escape");
                    }
                    j->p += 2;
                    if (!read_hex4(j, &lo)) { free(buf); return 0; }
                    if (lo < 0xdc00 || lo > 0xdfff) { free(buf); return jfail(j, "unpaired surrogate in \\u escape"); }
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                } else if (cp >= 0xdc00 && cp <= 0xdfff) {
                    free(buf);
                    return jfail(j, "unpaired surrogate in \\u escape");
                }
                if (cp == 0) { free(buf); return jfail(j, "NUL character in string"); }
                n += put_utf8(buf + n, cp);
                break;
            }
            default: free(buf); return jfail(j, "bad escape in string");
            }
        } else {
            size_t l = utf8_len((const unsigned char *)j->p, (const unsigned char *)stop);
            if (!l) { free(buf); return jfail(j, "invalid UTF-8 in string"); }
            memcpy(buf + n, j->p, l);
            n += l;
            j->p += l;
        }
    }
    j->p = stop + 1;
    buf[n] = 0;
    *out = buf;
    *out_len = n;
    return 1;
}

static int jnumber(jparser *j, jv *v) {
    v->type = J_NUM;
    v->is_int = 1;
    if (*j->p == '-') { v->neg = 1; j->p++; }
    if (j->p >= j->end || *j->p < '0' || *j->p > '9') return jfail(j, "bad number");
    if (*j->p == '0') {
        j->p++;
    } else {
        while (j->p < j->end && *j->p >= '0' && *j->p <= '9') {
            unsigned d = (unsigned)(*j->p - '0');
            if (v->u > (UINT64_MAX - d) / 10) v->overflow = 1;
            else v->u = v->u * 10 + d;
            j->p++;
        }
    }
    if (j->p < j->end && *j->p == '.') {
        v->is_int = 0;
        j->p++;
        if (j->p >= j->end || *j->p < '0' || *j->p > '9') return jfail(j, "bad number");
        while (j->p < j->end && *j->p >= '0' && *j->p <= '9') j->p++;
    }
    if (j->p < j->end && (*j->p == 'e' || *j->p == 'E')) {
        v->is_int = 0;
        j->p++;
        if (j->p < j->end && (*j->p == '+' || *j->p == '-')) j->p++;
        if (j->p >= j->end || *j->p < '0' || *j->p > '9') return jfail(j, "bad number");
        while (j->p < j->end && *j->p >= '0' && *j->p <= '9') j->p++;
    }
    return 1;
}

static int jlit(jparser *j, const char *lit) {
    size_t n = strlen(lit);
    if ((size_t)(j->end - j->p) < n || memcmp(j->p, lit, n) != 0) return jfail(j, "unexpected token");
    j->p += n;
    return 1;
}

static int jpush(jparser *j, jv *v, int with_keys) {
    if (v->n < v->cap) return 1;
    size_t cap = v->cap ? v->cap * 2 : 8;
    jv *items = realloc(v->items, cap * sizeof *items);
    if (!items) return jfail(j, "out of memory");
    v->items = items;
    if (with_keys) {
        char **keys = realloc(v->keys, cap * sizeof *keys);
        if (!keys) return jfail(j, "out of memory");
        v->keys = keys;
        size_t *kl = realloc(v->keylens, cap * sizeof *kl);
        if (!kl) return jfail(j, "out of memory");
        v->keylens = kl;
    }
    v->cap = cap;
    return 1;
}

static int jvalue(jparser *j, jv *v, int depth) {
    memset(v, 0, sizeof *v);
    if (depth > JSON_MAX_DEPTH) return jfail(j, "nesting too deep");
    jws(j);
    if (j->p >= j->end) return jfail(j, "unexpected end of header");
    char c = *j->p;
    if (c == '{' || c == '[') {
        int obj = c == '{';
        v->type = obj ? J_OBJ : J_ARR;
        j->p++;
        jws(j);
        if (j->p < j->end && *j->p == (obj ? '}' : ']')) { j->p++; return 1; }
        for (;;) {
            if (!jpush(j, v, obj)) return 0;
            if (obj) {
                jws(j);
                if (j->p >= j->end || *j->p != '"') return jfail(j, "expected a string key");
                if (!jstring(j, &v->keys[v->n], &v->keylens[v->n])) return 0;
                jws(j);
                if (j->p >= j->end || *j->p != ':') {
                    free(v->keys[v->n]);
                    return jfail(j, "expected ':'");
                }
                j->p++;
            }
            int ok = jvalue(j, &v->items[v->n], depth + 1);
            v->n++; /* counted even on failure so jv_free releases the partial child */
            if (!ok) return 0;
            jws(j);
            if (j->p >= j->end) return jfail(j, "unexpected end of header");
            if (*j->p == ',') { j->p++; continue; }
            if (*j->p == (obj ? '}' : ']')) { j->p++; return 1; }
            return jfail(j, obj ? "expected ',' or '}'" : "expected ',' or ']'");
        }
    }
    if (c == '"') {
        v->type = J_STR;
        if (!jstring(j, &v->str, &v->len)) { v->type = J_NULL; return 0; }
        return 1;
    }
    if (c == '-' || (c >= '0' && c <= '9')) return jnumber(j, v);
    if (c == 't') { v->type = J_BOOL; v->u = 1; return jlit(j, "true"); }
    if (c == 'f') { v->type = J_BOOL; return jlit(j, "false"); }
    if (c == 'n') { v->type = J_NULL; return jlit(j, "null"); }
    return jfail(j, "unexpected character");
}

static const jv *jget(const jv *obj, const char *key) {
    size_t kl = strlen(key);
    for (size_t i = 0; i < obj->n; i++)
        if (obj->keylens[i] == kl && memcmp(obj->keys[i], key, kl) == 0) return &obj->items[i];
    return NULL;
}

/* ------------------------------------------------------------------------- */

typedef struct {
    char *name;
    dm_tensor view;
    int file;
    uint64_t begin, end; /* within the data section */
    void *owned;         /* converted copy (widen/narrow), else NULL */
} st_entry;

typedef struct {
    char *path;
    void *map;
    size_t size;
} st_file;

struct dm_checkpoint {
    st_file *files;
    int n_files;
    st_entry *entries; /* sorted by name */
    int64_t n;
    int converted;
    int quantized;
};

static _Thread_local int st_errno;

int dm_checkpoint_open_errno(void) { return st_errno; }

static int cmp_name(const void *a, const void *b) {
    return strcmp(((const st_entry *)a)->name, ((const st_entry *)b)->name);
}

static int cmp_begin(const void *a, const void *b) {
    const st_entry *x = *(const st_entry *const *)a, *y = *(const st_entry *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

static void free_entries(st_entry *e, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        free(e[i].name);
        dm_free(e[i].owned);
    }
    free(e);
}

void dm_checkpoint_close(dm_checkpoint *c) {
    if (!c) return;
    for (int i = 0; i < c->n_files; i++) {
        if (c->files[i].map) munmap(c->files[i].map, c->files[i].size);
        free(c->files[i].path);
    }
    free(c->files);
    free_entries(c->entries, c->n);
    free(c);
}

/* Parse one tensor entry `name: {...}` of file `f` into *e. */
static dm_status parse_entry(const char *path, const char *name, const jv *t, const char *data,
                             uint64_t data_len, uint64_t data_at, int file, st_entry *e) {
    if (t->type != J_OBJ)
        return dm_fail(DM_ERR_VALUE, "safetensors file '%s': tensor '%s': entry is not a JSON object", path, name);
    const jv *dt = jget(t, "dtype"), *sh = jget(t, "shape"), *off = jget(t, "data_offsets");
    if (!dt || !sh || !off)
        return dm_fail(DM_ERR_VALUE, "safetensors file '%s': tensor '%s': missing '%s'", path, name,
                       !dt ? "dtype" : !sh ? "shape" : "data_offsets");
    for (size_t i = 0; i < t->n; i++) {
        const char *k = t->keys[i];
        if (strcmp(k, "dtype") && strcmp(k, "shape") && strcmp(k, "data_offsets"))
            return dm_fail(DM_ERR_VALUE, "safetensors file '%s': tensor '%s': unknown field '%s'", path,
                           name, k);
    }
    /* Duplicate fields inside one entry would make the meaning ambiguous. */
    for (size_t i = 0; i < t->n; i++)
        for (size_t k = i + 1; k < t->n; k++)
            if (strcmp(t->keys[i], t->keys[k]) == 0)
                return dm_fail(DM_ERR_VALUE, "safetensors file '%s': tensor '%s': field '%s' given twice",
                               path, name, t->keys[i]);
    dm_dtype dtype;
    if (dt->type != J_STR || !dm_dtype_from_name(dt->str, dt->len, &dtype))
        return dm_fail(DM_ERR_VALUE, "safetensors file '%s': tensor '%s': unknown dtype %.40s", path, name,
                       dt->type == J_STR ? dt->str : "(not a string)");
    if (sh->type != J_ARR)
        return dm_fail(DM_ERR_VALUE, "safetensors file '%s': tensor '%s': shape is not a list", path, name);
    if (sh->n > DM_MAX_DIMS)
        return dm_fail(DM_ERR_VALUE, "safetensors file '%s': tensor '%s': %zu dimensions (at most %d supported)",
                       path, name, sh->n, DM_MAX_DIMS);
    uint64_t numel = 1;
    int overflow = 0;
    for (size_t i = 0; i < sh->n; i++) {
        const jv *d = &sh->items[i];
        if (d->type != J_NUM || !d->is_int || (d->neg && d->u) || d->overflow || d->u > (uint64_t)INT64_MAX)
            return dm_fail(DM_ERR_VALUE,
                           "safetensors file '%s': tensor '%s': shape entry %zu is not a non-negative integer",
                           path, name, i);
        e->view.shape[i] = (int64_t)d->u;
        if (d->u && numel > UINT64_MAX / d->u) overflow = 1;
        numel *= d->u;
    }
    size_t esize = dm_dtype_size(dtype);
    if (overflow || numel > UINT64_MAX / esize || numel > (uint64_t)INT64_MAX)
        return dm_fail(DM_ERR_VALUE, "safetensors file '%s': tensor '%s': shape product overflows", path, name);
    if (off->type != J_ARR || off->n != 2)
        return dm_fail(DM_ERR_VALUE, "safetensors file '%s': tensor '%s': data_offsets is not [begin, end]", path,
                       name);
    for (int i = 0; i < 2; i++) {
        const jv *d = &off->items[i];
        if (d->type != J_NUM || !d->is_int || (d->neg && d->u) || d->overflow)
            return dm_fail(DM_ERR_VALUE,
                           "safetensors file '%s': tensor '%s': data_offsets entry %d is not a non-negative integer",
                           path, name, i);
    }
    uint64_t b = off->items[0].u, en = off->items[1].u;
    if (b > en || en > data_len)
        return dm_fail(DM_ERR_VALUE,
                       "safetensors file '%s': tensor '%s': data_offsets [%llu, %llu] out of range of the data "
                       "section (%llu bytes)",
                       path, name, (unsigned long long)b, (unsigned long long)en, (unsigned long long)data_len);
    if (en - b != numel * esize)
        return dm_fail(DM_ERR_VALUE,
                       "safetensors file '%s': tensor '%s': %llu bytes in the file but shape x %s needs %llu", path,
                       name, (unsigned long long)(en - b), dm_dtype_name(dtype),
                       (unsigned long long)(numel * esize));
    const char *ptr = data + b;
    if ((uintptr_t)ptr % esize)
        return dm_fail(DM_ERR_VALUE,
                       "safetensors file '%s': tensor '%s': data at file offset %llu is not aligned to its %zu-byte "
                       "elements",
                       path, name, (unsigned long long)(data_at + b), esize);
    e->view.data = ptr;
    e->view.dtype = dtype;
    e->view.ndim = (int)sh->n;
    e->begin = b;
    e->end = en;
    e->file = file;
    return DM_OK;
}

/* Map and validate one file, appending its tensors to *entries. */
static dm_status open_one(dm_checkpoint *c, const char *path, st_entry **entries, int64_t *n, int64_t *cap) {
    st_file *f = &c->files[c->n_files];
    f->path = strdup(path);
    if (!f->path) return dm_fail(DM_ERR_NOMEM, "out of memory");
    c->n_files++;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        st_errno = errno;
        return dm_fail(DM_ERR_IO, "cannot open safetensors file '%s': %s", path, strerror(errno));
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        st_errno = errno;
        close(fd);
        return dm_fail(DM_ERR_IO, "cannot stat safetensors file '%s': %s", path, strerror(st_errno));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return dm_fail(DM_ERR_VALUE, "safetensors file '%s' is not a regular file", path);
    }
    if (sb.st_size < 8) {
        close(fd);
        return dm_fail(DM_ERR_VALUE, "safetensors file '%s' is truncated: %lld bytes, need at least 8", path,
                       (long long)sb.st_size);
    }
    f->size = (size_t)sb.st_size;
    /* Read-only private mapping: the pages are the page cache's own (nothing is
     * copied, nothing is resident until touched) and we can never write the file. */
    void *map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
    int map_errno = errno;
    close(fd);
    if (map == MAP_FAILED) {
        st_errno = map_errno;
        f->size = 0;
        return dm_fail(DM_ERR_IO, "cannot mmap safetensors file '%s': %s", path, strerror(map_errno));
    }
    f->map = map;
    const unsigned char *b = map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | b[i];
    if (hlen > f->size - 8)
        return dm_fail(DM_ERR_VALUE,
                       "safetensors file '%s': header length %llu is larger than the file (%zu bytes): truncated or "
                       "not a safetensors file",
                       path, (unsigned long long)hlen, f->size);
    if (hlen > ST_HEADER_CAP)
        return dm_fail(DM_ERR_VALUE, "safetensors file '%s': header length %llu exceeds the %llu-byte cap", path,
                       (unsigned long long)hlen, (unsigned long long)ST_HEADER_CAP);
    const char *data = (const char *)b + 8 + hlen;
    uint64_t data_len = f->size - 8 - hlen;

    jparser j = {(const char *)b + 8, (const char *)b + 8, (const char *)b + 8 + hlen, NULL, 0};
    jv root;
    int ok = jvalue(&j, &root, 0);
    if (ok) {
        jws(&j); /* writers pad the header with spaces to an 8-byte multiple */
        if (j.p != j.end) ok = jfail(&j, "trailing data after the JSON object");
    }
    if (!ok) {
        jv_free(&root);
        return dm_fail(DM_ERR_VALUE, "safetensors file '%s': header is not valid JSON (%s at byte %zu)", path,
                       j.err, j.err_at);
    }
    dm_status st = DM_OK;
    int64_t first = *n;
    if (root.type != J_OBJ) {
        st = dm_fail(DM_ERR_VALUE, "safetensors file '%s': header is not a JSON object", path);
        goto done;
    }
    for (size_t i = 0; i < root.n; i++) {
        const char *name = root.keys[i];
        const jv *t = &root.items[i];
        if (strcmp(name, "__metadata__") == 0) {
            if (t->type != J_OBJ) {
                st = dm_fail(DM_ERR_VALUE, "safetensors file '%s': __metadata__ is not an object", path);
                goto done;
            }
            for (size_t k = 0; k < t->n; k++)
                if (t->items[k].type != J_STR) {
                    st = dm_fail(DM_ERR_VALUE, "safetensors file '%s': __metadata__ value '%s' is not a string",
                                 path, t->keys[k]);
                    goto done;
                }
            continue;
        }
        if (*n == *cap) {
            int64_t nc = *cap ? *cap * 2 : 64;
            st_entry *ne = realloc(*entries, (size_t)nc * sizeof *ne);
            if (!ne) {
                st = dm_fail(DM_ERR_NOMEM, "out of memory reading '%s'", path);
                goto done;
            }
            *entries = ne;
            *cap = nc;
        }
        st_entry *e = &(*entries)[*n];
        memset(e, 0, sizeof *e);
        if ((st = parse_entry(path, name, t, data, data_len, 8 + hlen, c->n_files - 1, e)) != DM_OK) goto done;
        /* Steal the decoded key as the tensor name. */
        e->name = root.keys[i];
        root.keys[i] = NULL;
        (*n)++;
    }
    /* Overlap check within this file: sort pointers by begin offset. */
    int64_t m = *n - first;
    if (m > 1) {
        st_entry **ord = malloc((size_t)m * sizeof *ord);
        if (!ord) {
            st = dm_fail(DM_ERR_NOMEM, "out of memory reading '%s'", path);
            goto done;
        }
        for (int64_t i = 0; i < m; i++) ord[i] = &(*entries)[first + i];
        qsort(ord, (size_t)m, sizeof *ord, cmp_begin);
        for (int64_t i = 1; i < m && st == DM_OK; i++)
            if (ord[i]->begin < ord[i - 1]->end)
                st = dm_fail(DM_ERR_VALUE, "safetensors file '%s': tensors '%s' and '%s' overlap in the data section",
                             path, ord[i - 1]->name, ord[i]->name);
        free(ord);
    }
done:
    jv_free(&root);
    return st;
}

dm_status dm_checkpoint_open(const char *const *paths, int n_files, dm_checkpoint **out) {
    *out = NULL;
    st_errno = 0;
    if (n_files < 1 || !paths) return dm_fail(DM_ERR_VALUE, "no safetensors files given");
    dm_checkpoint *c = calloc(1, sizeof *c);
    if (!c) return dm_fail(DM_ERR_NOMEM, "out of memory");
    c->files = calloc((size_t)n_files, sizeof *c->files);
    if (!c->files) {
        free(c);
        return dm_fail(DM_ERR_NOMEM, "out of memory");
    }
    st_entry *entries = NULL;
    int64_t n = 0, cap = 0;
    dm_status st = DM_OK;
    for (int i = 0; i < n_files && st == DM_OK; i++) {
        if (!paths[i]) st = dm_fail(DM_ERR_VALUE, "safetensors path %d is NULL", i);
        else st = open_one(c, paths[i], &entries, &n, &cap);
    }
    c->entries = entries;
    c->n = n;
    if (st == DM_OK && n > 1) {
        qsort(c->entries, (size_t)n, sizeof *c->entries, cmp_name);
        for (int64_t i = 1; i < n; i++)
            if (strcmp(c->entries[i].name, c->entries[i - 1].name) == 0) {
                const char *f1 = c->files[c->entries[i - 1].file].path, *f2 = c->files[c->entries[i].file].path;
                if (strcmp(f1, f2) == 0)
                    st = dm_fail(DM_ERR_VALUE, "safetensors file '%s': duplicate tensor name '%s'", f1,
                                 c->entries[i].name);
                else
                    st = dm_fail(DM_ERR_VALUE, "duplicate tensor name '%s' in safetensors files '%s' and '%s'",
                                 c->entries[i].name, f1, f2);
                break;
            }
    }
    if (st != DM_OK) {
        dm_checkpoint_close(c);
        return st;
    }
    *out = c;
    return DM_OK;
}

int64_t dm_checkpoint_count(const dm_checkpoint *c) { return c ? c->n : 0; }

int dm_checkpoint_file_count(const dm_checkpoint *c) { return c ? c->n_files : 0; }

const char *dm_checkpoint_file(const dm_checkpoint *c, int i) {
    return c && i >= 0 && i < c->n_files ? c->files[i].path : NULL;
}

dm_status dm_checkpoint_at(const dm_checkpoint *c, int64_t i, const char **name, dm_tensor *view,
                           const char **file) {
    if (!c || i < 0 || i >= c->n)
        return dm_fail(DM_ERR_INDEX, "tensor index %lld out of range (checkpoint has %lld)", (long long)i,
                       (long long)(c ? c->n : 0));
    const st_entry *e = &c->entries[i];
    if (name) *name = e->name;
    if (view) *view = e->view;
    if (file) *file = c->files[e->file].path;
    return DM_OK;
}

static const st_entry *lookup(const dm_checkpoint *c, const char *name) {
    if (!c || !name || c->n == 0) return NULL; /* bsearch must not see a NULL array */
    st_entry key = {.name = (char *)name};
    return bsearch(&key, c->entries, (size_t)c->n, sizeof *c->entries, cmp_name);
}

dm_status dm_checkpoint_find(const dm_checkpoint *c, const char *name, dm_tensor *view) {
    const st_entry *e = lookup(c, name);
    if (!e) return dm_fail(DM_ERR_VALUE, "missing tensor '%s'", name ? name : "(null)");
    if (view) *view = e->view;
    return DM_OK;
}

dm_status dm_checkpoint_weight(const dm_checkpoint *c, const char *const *prefixes, const char *name,
                               int ndim, const int64_t *shape, dm_tensor *view) {
    static const char *const none[] = {"", NULL};
    if (!prefixes || !prefixes[0]) prefixes = none;
    char full[1024];
    for (int i = 0; prefixes[i]; i++) {
        int len = snprintf(full, sizeof full, "%s%s", prefixes[i], name);
        if (len < 0 || (size_t)len >= sizeof full) return dm_fail(DM_ERR_VALUE, "tensor name too long: '%s'", name);
        const st_entry *e = lookup(c, full);
        if (!e) continue;
        const char *file = c->files[e->file].path;
        dm_status st = dm_tensor_expect(&e->view, full, ndim, shape);
        if (st != DM_OK) return dm_fail_context(st, "checkpoint '%s': ", file);
        if (view) *view = e->view;
        return DM_OK;
    }
    /* Name every alternative tried so the user sees what was expected. */
    char tried[1024];
    size_t used = 0;
    tried[0] = 0;
    for (int i = 0; prefixes[i] && used < sizeof tried; i++)
        used += (size_t)snprintf(tried + used, sizeof tried - used, "%s'%s%s'", i ? ", " : "", prefixes[i], name);
    return dm_fail(DM_ERR_VALUE, "missing tensor: none of %s in the checkpoint", tried);
}

/* Drop the whole pages of a mapped tensor's source bytes from our RSS: clean
 * private file pages are simply re-read from the file should anyone touch them
 * again (what a converted or quantized tensor leaves behind). */
static void drop_mapped_pages(const void *src, size_t bytes) {
    const uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
    const uintptr_t a = ((uintptr_t)src + pg - 1) & ~(pg - 1), z = ((uintptr_t)src + bytes) & ~(pg - 1);
    if (z > a) madvise((void *)a, z - a, MADV_DONTNEED);
}

/* Convert every tensor of dtype in `from` (bitmask over dm_dtype) to `to`. All
 * copies are allocated first so a failure leaves the checkpoint unchanged. */
static dm_status convert_all(dm_checkpoint *c, unsigned from, dm_dtype to) {
    if (c->converted)
        return dm_fail(DM_ERR_VALUE, "checkpoint was already converted to another dtype; load it again");
    int64_t m = 0;
    for (int64_t i = 0; i < c->n; i++)
        if (from & (1u << c->entries[i].view.dtype)) m++;
    void **bufs = calloc((size_t)(m ? m : 1), sizeof *bufs);
    if (!bufs) return dm_fail(DM_ERR_NOMEM, "out of memory");
    int64_t k = 0;
    for (int64_t i = 0; i < c->n; i++) {
        st_entry *e = &c->entries[i];
        if (!(from & (1u << e->view.dtype))) continue;
        bufs[k] = dm_alloc((size_t)dm_tensor_numel(&e->view), dm_dtype_size(to), e->name);
        if (!bufs[k]) {
            for (int64_t q = 0; q < k; q++) dm_free(bufs[q]);
            free(bufs);
            return dm_fail_context(DM_ERR_NOMEM, "converting checkpoint to %s: ", dm_dtype_name(to));
        }
        k++;
    }
    k = 0;
    for (int64_t i = 0; i < c->n; i++) {
        st_entry *e = &c->entries[i];
        if (!(from & (1u << e->view.dtype))) continue;
        size_t n = (size_t)dm_tensor_numel(&e->view);
        void *dst = bufs[k++];
        const void *src = e->view.data;
        dm_dtype sd = e->view.dtype;
        /* Chunks of 64K elements over the threads: the conversion is bandwidth bound. */
        const size_t chunk = 65536;
        int64_t nchunks = (int64_t)((n + chunk - 1) / chunk);
        #pragma omp parallel for schedule(static)
        for (int64_t q = 0; q < nchunks; q++) {
            size_t lo = (size_t)q * chunk, cnt = n - lo < chunk ? n - lo : chunk;
            if (to == DM_F32) {
                dm_to_f32_n((float *)dst + lo, (const char *)src + lo * dm_dtype_size(sd), sd, cnt);
            } else if (sd == DM_F32) {
                dm_f32_to_bf16_n((uint16_t *)dst + lo, (const float *)src + lo, cnt);
            } else { /* F16 -> BF16 through f32, a small stack buffer at a time */
                float tmp[1024];
                for (size_t r = 0; r < cnt; r += 1024) {
                    size_t w = cnt - r < 1024 ? cnt - r : 1024;
                    dm_f16_to_f32_n(tmp, (const uint16_t *)src + lo + r, w);
                    dm_f32_to_bf16_n((uint16_t *)dst + lo + r, tmp, w);
                }
            }
        }
        /* Drop the mapped source pages from our RSS: clean private file pages are
         * simply re-read from the file should anyone touch them again. */
        if (e->owned == NULL) drop_mapped_pages(src, n * dm_dtype_size(sd));
        dm_free(e->owned);
        e->owned = dst;
        e->view.data = dst;
        e->view.dtype = to;
    }
    free(bufs);
    c->converted = 1;
    return DM_OK;
}

dm_status dm_checkpoint_widen_f32(dm_checkpoint *c) {
    if (!c) return dm_fail(DM_ERR_VALUE, "no checkpoint");
    return convert_all(c, (1u << DM_BF16) | (1u << DM_F16), DM_F32);
}

dm_status dm_checkpoint_narrow_bf16(dm_checkpoint *c) {
    if (!c) return dm_fail(DM_ERR_VALUE, "no checkpoint");
    return convert_all(c, (1u << DM_F32) | (1u << DM_F16), DM_BF16);
}

int64_t dm_checkpoint_preload(dm_checkpoint *c) {
    if (!c) return 0;
    const size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    int64_t touched = 0;
    for (int64_t i = 0; i < c->n; i++) {
        const st_entry *e = &c->entries[i];
        if (e->owned || e->end == e->begin) continue; /* converted copies are resident already */
        const unsigned char *p = e->view.data;
        const size_t n = (size_t)(e->end - e->begin);
        const uintptr_t a = (uintptr_t)p & ~(uintptr_t)(pg - 1);
        madvise((void *)a, (size_t)((uintptr_t)p + n - a), MADV_WILLNEED);
        /* one read per page maps it (and reads it from the file if it is not cached) */
        const int64_t pages = (int64_t)((n + pg - 1) / pg);
        unsigned sum = 0;
        #pragma omp parallel for schedule(static) reduction(+ : sum) if (pages > 256)
        for (int64_t q = 0; q < pages; q++) sum += ((const volatile unsigned char *)p)[(size_t)q * pg];
        (void)sum;
        touched += (int64_t)n;
    }
    return touched;
}

dm_status dm_checkpoint_quantize_i8(dm_checkpoint *c, const char *const *names, int64_t n_names) {
    if (!c) return dm_fail(DM_ERR_VALUE, "no checkpoint");
    if (c->quantized) return dm_fail(DM_ERR_VALUE, "checkpoint is already quantized; load it again");
    st_entry **es = calloc((size_t)(n_names ? n_names : 1), sizeof *es);
    void **bufs = calloc((size_t)(n_names ? n_names : 1), sizeof *bufs);
    dm_status st = DM_OK;
    if (!es || !bufs) {
        st = dm_fail(DM_ERR_NOMEM, "out of memory");
        goto fail;
    }
    /* validate and allocate everything first: a failure leaves the checkpoint unchanged */
    for (int64_t i = 0; i < n_names; i++) {
        st_entry *e = (st_entry *)lookup(c, names[i]);
        if (!e) {
            st = dm_fail(DM_ERR_VALUE, "quantize: missing tensor '%s'", names[i]);
            goto fail;
        }
        const dm_dtype t = e->view.dtype;
        if (e->view.ndim != 2 || (t != DM_F32 && t != DM_BF16 && t != DM_F16)) {
            st = dm_fail(DM_ERR_TYPE, "quantize: '%s' is %s with %d dims (a 2-D float weight is needed)", names[i],
                         dm_dtype_name(t), e->view.ndim);
            goto fail;
        }
        if (e->owned) { /* freeing a converted copy would invalidate views already handed out */
            st = dm_fail(DM_ERR_VALUE, "quantize: '%s' was converted to %s already; quantize the file's own "
                                       "weights (open the checkpoint again)", names[i], dm_dtype_name(t));
            goto fail;
        }
        for (int64_t j = 0; j < i; j++)
            if (es[j] == e) {
                st = dm_fail(DM_ERR_VALUE, "quantize: '%s' is listed twice", names[i]);
                goto fail;
            }
        const int64_t R = e->view.shape[0], K = e->view.shape[1];
        bufs[i] = dm_alloc((size_t)((R * 4 + 63) / 64 * 64 + R * K), 1, e->name);
        if (!bufs[i]) {
            st = dm_fail_context(DM_ERR_NOMEM, "quantizing '%s' to int8: ", names[i]);
            goto fail;
        }
        es[i] = e;
    }
    for (int64_t i = 0; i < n_names; i++) {
        st_entry *e = es[i];
        const int64_t R = e->view.shape[0], K = e->view.shape[1];
        const dm_dtype sd = e->view.dtype;
        const size_t esz = dm_dtype_size(sd);
        float *scale = bufs[i];
        int8_t *q = (int8_t *)((char *)bufs[i] + (R * 4 + 63) / 64 * 64);
        const char *src = e->view.data;
        /* one scale per output row (core/quant.h), the row converted 1024 values at a time */
        #pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < R; r++) {
            float tmp[1024];
            const char *row = src + (size_t)(r * K) * esz;
            float amax = 0.0f;
            for (int64_t k0 = 0; k0 < K; k0 += 1024) {
                const int64_t w = K - k0 < 1024 ? K - k0 : 1024;
                dm_to_f32_n(tmp, row + (size_t)k0 * esz, sd, (size_t)w);
                amax = fmaxf(amax, dm_absmax(tmp, w));
            }
            scale[r] = dm_quant_scale(amax, 127.0f);
            for (int64_t k0 = 0; k0 < K; k0 += 1024) {
                const int64_t w = K - k0 < 1024 ? K - k0 : 1024;
                dm_to_f32_n(tmp, row + (size_t)k0 * esz, sd, (size_t)w);
                dm_quantize_i8(q + r * K + k0, tmp, w, 1.0f / scale[r]);
            }
        }
        drop_mapped_pages(src, (size_t)(R * K) * esz);
        e->owned = bufs[i];
        e->view.data = q;
        e->view.dtype = DM_I8;
        e->view.row_scale = scale;
    }
    c->quantized = 1;
    free(es);
    free(bufs);
    return DM_OK;
fail:
    if (bufs)
        for (int64_t i = 0; i < n_names; i++) dm_free(bufs[i]);
    free(es);
    free(bufs);
    return st;
}
