//! Taps through the control plane (the dashboard's "recent requests"). A tap for a workload is
//! written to the store (`taps/ID`); every replica asks the workload's proxies connected to it
//! over their Discovery streams (the replica that took the request at once, the others when
//! they next look, within a second); each proxy answers with the requests it serves for a while,
//! in its telemetry reports; each replica publishes what its proxies sent (`tapped/ID/REPLICA`),
//! so that the tap reads the same through any replica. Kept ten minutes.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use meshgate_proto::meshgate::{TapAsk, Tapped};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::plane::{ControlPlane, ProxyRecord, unix_now};
use crate::store::{Store, StoreError};

/// How long a tap and its records are kept after it was asked.
const KEEP: Duration = Duration::from_secs(600);
/// Taps kept at most on one replica (the oldest go first).
const MAX_TAPS: usize = 64;
/// How often a replica looks for taps asked through others and publishes what it caught.
const SHARE_EVERY: Duration = Duration::from_secs(1);
/// Where taps are asked (`taps/ID`) and what each replica caught (`tapped/ID/REPLICA`).
const ASKS: &str = "taps";
const CAUGHT: &str = "tapped";

/// A tap as the store holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Ask {
    workload: String,
    seconds: u32,
    max: u32,
    /// Unix seconds when it was asked.
    at: u64,
}

impl Ask {
    fn over_at(&self) -> u64 {
        self.at + u64::from(self.seconds)
    }
}

#[derive(Debug)]
struct Caught {
    ask: Ask,
    records: Vec<Value>,
    /// Records came since they were last published.
    unpublished: bool,
}

/// The proxies of this replica that can be tapped, and what they caught.
#[derive(Debug, Default)]
pub struct Taps {
    streams: Mutex<HashMap<u64, (String, mpsc::Sender<TapAsk>)>>,
    caught: Mutex<HashMap<u64, Caught>>,
}

/// The name a proxy is tapped by: its Workload (`namespace/name`); a gateway, which has no
/// Workload, by its identity's namespace and service account, as the service graph names it.
pub fn tap_name(role: &str, identity: &str, workload: &str) -> String {
    match (role, meshgate_identity::SpiffeId::parse(identity).ok()) {
        ("gateway", Some(id)) => match id.workload() {
            Some((ns, sa)) => format!("{ns}/{sa}"),
            None => workload.to_string(),
        },
        _ => workload.to_string(),
    }
}

impl Taps {
    /// A proxy's stream (connection `conn`, tapped as `name`): where its taps come from.
    pub fn register(&self, conn: u64, name: &str) -> mpsc::Receiver<TapAsk> {
        let (tx, rx) = mpsc::channel(4);
        if let Ok(mut s) = self.streams.lock() {
            s.insert(conn, (name.to_string(), tx));
        }
        rx
    }

    /// The stream ended.
    pub fn unregister(&self, conn: u64) {
        if let Ok(mut s) = self.streams.lock() {
            s.remove(&conn);
        }
    }

    /// Takes tap `id` on: asks this replica's proxies of its workload for what is left of its
    /// time, and keeps what they send. Nothing when it is known already.
    fn take_on(&self, id: u64, ask: &Ask, now: u64) {
        let Ok(mut c) = self.caught.lock() else { return };
        if c.contains_key(&id) {
            return;
        }
        c.retain(|_, t| now.saturating_sub(t.ask.at) < KEEP.as_secs());
        while c.len() >= MAX_TAPS {
            let Some(oldest) = c.iter().min_by_key(|(_, t)| t.ask.at).map(|(k, _)| *k) else { break };
            c.remove(&oldest);
        }
        c.insert(id, Caught { ask: ask.clone(), records: Vec::new(), unpublished: false });
        drop(c);
        let left = ask.over_at().saturating_sub(now);
        if left == 0 {
            return;
        }
        let to_proxy = TapAsk { id, seconds: u32::try_from(left).unwrap_or(u32::MAX), max: ask.max };
        if let Ok(streams) = self.streams.lock() {
            for (_, tx) in streams.values().filter(|(w, _)| *w == ask.workload) {
                // A stream whose queue is full is busy with pushes: it misses this tap.
                let _ = tx.try_send(to_proxy);
            }
        }
    }

    /// Records a proxy sent for a tap.
    pub fn record(&self, tapped: &[Tapped]) {
        let Ok(mut c) = self.caught.lock() else { return };
        for t in tapped {
            if let Some(tap) = c.get_mut(&t.tap)
                && tap.records.len() < tap.ask.max as usize
                && let Ok(v) = serde_json::from_str::<Value>(&t.record)
            {
                tap.records.push(v);
                tap.unpublished = true;
            }
        }
    }

