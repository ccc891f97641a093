//! Configuration from files: load, validate and compile; watch for changes and re-apply.
//! A change that does not validate is logged with every error and the configuration in
//! force stays.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use meshgate_api::{Errors, ResourceSet, load_paths};
use meshgate_model::{CompileInputs, Compiled, ProxyConfig, compile_gateway_with};
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::roles::gateway::Gateway;
use meshgate_model::ingress::IngressPorts;

/// How long the files must be quiet after a change before it is read (editors write in steps).
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// Reads, validates and compiles everything under `paths`, as a first load.
pub fn load(paths: &[PathBuf]) -> Result<(ResourceSet, Compiled), Errors> {
    load_over(paths, None, IngressPorts::default())
}

/// Reads, validates and compiles everything under `paths` over the configuration in force: a
/// certificate that no longer loads keeps the one served from the same Secret before.
pub fn load_over(
    paths: &[PathBuf],
    in_force: Option<&ProxyConfig>,
    ingress: IngressPorts,
) -> Result<(ResourceSet, Compiled), Errors> {
    let loaded = load_paths(paths);
    let (set, duplicates) = ResourceSet::from_objects(loaded.objects);
    let mut errors = loaded.errors;
    errors.0.extend(duplicates.0);
    if !errors.is_empty() {
        return Err(errors);
    }
    let last_good = |secret: &str| in_force.and_then(|c| c.served_cert(secret));
    let inputs = CompileInputs { last_good: &last_good, now: std::time::SystemTime::now(), ingress };
    let compiled = compile_gateway_with(&set, &inputs);
    Ok((set, compiled))
}

/// A fingerprint of the files' names and contents, to skip reloads that change nothing.
fn fingerprint(paths: &[PathBuf]) -> u64 {
    let mut files = Vec::new();
    for p in paths {
        // A path that cannot be read contributes no files (and its errors come from `load`).
        let _ = meshgate_api::collect_files(p, &mut files);
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for f in files {
        f.hash(&mut h);
        std::fs::read(&f).unwrap_or_default().hash(&mut h);
    }
    h.finish()
}

/// Loads `paths` and applies them to `gateway`; returns the new version, or `None` when the
/// configuration was rejected (and the old one kept).
pub async fn apply_files(paths: &[PathBuf], gateway: &Arc<Gateway>) -> Option<u64> {
    let owned = paths.to_vec();
    let in_force = gateway.snapshot();
    let ingress = gateway.options().ingress.clone();
    let result = tokio::task::spawn_blocking(move || load_over(&owned, Some(&in_force.config), ingress)).await.ok()?;
    let sources: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    match result {
        Err(errors) => {
            let current = gateway.snapshot().version;
            crate::telemetry::note_rejected();
            tracing::error!(
                errors = errors.len(),
                "configuration rejected; version {current} stays in force:\n{errors}"
            );
            None
        }
        Ok((set, compiled)) => {
            for problem in compiled.problems() {
                tracing::warn!("{problem}");
            }
            let resources = set.len();
            match gateway.apply(compiled, sources).await {
                Ok(version) => {
                    tracing::info!(version, resources, "configuration applied");
                    Some(version)
                }
                Err(bind_errors) => {
                    let current = gateway.snapshot().version;
                    crate::telemetry::note_rejected();
                    for e in &bind_errors {
                        tracing::error!("configuration rejected; version {current} stays in force: {e}");
                    }
                    None
                }
            }
        }
    }
}

/// Watches `paths` and re-applies them whenever they change, until the task is dropped.
pub async fn watch(paths: Vec<PathBuf>, gateway: Arc<Gateway>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(e) = event
            && !matches!(e.kind, notify::EventKind::Access(_))
        {
            let _ = tx.send(());
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch configuration files; live reload is off");
            return;
        }
    };
    for p in &paths {
        // A file is watched through its directory: editors replace files by renaming.
        let (target, mode) = if p.is_dir() {
            (p.clone(), RecursiveMode::Recursive)
        } else {
            let parent =
                p.parent().filter(|d| !d.as_os_str().is_empty()).map_or_else(|| PathBuf::from("."), PathBuf::from);
            (parent, RecursiveMode::NonRecursive)
        };
        if let Err(e) = watcher.watch(&target, mode) {
            tracing::error!(path = %target.display(), error = %e, "cannot watch; changes here will not be picked up");
        }
    }
    let mut last = {
        let p = paths.clone();
        tokio::task::spawn_blocking(move || fingerprint(&p)).await.unwrap_or(0)
    };
    while rx.recv().await.is_some() {
        // Debounce: wait until no event arrived for DEBOUNCE.
        loop {
            match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) => return,
                Err(_) => break,
            }
        }
        let p = paths.clone();
        let now = tokio::task::spawn_blocking(move || fingerprint(&p)).await.unwrap_or(0);
        if now == last {
            continue;
        }
        last = now;
        tracing::info!("configuration files changed; reloading");
        apply_files(&paths, &gateway).await;
    }
    drop(watcher);
}
