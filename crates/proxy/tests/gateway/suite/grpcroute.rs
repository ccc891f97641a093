//! The GRPCRoute tests of GATEWAY-GRPC core. Upstream's echo service (`GrpcEcho`, methods
//! `Echo`, `EchoTwo`, `EchoThree`) is played by etcd's KV service, a gRPC service these tests
//! already build: `Echo` is `Range` (answered with the backend's name), `EchoTwo` is `Put`
//! (the backend's name in `x-served-by`), `EchoThree` is `DeleteRange`.

use meshgate_api::Kind;
use meshgate_proto::etcd::kv_client::KvClient;
use meshgate_proto::etcd::{DeleteRangeRequest, PutRequest, RangeRequest};
use tonic::{Code, Request};

use super::{INFRA, Suite, must_have};
use crate::harness::service_yaml;

const SERVICE: &str = "etcdserverpb.KV";
const V1: &str = "grpc-infra-backend-v1";
const V2: &str = "grpc-infra-backend-v2";
const V3: &str = "grpc-infra-backend-v3";

/// The suite with the three gRPC backends of upstream's base and `yaml`.
async fn start(yaml: &str) -> Suite {
    let mut services = String::new();
    for name in [V1, V2, V3] {
        let (addr, _) = crate::grpc::server(name).await;
        services += &service_yaml(INFRA, name, addr, Some("kubernetes.io/h2c"));
    }
    Suite::start(&(services + yaml)).await
}

fn route(name: &str, spec: &str) -> String {
    format!(
        "\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: {name}, namespace: {INFRA}}}\nspec:\n{spec}\n"
    )
}

async fn client(s: &Suite, gateway: &str, authority: &str) -> KvClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", s.addr(gateway, 80)))
        .unwrap()
        .origin(format!("http://{authority}").parse().unwrap())
        .connect()
        .await
        .unwrap();
    KvClient::new(channel)
}