    /// This replica's records of taps that got new ones since the last call.
    fn unpublished(&self) -> Vec<(u64, Vec<Value>)> {
        let Ok(mut c) = self.caught.lock() else { return Vec::new() };
        c.iter_mut()
            .filter(|(_, t)| t.unpublished)
            .map(|(id, t)| {
                t.unpublished = false;
                (*id, t.records.clone())
            })
            .collect()
    }

    fn local(&self, id: u64) -> Option<(Ask, Vec<Value>)> {
        let c = self.caught.lock().ok()?;
        c.get(&id).map(|t| (t.ask.clone(), t.records.clone()))
    }
}

/// Why a tap was not started.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// No proxy of the workload is connected to any replica.
    #[error("no proxy of {0} is connected to the control plane")]
    NoProxy(String),
    /// The store could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Asks every proxy of `workload` (`namespace/name`), on every replica, for `seconds` of its
/// requests (at most `max`): the tap's id.
pub async fn start<S: Store>(cp: &ControlPlane<S>, workload: &str, seconds: u32, max: u32) -> Result<u64, TapError> {
    let proxies = cp.all_proxies().await?;
    let named = |p: &ProxyRecord| tap_name(&p.role, &p.identity, &p.workload) == workload;
    if !proxies.iter().any(named) {
        return Err(TapError::NoProxy(workload.to_string()));
    }
    // Random (not counted) so that ids taken through two replicas do not collide; below 2^53
    // so that a browser reads it exactly.
    let id = fastrand::u64(1..1 << 53);
    let now = unix_now();
    let ask = Ask { workload: workload.to_string(), seconds: seconds.clamp(1, 600), max: max.clamp(1, 1000), at: now };
    let bytes = serde_json::to_vec(&ask).map_err(|e| StoreError::Refused(e.to_string()))?;
    cp.store.put_blob(&format!("{ASKS}/{id}"), &bytes).await?;
    cp.taps.take_on(id, &ask, now);
    Ok(id)
}

/// What tap `id` caught so far on every replica, and whether it is over (its time passed, and
/// the last report that could carry records has had time to arrive and be published). `None`:
/// no such tap.
pub async fn read<S: Store>(cp: &ControlPlane<S>, id: u64) -> Result<Option<Value>, StoreError> {
    let (ask, mut records) = match cp.taps.local(id) {
        Some(known) => known,
        None => match cp.store.get_blob(&format!("{ASKS}/{id}")).await? {
            Some(bytes) => match serde_json::from_slice::<Ask>(&bytes) {
                Ok(ask) => (ask, Vec::new()),
                Err(_) => return Ok(None),
            },
            None => return Ok(None),
        },
    };
    for (replica, bytes) in cp.store.list_blobs(&format!("{CAUGHT}/{id}")).await? {
        if replica == cp.options.replica {
            continue;
        }
        if let Ok(theirs) = serde_json::from_slice::<Vec<Value>>(&bytes) {
            records.extend(theirs);
        }
    }
    records.truncate(ask.max as usize);
    let settle = meshgate_proxy::cp::REPORT_INTERVAL.as_secs() + 1 + SHARE_EVERY.as_secs();
    let done = unix_now() > ask.over_at() + settle;
    Ok(Some(json!({ "id": id, "workload": ask.workload, "done": done, "records": records })))
}

/// Takes on taps asked through other replicas and publishes what this replica's proxies caught,
/// every [`SHARE_EVERY`], until the task is dropped; removes taps older than [`KEEP`].
pub async fn share<S: Store>(cp: Arc<ControlPlane<S>>) {
    let mut tick = tokio::time::interval(SHARE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = share_once(&cp).await {
            tracing::debug!(error = %e, "cannot share taps through the store");
        }
    }
}

async fn share_once<S: Store>(cp: &ControlPlane<S>) -> Result<(), StoreError> {
    let now = unix_now();
    for (name, bytes) in cp.store.list_blobs(ASKS).await? {
        let (Ok(id), Ok(ask)) = (name.parse::<u64>(), serde_json::from_slice::<Ask>(&bytes)) else { continue };
        if now.saturating_sub(ask.at) >= KEEP.as_secs() {
            // Any replica may remove it and what every replica caught: of two, one takes each.
            for (replica, _) in cp.store.list_blobs(&format!("{CAUGHT}/{id}")).await? {
                cp.store.take_blob(&format!("{CAUGHT}/{id}/{replica}")).await?;
            }
            cp.store.take_blob(&format!("{ASKS}/{id}")).await?;
            continue;
        }
        cp.taps.take_on(id, &ask, now);
    }
    for (id, records) in cp.taps.unpublished() {
        let bytes = serde_json::to_vec(&records).map_err(|e| StoreError::Refused(e.to_string()))?;
        cp.store.put_blob(&format!("{CAUGHT}/{id}/{}", cp.options.replica), &bytes).await?;
    }
    Ok(())
}
