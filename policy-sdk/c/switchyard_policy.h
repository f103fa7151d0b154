/*
 * switchyard_policy.h: write a Switchyard policy (ABI v1, policy-sdk/ABI.md)
 * in C, for wasm32 with no libc.
 *
 *   clang --target=wasm32 -ffreestanding -nostdlib -O2 -I policy-sdk/c \
 *         -Wl,--no-entry -Wl,--export-dynamic -o my-policy.wasm my-policy.c
 *
 * What the header gives:
 *
 *   - the ABI's records as structs (sy_endpoint, sy_context), checked
 *     against ABI.md's offsets at compile time;
 *   - the `switchyard` imports (sy_now_ns, sy_random_u64, sy_log,
 *     sy_set_error, sy_request_attr), declared with import_module /
 *     import_name, so the module imports nothing else;
 *   - the exports every policy shares, defined in the one file that says
 *     `#define SWITCHYARD_POLICY_IMPLEMENTATION` before including this
 *     header: sy_abi_version, sy_alloc (a small free-list allocator over
 *     the module's memory) and sy_endpoints (keeps the current table, frees
 *     the previous one, then calls your sy_endpoints_changed if you define
 *     one);
 *   - small helpers: bounds-checked endpoint strings, the `tried` bit, L7
 *     attribute comparisons, and a reader for flat JSON configurations.
 *
 * A policy then defines, with SY_EXPORT:
 *
 *   SY_EXPORT("sy_init") int32_t sy_init(int32_t config_ptr, int32_t config_len);
 *   SY_EXPORT("sy_pick") int32_t sy_pick(int32_t ctx_ptr);
 *   SY_EXPORT("sy_outcome") void sy_outcome(int32_t i, int32_t result, int64_t ns); // optional
 *
 * and, optionally, void sy_endpoints_changed(void).
 *
 * The config buffer handed to sy_init belongs to the module afterwards:
 * sy_free it once read (sy_config helps). Indices returned by sy_pick refer
 * to the table of the last sy_endpoints call; -1 means "no choice".
 */
#ifndef SWITCHYARD_POLICY_H
#define SWITCHYARD_POLICY_H

#include <stddef.h>
#include <stdint.h>

#if !defined(__wasm32__)
#error "switchyard_policy.h targets wasm32: build with clang --target=wasm32"
#endif

#define SY_ABI_VERSION 1

#define SY_IMPORT(name) __attribute__((import_module("switchyard"), import_name(name)))
#define SY_EXPORT(name) __attribute__((export_name(name), used))

/* ------------------------------------------------------------------ records */

/* Endpoint flags (sy_endpoint.flags). */
#define SY_FLAG_READY       0x01
#define SY_FLAG_SERVING     0x02
#define SY_FLAG_TERMINATING 0x04
#define SY_FLAG_LOCAL       0x08
#define SY_FLAG_SAME_ZONE   0x10

/* Context modes (sy_context.mode). */
#define SY_MODE_L4 0
#define SY_MODE_L7 1

/* One 64-byte record of the endpoint table. Offsets are relative to the
 * table; the live fields are rewritten by the host between calls. */
typedef struct sy_endpoint {
    uint8_t family;   /* 4 or 6 */
    uint8_t flags;    /* SY_FLAG_* */
    uint16_t port;    /* target port, host order */
    uint32_t weight;  /* 1 today */
    uint8_t address[16]; /* IPv4 in bytes 0-3, network order */
    uint32_t name_off;
    uint16_t name_len;
    uint16_t node_len;
    uint32_t node_off;
    uint32_t zone_off;
    uint16_t zone_len;
    uint16_t reserved;
    uint32_t active;          /* live: connections (L7: requests) in flight */
    uint32_t failures;        /* live: consecutive failed connects */
    uint32_t last_failure_ms; /* live: now_ns / 1e6, truncated; 0 if none */
    uint64_t ewma_ns;         /* live: peak-EWMA connect latency */
} sy_endpoint;

/* The 64-byte context of a pick. */
typedef struct sy_context {
    uint8_t family;  /* of the client: 4 or 6 */
    uint8_t mode;    /* SY_MODE_L4 or SY_MODE_L7 */
    uint16_t client_port;
    uint16_t frontend_port;
    uint16_t attempt; /* 0 first pick, 1.. retries */
    uint8_t client_addr[16];
    uint8_t frontend_addr[16];
    uint64_t now_ns;
    uint64_t tried;  /* bit i: endpoint i (< 64) already failed */
    uint32_t count;  /* endpoints in the current table */
    uint32_t reserved;
} sy_context;

