//! Which text format `/metrics` answers in, and the Prometheus 0.0.4 text
//! rendering of prometheus-client's OpenMetrics output.
//!
//! prometheus-client encodes OpenMetrics only. A 0.0.4 parser reads an
//! OpenMetrics counter (family `x`, samples `x_total`) as an untyped metric
//! `x_total`, chokes on `# UNIT` and `# EOF` in strict scrapers, and knows no
//! `info` type; so the 0.0.4 body is the same samples with the metadata the
//! Go client prints: `# TYPE x_total counter`, `info` as a gauge `x_info`.

pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    PrometheusText,
}

impl Format {
    /// OpenMetrics when the Accept header lists it (any version, any
    /// q-value above zero), the 0.0.4 text format otherwise: what the Go and
    /// Python clients do.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::PrometheusText;
        };
        let asks = accept.split(',').any(|range| {
            let mut params = range.split(';').map(str::trim);
            let media = params.next().unwrap_or("");
            media.eq_ignore_ascii_case("application/openmetrics-text")
                && params.all(|p| !is_zero_quality(p))
        });
        if asks {
            Format::OpenMetrics
        } else {
            Format::PrometheusText
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => OPENMETRICS,
            Format::PrometheusText => PROMETHEUS_TEXT,
        }
    }
}

fn is_zero_quality(param: &str) -> bool {
    match param.split_once('=') {
        Some((key, value)) if key.trim().eq_ignore_ascii_case("q") => {
            value.trim().parse::<f32>().is_ok_and(|q| q <= 0.0)
        }
        _ => false,
    }
}

/// The OpenMetrics body re-labelled for a 0.0.4 parser. Samples pass
/// unchanged, except counters' `_created` (0.0.4 has no such sample).
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut types: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some((name, kind)) = rest.split_once(' ')
        {
            types.insert(name, kind.trim());
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let kind = types.get(name).copied().unwrap_or("unknown");
            out.push_str(&format!("# HELP {} {help}\n", legacy_name(name, kind)));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            out.push_str(&format!(
                "# TYPE {} {}\n",
                legacy_name(name, kind),
                legacy_type(kind)
            ));
            continue;
        }
        let sample_name = line.split(['{', ' ']).next().unwrap_or("");
        if let Some(family) = sample_name.strip_suffix("_created")
            && types.get(family) == Some(&"counter")
        {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn legacy_name(name: &str, kind: &str) -> String {
    match kind {
        "counter" => format!("{name}_total"),
        "info" => format!("{name}_info"),
        _ => name.to_owned(),
    }
}

fn legacy_type(kind: &str) -> &str {
    match kind {
        "counter" | "gauge" | "histogram" | "summary" => kind,
        "info" | "stateset" => "gauge",
        "gaugehistogram" => "histogram",
        _ => "untyped",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OM: &str = "# HELP sy_connections TCP connections.\n\
# TYPE sy_connections counter\n\
sy_connections_total{service=\"a/b\"} 3\n\
sy_connections_created{service=\"a/b\"} 1700000000.0\n\
# HELP sy_wait_seconds Wait.\n\
# TYPE sy_wait_seconds histogram\n\
# UNIT sy_wait_seconds seconds\n\
sy_wait_seconds_sum 0.5\n\
sy_wait_seconds_count 1\n\
sy_wait_seconds_bucket{le=\"+Inf\"} 1\n\
# HELP sy_io Io.\n\
# TYPE sy_io info\n\
sy_io_info{backend=\"epoll\"} 1\n\
# EOF\n";

    #[test]
    fn counters_are_typed_under_their_sample_name() {
        let text = to_prometheus_text(OM);
        assert!(text.contains("# HELP sy_connections_total TCP connections.\n"));
        assert!(text.contains("# TYPE sy_connections_total counter\n"));
        assert!(text.contains("sy_connections_total{service=\"a/b\"} 3\n"));
        assert!(!text.contains("_created"));
        assert!(!text.contains("# EOF"));
        assert!(!text.contains("# UNIT"));
        assert!(text.contains("# TYPE sy_wait_seconds histogram\n"));
        assert!(text.contains("# TYPE sy_io_info gauge\n"));
    }

    #[test]
    fn negotiation_follows_accept() {
        use Format::*;
        assert_eq!(Format::negotiate(None), PrometheusText);
        assert_eq!(Format::negotiate(Some("*/*")), PrometheusText);
        assert_eq!(
            Format::negotiate(Some("text/plain;version=0.0.4")),
            PrometheusText
        );
        // Prometheus 3's default scrape Accept header.
        let prom = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,\
                    application/openmetrics-text;version=0.0.1;q=0.4,\
                    text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,\
                    text/plain;version=0.0.4;q=0.2,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prom)), OpenMetrics);
        assert_eq!(
            Format::negotiate(Some("Application/OpenMetrics-Text; q=0")),
            PrometheusText
        );
    }
}
