//! TrafficPolicy and FaultInjection checks: every number in a sane range, every duration
//! parseable, every combination meaningful.

use super::{Report, syntax};
use crate::policy::{FaultInjection, LoadBalancerType, TrafficPolicy};

fn duration(r: &mut Report, field: &str, value: Option<&String>) -> Option<std::time::Duration> {
    let v = value?;
    match syntax::gateway_duration(v) {
        Ok(d) => Some(d),
        Err(msg) => {
            r.add(field, msg);
            None
        }
    }
}

fn percent(r: &mut Report, field: &str, value: Option<f64>) {
    if let Some(p) = value
        && !(0.0..=100.0).contains(&p)
    {
        r.add(field, format!("must be 0..100, got {p}"));
    }
}

pub(super) fn traffic_policy(t: &TrafficPolicy, r: &mut Report) {
    let spec = &t.spec;
    if spec.target_refs.is_empty() {
        r.add("spec.targetRefs", "at least one target is required");
    }
    for (i, target) in spec.target_refs.iter().enumerate() {
        let at = format!("spec.targetRefs[{i}]");
        if !target.group.is_empty() || target.kind != "Service" {
            r.add(
                format!("{at}.kind"),
                format!("only core Services can be targeted, got {}/{}", target.group, target.kind),
            );
        }
        if let Err(msg) = syntax::dns_label(&target.name) {
            r.add(format!("{at}.name"), msg);
        }
        if let Some(p) = target.port {
            r.range(format!("{at}.port"), i64::from(p), 1, 65535);
        }
    }
    if let Some(lb) = &spec.load_balancer {
        let hashing = lb.type_ == Some(LoadBalancerType::ConsistentHash);
        match (&lb.consistent_hash, hashing) {
            (None, true) => r.add("spec.loadBalancer.consistentHash", "required when type is ConsistentHash"),
            (Some(_), false) => r.add("spec.loadBalancer.consistentHash", "only meaningful with type ConsistentHash"),
            (Some(h), true) => {
                let keys = usize::from(h.header.is_some())
                    + usize::from(h.cookie.is_some())
                    + usize::from(h.source_ip == Some(true));
                if keys != 1 {
                    r.add("spec.loadBalancer.consistentHash", "set exactly one of header, cookie, sourceIP: true");
                }
                if let Some(name) = &h.header
                    && let Err(msg) = syntax::header_name(name)
                {
                    r.add("spec.loadBalancer.consistentHash.header", msg);
                }
                if let Some(name) = &h.cookie
                    && let Err(msg) = syntax::header_name(name)
                {
                    r.add("spec.loadBalancer.consistentHash.cookie", msg.replace("header name", "cookie name"));
                }
            }
            (None, false) => {}
        }
    }
    if let Some(to) = &spec.timeouts {
        let request = duration(r, "spec.timeouts.request", to.request.as_ref());
        let per_try = duration(r, "spec.timeouts.perTry", to.per_try.as_ref());
        if let Some(c) = duration(r, "spec.timeouts.connect", to.connect.as_ref())
            && c.is_zero()
        {
            r.add("spec.timeouts.connect", "must be above 0s");
        }
        duration(r, "spec.timeouts.idle", to.idle.as_ref());
        if let (Some(req), Some(pt)) = (request, per_try)
            && !req.is_zero()
            && pt > req
        {
            r.add("spec.timeouts.perTry", "must not exceed timeouts.request");
        }
    }
    if let Some(retry) = &spec.retry {
        if let Some(n) = retry.attempts {
            r.range("spec.retry.attempts", n, 0, 10);
        }
        for (i, code) in retry.codes.iter().flatten().enumerate() {
            r.range(format!("spec.retry.codes[{i}]"), *code, 400, 599);
        }
        if let Some(b) = duration(r, "spec.retry.backoff", retry.backoff.as_ref())
            && b > std::time::Duration::from_secs(60)
        {
            r.add("spec.retry.backoff", "must be at most 60s");
        }
        if let Some(n) = retry.max_body_bytes {
            r.range("spec.retry.maxBodyBytes", n, 0, 16 << 20);
        }
        if let Some(b) = &retry.budget {
            percent(r, "spec.retry.budget.percent", b.percent);
            if let Some(n) = b.min_retries_per_second {
                r.range("spec.retry.budget.minRetriesPerSecond", n, 0, 100_000);
            }
            if let Some(n) = b.min_retry_concurrency {
                r.range("spec.retry.budget.minRetryConcurrency", n, 0, 100_000);
            }
        }
    }
    if let Some(l) = &spec.connection_limits {
        for (field, v) in [
            ("maxConnections", l.max_connections),
            ("maxPendingRequests", l.max_pending_requests),
            ("maxRequests", l.max_requests),
        ] {
            if let Some(v) = v {
                r.range(format!("spec.connectionLimits.{field}"), v, 1, 1_000_000);
            }
        }
    }
    if let Some(o) = &spec.outlier_detection {
        for (field, v) in [
            ("consecutive5xx", o.consecutive_5xx),
            ("consecutiveGatewayErrors", o.consecutive_gateway_errors),
            ("consecutiveConnectFailures", o.consecutive_connect_failures),
        ] {
            if let Some(v) = v {
                r.range(format!("spec.outlierDetection.{field}"), v, 0, 1000);
            }
        }
        let base = duration(r, "spec.outlierDetection.baseEjectionTime", o.base_ejection_time.as_ref());
        let max = duration(r, "spec.outlierDetection.maxEjectionTime", o.max_ejection_time.as_ref());
        if base.is_some_and(|b| b.is_zero()) {
            r.add("spec.outlierDetection.baseEjectionTime", "must be above 0s");
        }
        if let (Some(b), Some(m)) = (base, max)
            && m < b
        {
            r.add("spec.outlierDetection.maxEjectionTime", "must not be below baseEjectionTime");
        }
        if let Some(p) = o.max_ejection_percent {
            r.range("spec.outlierDetection.maxEjectionPercent", p, 0, 100);
        }
    }
}