_Static_assert(sizeof(sy_endpoint) == 64, "ABI v1: endpoint records are 64 bytes");
_Static_assert(offsetof(sy_endpoint, address) == 8, "ABI v1: address at 8");
_Static_assert(offsetof(sy_endpoint, name_off) == 24, "ABI v1: name_off at 24");
_Static_assert(offsetof(sy_endpoint, node_off) == 32, "ABI v1: node_off at 32");
_Static_assert(offsetof(sy_endpoint, zone_len) == 40, "ABI v1: zone_len at 40");
_Static_assert(offsetof(sy_endpoint, active) == 44, "ABI v1: active at 44");
_Static_assert(offsetof(sy_endpoint, ewma_ns) == 56, "ABI v1: ewma_ns at 56");
_Static_assert(sizeof(sy_context) == 64, "ABI v1: the context is 64 bytes");
_Static_assert(offsetof(sy_context, client_addr) == 8, "ABI v1: client_addr at 8");
_Static_assert(offsetof(sy_context, now_ns) == 40, "ABI v1: now_ns at 40");
_Static_assert(offsetof(sy_context, tried) == 48, "ABI v1: tried at 48");
_Static_assert(offsetof(sy_context, count) == 56, "ABI v1: count at 56");

/* ------------------------------------------------------------------ imports */

/* Log levels of sy_log. */
#define SY_LOG_ERROR 0
#define SY_LOG_WARN  1
#define SY_LOG_INFO  2
#define SY_LOG_DEBUG 3

/* request_attr kinds. */
#define SY_ATTR_METHOD    0
#define SY_ATTR_AUTHORITY 1
#define SY_ATTR_PATH      2
#define SY_ATTR_HEADER    3
#define SY_ATTR_SCHEME    4

SY_IMPORT("now_ns") int64_t sy_now_ns(void);
SY_IMPORT("random_u64") int64_t sy_random_u64(void);
SY_IMPORT("log") void sy_log(int32_t level, const char *ptr, int32_t len);
SY_IMPORT("set_error") void sy_set_error(const char *ptr, int32_t len);
/* L7 only, during sy_pick: copies min(length, out_cap) bytes of the
 * attribute to out and returns its full length, or -1 when absent (always
 * in L4 mode). `name` is the header name in lowercase (kind 3 only). */
SY_IMPORT("request_attr")
int32_t sy_request_attr(int32_t kind, const char *name, int32_t name_len, char *out,
                        int32_t out_cap);

/* ---------------------------------------------------------------- exports */

/* Defined by the implementation part of this header. */
SY_EXPORT("sy_abi_version") int32_t sy_abi_version(void);
SY_EXPORT("sy_alloc") int32_t sy_alloc(int32_t size);
SY_EXPORT("sy_endpoints") void sy_endpoints(int32_t table_ptr, int32_t count);

/* Defined by the policy. */
SY_EXPORT("sy_init") int32_t sy_init(int32_t config_ptr, int32_t config_len);
SY_EXPORT("sy_pick") int32_t sy_pick(int32_t ctx_ptr);

/* Optional hook: called after every sy_endpoints, with sy_table() and
 * sy_count() already the new set. The default does nothing. */
void sy_endpoints_changed(void);

/* Frees a block from sy_alloc (the config after sy_init, for instance).
 * Pointers that are not live blocks are ignored. */
void sy_free(int32_t ptr);

/* The current endpoint table and its record count (0 before the first
 * sy_endpoints, or when the host handed an unknown pointer). */
const sy_endpoint *sy_table(void);
uint32_t sy_count(void);

/* An endpoint's Pod name, node name or zone: a pointer into the table and
 * its length in *len, or NULL (and *len = 0) when absent or out of bounds.
 * Not NUL-terminated. */
const char *sy_endpoint_name(const sy_endpoint *e, uint32_t *len);
const char *sy_endpoint_node(const sy_endpoint *e, uint32_t *len);
const char *sy_endpoint_zone(const sy_endpoint *e, uint32_t *len);

/* Copies the config buffer handed to sy_init into out (at most cap bytes),
 * frees the buffer, and returns the config's length (which may exceed cap:
 * then the config did not fit). */
