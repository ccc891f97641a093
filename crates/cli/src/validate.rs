//! `meshgate validate`: every error, or OK.

use std::path::PathBuf;
use std::process::ExitCode;

pub(crate) fn run(paths: &[PathBuf], strict: bool, status: bool) -> ExitCode {
    match meshgate_proxy::source::load(paths) {
        Err(errors) => {
            for e in errors.iter() {
                out!("error: {e}");
            }
            out!("{} error(s)", errors.len());
            ExitCode::FAILURE
        }
        Ok((set, compiled)) => {
            if status {
                print_status(&compiled.status);
            }
            let problems: Vec<_> = compiled.problems().collect();
            let mut errors = 0;
            for p in &problems {
                let error = strict || p.severity == meshgate_model::Severity::Error;
                errors += usize::from(error);
                out!("{}: {p}", if error { "error" } else { "warning" });
            }
            if errors > 0 {
                out!("{errors} error(s)");
                return ExitCode::FAILURE;
            }
            let listeners: usize = compiled.config.ports.values().map(|s| s.listeners.len()).sum();
            out!(
                "OK: {} resources, {} HTTP listener(s) on {} port(s){}",
                set.len(),
                listeners,
                compiled.config.ports.len(),
                if problems.is_empty() { String::new() } else { format!(", {} warning(s)", problems.len()) }
            );
            ExitCode::SUCCESS
        }
    }
}

/// The Gateway API status each resource would get, as YAML documents (what `meshgate get -o
/// yaml` shows under a control plane and a gateway's admin `/status` serves).
fn print_status(all: &[meshgate_model::gwstatus::ResourceStatus]) {
    let now = meshgate_model::time::rfc3339_seconds(std::time::SystemTime::now());
    for s in all {
        let mut status = s.status.clone();
        meshgate_model::gwstatus::stamp(&mut status, None, &now);
        let mut metadata = serde_json::json!({ "name": s.object.name });
        if let Some(ns) = &s.object.namespace {
            metadata["namespace"] = serde_json::json!(ns);
        }
        let doc = serde_json::json!({
            "apiVersion": s.object.kind.api_version(),
            "kind": s.object.kind.to_string(),
            "metadata": metadata,
            "status": status,
        });
        match serde_saphyr::to_string(&doc) {
            Ok(y) => put!("---\n{y}"),
            Err(e) => out!("# {}: cannot print its status: {e}", s.object),
        }
    }
}

/// `meshgate migrate ingress -f PATH`: the Gateway API resources meshgate serves the Ingresses
/// under `paths` as, printed as YAML (a Gateway, ReferenceGrants for the TLS Secrets, an
/// HTTPRoute per rule), with a comment for each thing that did not carry over.
pub(crate) fn migrate(what: &str, paths: &[PathBuf]) -> ExitCode {
    if what != "ingress" {
        eprintln!("error: meshgate migrate {what:?}: only `ingress` can be migrated");
        return ExitCode::FAILURE;
    }
    let loaded = meshgate_api::load_paths(paths);
    let (set, duplicates) = meshgate_api::ResourceSet::from_objects(loaded.objects);
    let errors: Vec<String> = loaded.errors.iter().chain(duplicates.iter()).map(ToString::to_string).collect();
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("error: {e}");
        }
        return ExitCode::FAILURE;
    }
    let t = meshgate_model::ingress::translate(&set, &meshgate_model::ingress::IngressPorts::default());
    if set.ingresses().next().is_none() {
        eprintln!(
            "error: no Ingress under {}",
            paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        );
        return ExitCode::FAILURE;
    }
    for c in &t.conditions {
        let at = if c.field.is_empty() { String::new() } else { format!(" {}", c.field) };
        out!("# {}{at}: {}", c.object, c.message);
    }
    for (i, (_, doc)) in t.docs.iter().enumerate() {
        out!("---");
        for note in t.comments.get(&i).into_iter().flatten() {
            out!("# {note}");
        }
        match serde_saphyr::to_string(doc) {
            Ok(y) => put!("{y}"),
            Err(e) => {
                eprintln!("error: cannot print {doc}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
