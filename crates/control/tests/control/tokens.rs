//! Join tokens and certificate requests: one use, expiry, identity binding.

use std::time::Duration;

use meshgate_identity::TrustDomain;
use meshgate_proxy::cp::CpCertifier;
use meshgate_proxy::identity::{self, Certifier};

use crate::harness::{Cp, ports, tmp};

#[tokio::test]
async fn tokens_are_single_use_bound_and_expire() {
    let dir = tmp();
    let (g, h) = ports();
    let cp =
        Cp::start(&format!("dir:{}", dir.path().join("store").display()), &dir.path().join("state"), g, h, "a").await;
    let td = TrustDomain::new("cluster.local").unwrap();
    let order = td.workload_id("shop", "order").unwrap();
    let token = cp.token("shop", "order", 600).await;
    // First use: a certificate for exactly the bound identity.
    let c = CpCertifier::new(cp.target(), Some(token.clone()));
    let mesh = identity::bootstrap(c.as_ref(), &order).await.unwrap();
    assert_eq!(mesh.id(), order);
    // Replayed: refused.
    let replay = CpCertifier::new(cp.target(), Some(token));
    let err = identity::bootstrap(replay.as_ref(), &order).await.unwrap_err().to_string();
    assert!(err.contains("unknown or already used join token"), "{err}");
    // Bound to shop/order: a CSR for another identity is refused.
    let token = cp.token("shop", "order", 600).await;
    let thief = CpCertifier::new(cp.target(), Some(token));
    let admin = td.workload_id("shop", "admin").unwrap();
    let err = identity::bootstrap(thief.as_ref(), &admin).await.unwrap_err().to_string();
    assert!(err.contains("may only have spiffe://cluster.local/ns/shop/sa/order"), "{err}");
    // Expired.
    let token = cp.token("shop", "order", 1).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let late = CpCertifier::new(cp.target(), Some(token));
    let err = identity::bootstrap(late.as_ref(), &order).await.unwrap_err().to_string();
    assert!(err.contains("expired"), "{err}");
    // No token, no certificate: refused.
    let none = CpCertifier::new(cp.target(), None);
    let err = none.certify(&order, vec![1, 2, 3]).await.unwrap_err();
    assert!(err.contains("join token"), "{err}");
    // Renewal with the SVID (no token).
    c.set_mesh(mesh.clone());
    let renewed = identity::bootstrap(c.as_ref(), &order).await.unwrap();
    assert_eq!(renewed.id(), order);
    // Garbage CSR with a valid SVID: a clear refusal.
    let err = c.certify(&order, b"not a csr".to_vec()).await.unwrap_err();
    assert!(err.contains("invalid CSR"), "{err}");
}
