//! Where resources live: a directory of YAML files (the default, watched) or etcd (for more
//! than one machine and more than one control-plane replica). Both also keep the control
//! plane's own small state (CA material, join tokens) as blobs.

mod dir;
mod etcd;

use std::future::Future;

use meshgate_api::{Loaded, Object, ObjectRef};
use tokio::sync::watch;

pub use dir::DirStore;
pub use etcd::EtcdStore;

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// File system.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// etcd.
    #[error("etcd: {0}")]
    Etcd(String),
    /// A write the store refuses (with the reason a user can act on).
    #[error("{0}")]
    Refused(String),
}

/// The operations every store offers.
pub trait Store: Send + Sync + 'static {
    /// Every resource in the store, decoded; documents that do not decode come back as errors.
    fn load(&self) -> impl Future<Output = Result<Loaded, StoreError>> + Send;
    /// Creates or replaces one resource (`json` is the whole object).
    fn put(&self, object: &Object, json: &serde_json::Value) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Deletes one resource; false when it did not exist.
    fn delete(&self, id: &ObjectRef) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Reads an internal blob.
    fn get_blob(&self, key: &str) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;
    /// Writes an internal blob.
    fn put_blob(&self, key: &str, value: &[u8]) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Writes a blob only if absent; false when it already existed (first writer wins).
    fn create_blob(&self, key: &str, value: &[u8]) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Deletes a blob; true when this call deleted it (so a one-time token is used once).
    fn take_blob(&self, key: &str) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;
    /// Every blob under `dir` (one level: `dir/NAME`), as (NAME, value).
    fn list_blobs(&self, dir: &str) -> impl Future<Output = Result<Vec<(String, Vec<u8>)>, StoreError>> + Send;
    /// A counter that moves whenever the resources may have changed (here or elsewhere).
    fn changes(&self) -> watch::Receiver<u64>;
    /// Where it is, for logs.
    fn describe(&self) -> String;
}

/// A store chosen at run time.
#[derive(Debug)]
pub enum AnyStore {
    /// A directory.
    Dir(DirStore),
    /// etcd.
    Etcd(EtcdStore),
}

impl AnyStore {
    /// Opens `dir:PATH` or `etcd:HOST:PORT[,HOST:PORT...]`.
    pub async fn open(spec: &str) -> Result<Self, StoreError> {
        if let Some(path) = spec.strip_prefix("dir:") {
            return Ok(AnyStore::Dir(DirStore::open(path.into())?));
        }
        if let Some(endpoints) = spec.strip_prefix("etcd:") {
            let endpoints: Vec<String> = endpoints.split(',').map(str::to_string).collect();
            return Ok(AnyStore::Etcd(EtcdStore::connect(endpoints, "/meshgate").await?));
        }
        Err(StoreError::Refused(format!("unknown store {spec:?}: use dir:PATH or etcd:HOST:PORT[,HOST:PORT]")))
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            AnyStore::Dir($s) => $e,
            AnyStore::Etcd($s) => $e,
        }
    };
}

impl Store for AnyStore {
    async fn load(&self) -> Result<Loaded, StoreError> {
        delegate!(self, s => s.load().await)
    }
    async fn put(&self, object: &Object, json: &serde_json::Value) -> Result<(), StoreError> {
        delegate!(self, s => s.put(object, json).await)
    }
    async fn delete(&self, id: &ObjectRef) -> Result<bool, StoreError> {
        delegate!(self, s => s.delete(id).await)
    }
    async fn get_blob(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        delegate!(self, s => s.get_blob(key).await)
    }
    async fn put_blob(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        delegate!(self, s => s.put_blob(key, value).await)
    }
    async fn create_blob(&self, key: &str, value: &[u8]) -> Result<bool, StoreError> {
        delegate!(self, s => s.create_blob(key, value).await)
    }
    async fn take_blob(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        delegate!(self, s => s.take_blob(key).await)
    }
    async fn list_blobs(&self, dir: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        delegate!(self, s => s.list_blobs(dir).await)
    }
    fn changes(&self) -> watch::Receiver<u64> {
        delegate!(self, s => s.changes())
    }
    fn describe(&self) -> String {
        delegate!(self, s => s.describe())
    }
}

/// The key of a resource: `Kind/namespace/name` (`Kind/name` when cluster-scoped).
pub fn key_of(id: &ObjectRef) -> String {
    match &id.namespace {
        Some(ns) => format!("{}/{ns}/{}", id.kind, id.name),
        None => format!("{}/{}", id.kind, id.name),
    }
}
