//! `meshgate up`: until the mesh lab exists, the gateway demo: starts the demo backends of
//! `examples/gateway/` and serves the gateway in front of them.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};

pub(crate) async fn run(dir: PathBuf) -> anyhow::Result<()> {
    if !dir.is_dir() {
        bail!("{} not found: run `meshgate up` from the meshgate checkout, or pass --dir", dir.display());
    }
    let app = dir.join("../apps/echo.py");
    let mut children = Vec::new();
    for (name, port) in [("web-v1", 18081), ("web-v2", 18082), ("api", 18083)] {
        let child = tokio::process::Command::new("python3")
            .arg(&app)
            .args(["--name", name, "--port", &port.to_string()])
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting demo backend {name} ({})", app.display()))?;
        children.push(child);
    }
    println!();
    println!("meshgate demo: gateway on http://127.0.0.1:8080, admin on http://127.0.0.1:15000");
    println!("  curl -H 'Host: shop.example.com' http://127.0.0.1:8080/          # 90% web-v1, 10% web-v2");
    println!("  curl -H 'Host: shop.example.com' http://127.0.0.1:8080/api/items # api, path rewritten");
    println!("  curl -i http://127.0.0.1:8080/old                                # 301 redirect");
    println!("  curl http://127.0.0.1:15000/config_dump");
    println!("  edit {}/*.yaml: changes apply live; Ctrl-C stops everything", dir.display());
    println!();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let opts = crate::gateway::Options {
        paths: vec![dir],
        bind: "127.0.0.1".parse()?,
        admin: Some("127.0.0.1:15000".parse()?),
        drain_timeout: Duration::from_secs(5),
        access_log: true,
    };
    let result = crate::gateway::run(opts).await;
    for mut c in children {
        let _ = c.kill().await;
    }
    result
}