pub(super) fn fault_injection(f: &FaultInjection, r: &mut Report) {
    if f.spec.delay.is_none() && f.spec.abort.is_none() {
        r.add("spec", "set delay, abort or both");
    }
    if let Some(d) = &f.spec.delay {
        if let Some(t) = duration(r, "spec.delay.fixedDelay", Some(&d.fixed_delay))
            && t > std::time::Duration::from_secs(3600)
        {
            r.add("spec.delay.fixedDelay", "must be at most 1h");
        }
        percent(r, "spec.delay.percentage", d.percentage);
    }
    if let Some(a) = &f.spec.abort {
        r.range("spec.abort.httpStatus", a.http_status, 200, 599);
        percent(r, "spec.abort.percentage", a.percentage);
    }
}

pub(super) fn http_route_filter(f: &crate::policy::HttpRouteFilter, r: &mut Report) {
    let s = &f.spec;
    if s.url_rewrite.is_none()
        && s.max_request_body_bytes.is_none()
        && s.allowed_source_ranges.is_none()
        && s.backend_protocol.is_none()
    {
        r.add("spec", "set urlRewrite, maxRequestBodyBytes, allowedSourceRanges or backendProtocol");
    }
    if let Some(u) = &s.url_rewrite {
        if u.path.r#type != "ReplaceRegexMatch" {
            r.add("spec.urlRewrite.path.type", format!("must be ReplaceRegexMatch, got {:?}", u.path.r#type));
        }
        match &u.path.replace_regex_match {
            None => r.add("spec.urlRewrite.path.replaceRegexMatch", "required with type ReplaceRegexMatch"),
            Some(m) => {
                if let Err(e) = super::syntax::regex(&m.pattern) {
                    r.add("spec.urlRewrite.path.replaceRegexMatch.pattern", e);
                }
                if !m.substitution.starts_with('/') {
                    r.add("spec.urlRewrite.path.replaceRegexMatch.substitution", "must start with /");
                }
            }
        }
    }
    for (i, range) in s.allowed_source_ranges.iter().flatten().enumerate() {
        if let Err(e) = super::syntax::cidr(range) {
            r.add(format!("spec.allowedSourceRanges[{i}]"), e);
        }
    }
    if let Some(p) = &s.backend_protocol
        && !matches!(p.as_str(), "HTTP1" | "HTTP2")
    {
        r.add("spec.backendProtocol", format!("must be HTTP1 or HTTP2, got {p:?}"));
    }
}

pub(super) fn listener_policy(l: &crate::policy::ListenerPolicy, r: &mut Report) {
    if l.spec.target_refs.is_empty() {
        r.add("spec.targetRefs", "at least one Gateway");
    }
    for (i, t) in l.spec.target_refs.iter().enumerate() {
        let at = format!("spec.targetRefs[{i}]");
        if t.group != crate::GATEWAY_GROUP || t.kind != "Gateway" {
            r.add(
                at.clone(),
                format!("must be a Gateway (group {}), got {}/{}", crate::GATEWAY_GROUP, t.group, t.kind),
            );
        }
        if t.name.is_empty() {
            r.add(format!("{at}.name"), "required");
        }
    }
    if let Some(t) = &l.spec.header_timeout {
        duration(r, "spec.headerTimeout", Some(t));
    }
    if let Some(t) = &l.spec.idle_timeout {
        duration(r, "spec.idleTimeout", Some(t));
    }
    if l.spec.max_connections == Some(0) {
        r.add("spec.maxConnections", "must be at least 1");
    }
}