uint32_t sy_config(int32_t config_ptr, int32_t config_len, char *out, uint32_t cap);

/* In a flat JSON object (`{"key": "value", "n": 10, ...}`: strings,
 * numbers, true, false, null; no nesting), the value of `key`: a string's
 * text without the quotes (escapes other than \" and \\ are refused), any
 * other value as written. Copies it to out (at most cap bytes) and returns
 * its length; -1 when the key is absent, -2 when the text is not such an
 * object or the value does not fit. */
int32_t sy_json_value(const char *json, uint32_t json_len, const char *key, char *out,
                       uint32_t cap);

/* Whether a flat JSON object has only the given keys (NULL-terminated
 * list): for rejecting typos in a config. Returns 1 when it does, else 0
 * with the first unknown key in *bad / *bad_len (*bad is NULL when the
 * text is not a flat object). */
int sy_json_keys_only(const char *json, uint32_t json_len, const char *const *keys,
                      const char **bad, uint32_t *bad_len);

/* sy_config plus the checks every sy_init makes of a flat JSON config: it
 * fits in out (cap bytes) and has only `keys` (NULL-terminated). Returns the
 * config's length (0: none was given), or -1 after setting the error
 * ("invalid policy config: ..."), for sy_init to return 1. */
int32_t sy_flat_config(int32_t config_ptr, int32_t config_len, char *out, uint32_t cap,
                       const char *const *keys);

/* A decimal number (digits only) of at most 10 digits that fits 32 bits:
 * 1 and the value in *out, else 0. */
int sy_parse_u32(const char *s, int32_t len, uint32_t *out);

/* ---------------------------------------------------------------- helpers */

static inline const sy_context *sy_ctx(int32_t ctx_ptr) {
    return (const sy_context *)(uintptr_t)(uint32_t)ctx_ptr;
}

/* Whether endpoint i already failed for this connection (bit i of tried). */
static inline int sy_tried(const sy_context *ctx, uint32_t i) {
    return i < 64 && ((ctx->tried >> i) & 1u);
}

static inline uint32_t sy_strlen(const char *s) {
    uint32_t n = 0;
    while (s[n]) n++;
    return n;
}

static inline int sy_mem_eq(const char *a, const char *b, uint32_t n) {
    for (uint32_t i = 0; i < n; i++)
        if (a[i] != b[i]) return 0;
    return 1;
}

/* sy_log / sy_set_error with a NUL-terminated message. */
static inline void sy_log_str(int32_t level, const char *msg) {
    sy_log(level, msg, (int32_t)sy_strlen(msg));
}
static inline void sy_set_error_str(const char *msg) {
    sy_set_error(msg, (int32_t)sy_strlen(msg));
}

/* sy_set_error with a message made of a NUL-terminated prefix and `len`
 * bytes (a config's field name, for instance); cut at 256 bytes. */
static inline void sy_set_error_with(const char *prefix, const char *bytes, uint32_t len) {
    char msg[256];
    uint32_t n = 0;
    while (prefix[n] && n < sizeof msg) {
        msg[n] = prefix[n];
        n++;
    }
    for (uint32_t i = 0; i < len && n < sizeof msg; i++) msg[n++] = bytes[i];
    sy_set_error(msg, (int32_t)n);
}

/* A request header's first value (lowercase NUL-terminated name): its full
 * length, -1 when absent (and always in L4 mode); copies at most cap bytes. */
static inline int32_t sy_header(const char *name, char *out, uint32_t cap) {
    return sy_request_attr(SY_ATTR_HEADER, name, (int32_t)sy_strlen(name), out, (int32_t)cap);
}

/* A uniformly random number below n (0 when n is 0). */
static inline uint32_t sy_random_below(uint32_t n) {
    if (n == 0) return 0;
    return (uint32_t)((((uint64_t)sy_random_u64() >> 32) * (uint64_t)n) >> 32);
}

/* ========================================================= implementation */
#ifdef SWITCHYARD_POLICY_IMPLEMENTATION

extern unsigned char __heap_base;

/* Every block has an 8-byte header (its payload size and whether it is
 * free) and an 8-aligned payload. Freed blocks go to a first-fit list;
 * a policy holds few blocks at once (config, context, one or two tables),
 * so the list stays short. */
typedef struct sy_block {
    uint32_t size;
    uint32_t free;
} sy_block;

