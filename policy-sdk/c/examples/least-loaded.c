/*
 * least-loaded (L4 or L7): the endpoint with the fewest connections in
 * flight (the host's live `active` count for this worker), endpoints
 * already tried skipped, endpoints that failed within the last
 * `avoidMs` milliseconds (default 10000) avoided while another is left.
 * Ties go round robin, so an idle Service is still spread.
 *
 *   {"avoidMs": 10000}
 */
#define SWITCHYARD_POLICY_IMPLEMENTATION
#include "switchyard_policy.h"

static uint32_t avoid_ms = 10000;
static uint32_t next_start;

SY_EXPORT("sy_init") int32_t sy_init(int32_t config_ptr, int32_t config_len) {
    char config[512];
    static const char *const keys[] = {"avoidMs", 0};
    int32_t len = sy_flat_config(config_ptr, config_len, config, sizeof config, keys);
    if (len <= 0) return len < 0;
    char value[16];
    int32_t n = sy_json_value(config, len, "avoidMs", value, sizeof value);
    if (n == -1) return 0;
    if (n < 0 || !sy_parse_u32(value, n, &avoid_ms)) {
        sy_set_error_str("invalid policy config: avoidMs must be a whole number of milliseconds");
        return 1;
    }
    return 0;
}

static int failed_recently(const sy_endpoint *e, uint64_t now_ns) {
    if (e->last_failure_ms == 0 || e->failures == 0) return 0;
    uint32_t now_ms = (uint32_t)(now_ns / 1000000u);
    return (uint32_t)(now_ms - e->last_failure_ms) < avoid_ms;
}

SY_EXPORT("sy_pick") int32_t sy_pick(int32_t ctx_ptr) {
    const sy_context *ctx = sy_ctx(ctx_ptr);
    const sy_endpoint *table = sy_table();
    uint32_t n = sy_count();
    if (n == 0) return -1;
    /* Two passes: first only healthy endpoints, then any untried one. */
    for (int pass = 0; pass < 2; pass++) {
        int32_t best = -1;
        uint32_t best_active = 0;
        for (uint32_t k = 0; k < n; k++) {
            uint32_t i = (next_start + k) % n;
            const sy_endpoint *e = &table[i];
            if (sy_tried(ctx, i)) continue;
            if (pass == 0 && failed_recently(e, ctx->now_ns)) continue;
            if (best < 0 || e->active < best_active) {
                best = (int32_t)i;
                best_active = e->active;
            }
        }
        if (best >= 0) {
            next_start = (uint32_t)best + 1;
            return best;
        }
    }
    return -1;
}
