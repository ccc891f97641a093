//! The etcd store: resources as JSON under `/meshgate/resources/KIND/NAMESPACE/NAME`, the
//! control plane's state under `/meshgate/internal/`, over the etcd v3 gRPC API. Several
//! control-plane replicas share one etcd: a write through any reaches all through the watch.

use std::time::Duration;

use meshgate_api::{Loaded, Object, ObjectRef, Source};
use meshgate_proto::etcd::compare::{CompareResult, CompareTarget, TargetUnion};
use meshgate_proto::etcd::kv_client::KvClient;
use meshgate_proto::etcd::request_op::Request as Op;
use meshgate_proto::etcd::watch_client::WatchClient;
use meshgate_proto::etcd::watch_request::RequestUnion;
use meshgate_proto::etcd::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest, WatchRequest,
};
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

use super::{Store, StoreError, key_of};

/// An etcd cluster.
#[derive(Debug)]
pub struct EtcdStore {
    prefix: String,
    endpoints: Vec<String>,
    kv: KvClient<Channel>,
    changes: watch::Sender<u64>,
}

fn etcd_err(e: tonic::Status) -> StoreError {
    StoreError::Etcd(format!("{}: {}", e.code(), e.message()))
}

/// The end of the key range that starts with `prefix`.
fn range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl EtcdStore {
    /// Connects (lazily; requests fail with a clear error while etcd is unreachable) and
    /// starts watching.
    pub async fn connect(endpoints: Vec<String>, prefix: &str) -> Result<Self, StoreError> {
        let urls: Vec<Endpoint> = endpoints
            .iter()
            .map(|e| {
                let url = if e.contains("://") { e.clone() } else { format!("http://{e}") };
                Endpoint::from_shared(url)
                    .map(|ep| ep.connect_timeout(Duration::from_secs(3)).timeout(Duration::from_secs(10)))
                    .map_err(|err| StoreError::Refused(format!("bad etcd endpoint {e:?}: {err}")))
            })
            .collect::<Result<_, _>>()?;
        let channel = Channel::balance_list(urls.into_iter());
        let kv = KvClient::new(channel.clone());
        let (tx, _) = watch::channel(0u64);
        let store = EtcdStore { prefix: prefix.trim_end_matches('/').to_string(), endpoints, kv, changes: tx };
        let watch_prefix = format!("{}/resources/", store.prefix).into_bytes();
        let sender = store.changes.clone();
        tokio::spawn(watch_loop(channel, watch_prefix, sender));
        Ok(store)
    }

    fn resource_key(&self, id: &ObjectRef) -> String {
        format!("{}/resources/{}", self.prefix, key_of(id))
    }

    fn blob_key(&self, key: &str) -> String {
        format!("{}/internal/{key}", self.prefix)
    }
}

