/*
 * header-routing (L7): routes each HTTP request by a header. The header's
 * value names a group of endpoints: those whose Pod name starts with it
 * (`x-pod: web-b` → web-b, `x-pod: web-` → every web-* Pod). Round robin
 * within the group; requests without the header, with a value no Pod
 * matches, and every L4 connection, go round robin over all endpoints.
 * Endpoints already tried are skipped.
 *
 *   {"header": "x-pod"}        (the default; names are lowercase)
 */
#define SWITCHYARD_POLICY_IMPLEMENTATION
#include "switchyard_policy.h"

#define MAX_NAME 64
#define MAX_VALUE 253

static char header[MAX_NAME + 1] = "x-pod";
static uint32_t cursor;

SY_EXPORT("sy_init") int32_t sy_init(int32_t config_ptr, int32_t config_len) {
    char config[512];
    static const char *const keys[] = {"header", 0};
    int32_t len = sy_flat_config(config_ptr, config_len, config, sizeof config, keys);
    if (len <= 0) return len < 0;
    char value[MAX_NAME];
    int32_t n = sy_json_value(config, len, "header", value, sizeof value);
    if (n == -1) return 0;
    if (n <= 0) {
        sy_set_error_str("invalid policy config: header must be a header name of 1 to 64 bytes");
        return 1;
    }
    for (int32_t i = 0; i < n; i++) {
        char c = value[i];
        if (c >= 'A' && c <= 'Z') c = (char)(c - 'A' + 'a');
        header[i] = c;
    }
    header[n] = 0;
    return 0;
}

static int in_group(const sy_endpoint *e, const char *prefix, int32_t prefix_len) {
    uint32_t len;
    const char *name = sy_endpoint_name(e, &len);
    return name && (uint32_t)prefix_len <= len && sy_mem_eq(name, prefix, (uint32_t)prefix_len);
}

/* Round robin over the untried endpoints in the group (all when prefix is
 * NULL); -1 when the group has none left. */
static int32_t next_in(const sy_context *ctx, const char *prefix, int32_t prefix_len) {
    const sy_endpoint *table = sy_table();
    uint32_t n = sy_count();
    for (uint32_t k = 0; k < n; k++) {
        uint32_t i = (cursor + k) % n;
        if (sy_tried(ctx, i)) continue;
        if (prefix && !in_group(&table[i], prefix, prefix_len)) continue;
        cursor = i + 1;
        return (int32_t)i;
    }
    return -1;
}

SY_EXPORT("sy_pick") int32_t sy_pick(int32_t ctx_ptr) {
    const sy_context *ctx = sy_ctx(ctx_ptr);
    if (ctx->mode == SY_MODE_L7) {
        char value[MAX_VALUE];
        int32_t len = sy_header(header, value, sizeof value);
        if (len > 0 && len <= (int32_t)sizeof value) {
            int32_t i = next_in(ctx, value, len);
            if (i >= 0) return i;
        }
    }
    return next_in(ctx, 0, 0);
}
