//! `ab`: what one difference between two targets costs (telemetry on and off, say), on a
//! machine whose speed drifts by more than the difference, from one minute to the next and
//! within seconds. The two run at the same time, each under the same load, in many short
//! windows; each window's ratio A / B is taken between figures measured over the same
//! seconds, so whatever the machine did then it did to both. At maximum throughput both
//! proxies compete for the same CPU, the scheduler shares it between them, and the one that
//! needs less CPU per request answers more of them: the req/s ratio is the ratio of their
//! efficiency. The median ratio and its quartiles are printed.

use anyhow::Context;

use crate::{CpuClock, LoadArgs, LoadResult, drive, median, open_in, parse_target, per_10k, ratios};

/// The median and the quartiles of `v`.
fn quartiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    (v[v.len() / 4], v[v.len() / 2], v[(v.len() * 3 / 4).min(v.len() - 1)])
}

/// One window: A and B under the same load at once, each one's connections opened first
/// (from its network namespace). Returns each one's result and CPU seconds per 10k requests.
async fn window(
    targets: &[crate::Target; 2],
    home: &std::fs::File,
    args: &[LoadArgs; 2],
    first_b: bool,
) -> anyhow::Result<[(LoadResult, f64); 2]> {
    let ca = open_in(&targets[0], home, &args[0]).await?;
    let cb = open_in(&targets[1], home, &args[1]).await?;
    let before = [CpuClock::read(&targets[0].pids), CpuClock::read(&targets[1].pids)];
    // Which one's requests the load generator issues first alternates from window to window.
    let (ra, rb) = if first_b {
        let (rb, ra) = tokio::join!(drive(&args[1], cb), drive(&args[0], ca));
        (ra, rb)
    } else {
        tokio::join!(drive(&args[0], ca), drive(&args[1], cb))
    };
    let cpu = [CpuClock::read(&targets[0].pids).since(&before[0]), CpuClock::read(&targets[1].pids).since(&before[1])];
    let (ra, rb) = (ra.context("A")?, rb.context("B")?);
    let (pa, pb) = (per_10k(cpu[0], &ra), per_10k(cpu[1], &rb));
    Ok([(ra, pa), (rb, pb)])
}

pub(crate) async fn run(
    a: &str,
    b: &str,
    protos: &[String],
    rates: &[u64],
    secs: u64,
    windows: usize,
    host: &str,
) -> anyhow::Result<()> {
    let targets = [parse_target(a)?, parse_target(b)?];
    let home = std::fs::File::open("/proc/self/ns/net").context("this process's network namespace")?;
    let [ta, tb] = &targets;
    println!(
        "A = {}, B = {}: both at once under the same load, {windows} windows of {secs} s per load; ratios A / B \
         taken within each window, then their median (quartiles in brackets).",
        ta.name, tb.name
    );
    println!();
    println!(
        "| proto | load (each) | A req/s | B req/s | A p99 ms | B p99 ms | A CPU s / 10k | B CPU s / 10k | req/s A / B | CPU / 10k A / B |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut notes = Vec::new();
    for proto in protos {
        for &rate in rates {
            let args = |t: &crate::Target| -> anyhow::Result<LoadArgs> {
                let target = if proto == "h2" { t.h2 } else { t.h1 };
                Ok(LoadArgs {
                    target: target.with_context(|| format!("{} has no {proto} address", t.name))?,
                    proto: proto.clone(),
                    rate,
                    secs,
                    conns: if rate == 0 { 64 } else { 16 },
                    host: host.to_string(),
                })
            };
            let args = [args(ta)?, args(tb)?];
            let mut ra = Vec::new();
            let mut rb = Vec::new();
            for w in 0..windows {
                let [x, y] =
                    window(&targets, &home, &args, w % 2 == 1).await.with_context(|| format!("{proto} {rate}"))?;
                ra.push(x);
                rb.push(y);
            }
            let ratio = |f: &dyn Fn(&(LoadResult, f64)) -> f64| {
                let (q1, m, q3) = quartiles(ratios(&ra, &rb, f));
                format!("{m:.3} ({q1:.3}–{q3:.3})")
            };
            let med =
                |r: &[(LoadResult, f64)], f: &dyn Fn(&(LoadResult, f64)) -> f64| median(r.iter().map(f).collect());
            let label = if rate == 0 { "max".to_string() } else { format!("{rate}/s") };
            println!(
                "| {proto} | {label} | {:.0} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} |",
                med(&ra, &|r| r.0.rps),
                med(&rb, &|r| r.0.rps),
                med(&ra, &|r| r.0.p99_us as f64) / 1000.0,
                med(&rb, &|r| r.0.p99_us as f64) / 1000.0,
                med(&ra, &|r| r.1),
                med(&rb, &|r| r.1),
                ratio(&|r| r.0.rps),
                ratio(&|r| r.1),
            );
            let errors: u64 = ra.iter().chain(&rb).map(|r| r.0.errors).sum();
            if errors > 0 {
                notes.push(format!("{proto} {label}: {errors} errors"));
            }
        }
    }
    if !notes.is_empty() {
        println!();
        println!("Errors: {}.", notes.join("; "));
    }
    Ok(())
}
