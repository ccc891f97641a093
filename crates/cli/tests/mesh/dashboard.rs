//! The dashboard in a real browser: headless Chromium (Debian's, driven by playwright-core
//! from `ui-tests/`) against `meshgate up`, as a person uses it.

use std::process::Command;
use std::time::Duration;

use crate::harness::*;
use crate::up::*;

/// Where the dashboard test keeps its screenshots (a test artifact, kept after the run).
const SHOTS: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/dashboard");

#[test]
fn the_dashboard_in_headless_chromium_shows_the_lab_and_changes_it() {
    let _host = bare_host();
    let ui_tests = concat!(env!("CARGO_MANIFEST_DIR"), "/../../ui-tests");
    assert!(
        std::path::Path::new(ui_tests).join("node_modules/playwright-core").exists(),
        "playwright-core is not installed: run ./scripts/deps test (npm ci in ui-tests)"
    );
    let mut up = Up::lab();
    up.wait_line("  the map, in a browser:", Duration::from_secs(90));
    let out = up.output();
    let url = out
        .split_whitespace()
        .find(|w| w.starts_with("http://127.0.0.1:15014/login?code="))
        .unwrap_or_else(|| panic!("no sign-in URL printed:\n{out}"))
        .to_string();
    // A plaintext client for the test: straight to order's address, outside the mesh.
    let order = out
        .lines()
        .find_map(|l| l.split("shop/order-1 at ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address for order-1:\n{out}"))
        .to_string();
    let run = Command::new("node")
        .arg("dashboard.mjs")
        .arg(&url)
        .arg(format!("http://{order}:8080/"))
        .arg(SHOTS)
        .current_dir(ui_tests)
        .output()
        .expect("node");
    let log = String::from_utf8_lossy(&run.stderr);
    let measured = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "the browser test failed:\n{log}\n{measured}\nlab:\n{}", up.output());
    // The measurements, for the record: a generated 500-node, 2,000-edge map.
    println!("{log}\n{measured}\nscreenshots in {SHOTS}");
    let v: serde_json::Value = serde_json::from_str(measured.trim()).expect("the measurements");
    assert!(v["large"]["updateMedianMs"].as_f64().is_some_and(|ms| ms < 1000.0), "{v}");
    up.stop_with("INT", "the lab after the dashboard test");
}