async fn watch_loop(channel: Channel, prefix: Vec<u8>, changes: watch::Sender<u64>) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let mut client = WatchClient::new(channel.clone());
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: prefix.clone(),
                range_end: range_end(&prefix),
                ..Default::default()
            })),
        };
        if tx.send(create).await.is_err() {
            return;
        }
        match client.watch(tokio_stream::wrappers::ReceiverStream::new(rx)).await {
            Ok(resp) => {
                // Whatever happened while not watching counts as a change.
                changes.send_modify(|v| *v += 1);
                backoff = Duration::from_millis(200);
                let mut stream = resp.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(w)) if !w.events.is_empty() => changes.send_modify(|v| *v += 1),
                        Ok(Some(w)) if w.canceled => break,
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => break,
                    }
                }
                drop(tx);
            }
            Err(e) => tracing::warn!(error = %e.message(), "etcd watch failed; retrying in {backoff:?}"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

impl Store for EtcdStore {
    async fn load(&self) -> Result<Loaded, StoreError> {
        let prefix = format!("{}/resources/", self.prefix).into_bytes();
        let resp = self
            .kv
            .clone()
            .range(RangeRequest { key: prefix.clone(), range_end: range_end(&prefix), ..Default::default() })
            .await
            .map_err(etcd_err)?
            .into_inner();
        let mut loaded = Loaded::default();
        for kv in resp.kvs {
            let key = String::from_utf8_lossy(&kv.key).into_owned();
            let source = Source { file: format!("etcd:{key}").into(), line: 0 };
            let value: serde_json::Value = match serde_json::from_slice(&kv.value) {
                Ok(v) => v,
                Err(e) => {
                    loaded.errors.push(meshgate_api::ConfigError::file(&source.file, format!("not JSON: {e}")));
                    continue;
                }
            };
            match meshgate_api::decode_document(&source, value) {
                Ok(objects) => loaded.objects.extend(objects),
                Err(errors) => loaded.errors.0.extend(errors.0),
            }
        }
        Ok(loaded)
    }

    async fn put(&self, object: &Object, json: &serde_json::Value) -> Result<(), StoreError> {
        let value = serde_json::to_vec(json).map_err(|e| StoreError::Refused(e.to_string()))?;
        self.kv
            .clone()
            .put(PutRequest { key: self.resource_key(&object.id).into_bytes(), value, ..Default::default() })
            .await
            .map_err(etcd_err)?;
        Ok(())
    }

    async fn delete(&self, id: &ObjectRef) -> Result<bool, StoreError> {
        let resp = self
            .kv
            .clone()
            .delete_range(DeleteRangeRequest { key: self.resource_key(id).into_bytes(), ..Default::default() })
            .await
            .map_err(etcd_err)?
            .into_inner();
        Ok(resp.deleted > 0)
    }

    async fn get_blob(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let resp = self
            .kv
            .clone()
            .range(RangeRequest { key: self.blob_key(key).into_bytes(), ..Default::default() })
            .await
            .map_err(etcd_err)?
            .into_inner();
        Ok(resp.kvs.into_iter().next().map(|kv| kv.value))
    }

    async fn put_blob(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.kv
            .clone()
            .put(PutRequest { key: self.blob_key(key).into_bytes(), value: value.to_vec(), ..Default::default() })
            .await
            .map_err(etcd_err)?;
        Ok(())
    }

    async fn create_blob(&self, key: &str, value: &[u8]) -> Result<bool, StoreError> {
        let k = self.blob_key(key).into_bytes();
        let txn = TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Create as i32,
                key: k.clone(),
                target_union: Some(TargetUnion::CreateRevision(0)),
                range_end: Vec::new(),
            }],
            success: vec![RequestOp {
                request: Some(Op::RequestPut(PutRequest { key: k, value: value.to_vec(), ..Default::default() })),
            }],
            failure: Vec::new(),
        };
        let resp = self.kv.clone().txn(txn).await.map_err(etcd_err)?.into_inner();
        Ok(resp.succeeded)
    }

    async fn take_blob(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let resp = self
            .kv
            .clone()
            .delete_range(DeleteRangeRequest {
                key: self.blob_key(key).into_bytes(),
                prev_kv: true,
                ..Default::default()
            })
            .await
            .map_err(etcd_err)?
            .into_inner();
        Ok(if resp.deleted == 1 { resp.prev_kvs.into_iter().next().map(|kv| kv.value) } else { None })
    }

    async fn list_blobs(&self, dir: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let prefix = format!("{}/", self.blob_key(dir.trim_end_matches('/'))).into_bytes();
        let resp = self
            .kv
            .clone()
            .range(RangeRequest { key: prefix.clone(), range_end: range_end(&prefix), ..Default::default() })
            .await
            .map_err(etcd_err)?
            .into_inner();
        Ok(resp
            .kvs
            .into_iter()
            .filter_map(|kv| {
                let name = String::from_utf8_lossy(kv.key.get(prefix.len()..)?).into_owned();
                (!name.contains('/')).then_some((name, kv.value))
            })
            .collect())
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn describe(&self) -> String {
        format!("etcd:{}", self.endpoints.join(","))
    }
}