/// `Echo` with `metadata`: the backend that answered, or the gRPC code.
async fn echo(kv: &mut KvClient<tonic::transport::Channel>, metadata: &[(&'static str, &str)]) -> Result<String, Code> {
    let mut req = Request::new(RangeRequest { key: b"k".to_vec(), ..Default::default() });
    for (k, v) in metadata {
        req.metadata_mut().insert(*k, v.parse().unwrap());
    }
    match kv.range(req).await {
        Ok(r) => Ok(String::from_utf8_lossy(&r.into_inner().kvs[0].value).split(' ').next().unwrap_or("").to_string()),
        Err(e) => Err(e.code()),
    }
}

/// `EchoTwo`: the backend that answered, or the gRPC code.
async fn echo_two(kv: &mut KvClient<tonic::transport::Channel>) -> Result<String, Code> {
    match kv.put(PutRequest::default()).await {
        Ok(r) => Ok(r.metadata().get("x-served-by").and_then(|v| v.to_str().ok()).unwrap_or("").to_string()),
        Err(e) => Err(e.code()),
    }
}

fn accepted(s: &Suite, name: &str, gateway: &str) {
    let p = s.parent(Kind::GrpcRoute, INFRA, name, gateway).unwrap_or_else(|| panic!("{name}: no parent {gateway}"));
    must_have(&p, "Accepted", true, "Accepted");
    must_have(&p, "ResolvedRefs", true, "ResolvedRefs");
}

#[tokio::test]
async fn grpc_exact_method_matching() {
    let yaml = route(
        "exact-matching",
        &format!(
            "  parentRefs: [{{name: same-namespace}}]\n  rules:\n  - matches: [{{method: {{service: {SERVICE}, method: Range}}}}]\n    backendRefs: [{{name: {V1}, port: 8080}}]\n  - matches: [{{method: {{service: {SERVICE}, method: Put}}}}]\n    backendRefs: [{{name: {V2}, port: 8080}}]"
        ),
    );
    let s = start(&yaml).await;
    accepted(&s, "exact-matching", "same-namespace");
    let mut kv = client(&s, "same-namespace", "any").await;
    assert_eq!(echo(&mut kv, &[]).await, Ok(V1.to_string()));
    assert_eq!(echo_two(&mut kv).await, Ok(V2.to_string()));
    let three = kv.delete_range(DeleteRangeRequest::default()).await.unwrap_err();
    assert_eq!(three.code(), Code::Unimplemented, "{three:?}");
}

#[tokio::test]
async fn grpc_route_header_matching() {
    let rule = |headers: &str, backend: &str| {
        format!("  - matches: [{headers}]\n    backendRefs: [{{name: {backend}, port: 8080}}]\n")
    };
    let rules = [
        rule("{headers: [{name: version, value: one}]}", V1),
        rule("{headers: [{name: version, value: two}]}", V2),
        rule("{headers: [{name: version, value: two}, {name: color, value: orange}]}", V1),
        rule("{headers: [{name: color, value: blue}]}, {headers: [{name: color, value: green}]}", V1),
        rule("{headers: [{name: color, value: red}]}, {headers: [{name: color, value: yellow}]}", V2),
    ]
    .concat();
    let s = start(&route(
        "grpc-header-matching",
        &format!("  parentRefs: [{{name: same-namespace}}]\n  rules:\n{}", rules.trim_end()),
    ))
    .await;
    accepted(&s, "grpc-header-matching", "same-namespace");
    let mut kv = client(&s, "same-namespace", "any").await;
    let cases: [(&[(&'static str, &str)], Result<&str, Code>); 11] = [
        (&[("version", "one")], Ok(V1)),
        (&[("version", "two")], Ok(V2)),
        (&[("version", "two"), ("color", "orange")], Ok(V1)),
        (&[("version", "two"), ("color", "blue")], Ok(V2)),
        (&[("color", "orange")], Err(Code::Unimplemented)),
        (&[("some-other-header", "one")], Err(Code::Unimplemented)),
        (&[("color", "blue")], Ok(V1)),
        (&[("color", "green")], Ok(V1)),
        (&[("color", "red")], Ok(V2)),
        (&[("color", "yellow")], Ok(V2)),
        (&[("color", "purple")], Err(Code::Unimplemented)),
    ];
    for (metadata, want) in cases {
        assert_eq!(echo(&mut kv, metadata).await, want.map(str::to_string), "{metadata:?}");
    }
}

#[tokio::test]
async fn grpc_route_listener_hostname_matching() {
    let gw = super::hostname_matching_gateway("grpcroute-listener-hostname-matching");
    let g = "grpcroute-listener-hostname-matching";
    let r = |name: &str, sections: &[&str], backend: &str| {
        let parents: Vec<String> = sections.iter().map(|s| format!("{{name: {g}, sectionName: {s}}}")).collect();
        route(
            name,
            &format!(
                "  parentRefs: [{}]\n  rules: [{{backendRefs: [{{name: {backend}, port: 8080}}]}}]",
                parents.join(", ")
            ),
        )
    };
    let yaml = gw
        + &r("backend-v1", &["listener-1"], V1)
        + &r("backend-v2", &["listener-2"], V2)
        + &r("backend-v3", &["listener-3", "listener-4"], V3);
    let s = start(&yaml).await;
    for (authority, want) in [
        ("bar.com", Ok(V1)),
        ("foo.bar.com", Ok(V2)),
        ("baz.bar.com", Ok(V3)),
        ("boo.bar.com", Ok(V3)),
        ("multiple.prefixes.bar.com", Ok(V3)),
        ("multiple.prefixes.foo.com", Ok(V3)),
        ("foo.com", Err(Code::Unimplemented)),
        ("no.matching.host", Err(Code::Unimplemented)),
    ] {
        let mut kv = client(&s, g, authority).await;
        assert_eq!(echo(&mut kv, &[]).await, want.map(str::to_string), "{authority}");
    }
}

#[tokio::test]
async fn grpc_route_weight() {
    let yaml = route(
        "weighted-backends",
        &format!(
            "  parentRefs: [{{name: same-namespace}}]\n  rules: [{{backendRefs: [{{name: {V1}, port: 8080, weight: 70}}, {{name: {V2}, port: 8080, weight: 30}}, {{name: {V3}, port: 8080, weight: 0}}]}}]"
        ),
    );
    let s = start(&yaml).await;
    accepted(&s, "weighted-backends", "same-namespace");
    let s = &s;
    let round = || async move {
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let mut kv = client(s, "same-namespace", "any").await;
            tasks.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..50 {
                    seen.push(echo(&mut kv, &[]).await.unwrap());
                }
                seen
            }));
        }
        tasks
    };
    super::assert_split(round, V1, V2).await;
}

#[tokio::test]
async fn grpc_route_multiple_gateways() {
    let to = |method: &str, backend: &str| {
        format!(
            "  - matches: [{{method: {{service: {SERVICE}, method: {method}}}}}]\n    backendRefs: [{{name: {backend}, port: 8080}}]"
        )
    };
    let yaml = route(
        "multiple-gateways-shared-route",
        &format!("  parentRefs: [{{name: same-namespace}}, {{name: all-namespaces}}]\n  rules:\n{}", to("Range", V1)),
    ) + &route(
        "same-namespace-dedicated-route",
        &format!("  parentRefs: [{{name: same-namespace}}]\n  rules:\n{}", to("Put", V2)),
    ) + &route(
        "all-namespaces-dedicated-route",
        &format!("  parentRefs: [{{name: all-namespaces}}]\n  rules:\n{}", to("Put", V3)),
    );
    let s = start(&yaml).await;
    for (gw, two) in [("same-namespace", V2), ("all-namespaces", V3)] {
        accepted(&s, "multiple-gateways-shared-route", gw);
        let mut kv = client(&s, gw, "any").await;
        assert_eq!(echo(&mut kv, &[]).await, Ok(V1.to_string()), "{gw}");
        assert_eq!(echo_two(&mut kv).await, Ok(two.to_string()), "{gw}");
    }
}

#[tokio::test]
async fn grpc_route_all_backends_weight_zero() {
    let yaml = route(
        "all-backends-weight-zero",
        &format!(
            "  parentRefs: [{{name: same-namespace}}]\n  rules: [{{backendRefs: [{{name: {V1}, port: 8080, weight: 0}}, {{name: {V2}, port: 8080, weight: 0}}]}}]"
        ),
    );
    let s = start(&yaml).await;
    accepted(&s, "all-backends-weight-zero", "same-namespace");
    let mut kv = client(&s, "same-namespace", "any").await;
    assert_eq!(echo(&mut kv, &[]).await, Err(Code::Unavailable));
}
