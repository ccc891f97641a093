//! Generated gRPC code: meshgate's control-plane API (`meshgate.v1`: Discovery, Identity) and
//! the part of etcd's v3 API the etcd store uses (`etcdserverpb`: KV, Watch, Lease).
#![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]

/// meshgate's control plane API.
pub mod meshgate {
    tonic::include_proto!("meshgate.v1");
}

/// etcd v3 (the subset used; field numbers as in etcd's rpc.proto and kv.proto).
pub mod etcd {
    tonic::include_proto!("etcdserverpb");
}