#define SY_PAGE 65536u
#define SY_BLOCK_MAGIC_FREE 0x46524545u /* "FREE" */
#define SY_BLOCK_MAGIC_USED 0x55534544u /* "USED" */

static uintptr_t sy__top;   /* first byte not handed out yet */
static const sy_endpoint *sy__table;
static uint32_t sy__table_size;
static uint32_t sy__count;

static uintptr_t sy__align8(uintptr_t v) { return (v + 7u) & ~(uintptr_t)7u; }

static int sy__ensure(uintptr_t end) {
    uintptr_t have = (uintptr_t)__builtin_wasm_memory_size(0) * SY_PAGE;
    if (end <= have) return 1;
    uintptr_t pages = (end - have + SY_PAGE - 1) / SY_PAGE;
    return __builtin_wasm_memory_grow(0, pages) != (size_t)-1;
}

/* The block whose payload starts at ptr, found by walking the heap: a
 * pointer the host hands back is trusted only if it is a live block. */
static sy_block *sy__header(int32_t ptr) {
    uintptr_t p = (uintptr_t)(uint32_t)ptr;
    uintptr_t at = sy__align8((uintptr_t)&__heap_base);
    while (at < sy__top) {
        sy_block *b = (sy_block *)at;
        if (at + sizeof(sy_block) == p) return b->free == SY_BLOCK_MAGIC_USED ? b : 0;
        if (at + sizeof(sy_block) > p) return 0;
        at += sizeof(sy_block) + b->size;
    }
    return 0;
}

SY_EXPORT("sy_abi_version") int32_t sy_abi_version(void) { return SY_ABI_VERSION; }

SY_EXPORT("sy_alloc") int32_t sy_alloc(int32_t size) {
    if (size < 0) return 0;
    uint32_t want = (uint32_t)sy__align8((uintptr_t)(size == 0 ? 1 : size));
    if (sy__top == 0) sy__top = sy__align8((uintptr_t)&__heap_base);
    /* First fit among freed blocks, walking the heap. */
    uintptr_t at = sy__align8((uintptr_t)&__heap_base);
    while (at < sy__top) {
        sy_block *b = (sy_block *)at;
        if (b->free == SY_BLOCK_MAGIC_FREE) {
            /* Merge the free blocks that follow, so that tables of growing
             * size do not leave a trail of small holes. */
            uintptr_t next = at + sizeof(sy_block) + b->size;
            while (next < sy__top && ((sy_block *)next)->free == SY_BLOCK_MAGIC_FREE) {
                b->size += sizeof(sy_block) + ((sy_block *)next)->size;
                next = at + sizeof(sy_block) + b->size;
            }
            if (next >= sy__top) {
                /* The last block: give it back to the top. */
                sy__top = at;
                break;
            }
        }
        if (b->free == SY_BLOCK_MAGIC_FREE && b->size >= want) {
            b->free = SY_BLOCK_MAGIC_USED;
            return (int32_t)(at + sizeof(sy_block));
        }
        at += sizeof(sy_block) + b->size;
    }
    uintptr_t end = sy__top + sizeof(sy_block) + want;
    if (end < sy__top || !sy__ensure(end)) return 0;
    sy_block *b = (sy_block *)sy__top;
    b->size = want;
    b->free = SY_BLOCK_MAGIC_USED;
    sy__top = end;
    return (int32_t)((uintptr_t)b + sizeof(sy_block));
}

void sy_free(int32_t ptr) {
    sy_block *b = sy__header(ptr);
    if (b) b->free = SY_BLOCK_MAGIC_FREE;
}

__attribute__((weak)) void sy_endpoints_changed(void) {}

SY_EXPORT("sy_endpoints") void sy_endpoints(int32_t table_ptr, int32_t count) {
    const sy_endpoint *previous = sy__table;
    sy_block *b = sy__header(table_ptr);
    if (b && count >= 0 && (uint64_t)(uint32_t)count * sizeof(sy_endpoint) <= b->size) {
        sy__table = (const sy_endpoint *)(uintptr_t)(uint32_t)table_ptr;
        sy__table_size = b->size;
        sy__count = (uint32_t)count;
    } else {
        sy__table = 0;
        sy__table_size = 0;
        sy__count = 0;
        if (count > 0)
            sy_log_str(SY_LOG_ERROR, "sy_endpoints: the table is not a block from sy_alloc");
    }
    if (previous && previous != sy__table) sy_free((int32_t)(uintptr_t)previous);
    sy_endpoints_changed();
}

