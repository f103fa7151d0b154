//! Rate limiting for log lines that a misbehaving client, backend or policy
//! could otherwise repeat thousands of times a second.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One line per key per this long; the rest are counted, not printed.
const WINDOW: Duration = Duration::from_secs(10);

static LAST: Mutex<Option<HashMap<String, (Instant, u64)>>> = Mutex::new(None);

/// Runs `log` unless a line with the same key ran within the window. The
/// number of suppressed lines is logged with the next one that runs.
pub fn rate_limited_warn(key: &str, log: impl FnOnce()) {
    let Ok(mut guard) = LAST.lock() else { return };
    let map = guard.get_or_insert_with(HashMap::new);
    let now = Instant::now();
    match map.get_mut(key) {
        Some((last, suppressed)) if now.duration_since(*last) < WINDOW => {
            *suppressed += 1;
        }
        Some((last, suppressed)) => {
            if *suppressed > 0 {
                tracing::warn!(
                    key,
                    suppressed = *suppressed,
                    "similar messages were suppressed"
                );
            }
            *last = now;
            *suppressed = 0;
            log();
        }
        None => {
            // Bound the map: keys are per policy or per Service, but a flood
            // of distinct keys must not grow it without end.
            if map.len() >= 4096 {
                map.clear();
            }
            map.insert(key.to_owned(), (now, 0));
            log();
        }
    }
}

/// Counts a reached limit (`switchyard_limits_reached_total{limit}`) and
/// logs it at most once per window: a client flood at a cap must not turn
/// into a log flood.
pub fn limit_reached(metrics: &crate::admin::Metrics, limit: &str, log: impl FnOnce()) {
    metrics
        .limits_reached
        .get_or_create(&crate::admin::metrics::LimitLabels {
            limit: limit.to_owned(),
        })
        .inc();
    rate_limited_warn(&format!("limit:{limit}"), log);
}
