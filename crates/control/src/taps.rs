//! Taps through the control plane (the dashboard's "recent requests"): a tap for a workload is
//! asked of each of its proxies connected to this replica over their Discovery streams; each
//! answers with the requests it serves for a while, in its telemetry reports; the records are
//! kept here for the dashboard to read, for ten minutes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use meshgate_proto::meshgate::{TapAsk, Tapped};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// How long a tap's records are kept after it was asked.
const KEEP: Duration = Duration::from_secs(600);
/// Taps kept at most (the oldest go first).
const MAX_TAPS: usize = 64;

#[derive(Debug)]
struct Caught {
    workload: String,
    asked: Instant,
    until: Instant,
    max: usize,
    records: Vec<Value>,
}

/// The proxies that can be tapped, and what taps caught.
#[derive(Debug, Default)]
pub struct Taps {
    streams: Mutex<HashMap<u64, (String, mpsc::Sender<TapAsk>)>>,
    caught: Mutex<HashMap<u64, Caught>>,
    next: AtomicU64,
}

impl Taps {
    /// A proxy's stream (connection `conn`, serving `workload`): where its taps come from.
    pub fn register(&self, conn: u64, workload: &str) -> mpsc::Receiver<TapAsk> {
        let (tx, rx) = mpsc::channel(4);
        if let Ok(mut s) = self.streams.lock() {
            s.insert(conn, (workload.to_string(), tx));
        }
        rx
    }

    /// The stream ended.
    pub fn unregister(&self, conn: u64) {
        if let Ok(mut s) = self.streams.lock() {
            s.remove(&conn);
        }
    }

    /// Asks every proxy of `workload` (`namespace/name`) on this replica for `seconds` of its
    /// requests (at most `max`): the tap's id, or why there is none.
    pub fn start(&self, workload: &str, seconds: u32, max: u32) -> Result<u64, String> {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let ask = TapAsk { id, seconds: seconds.clamp(1, 600), max: max.clamp(1, 1000) };
        let mut asked = 0;
        if let Ok(streams) = self.streams.lock() {
            for (_, tx) in streams.values().filter(|(w, _)| w == workload) {
                asked += usize::from(tx.try_send(ask).is_ok());
            }
        }
        if asked == 0 {
            return Err(format!("no proxy of Workload {workload} is connected to this control-plane replica"));
        }
        let now = Instant::now();
        if let Ok(mut c) = self.caught.lock() {
            c.retain(|_, t| now.duration_since(t.asked) < KEEP);
            while c.len() >= MAX_TAPS {
                let Some(oldest) = c.iter().min_by_key(|(_, t)| t.asked).map(|(k, _)| *k) else { break };
                c.remove(&oldest);
            }
            let until = now + Duration::from_secs(u64::from(ask.seconds));
            let caught = Caught {
                workload: workload.to_string(),
                asked: now,
                until,
                max: ask.max as usize,
                records: Vec::new(),
            };
            c.insert(id, caught);
        }
        Ok(id)
    }

    /// Records a proxy sent for a tap.
    pub fn record(&self, tapped: &[Tapped]) {
        let Ok(mut c) = self.caught.lock() else { return };
        for t in tapped {
            if let Some(tap) = c.get_mut(&t.tap)
                && tap.records.len() < tap.max
                && let Ok(v) = serde_json::from_str::<Value>(&t.record)
            {
                tap.records.push(v);
            }
        }
    }

    /// What tap `id` caught so far, and whether it is over (its time passed, and the last
    /// report that could carry records has had time to arrive).
    pub fn get(&self, id: u64) -> Option<Value> {
        let c = self.caught.lock().ok()?;
        let t = c.get(&id)?;
        let done = Instant::now() > t.until + meshgate_proxy::cp::REPORT_INTERVAL + Duration::from_secs(1);
        Some(json!({ "id": id, "workload": t.workload, "done": done, "records": t.records }))
    }
}
