use std::net::SocketAddr;

use meshgate_model::policy::{BackendPolicy, HashKey, Lb, Outlier, RetryPolicy};
use meshgate_model::rule::{Endpoint, ServiceBackend, UpstreamProtocol};

use super::*;
use crate::upstream::state::BackendState;

fn backend(n: usize, policy: BackendPolicy) -> BackendRt {
    let state = Arc::new(BackendState::default());
    let endpoints: Vec<Endpoint> = (0..n)
        .map(|i| Endpoint {
            addr: SocketAddr::from(([10, 0, 0, i as u8 + 1], 8080)),
            origin: String::new(),
            identity: None,
            workload: None,
        })
        .collect();
    backend_with(endpoints, policy, state)
}

fn backend_with(endpoints: Vec<Endpoint>, policy: BackendPolicy, state: Arc<BackendState>) -> BackendRt {
    let pools = endpoints
        .iter()
        .map(|e| {
            Arc::new(EndpointPool::new(
                e.addr,
                UpstreamProtocol::Http1,
                state.clone(),
                Duration::from_secs(1),
                Duration::from_secs(60),
            ))
        })
        .collect();
    let model = Arc::new(ServiceBackend {
        id: "ns/svc:80".into(),
        namespace: "ns".into(),
        name: "svc".into(),
        port: 80,
        protocol: UpstreamProtocol::Http1,
        endpoints,
        policy: Arc::new(policy),
        tls: None,
        slot: 0,
    });
    BackendRt::new(model, pools, state)
}

fn hashing() -> BackendPolicy {
    BackendPolicy { load_balancer: Lb::ConsistentHash(HashKey::SourceIp), ..BackendPolicy::default() }
}

#[tokio::test]
async fn consistent_hash_is_sticky_and_moves_few_keys() {
    let b = backend(5, hashing());
    let keys: Vec<u64> = (0..10_000u32).map(|k| fnv1a(&k.to_be_bytes(), 0)).collect();
    let before: Vec<SocketAddr> = keys.iter().map(|k| b.pick(Some(*k), None).unwrap().addr).collect();
    // The same key lands on the same endpoint every time.
    for (k, addr) in keys.iter().zip(&before).take(500) {
        assert_eq!(b.pick(Some(*k), None).unwrap().addr, *addr);
    }
    // Balanced within a few percent.
    for e in &b.endpoints {
        let share = before.iter().filter(|a| **a == e.addr).count();
        assert!((1700..=2300).contains(&share), "{} got {share}/10000", e.addr);
    }
    // Remove the third endpoint: only its keys (≈20%) should move, plus a little.
    let mut endpoints = b.model.endpoints.clone();
    let removed = endpoints.remove(2).addr;
    let smaller = backend_with(endpoints, hashing(), Arc::new(BackendState::default()));
    let after: Vec<SocketAddr> = keys.iter().map(|k| smaller.pick(Some(*k), None).unwrap().addr).collect();
    let moved_needlessly = before.iter().zip(&after).filter(|(b, a)| **b != removed && b != a).count();
    let stayed_share = before.iter().filter(|b| **b != removed).count();
    assert!(
        moved_needlessly * 100 < stayed_share * 3,
        "{moved_needlessly} of {stayed_share} keys moved although their endpoint stayed"
    );
}

#[tokio::test(start_paused = true)]
async fn outlier_ejection_and_return() {
    let outlier = Outlier {
        consecutive_5xx: 3,
        consecutive_gateway: 3,
        consecutive_connect: 3,
        base_ejection: Duration::from_secs(30),
        max_ejection: Duration::from_secs(300),
        max_ejection_percent: 50,
    };
    let b = backend(4, BackendPolicy { outlier: Some(outlier), load_balancer: Lb::RoundRobin, ..Default::default() });
    let bad = b.endpoints[1].clone();
    for _ in 0..2 {
        b.record(&bad, Outcome::GatewayError, Duration::from_millis(1));
    }
    assert!(!BackendRt::is_ejected(&bad));
    b.record(&bad, Outcome::GatewayError, Duration::from_millis(1));
    assert!(BackendRt::is_ejected(&bad));
    for _ in 0..400 {
        assert!(!Arc::ptr_eq(b.pick(None, None).unwrap(), &bad), "ejected endpoints get no traffic");
    }
    // A second and third failing endpoint: only two of four (50%) may be out at once.
    for e in [&b.endpoints[2], &b.endpoints[3]] {
        for _ in 0..3 {
            b.record(e, Outcome::ServerError, Duration::from_millis(1));
        }
    }
    assert!(BackendRt::is_ejected(&b.endpoints[2]));
    assert!(!BackendRt::is_ejected(&b.endpoints[3]), "max ejection percent caps ejections");
    // Back after the base ejection time; the second ejection lasts twice as long.
    tokio::time::advance(Duration::from_secs(31)).await;
    assert!(!BackendRt::is_ejected(&bad));
    for _ in 0..3 {
        b.record(&bad, Outcome::ConnectFailure, Duration::from_millis(1));
    }
    assert!(BackendRt::is_ejected(&bad));
    tokio::time::advance(Duration::from_secs(45)).await;
    assert!(BackendRt::is_ejected(&bad), "second ejection: 60s");
    tokio::time::advance(Duration::from_secs(16)).await;
    assert!(!BackendRt::is_ejected(&bad));
}

