//! GRPCRoute with a real gRPC client and servers (tonic, etcd's KV service as the example
//! API): service and method matches, Exact and RegularExpression; header matches; header
//! modifiers; weights; HTTP/2 to backends whose Service says nothing of it; and every error the
//! proxy produces reaches the client as a gRPC status.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use meshgate_proto::etcd::kv_client::KvClient;
use meshgate_proto::etcd::kv_server::{Kv, KvServer};
use meshgate_proto::etcd::{
    DeleteRangeRequest, DeleteRangeResponse, KeyValue, PutRequest, PutResponse, RangeRequest, RangeResponse,
    TxnRequest, TxnResponse,
};
use tonic::{Code, Request, Response, Status};

use crate::harness::{Mesh, gateway, service_yaml};

/// A KV server that answers Range with its name and the `x-tenant` / `x-added` metadata it
/// saw, and counts its calls.
pub(crate) struct Named {
    name: &'static str,
    calls: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl Kv for Named {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let meta = |k: &str| req.metadata().get(k).and_then(|v| v.to_str().ok()).unwrap_or("-").to_string();
        let value = format!("{} tenant={} added={}", self.name, meta("x-tenant"), meta("x-added"));
        let kvs = vec![KeyValue { key: req.into_inner().key, value: value.into_bytes(), ..Default::default() }];
        Ok(Response::new(RangeResponse { kvs, count: 1, ..Default::default() }))
    }
    async fn put(&self, _: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut r = Response::new(PutResponse::default());
        r.metadata_mut().insert("x-served-by", self.name.parse().unwrap());
        Ok(r)
    }
    async fn delete_range(&self, _: Request<DeleteRangeRequest>) -> Result<Response<DeleteRangeResponse>, Status> {
        Err(Status::failed_precondition(format!("{} keeps everything", self.name)))
    }
    async fn txn(&self, _: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        Err(Status::unimplemented("no transactions"))
    }
}

pub(crate) async fn server(name: &'static str) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = KvServer::new(Named { name, calls: calls.clone() });
    tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let _ = tonic::transport::Server::builder().add_service(svc).serve_with_incoming(incoming).await;
    });
    (addr, calls)
}

const ROUTES: &str = r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: kv, namespace: infra}
spec:
  parentRefs: [{name: gw}]
  hostnames: [kv.example.com]
  rules:
  - matches: [{method: {service: etcdserverpb.KV, method: Range}, headers: [{name: x-mirror, value: "yes"}]}]
    filters:
    - type: RequestMirror
      requestMirror: {backendRef: {name: kv-b, port: 8080}}
    backendRefs: [{name: kv-a, port: 8080}]
  - matches: [{method: {service: etcdserverpb.KV, method: Range}, headers: [{name: x-tenant, value: blue}]}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-added, value: by-gateway}]}
    backendRefs: [{name: kv-blue, port: 8080}]
  - matches: [{method: {service: etcdserverpb.KV, method: Range}}]
    backendRefs: [{name: kv-a, port: 8080, weight: 1}, {name: kv-b, port: 8080, weight: 1}]
  - matches: [{method: {type: RegularExpression, service: "etcdserverpb\\.K.", method: "(Put|DeleteRange)"}}]
    filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier: {add: [{name: x-route, value: writes}]}
    backendRefs: [{name: kv-a, port: 8080}]
  - matches: [{method: {service: etcdserverpb.KV, method: Txn}}]
    backendRefs: [{name: kv-empty, port: 8080}]
"#;

async fn lab() -> (Mesh, HashMap<&'static str, Arc<AtomicUsize>>) {
    let mut yaml = gateway("gw") + ROUTES;
    let mut calls = HashMap::new();
    for name in ["kv-a", "kv-b", "kv-blue"] {
        let (addr, n) = server(name).await;
        // No appProtocol: the GRPCRoute alone says these speak HTTP/2.
        yaml += &service_yaml("infra", name, addr, None);
        calls.insert(name, n);
    }
    yaml += "---\napiVersion: v1\nkind: Service\nmetadata: {name: kv-empty, namespace: infra}\nspec:\n  ports: [{name: grpc, port: 8080}]\n";
    (Mesh::start_raw(&yaml).await, calls)
}