const sy_endpoint *sy_table(void) { return sy__table; }
uint32_t sy_count(void) { return sy__count; }

static const char *sy__string(uint32_t off, uint32_t len, uint32_t *out_len) {
    if (!sy__table || len == 0 || off > sy__table_size || len > sy__table_size - off) {
        *out_len = 0;
        return 0;
    }
    *out_len = len;
    return (const char *)sy__table + off;
}

const char *sy_endpoint_name(const sy_endpoint *e, uint32_t *len) {
    return sy__string(e->name_off, e->name_len, len);
}
const char *sy_endpoint_node(const sy_endpoint *e, uint32_t *len) {
    return sy__string(e->node_off, e->node_len, len);
}
const char *sy_endpoint_zone(const sy_endpoint *e, uint32_t *len) {
    return sy__string(e->zone_off, e->zone_len, len);
}

uint32_t sy_config(int32_t config_ptr, int32_t config_len, char *out, uint32_t cap) {
    uint32_t len = config_len > 0 ? (uint32_t)config_len : 0;
    sy_block *b = sy__header(config_ptr);
    if (!b || len > b->size) len = 0;
    const char *src = (const char *)(uintptr_t)(uint32_t)config_ptr;
    for (uint32_t i = 0; i < len && i < cap; i++) out[i] = src[i];
    sy_free(config_ptr);
    return len;
}

/* --- flat JSON: {"k": "v", ...} ------------------------------------------ */

typedef struct sy__json {
    const char *s;
    uint32_t n, i;
} sy__json;

static void sy__ws(sy__json *j) {
    while (j->i < j->n && (j->s[j->i] == ' ' || j->s[j->i] == '\t' || j->s[j->i] == '\n' ||
                           j->s[j->i] == '\r'))
        j->i++;
}

/* Reads a string at j->i; its raw text (between the quotes) in *at / *len.
 * Only \" and \\ escapes are accepted. Returns 0 on malformed input. */
static int sy__str(sy__json *j, uint32_t *at, uint32_t *len) {
    sy__ws(j);
    if (j->i >= j->n || j->s[j->i] != '"') return 0;
    uint32_t start = ++j->i;
    while (j->i < j->n && j->s[j->i] != '"') {
        if (j->s[j->i] == '\\') {
            if (j->i + 1 >= j->n || (j->s[j->i + 1] != '"' && j->s[j->i + 1] != '\\')) return 0;
            j->i++;
        }
        j->i++;
    }
    if (j->i >= j->n) return 0;
    *at = start;
    *len = j->i - start;
    j->i++;
    return 1;
}

static int sy__raw_eq(const char *raw, uint32_t len, const char *key) {
    uint32_t k = 0;
    for (uint32_t i = 0; i < len; i++, k++) {
        if (raw[i] == '\\') i++;
        if (!key[k] || key[k] != raw[i]) return 0;
    }
    return key[k] == 0;
}

/* Walks the object; calls back per member. Returns 0 on malformed input. */
static int sy__walk(const char *json, uint32_t json_len,
                    int (*member)(void *, const char *, uint32_t, const char *, uint32_t),
                    void *arg) {
    sy__json j = {json, json_len, 0};
    sy__ws(&j);
    if (j.i >= j.n || j.s[j.i] != '{') return 0;
    j.i++;
    sy__ws(&j);
    if (j.i < j.n && j.s[j.i] == '}') {
        j.i++;
    } else {
        for (;;) {
            uint32_t ka, kl, va, vl;
            if (!sy__str(&j, &ka, &kl)) return 0;
            sy__ws(&j);
            if (j.i >= j.n || j.s[j.i] != ':') return 0;
            j.i++;
            sy__ws(&j);
            if (j.i < j.n && j.s[j.i] == '"') {
                if (!sy__str(&j, &va, &vl)) return 0;
            } else {
                /* A number, true, false or null, kept as written. */
                va = j.i;
                while (j.i < j.n && ((j.s[j.i] >= '0' && j.s[j.i] <= '9') ||
                                     (j.s[j.i] >= 'a' && j.s[j.i] <= 'z') ||
                                     j.s[j.i] == '-' || j.s[j.i] == '+' || j.s[j.i] == '.' ||
                                     j.s[j.i] == 'E'))
                    j.i++;
                vl = j.i - va;
                if (vl == 0) return 0;
            }
            if (!member(arg, json + ka, kl, json + va, vl)) return 0;
            sy__ws(&j);
            if (j.i < j.n && j.s[j.i] == ',') { j.i++; continue; }
            if (j.i < j.n && j.s[j.i] == '}') { j.i++; break; }
            return 0;
        }
    }
    sy__ws(&j);
    return j.i == j.n;
}

