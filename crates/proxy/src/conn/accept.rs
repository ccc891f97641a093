//! Accepting connections: the one accept loop every listener runs, and the count of live
//! connections a drain waits for.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

/// Counts live connections so a drain can wait for them.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    pub(crate) live: AtomicUsize,
    idle: Notify,
}

pub(crate) struct Guard(Arc<Tracker>);

impl Tracker {
    pub(crate) fn guard(self: &Arc<Self>) -> Guard {
        self.live.fetch_add(1, Ordering::AcqRel);
        Guard(self.clone())
    }

    pub(crate) async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.live.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// The accept loop of every listener: accepts on `listener` until `stop` is true (also when it
/// already is, or when its sender is gone), and serves each connection (TCP_NODELAY set) on
/// its own task, counted by `tracker` until it ends. Accept errors (out of file descriptors
/// and the like) are logged and backed off instead of spun on. The listener closes on return.
pub(crate) async fn accept_until_stopped<F, Fut>(
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    tracker: &Arc<Tracker>,
    mut serve: F,
) where
    F: FnMut(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    while !*stop.borrow_and_update() {
        let accepted = tokio::select! {
            biased;
            changed = stop.changed() => match changed {
                Ok(()) => continue,
                Err(_) => break,
            },
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(addr = ?listener.local_addr().ok(), error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let guard = tracker.guard();
        let connection = serve(stream, peer);
        tokio::spawn(async move {
            let _guard = guard;
            connection.await;
        });
    }
}
