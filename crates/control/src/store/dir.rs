//! The directory store: every YAML file under a directory (as `meshgate gateway -f` reads
//! them), watched for changes; `meshgate apply` writes one file per resource. The control
//! plane's own state lives in `.meshgate/` inside it (hidden files are not resources).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use meshgate_api::{Loaded, Object, ObjectRef};
use notify::{RecursiveMode, Watcher};
use tokio::sync::watch;

use super::{Store, StoreError};

/// A directory of resources.
#[derive(Debug)]
pub struct DirStore {
    root: PathBuf,
    changes: watch::Sender<u64>,
    _watcher: Option<Arc<std::sync::Mutex<notify::RecommendedWatcher>>>,
}

impl DirStore {
    /// Opens (and creates) the directory and starts watching it.
    pub fn open(root: PathBuf) -> Result<Self, StoreError> {
        std::fs::create_dir_all(root.join(".meshgate"))?;
        let (tx, _) = watch::channel(0u64);
        let sender = tx.clone();
        let (raw_tx, raw_rx) = std::sync::mpsc::channel::<()>();
        let mut watcher = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
            if let Ok(e) = e {
                let internal = e.paths.iter().all(|p| p.components().any(|c| c.as_os_str() == ".meshgate"));
                if !internal && !matches!(e.kind, notify::EventKind::Access(_)) {
                    let _ = raw_tx.send(());
                }
            }
        })
        .map_err(|e| StoreError::Refused(format!("cannot watch {}: {e}", root.display())))?;
        watcher
            .watch(&root, RecursiveMode::Recursive)
            .map_err(|e| StoreError::Refused(format!("cannot watch {}: {e}", root.display())))?;
        // Debounce on a thread: editors write in steps.
        std::thread::spawn(move || {
            while raw_rx.recv().is_ok() {
                while raw_rx.recv_timeout(Duration::from_millis(100)).is_ok() {}
                sender.send_modify(|v| *v += 1);
            }
        });
        Ok(DirStore { root, changes: tx, _watcher: Some(Arc::new(std::sync::Mutex::new(watcher))) })
    }

    fn blob_path(&self, key: &str) -> Result<PathBuf, StoreError> {
        if key.split('/').any(|s| s.is_empty() || s == "..") {
            return Err(StoreError::Refused(format!("bad blob key {key:?}")));
        }
        Ok(self.root.join(".meshgate").join(key))
    }

    /// Files whose documents define `id`, with how many documents each holds. Reads and parses
    /// the tree, so off the runtime's threads.
    async fn files_defining(&self, id: &ObjectRef) -> Result<Vec<(PathBuf, usize)>, StoreError> {
        let (root, id) = (self.root.clone(), id.clone());
        tokio::task::spawn_blocking(move || {
            let mut files = Vec::new();
            let _ = meshgate_api::collect_files(&root, &mut files);
            files
                .into_iter()
                .filter_map(|f| {
                    let text = std::fs::read_to_string(&f).ok()?;
                    // A file that defines the object names it: a name is a DNS label or
                    // subdomain, written as it is (only a YAML escape could spell it otherwise).
                    // Parsing only those files makes a put cost a read of the tree, not a parse
                    // of it (~1 s at 2,000 Services with their EndpointSlices).
                    if !text.contains(id.name.as_ref()) {
                        return None;
                    }
                    let loaded = meshgate_api::load_str(&f.display().to_string().into(), &text);
                    let docs = loaded.objects.len() + loaded.errors.len();
                    loaded.objects.iter().any(|o| o.id == id).then_some((f, docs))
                })
                .collect()
        })
        .await
        .map_err(|e| StoreError::Refused(e.to_string()))
    }

    fn new_file_for(&self, id: &ObjectRef) -> PathBuf {
        let dir = match &id.namespace {
            Some(ns) => self.root.join(ns.as_ref()),
            None => self.root.join("_cluster"),
        };
        dir.join(format!("{}-{}.yaml", id.kind.as_str().to_ascii_lowercase(), id.name))
    }
}

fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.{:x}.tmp", fastrand::u64(..)));
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

impl Store for DirStore {
    async fn load(&self) -> Result<Loaded, StoreError> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || meshgate_api::load_paths(&[root]))
            .await
            .map_err(|e| StoreError::Refused(e.to_string()))
    }

    async fn put(&self, object: &Object, json: &serde_json::Value) -> Result<(), StoreError> {
        let yaml = serde_saphyr::to_string(json).map_err(|e| StoreError::Refused(e.to_string()))?;
        let target = match self.files_defining(&object.id).await?.as_slice() {
            [] => self.new_file_for(&object.id),
            [(file, 1)] => file.clone(),
            [(file, _)] => {
                return Err(StoreError::Refused(format!(
                    "{} is defined in {} together with other resources; edit that file",
                    object.id,
                    file.display()
                )));
            }
            many => {
                let names: Vec<String> = many.iter().map(|(f, _)| f.display().to_string()).collect();
                return Err(StoreError::Refused(format!(
                    "{} is defined in several files: {}",
                    object.id,
                    names.join(", ")
                )));
            }
        };
        write_atomically(&target, yaml.as_bytes())?;
        self.changes.send_modify(|v| *v += 1);
        Ok(())
    }

    async fn delete(&self, id: &ObjectRef) -> Result<bool, StoreError> {
        match self.files_defining(id).await?.as_slice() {
            [] => Ok(false),
            [(file, 1)] => {
                std::fs::remove_file(file)?;
                self.changes.send_modify(|v| *v += 1);
                Ok(true)
            }
            [(file, _), ..] => Err(StoreError::Refused(format!(
                "{id} is defined in {} together with other resources; edit that file",
                file.display()
            ))),
        }
    }

    async fn get_blob(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match std::fs::read(self.blob_path(key)?) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn put_blob(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        Ok(write_atomically(&self.blob_path(key)?, value)?)
    }

    async fn create_blob(&self, key: &str, value: &[u8]) -> Result<bool, StoreError> {
        let path = self.blob_path(key)?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        use std::io::Write;
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut f) => {
                f.write_all(value)?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn take_blob(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.blob_path(key)?;
        // Rename first: of two concurrent takers, exactly one wins the rename.
        let claimed = path.with_file_name(format!(".taken-{:x}", fastrand::u64(..)));
        match std::fs::rename(&path, &claimed) {
            Ok(()) => {
                let v = std::fs::read(&claimed)?;
                let _ = std::fs::remove_file(&claimed);
                // A key two levels down (`tapped/ID/REPLICA`): its directory goes with its last
                // key (remove_dir refuses one that is not empty).
                if key.matches('/').count() >= 2
                    && let Some(dir) = path.parent()
                {
                    let _ = std::fs::remove_dir(dir);
                }
                Ok(Some(v))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn list_blobs(&self, dir: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let entries = match std::fs::read_dir(self.blob_path(dir)?) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            // Files being written or taken are hidden until renamed into place.
            if name.starts_with('.') {
                continue;
            }
            match std::fs::read(e.path()) {
                Ok(v) => out.push((name, v)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        out.sort();
        Ok(out)
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn describe(&self) -> String {
        format!("dir:{}", self.root.display())
    }
}
