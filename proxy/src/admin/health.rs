//! The probes' state and kube-proxy's `/healthz` answer.
//!
//! kube-proxy (pkg/proxy/healthcheck/proxier_health.go) answers `/healthz`
//! with `{"lastUpdated": …,"currentTime": …, "nodeEligible": …}`: 200 when
//! no change has waited for a sync longer than its health timeout and the
//! node is eligible, 503 otherwise; `lastUpdated` is the current time when
//! healthy (older scrapers read it as "the sync loop runs"), the last
//! successful sync otherwise. The node is not eligible while it is being
//! deleted or carries the autoscaler's `ToBeDeletedByClusterAutoscaler`
//! taint, so that cloud load balancers drain it first. On top of that, we
//! answer 503 before the first sync is installed and once a stop begins.
//! `/livez` is the same sync check alone, with `lastUpdated` and
//! `currentTime`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::StatusCode;

/// kube-proxy's health timeout: twice its default 30 s sync period.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(60);

/// Liveness and readiness as the probes see them.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    state: Mutex<SyncState>,
}

#[derive(Debug, Default)]
struct SyncState {
    last_updated: Option<SystemTime>,
    /// When the oldest change that failed to apply was first tried.
    pending_since: Option<SystemTime>,
    /// Why the node is not eligible for load-balancer traffic.
    ineligible: Option<String>,
}

impl Health {
    /// Ready once the first sync is in force (snapshot and nftables); not
    /// ready again once a stop begins.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// A sync completed (with or without changes): everything seen is in
    /// force. `ineligible` is the node's state as that sync read it.
    pub fn synced(&self, ineligible: Option<String>) {
        let mut state = self.lock();
        state.last_updated = Some(SystemTime::now());
        state.pending_since = None;
        if state.ineligible != ineligible {
            match &ineligible {
                Some(why) => tracing::warn!(
                    reason = %why,
                    "node not eligible for load-balancer traffic; /healthz answers 503"
                ),
                None => tracing::info!("node eligible for load-balancer traffic again"),
            }
        }
        state.ineligible = ineligible;
    }

    /// A sync failed: its changes wait, and /healthz turns 503 once they
    /// have waited for [`HEALTH_TIMEOUT`].
    pub fn sync_failed(&self) {
        self.lock()
            .pending_since
            .get_or_insert_with(SystemTime::now);
    }

    /// The proxy is healthy for load balancers (used by the health-check
    /// node ports as `serviceProxyHealthy`).
    pub fn proxy_healthy(&self, now: SystemTime) -> bool {
        let state = self.lock();
        self.is_ready() && fresh(&state, now)
    }

    /// Status and body of `/healthz`, kube-proxy's fields and layout.
    pub fn healthz(&self, now: SystemTime) -> (StatusCode, String) {
        let state = self.lock();
        let eligible = state.ineligible.is_none();
        let healthy = self.is_ready() && fresh(&state, now) && eligible;
        answer(
            healthy,
            state.last_updated,
            now,
            &format!(", \"nodeEligible\": {eligible}"),
        )
    }

    /// Status and body of `/livez`: kube-proxy's, the sync check alone
    /// (healthy while starting, whatever the node).
    pub fn livez(&self, now: SystemTime) -> (StatusCode, String) {
        let state = self.lock();
        answer(fresh(&state, now), state.last_updated, now, "")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SyncState> {
        // A poisoned lock only means a probe panicked mid-read; the state
        // itself is always whole.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn fresh(state: &SyncState, now: SystemTime) -> bool {
    state.pending_since.is_none_or(|since| {
        now.duration_since(since)
            .is_ok_and(|waited| waited < HEALTH_TIMEOUT)
            || now < since
    })
}

/// Go's `time.Time.String()` layout in UTC (without the monotonic clock
/// reading): `2006-01-02 15:04:05.999999999 +0000 UTC`; `None` is Go's zero
/// time, what kube-proxy prints before its first sync.
fn go_time(t: Option<SystemTime>) -> String {
    let Some(since) = t.and_then(|t| t.duration_since(UNIX_EPOCH).ok()) else {
        return "0001-01-01 00:00:00 +0000 UTC".into();
    };
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let mut out = format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    let nanos = since.subsec_nanos();
    if nanos != 0 {
        let fraction = format!("{nanos:09}");
        out.push('.');
        out.push_str(fraction.trim_end_matches('0'));
    }
    out.push_str(" +0000 UTC");
    out
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// One probe answer in kube-proxy's layout, shared by `/healthz` and
/// `/livez`: `lastUpdated` is now while healthy and the last sync
/// otherwise; `extra` holds further fields, each led by a comma.
fn answer(
    healthy: bool,
    last_updated: Option<SystemTime>,
    now: SystemTime,
    extra: &str,
) -> (StatusCode, String) {
    let last_updated = if healthy { Some(now) } else { last_updated };
    let body = format!(
        "{{\"lastUpdated\": \"{}\",\"currentTime\": \"{}\"{extra}}}\n",
        go_time(last_updated),
        go_time(Some(now)),
    );
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_layout() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 120_000_000);
        assert_eq!(go_time(Some(t)), "2023-11-14 22:13:20.12 +0000 UTC");
        assert_eq!(
            go_time(Some(UNIX_EPOCH + Duration::from_secs(951_782_400))),
            "2000-02-29 00:00:00 +0000 UTC"
        );
        assert_eq!(go_time(None), "0001-01-01 00:00:00 +0000 UTC");
    }

    #[test]
    fn status_follows_readiness_staleness_and_eligibility() {
        let h = Health::default();
        let now = SystemTime::now();
        assert_eq!(h.healthz(now).0, StatusCode::SERVICE_UNAVAILABLE);
        h.set_ready(true);
        h.synced(None);
        let (status, body) = h.healthz(now);
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("\"nodeEligible\": true"), "{body}");
        h.sync_failed();
        assert_eq!(h.healthz(SystemTime::now()).0, StatusCode::OK);
        let later = SystemTime::now() + HEALTH_TIMEOUT + Duration::from_secs(1);
        assert_eq!(h.healthz(later).0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(h.livez(later).0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(h.livez(SystemTime::now()).0, StatusCode::OK);
        h.synced(Some("tainted".into()));
        let (status, body) = h.healthz(SystemTime::now());
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("\"nodeEligible\": false"), "{body}");
        assert!(h.proxy_healthy(SystemTime::now()));
    }
}
