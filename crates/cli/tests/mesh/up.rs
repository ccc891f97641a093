//! `meshgate up` driven as a user drives it: started with its output read in the background,
//! signalled, and checked to leave nothing behind.

use std::io::Read;
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use meshgate_testkit::TempDir;

use crate::harness::*;

pub(crate) const LAB_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/lab");
pub(crate) const LAB_PORTS: [u16; 5] = [8080, 15000, 15012, 15014, 15020];
/// What the command lines of the example applications contain (the lab's own, and those tests
/// start with `meshgate run`).
pub(crate) const APP_MARKERS: [&str; 2] = ["examples/lab/../apps/", "examples/apps/"];

/// A `meshgate up` with its output read in the background.
pub(crate) struct Up {
    pub(crate) child: Child,
    lines: Receiver<String>,
    pub(crate) seen: Vec<String>,
    pub(crate) state: TempDir,
}

impl Up {
    pub(crate) fn start(dir: &str, state: TempDir) -> Up {
        let mut child = meshgate()
            .arg("up")
            .arg("--dir")
            .arg(dir)
            .arg("--state-dir")
            .arg(state.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = std::sync::mpsc::channel::<String>();
        for stream in
            [Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>, Box::new(child.stderr.take().unwrap())]
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        Up { child, lines, seen: Vec::new(), state }
    }

    pub(crate) fn lab() -> Up {
        Up::start(LAB_DIR, TempDir::new("meshgate-lab"))
    }

    pub(crate) fn take_lines(&mut self) {
        self.seen.extend(self.lines.try_iter());
    }

    pub(crate) fn output(&mut self) -> String {
        self.take_lines();
        self.seen.join("\n")
    }

    /// Waits for a line starting with `prefix`.
    pub(crate) fn wait_line(&mut self, prefix: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.seen.iter().any(|l| l.starts_with(prefix)) {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!("no line {prefix:?} within {within:?}:\n{}", self.output()),
            }
        }
    }

    /// Signals `up` and checks that it stops within 10 s, leaving nothing behind.
    pub(crate) fn stop_with(mut self, signal: &str, what: &str) -> String {
        send_signal(self.child.id(), signal);
        let status = wait_exit(&mut self.child, Duration::from_secs(10), what);
        // Reader threads end with the process's pipes.
        std::thread::sleep(Duration::from_millis(50));
        let out = self.output();
        assert!(status.success(), "{what}: {status}\n{out}");
        assert_nothing_left(&self.state, what, &out);
        out
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            send_signal(self.child.id(), "INT");
            let _ = wait_exit(&mut self.child, Duration::from_secs(20), "the lab, stopped after a failed test");
        }
    }
}

/// Nothing of a lab is left: processes, namespaces, veths, leases, the bridge, ports.
pub(crate) fn assert_nothing_left(state: &TempDir, what: &str, out: &str) {
    assert_host_bare_within(Duration::from_secs(2), what);
    let marker = state.path().display().to_string();
    for m in std::iter::once(marker.as_str()).chain(APP_MARKERS) {
        let left = processes_with(m);
        assert!(left.is_empty(), "{what}: processes left: {left:?}\n{out}");
    }
    for port in LAB_PORTS {
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "{what}: port {port} is still listening\n{out}");
    }
}