typedef struct sy__find {
    const char *key;
    char *out;
    uint32_t cap;
    int32_t result;
} sy__find;

static int sy__find_member(void *arg, const char *k, uint32_t kl, const char *v, uint32_t vl) {
    sy__find *f = (sy__find *)arg;
    if (f->result != -1 || !sy__raw_eq(k, kl, f->key)) return 1;
    uint32_t o = 0;
    for (uint32_t i = 0; i < vl; i++, o++) {
        if (v[i] == '\\') i++;
        if (o >= f->cap) { f->result = -2; return 1; }
        f->out[o] = v[i];
    }
    f->result = (int32_t)o;
    return 1;
}

int32_t sy_json_value(const char *json, uint32_t json_len, const char *key, char *out,
                      uint32_t cap) {
    sy__find f = {key, out, cap, -1};
    if (!sy__walk(json, json_len, sy__find_member, &f)) return -2;
    return f.result;
}

typedef struct sy__keys {
    const char *const *keys;
    const char *bad;
    uint32_t bad_len;
} sy__keys;

static int sy__keys_member(void *arg, const char *k, uint32_t kl, const char *v, uint32_t vl) {
    (void)v;
    (void)vl;
    sy__keys *s = (sy__keys *)arg;
    for (const char *const *key = s->keys; *key; key++)
        if (sy__raw_eq(k, kl, *key)) return 1;
    if (!s->bad) {
        s->bad = k;
        s->bad_len = kl;
    }
    return 1;
}

int sy_json_keys_only(const char *json, uint32_t json_len, const char *const *keys,
                      const char **bad, uint32_t *bad_len) {
    sy__keys s = {keys, 0, 0};
    if (!sy__walk(json, json_len, sy__keys_member, &s)) {
        *bad = 0;
        *bad_len = 0;
        return 0;
    }
    *bad = s.bad;
    *bad_len = s.bad_len;
    return s.bad == 0;
}

int32_t sy_flat_config(int32_t config_ptr, int32_t config_len, char *out, uint32_t cap,
                       const char *const *keys) {
    uint32_t len = sy_config(config_ptr, config_len, out, cap);
    if (len == 0) return 0;
    if (len > cap) {
        /* "... longer than <cap> bytes", with no printf to lean on. */
        char msg[64] = "invalid policy config: longer than ";
        uint32_t m = sy_strlen(msg), digits = 1;
        for (uint32_t v = cap; v >= 10; v /= 10) digits++;
        for (uint32_t i = digits, v = cap; i > 0; i--, v /= 10) msg[m + i - 1] = (char)('0' + v % 10);
        m += digits;
        for (const char *t = " bytes"; *t; t++) msg[m++] = *t;
        sy_set_error(msg, (int32_t)m);
        return -1;
    }
    const char *bad;
    uint32_t bad_len;
    if (!sy_json_keys_only(out, len, keys, &bad, &bad_len)) {
        if (bad)
            sy_set_error_with("invalid policy config: unknown field ", bad, bad_len);
        else
            sy_set_error_str("invalid policy config: expected a flat JSON object");
        return -1;
    }
    return (int32_t)len;
}

int sy_parse_u32(const char *s, int32_t len, uint32_t *out) {
    uint64_t v = 0;
    if (len <= 0 || len > 10) return 0;
    for (int32_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') return 0;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    if (v > 0xffffffffu) return 0;
    *out = (uint32_t)v;
    return 1;
}

/* clang may lower struct copies and loops to these; there is no libc. */
__attribute__((weak)) void *memcpy(void *dst, const void *src, size_t n) {
    unsigned char *d = (unsigned char *)dst;
    const unsigned char *s = (const unsigned char *)src;
    while (n--) *d++ = *s++;
    return dst;
}
__attribute__((weak)) void *memset(void *dst, int c, size_t n) {
    unsigned char *d = (unsigned char *)dst;
    while (n--) *d++ = (unsigned char)c;
    return dst;
}

#endif /* SWITCHYARD_POLICY_IMPLEMENTATION */
#endif /* SWITCHYARD_POLICY_H */
