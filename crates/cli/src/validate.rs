//! `meshgate validate`: every error, or OK.

use std::path::PathBuf;
use std::process::ExitCode;

pub(crate) fn run(paths: &[PathBuf], strict: bool) -> ExitCode {
    match meshgate_proxy::source::load(paths) {
        Err(errors) => {
            for e in errors.iter() {
                println!("error: {e}");
            }
            println!("{} error(s)", errors.len());
            ExitCode::FAILURE
        }
        Ok((set, compiled)) => {
            let problems: Vec<_> = compiled.problems().collect();
            let mut errors = 0;
            for p in &problems {
                let error = strict || p.severity == meshgate_model::Severity::Error;
                errors += usize::from(error);
                println!("{}: {p}", if error { "error" } else { "warning" });
            }
            if errors > 0 {
                println!("{errors} error(s)");
                return ExitCode::FAILURE;
            }
            let listeners: usize = compiled.config.ports.values().map(|s| s.listeners.len()).sum();
            println!(
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
