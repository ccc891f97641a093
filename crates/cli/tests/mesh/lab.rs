//! `meshgate up` and the host set-up the lab's workloads share: starting from a bare host,
//! signals at every moment, repeated cycles, failed start-ups, and what a second lab or bad
//! flags get. Each test here has the host to itself and starts with no bridge on it.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meshgate_testkit::TempDir;

use crate::harness::*;
use crate::up::*;

fn gateway_ok() -> Option<String> {
    let r = plain_get(SocketAddr::from(([127, 0, 0, 1], 8080)), "/").ok()?;
    r.starts_with("HTTP/1.1 200").then_some(r)
}

#[test]
fn the_lab_answers_through_order_and_inventory_and_ctrl_c_leaves_nothing() {
    let _host = bare_host();
    let mut up = Up::lab();
    up.wait_line("meshgate lab is up", Duration::from_secs(90));
    let r = plain_get(SocketAddr::from(([127, 0, 0, 1], 8080)), "/").unwrap();
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let body = &r[r.find("\r\n\r\n").unwrap() + 4..];
    let v: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
    assert_eq!(v["service"], "order");
    assert_eq!(v["inventory"]["service"], "inventory");
    assert!(["v1", "v2"].contains(&v["inventory"]["version"].as_str().unwrap()), "{v}");
    up.take_lines();
    let namespaces: Vec<String> =
        up.seen.iter().filter(|l| l.contains("(network namespace ")).map(|l| reported_netns(l)).collect();
    assert_eq!(namespaces.len(), 3, "{}", up.output());
    assert!(namespaces.iter().all(|n| netns_exists(n)));
    // The lab's own traffic moves the service graph and the gateway's metrics.
    let out = up.output();
    assert!(out.contains("meshgate top") && out.contains("http://127.0.0.1:15020/metrics"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let top = loop {
        let mut c = meshgate();
        c.args(["top", "--once", "--window", "30s"]).arg("--state-dir").arg(up.state.path());
        let top = text(&c.output().unwrap());
        let edge =
            |src: &str, dst: &str| top.lines().any(|l| l.starts_with(src) && l.contains(dst) && l.contains("mTLS"));
        if edge("shop/gateway", "shop/order-1") && edge("shop/order-1", "shop/inventory-v1") {
            break top;
        }
        assert!(Instant::now() < deadline, "the graph never showed gateway → order → inventory over mTLS:\n{top}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(!top.contains("INSECURE"), "{top}");
    let metrics = plain_get(SocketAddr::from(([127, 0, 0, 1], 15020)), "/metrics").unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("istio_requests_total{") && l.contains("destination_workload=\"order-1\"")),
        "{metrics}"
    );
    one_trace_through_gateway_order_and_inventory(&up);
    // Ctrl-C: everything stops, in order, and nothing is left behind.
    let out = up.stop_with("INT", "Ctrl-C");
    assert!(out.lines().any(|l| l.starts_with("lab stopped")), "{out}");
    for n in &namespaces {
        assert!(!netns_exists(n), "{n} left behind");
    }
    assert!(TcpStream::connect(("127.0.0.1", 8080)).is_err(), "the gateway is still listening");
    assert!(TcpStream::connect(("127.0.0.1", 15014)).is_err(), "the control plane is still listening");
}

/// A lab killed with SIGKILL (or a machine session ending under it) cannot clean up: its
/// namespaces, leases and bridge stay. The next `up` removes them, and only them.
#[test]
fn what_a_lab_killed_with_sigkill_left_is_removed_by_the_next_up() {
    let _host = bare_host();
    let mut up = Up::lab();
    up.wait_line("meshgate lab is up", Duration::from_secs(90));
    let marker = up.state.path().display().to_string();
    let lab_processes =
        || -> Vec<String> { std::iter::once(marker.as_str()).chain(APP_MARKERS).flat_map(processes_with).collect() };
    let mut pids: Vec<String> =
        lab_processes().iter().filter_map(|l| l.split_whitespace().next().map(str::to_string)).collect();
    pids.push(up.child.id().to_string());
    let _ = Command::new("kill").arg("-KILL").args(&pids).status().unwrap();
    let _ = wait_exit(&mut up.child, Duration::from_secs(5), "the killed lab");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !lab_processes().is_empty() {
        assert!(Instant::now() < deadline, "processes survived SIGKILL: {:?}", lab_processes());
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = meshgate_intercept::pod_namespaces();
    assert_eq!(left.len(), 3, "the killed lab's namespaces: {left:?}");
    assert!(meshgate_intercept::bridge_exists());
    // As old as a run that is gone would be (the next `up` leaves anything younger than 30 s,
    // which may be a `meshgate run` setting up).
    for n in &left {
        let lease = format!("{}/{}", meshgate_intercept::LEASE_DIR, n.trim_start_matches("mg-").replace('-', "."));
        for path in [lease, format!("/etc/netns/{n}")] {
            let ok = Command::new("touch").args(["-d", "-2 minutes", &path]).status().unwrap();
            assert!(ok.success(), "touch {path}");
        }
    }
    let mut next = Up::lab();
    next.wait_line("meshgate lab is up", Duration::from_secs(90));
    let out = next.output();
    let removed =
        out.lines().find(|l| l.starts_with("removed what an earlier run left behind:")).unwrap_or_else(|| {
            panic!("the next up did not say it removed the leftovers:\n{out}");
        });
    for n in &left {
        assert!(removed.contains(&format!("network namespace {n}")), "{n} not named: {removed}");
    }
    assert!(gateway_ok().is_some(), "{out}");
    next.stop_with("INT", "Ctrl-C after reclaiming");
}

#[test]
fn five_cycles_each_from_a_host_without_the_bridge_reach_200_and_leave_nothing() {
    let _host = bare_host();
    for cycle in 1..=5 {
        assert!(!meshgate_intercept::bridge_exists(), "cycle {cycle}: the bridge is there before the lab");
        let started = Instant::now();
        let mut up = Up::lab();
        loop {
            if gateway_ok().is_some() {
                break;
            }
            if let Some(status) = up.child.try_wait().unwrap() {
                panic!("cycle {cycle}: meshgate up exited ({status}):\n{}", up.output());
            }
            assert!(started.elapsed() < Duration::from_secs(30), "cycle {cycle}: no 200 within 30 s:\n{}", up.output());
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("cycle {cycle}: 200 through the gateway {:?} after start", started.elapsed());
        up.stop_with(if cycle % 2 == 0 { "TERM" } else { "INT" }, &format!("cycle {cycle}"));
    }
}

/// Waits until `ready` holds, or fails naming `what` with the lab's output.
fn wait_until(up: &mut Up, what: &str, within: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ready() {
        if let Some(status) = up.child.try_wait().unwrap() {
            panic!("meshgate up exited ({status}) before {what}:\n{}", up.output());
        }
        assert!(Instant::now() < deadline, "never {what}:\n{}", up.output());
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_signal_at_any_moment_of_up_stops_it_within_10s_leaving_nothing() {
    let _host = bare_host();
    let points: [(&str, &str); 5] = [
        ("at once", "INT"),
        ("right after the control plane listens", "TERM"),
        ("while the workloads start", "INT"),
        ("once a workload namespace exists", "TERM"),
        ("once the lab is up", "INT"),
    ];
    for (point, signal) in points {
        let mut up = Up::lab();
        match point {
            "at once" => {}
            "right after the control plane listens" => {
                wait_until(&mut up, point, Duration::from_secs(30), || TcpStream::connect(("127.0.0.1", 15014)).is_ok())
            }
            "while the workloads start" => {
                wait_until(&mut up, point, Duration::from_secs(30), || TcpStream::connect(("127.0.0.1", 15000)).is_ok())
            }
            "once a workload namespace exists" => {
                wait_until(&mut up, point, Duration::from_secs(30), || !meshgate_intercept::pod_namespaces().is_empty())
            }
            _ => up.wait_line("meshgate lab is up", Duration::from_secs(60)),
        }
        if point == "at once" {
            // The signal may beat the handler's installation: then the default action ends
            // `up` before it created anything. Either way nothing may be left.
            send_signal(up.child.id(), signal);
            let _ = wait_exit(&mut up.child, Duration::from_secs(10), point);
            let out = up.output();
            assert_nothing_left(&up.state, point, &out);
            continue;
        }
        up.stop_with(signal, &format!("SIG{signal} {point}"));
    }
}

#[test]
fn a_second_up_names_the_running_one_and_touches_nothing() {
    let _host = bare_host();
    let mut up = Up::lab();
    up.wait_line("meshgate lab is up", Duration::from_secs(90));
    // The same state directory: refused, naming the running lab.
    let out = meshgate().arg("up").args(["--dir", LAB_DIR]).arg("--state-dir").arg(up.state.path()).output().unwrap();
    let text = text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("already running") && text.contains(&format!("pid {}", up.child.id())), "{text}");
    // Another state directory: the ports are taken, and it says which.
    let other = TempDir::new("meshgate-lab2");
    let out = meshgate().arg("up").args(["--dir", LAB_DIR]).arg("--state-dir").arg(other.path()).output().unwrap();
    let text2 = self::text(&out);
    assert!(!out.status.success(), "{text2}");
    assert!(text2.contains("is not free"), "{text2}");
    // The running lab is untouched: its store, its namespaces, its answers.
    assert!(up.state.path().join("lab-store").is_dir(), "the running lab's store was removed");
    assert_eq!(meshgate_intercept::pod_namespaces().len(), 3);
    assert!(gateway_ok().is_some(), "the running lab stopped answering");
    up.stop_with("INT", "the first lab");
}

#[test]
fn a_failed_start_of_up_stops_everything_and_names_the_cause() {
    let _host = bare_host();
    // A copy of the lab whose mesh.yaml has a field in no schema.
    let root = TempDir::new("meshgate-badlab");
    let dir = root.path().join("lab");
    std::fs::create_dir_all(&dir).unwrap();
    let mesh = std::fs::read_to_string(format!("{LAB_DIR}/mesh.yaml")).unwrap();
    std::fs::write(
        dir.join("mesh.yaml"),
        mesh + "\n---\napiVersion: v1\nkind: Service\nmetadata: {name: broken, namespace: shop}\nspec: {portz: []}\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(format!("{LAB_DIR}/../apps"), root.path().join("apps")).unwrap();
    let mut up = Up::start(&dir.display().to_string(), TempDir::new("meshgate-lab"));
    let status = wait_exit(&mut up.child, Duration::from_secs(30), "a lab with a broken mesh.yaml");
    std::thread::sleep(Duration::from_millis(50));
    let out = up.output();
    assert!(!status.success(), "{out}");
    assert!(out.contains("mesh.yaml") && out.contains("spec.portz"), "the cause is not named:\n{out}");
    assert!(out.contains("did not start"), "{out}");
    assert_nothing_left(&up.state, "a failed start", &out);
}

/// `meshgate run` of an echo app named `name`, in the lab's namespace `shop`.
fn run_echo(lab: &Lab, name: &str, service: &str, extra: &[&str]) -> Command {
    let mut flags = vec!["-n", "shop", "--name", name, "--service", service];
    flags.extend_from_slice(extra);
    let mut c = lab.run(&flags, &["python3", ECHO, "--name", name, "--port", "8080"]);
    c.stdout(Stdio::null()).stderr(Stdio::piped());
    c
}

fn workload_registered(lab: &Lab, name: &str) -> bool {
    let mut c = meshgate();
    c.args(["get", "workload", name, "-n", "shop"]);
    lab.api_flags(&mut c);
    c.output().unwrap().status.success()
}

#[test]
fn four_runs_started_at_once_on_a_host_without_the_bridge_all_come_up() {
    let lab = Lab::start_on(bare_host());
    for round in 0..3 {
        assert!(!meshgate_intercept::bridge_exists(), "round {round}: the bridge is there before the runs");
        let names: Vec<String> = (0..4).map(|i| format!("echo-{round}-{i}")).collect();
        let mut runs: Vec<Child> =
            names.iter().map(|n| run_echo(&lab, n, &format!("{n}:8080"), &[]).spawn().unwrap()).collect();
        for (name, run) in names.iter().zip(&mut runs) {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !workload_registered(&lab, name) {
                if let Some(status) = run.try_wait().unwrap() {
                    let mut err = String::new();
                    run.stderr.take().unwrap().read_to_string(&mut err).unwrap();
                    panic!("round {round}: {name} exited ({status}):\n{err}");
                }
                assert!(Instant::now() < deadline, "round {round}: {name} never registered");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // Every one answers on its own address (through its sidecar's inbound side).
        for name in &names {
            wait_plain_ok(SocketAddr::from((address_of(&lab, name), 8080)));
        }
        for run in &runs {
            send_signal(run.id(), "TERM");
        }
        for (name, run) in names.iter().zip(&mut runs) {
            let status = wait_exit(run, Duration::from_secs(10), name);
            assert!(status.code().is_some(), "{name}: {status}");
        }
        assert_host_bare_within(Duration::from_secs(2), &format!("round {round}"));
    }
}

/// The address of Workload `shop/name`.
fn address_of(lab: &Lab, name: &str) -> std::net::Ipv4Addr {
    let mut c = meshgate();
    c.args(["get", "workload", name, "-n", "shop", "-o", "json"]);
    lab.api_flags(&mut c);
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["spec"]["address"].as_str().unwrap().parse().unwrap()
}

#[test]
fn a_signal_at_any_moment_of_run_stops_it_within_10s_leaving_nothing() {
    let lab = Lab::start_on(bare_host());
    let points = ["at once", "once its namespace exists", "once its Workload is registered", "once it runs the app"];
    for (i, point) in points.into_iter().enumerate() {
        for signal in ["INT", "TERM"] {
            let name = format!("sig-{i}-{}", signal.to_ascii_lowercase());
            let mut run = run_echo(&lab, &name, "sig:8080", &[]).spawn().unwrap();
            let mut err = run.stderr.take().unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            let reached = || match point {
                "at once" => true,
                "once its namespace exists" => !meshgate_intercept::pod_namespaces().is_empty(),
                "once its Workload is registered" => workload_registered(&lab, &name),
                _ => false,
            };
            if point == "once it runs the app" {
                wait_plain_ok_from_run(&lab, &name);
            } else {
                while !reached() {
                    assert!(run.try_wait().unwrap().is_none(), "{name}: exited before {point}");
                    assert!(Instant::now() < deadline, "{name}: never {point}");
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            send_signal(run.id(), signal);
            let status = wait_exit(&mut run, Duration::from_secs(10), &format!("SIG{signal} {point}"));
            let mut out = String::new();
            let _ = err.read_to_string(&mut out);
            let what = format!("SIG{signal} {point} ({status})");
            assert!(!status.success(), "{what}: a run stopped by a signal exits non-zero:\n{out}");
            assert_host_bare_within(Duration::from_secs(2), &what);
            let left = processes_with(&format!("--name {name}"));
            assert!(left.is_empty(), "{what}: processes left: {left:?}\n{out}");
            assert!(!workload_registered(&lab, &name), "{what}: Workload {name} still registered\n{out}");
        }
    }
}

/// Waits until the run's app answers on its address.
fn wait_plain_ok_from_run(lab: &Lab, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !workload_registered(lab, name) {
        assert!(Instant::now() < deadline, "{name} never registered");
        std::thread::sleep(Duration::from_millis(20));
    }
    let ip = address_of(lab, name);
    wait_plain_ok(SocketAddr::from((ip, 8080)));
}

#[test]
fn bad_run_input_is_refused_clearly_and_leaves_nothing() {
    let mut lab = Lab::start_on(bare_host());
    lab.spawn(
        &["-n", "shop", "--name", "first", "--service", "first:8080"],
        &["python3", ECHO, "--name", "first", "--port", "8080"],
    );
    let ip = lab.workload_ip("shop", "first");
    let ip_text = ip.to_string();
    let cases: [(&str, Vec<&str>, Vec<&str>, &str); 5] = [
        ("an address in use", vec!["--ip", &ip_text], vec!["true"], "already in use"),
        ("a bad --service", vec!["--service", "web:http"], vec!["true"], "is not a port"),
        ("a command that does not exist", vec![], vec!["/no/such/program"], "command not found"),
        ("a wrong API token", vec!["--token", "not-the-token"], vec!["true"], "did not start"),
        ("a sidecar that cannot join", vec!["--trust-domain", "other.example"], vec!["true"], "did not start"),
    ];
    for (what, flags, command, expect) in cases {
        let before = meshgate_intercept::pod_namespaces();
        let mut all = vec!["-n", "shop", "--name", "bad"];
        all.extend(flags);
        let out = lab.run(&all, &command).output().unwrap();
        let text = text(&out);
        assert!(!out.status.success(), "{what}: {text}");
        assert!(text.contains(expect), "{what}: expected {expect:?} in:\n{text}");
        assert_eq!(meshgate_intercept::pod_namespaces(), before, "{what}: a namespace was left:\n{text}");
        assert_eq!(meshgate_intercept::leases().len(), 1, "{what}: a lease was left:\n{text}");
        assert!(!workload_registered(&lab, "bad"), "{what}: Workload left:\n{text}");
        assert!(processes_with("--name bad").is_empty(), "{what}: processes left");
    }
    drop(lab);
    assert_host_bare_within(Duration::from_secs(5), "after the last workload");
}

/// `GET /api/v1/ca` of the lab's control plane.
fn ca_status(state: &TempDir) -> serde_json::Value {
    use std::io::Write;
    let token = std::fs::read_to_string(state.path().join("admin-token")).unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", 15014)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET /api/v1/ca HTTP/1.1\r\nHost: cp\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        token.trim()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let body = &out[out.find("\r\n\r\n").unwrap() + 4..];
    serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// `meshgate ca rotate STEP` as an operator runs it: the output, which must report success.
fn rotate(state: &TempDir, step: &str) -> String {
    let out = meshgate().args(["ca", "rotate", step]).arg("--state-dir").arg(state.path()).output().unwrap();
    let all = text(&out);
    assert!(out.status.success(), "meshgate ca rotate {step}: {all}");
    all
}

/// Polls the lab's CA status until `ok` holds (30 s at most).
fn wait_status(state: &TempDir, what: &str, ok: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = ca_status(state);
        if ok(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "never {what}: {s:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn root_with<'a>(s: &'a serde_json::Value, flag: &str) -> &'a serde_json::Value {
    s["roots"].as_array().unwrap().iter().find(|r| r[flag] == true).unwrap_or_else(|| panic!("no {flag} root: {s}"))
}

/// The lab's proxies: the gateway and three sidecars.
const LAB_PROXIES: u64 = 4;

/// Requests through the gateway, each on a fresh connection, until stopped: (answered 200,
/// failures with what they got).
fn traffic(stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> std::thread::JoinHandle<(usize, Vec<String>)> {
    std::thread::spawn(move || {
        let (mut ok, mut failed) = (0, Vec::new());
        let started = Instant::now();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let at = started.elapsed();
            match plain_get(SocketAddr::from(([127, 0, 0, 1], 8080)), "/") {
                Ok(r) if r.starts_with("HTTP/1.1 200") && r.contains("\"inventory\"") => ok += 1,
                Ok(r) => failed.push(format!("at {at:?}: {}", r.replace("\r\n", " | "))),
                Err(e) => failed.push(format!("at {at:?}: {e}")),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (ok, failed)
    })
}

/// A process of the test's own, killed (and reaped) however the test ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rotation_in_the_lab(restart_between_add_and_use: bool) {
    let _host = bare_host();
    let mut up = Up::lab();
    up.wait_line("meshgate lab is up", Duration::from_secs(90));
    let st = &up.state;
    let before = wait_status(st, "every proxy reporting", |s| {
        s["proxies"].as_array().is_some_and(|p| p.len() as u64 == LAB_PROXIES) && s["unreported"] == 0
    });
    let old = root_with(&before, "signing")["fingerprint"].as_str().unwrap().to_string();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = traffic(stop.clone());
    std::thread::sleep(Duration::from_secs(1));

    assert!(rotate(st, "add-root").contains("2 root(s)"));
    let mut own_cp: Option<KillOnDrop> = None;
    if restart_between_add_and_use {
        // The lab's control plane stops; a new one starts on the same store and addresses. The
        // proxies keep serving meanwhile and resubscribe to it.
        let marker = format!("control-plane --store dir:{}", st.path().join("lab-store").display());
        let pids = processes_with(&marker);
        assert_eq!(pids.len(), 1, "{pids:?}");
        let pid: u32 = pids[0].split_whitespace().next().unwrap().parse().unwrap();
        send_signal(pid, "TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !processes_with(&marker).is_empty() {
            assert!(Instant::now() < deadline, "the control plane did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
        let cp = meshgate()
            .arg("control-plane")
            .arg("--store")
            .arg(format!("dir:{}", st.path().join("lab-store").display()))
            .args(["--grpc", "127.0.0.1:15012", "--http", "127.0.0.1:15014"])
            .arg("--state-dir")
            .arg(st.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        own_cp = Some(KillOnDrop(cp));
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", 15014)).is_err() {
            assert!(Instant::now() < deadline, "the new control plane did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let s = wait_status(st, "every proxy trusting the added root", |s| {
        s["roots"].as_array().unwrap().iter().any(|r| r["pending"] == true && r["trustedBy"] == LAB_PROXIES)
    });
    let new = root_with(&s, "pending")["fingerprint"].as_str().unwrap().to_string();
    assert_ne!(new, old);

    let started = Instant::now();
    rotate(st, "use-root");
    wait_status(st, "every proxy's leaf from the new root", |s| {
        s["proxies"].as_array().unwrap().iter().filter(|p| p["leafRoot"] == new.as_str()).count() as u64 == LAB_PROXIES
    });
    eprintln!("use-root: every proxy of the lab had a leaf from the new root after {:?}", started.elapsed());

    assert!(rotate(st, "withdraw-old-roots").contains("1 root(s)"));
    let s = wait_status(st, "every proxy trusting the new root alone", |s| {
        s["proxies"].as_array().unwrap().iter().all(|p| p["trusts"] == serde_json::json!([new.as_str()]))
    });
    let roots = s["roots"].as_array().unwrap();
    assert_eq!(roots.len(), 1, "{s}");
    assert_eq!(roots[0]["fingerprint"], new.as_str());
    assert_eq!(roots[0]["proxies"], LAB_PROXIES);
    std::thread::sleep(Duration::from_secs(1));
    // A workload started now has only the new root: its first mTLS handshakes with inventory
    // (a sidecar whose leaf was renewed during the rotation) succeed.
    let out = meshgate()
        .args(["run", "-n", "shop", "--service-account", "order", "--name", "after-rotation"])
        .arg("--state-dir")
        .arg(st.path())
        .args(["--", "python3", "-c", HTTP_CLIENT, "http://inventory:8080/"])
        .output()
        .unwrap();
    assert!(out.status.success(), "a new workload after the rotation: {}", text(&out));
    // Traffic goes on a little with the old root gone.
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.join().unwrap();
    eprintln!("traffic during the rotation: {ok} answered, {} failed", failed.len());
    assert!(failed.is_empty(), "requests failed during the rotation: {failed:?}");
    assert!(ok > 50, "only {ok} requests");

    match own_cp {
        None => {
            up.stop_with("INT", "the lab after a rotation");
        }
        Some(cp) => {
            send_signal(up.child.id(), "INT");
            let status = wait_exit(&mut up.child, Duration::from_secs(15), "the lab after a rotation");
            assert!(status.success(), "{status}: {}", up.output());
            drop(cp);
            let out = up.output();
            assert_nothing_left(&up.state, "the lab after a rotation", &out);
        }
    }
}

#[test]
fn root_rotation_from_the_cli_under_traffic_in_the_lab() {
    rotation_in_the_lab(false);
}

#[test]
fn root_rotation_with_a_control_plane_restart_between_add_root_and_use_root() {
    rotation_in_the_lab(true);
}

/// An OTLP/gRPC receiver (the official opentelemetry-proto service) on the lab bridge's side of
/// the host, where the gateway and every sidecar can reach it.
struct OtlpReceiver {
    spans: std::sync::Arc<std::sync::Mutex<Vec<(String, opentelemetry_proto::tonic::trace::v1::Span)>>>,
    addr: SocketAddr,
    _rt: tokio::runtime::Runtime,
}

struct Collect(std::sync::Arc<std::sync::Mutex<Vec<(String, opentelemetry_proto::tonic::trace::v1::Span)>>>);

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService for Collect {
    async fn export(
        &self,
        req: tonic::Request<opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest>,
    ) -> Result<
        tonic::Response<opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse>,
        tonic::Status,
    > {
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                self.0.lock().unwrap().extend(ss.spans.into_iter().map(|s| (service.clone(), s)));
            }
        }
        Ok(tonic::Response::new(Default::default()))
    }
}

impl OtlpReceiver {
    fn start() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let spans = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let port = meshgate_testkit::free_port();
        let server = tonic::transport::Server::builder().add_service(
            opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer::new(Collect(
                spans.clone(),
            )),
        );
        rt.spawn(server.serve(SocketAddr::from(([0, 0, 0, 0], port))));
        let addr = SocketAddr::from((meshgate_intercept::BRIDGE_IP, port));
        OtlpReceiver { spans, addr, _rt: rt }
    }
}

/// With tracing turned on in the running lab (a MeshConfig applied like any resource), one
/// request through the gateway yields one trace: the gateway's server and client spans, order's
/// inbound server and outbound client spans, inventory's inbound server span, each the child
/// of the one before (order passes the trace headers on, as apps in a mesh do).
fn one_trace_through_gateway_order_and_inventory(up: &Up) {
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
    let receiver = OtlpReceiver::start();
    let file = up.state.path().join("tracing.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: meshgate.io/v1alpha1\nkind: MeshConfig\nmetadata: {{name: default}}\nspec:\n  tracing: {{samplingPercent: 0, otlp: {{endpoint: 'http://{}', protocol: grpc}}}}\n",
            receiver.addr
        ),
    )
    .unwrap();
    let mut c = meshgate();
    c.arg("apply").arg("-f").arg(&file).arg("--state-dir").arg(up.state.path());
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // Sampled by the caller: only this request's trace is recorded (the lab's traffic is not).
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let deadline = Instant::now() + Duration::from_secs(30);
    let spans = loop {
        let parent = format!("{:016x}", fastrand_u64());
        let mut s = TcpStream::connect(("127.0.0.1", 8080)).unwrap();
        use std::io::Write as _;
        write!(s, "GET / HTTP/1.1\r\nHost: lab\r\ntraceparent: 00-{trace}-{parent}-01\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        std::thread::sleep(Duration::from_millis(1500));
        let spans: Vec<_> =
            receiver.spans.lock().unwrap().iter().filter(|(_, s)| hex(&s.trace_id) == trace).cloned().collect();
        // One request's five spans: the first whose gateway server span names this parent.
        if let Some(root) = spans.iter().find(|(_, s)| hex(&s.parent_span_id) == parent) {
            let mut chain = vec![root.clone()];
            while let Some(next) = spans.iter().find(|(_, s)| s.parent_span_id == chain.last().unwrap().1.span_id) {
                chain.push(next.clone());
            }
            if chain.len() == 5 {
                break chain;
            }
        }
        assert!(Instant::now() < deadline, "no complete trace (proxies configured?): {spans:?}\n{reply}");
    };
    let got: Vec<(String, i32)> = spans.iter().map(|(svc, s)| (svc.clone(), s.kind)).collect();
    let (server, client) = (SpanKind::Server as i32, SpanKind::Client as i32);
    assert_eq!(
        got[1..],
        [
            ("gateway.shop".to_string(), client),
            ("order.shop".into(), server),
            ("order.shop".into(), client),
            ("inventory.shop".into(), server)
        ],
        "{spans:?}"
    );
    assert_eq!((spans[0].0.as_str(), spans[0].1.kind), ("gateway.shop", server));
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn fastrand_u64() -> u64 {
    let b = meshgate_tls::random_bytes(8);
    u64::from_be_bytes(b.try_into().unwrap()) | 1
}