async fn client(m: &Mesh) -> KvClient<tonic::transport::Channel> {
    // The authority the calls carry, on the gateway's address.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", m.addr()))
        .unwrap()
        .origin("http://kv.example.com".parse().unwrap())
        .connect()
        .await
        .unwrap();
    KvClient::new(channel)
}

fn value(r: &RangeResponse) -> String {
    String::from_utf8_lossy(&r.kvs[0].value).into_owned()
}

#[tokio::test]
async fn grpc_routes_match_service_method_and_headers_and_split_by_weight() {
    let (m, calls) = lab().await;
    let mut kv = client(&m).await;
    // Header match first, with the request header filter applied.
    let mut req = Request::new(RangeRequest { key: b"k".to_vec(), ..Default::default() });
    req.metadata_mut().insert("x-tenant", "blue".parse().unwrap());
    let r = kv.range(req).await.unwrap().into_inner();
    assert_eq!(value(&r), "kv-blue tenant=blue added=by-gateway");
    // The same method without the header: split 1:1.
    for _ in 0..40 {
        let r = kv.range(RangeRequest { key: b"k".to_vec(), ..Default::default() }).await.unwrap().into_inner();
        assert!(value(&r).starts_with("kv-a ") || value(&r).starts_with("kv-b "), "{}", value(&r));
    }
    let (a, b) = (calls["kv-a"].load(Ordering::Relaxed), calls["kv-b"].load(Ordering::Relaxed));
    assert!(a >= 8 && b >= 8 && a + b == 40, "kv-a {a}, kv-b {b}");
    // Regular expressions over service and method, a response header added.
    let put = kv.put(PutRequest { key: b"k".to_vec(), value: b"v".to_vec(), ..Default::default() }).await.unwrap();
    assert_eq!(put.metadata().get("x-served-by").unwrap(), "kv-a");
    assert_eq!(put.metadata().get("x-route").unwrap(), "writes");
    // An upstream's own gRPC error passes through as it is.
    let e = kv.delete_range(DeleteRangeRequest::default()).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::FailedPrecondition, "kv-a keeps everything"));
}

#[tokio::test]
async fn a_mirrored_grpc_call_reaches_the_mirror_and_the_caller_gets_the_primary_answer() {
    let (m, calls) = lab().await;
    let mut kv = client(&m).await;
    for _ in 0..5 {
        let mut req = Request::new(RangeRequest { key: b"k".to_vec(), ..Default::default() });
        req.metadata_mut().insert("x-mirror", "yes".parse().unwrap());
        let r = kv.range(req).await.unwrap().into_inner();
        assert!(value(&r).starts_with("kv-a "), "{}", value(&r));
    }
    for _ in 0..100 {
        if calls["kv-b"].load(Ordering::Relaxed) == 5 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(calls["kv-a"].load(Ordering::Relaxed), 5);
    assert_eq!(calls["kv-b"].load(Ordering::Relaxed), 5, "every call mirrored, over HTTP/2");
}

#[tokio::test]
async fn errors_the_proxy_produces_are_grpc_statuses() {
    let (m, _) = lab().await;
    let mut kv = client(&m).await;
    // No endpoint behind the rule's Service: UNAVAILABLE, with the proxy's reason.
    let e = kv.txn(TxnRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("kv-empty"), "{e:?}");
    assert_eq!(e.metadata().get("x-meshgate-flags").map(|v| v.to_str().unwrap()), Some("UH"));
    // No route for the method (here: a host no GRPCRoute serves): UNIMPLEMENTED.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", m.addr()))
        .unwrap()
        .origin("http://other.example.com".parse().unwrap())
        .connect()
        .await
        .unwrap();
    let e = KvClient::new(channel).range(RangeRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented, "{e:?}");
    assert!(e.message().contains("no route"), "{e:?}");
}