#[tokio::test(start_paused = true)]
async fn all_ejected_reports_when_the_first_returns() {
    let outlier = Outlier {
        consecutive_5xx: 1,
        consecutive_gateway: 1,
        consecutive_connect: 1,
        base_ejection: Duration::from_secs(10),
        max_ejection: Duration::from_secs(10),
        max_ejection_percent: 100,
    };
    let b = backend(2, BackendPolicy { outlier: Some(outlier), ..Default::default() });
    for e in b.endpoints.clone() {
        b.record(&e, Outcome::ServerError, Duration::from_millis(1));
    }
    match b.pick(None, None) {
        Err(NoEndpoint::AllEjected { total: 2, until }) => assert!(until > crate::clock::now_nanos()),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn least_request_prefers_the_fast_endpoint() {
    let b = backend(2, BackendPolicy::default());
    let (fast, slow) = (b.endpoints[0].clone(), b.endpoints[1].clone());
    let mut to_fast = 0;
    for _ in 0..2000 {
        let e = b.pick(None, None).unwrap().clone();
        let latency = if Arc::ptr_eq(&e, &fast) { Duration::from_millis(1) } else { Duration::from_millis(50) };
        if Arc::ptr_eq(&e, &fast) {
            to_fast += 1;
        }
        b.record(&e, Outcome::Success, latency);
        tokio::time::advance(Duration::from_millis(1)).await;
    }
    let _ = slow;
    assert!(to_fast > 1800, "{to_fast}/2000 to the fast endpoint");
}

/// A budget of `percent` of requests in flight, a floor of `floor` retries in flight and
/// `per_second` more each second.
fn budget(percent: f64, floor: u32, per_second: u32) -> RetryPolicy {
    RetryPolicy {
        budget_ratio: percent / 100.0,
        budget_min_concurrency: floor,
        budget_min_per_second: per_second,
        ..BackendPolicy::default().retry
    }
}

#[tokio::test(start_paused = true)]
async fn retry_budget_limits_retries_to_a_share_of_requests() {
    let state = Arc::new(BackendState::default());
    let active: Vec<_> = (0..100).map(|_| state.try_start(1000).unwrap()).collect();
    let mut granted = Vec::new();
    while let Some(g) = state.try_retry(&budget(20.0, 0, 0)) {
        granted.push(g);
        assert!(granted.len() <= 100);
    }
    assert_eq!(granted.len(), 20, "20% of 100 active requests");
    drop(granted);
    // The per-second allowance applies on top, and only that many per second.
    let _a = active;
    let mut extra = Vec::new();
    for _ in 0..20 {
        extra.push(state.try_retry(&budget(20.0, 0, 0)).unwrap());
    }
    let mut per_second = 0;
    while let Some(g) = state.try_retry(&budget(20.0, 0, 5)) {
        extra.push(g);
        per_second += 1;
        assert!(per_second <= 5);
    }
    assert_eq!(per_second, 5);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(state.try_retry(&budget(20.0, 0, 5)).is_some(), "a new second, a new allowance");
}

/// One request at a time, 30 a second, each needing one or two retries: the floor of three
/// retries in flight grants every one of them, second after second, whatever the share of one
/// request in flight and with no per-second allowance at all.
#[tokio::test(start_paused = true)]
async fn a_sequential_caller_gets_every_retry() {
    let state = Arc::new(BackendState::default());
    let policy = budget(20.0, 3, 0);
    for i in 0..300 {
        let _active = state.try_start(1000).unwrap();
        let first = state.try_retry(&policy).expect("first retry refused to a sequential caller");
        if i % 3 == 0 {
            let _second = state.try_retry(&policy).expect("second retry refused to a sequential caller");
        }
        drop(first);
        tokio::time::advance(Duration::from_millis(33)).await;
    }
}

/// 64 requests in flight, every one wanting a retry at once: the share (20% of 64: 12), then
/// the per-second allowance (10), then nothing until the next second; the floor changes
/// nothing at this concurrency.
#[tokio::test(start_paused = true)]
async fn many_concurrent_callers_are_capped_near_the_budget() {
    let state = Arc::new(BackendState::default());
    let policy = budget(20.0, 3, 10);
    let _active: Vec<_> = (0..64).map(|_| state.try_start(1000).unwrap()).collect();
    let mut granted = Vec::new();
    for _ in 0..64 {
        if let Some(g) = state.try_retry(&policy) {
            granted.push(g);
        }
    }
    assert_eq!(granted.len(), 12 + 10, "the share of 64 in flight plus one second's allowance");
    assert!(state.try_retry(&policy).is_none(), "the same second: nothing more");
    tokio::time::advance(Duration::from_millis(1100)).await;
    let more: Vec<_> = (0..64).filter_map(|_| state.try_retry(&policy)).collect();
    assert_eq!(more.len(), 10, "the next second's allowance only: the share is still taken");
}

#[tokio::test]
async fn request_limit_overflows() {
    let state = Arc::new(BackendState::default());
    let a = state.try_start(2).unwrap();
    let _b = state.try_start(2).unwrap();
    assert!(state.try_start(2).is_none());
    drop(a);
    assert!(state.try_start(2).is_some());
}
