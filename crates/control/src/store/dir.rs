//! The directory store: every YAML file under a directory (as `meshgate gateway -f` reads
//! them), watched for changes; `meshgate apply` writes one file per resource. The control
//! plane's own state lives in `.meshgate/` inside it (hidden files are not resources).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

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
    /// What each file held when it was last parsed, by the stamp it had then: a load parses
    /// only the files that changed since (one Service changed in a store of 10,000 is one
    /// file parsed, not 20,000).
    parsed: Arc<Mutex<HashMap<PathBuf, Parsed>>>,
    /// A load is due once the files too recent to trust have settled.
    settling: Arc<AtomicBool>,
}

/// A file's contents as parsed, and the stamp it had when it was read (none when it was
/// modified too recently to trust: see [`Stamp::of`]).
#[derive(Debug)]
struct Parsed {
    stamp: Option<Stamp>,
    loaded: Loaded,
}

/// What tells a file changed without reading it: its size, inode (a write by rename is a new
/// inode) and change and modification times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    ino: u64,
    ctime: (i64, i64),
    mtime: (i64, i64),
}

/// How recent a modification must be for its stamp not to be trusted. File times advance in
/// the kernel's clock ticks (a few milliseconds), so two writes of the same size inside one
/// tick leave the same stamp; a file changed this recently is parsed again at the next load
/// (git's "racily clean" entries are handled the same way).
const RACY: Duration = Duration::from_secs(2);

impl Stamp {
    fn of(meta: &std::fs::Metadata, now: SystemTime, racy: Duration) -> Option<Stamp> {
        use std::os::unix::fs::MetadataExt;
        let ctime = SystemTime::UNIX_EPOCH + Duration::new(meta.ctime().max(0) as u64, meta.ctime_nsec() as u32);
        let changed = meta.modified().ok()?.max(ctime);
        // A time ahead of the clock (skew, `touch -d`) is trusted: a write now would set an
        // earlier time, so it could not leave the same stamp.
        if now.duration_since(changed).is_ok_and(|age| age < racy) {
            return None;
        }
        Some(Stamp {
            len: meta.len(),
            ino: meta.ino(),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            mtime: (meta.mtime(), meta.mtime_nsec()),
        })
    }
}

/// Loads every resource file under `root`, parsing only those whose stamp differs from the
/// one in `parsed` (which is replaced by what was found: deleted files leave it); also says
/// how many files it parsed.
fn load_changed(root: &Path, parsed: &mut HashMap<PathBuf, Parsed>, racy: Duration) -> (Loaded, usize) {
    let mut loaded = Loaded::default();
    let mut parses = 0;
    let mut files = Vec::new();
    if let Err(e) = meshgate_api::collect_files(root, &mut files) {
        loaded.errors.push(meshgate_api::cannot_read(root, &e));
        return (loaded, 0);
    }
    let now = SystemTime::now();
    let mut next = HashMap::with_capacity(files.len());
    for file in files {
        // The stamp is taken before the read: a write after it changes the stamp, so the next
        // load reads the file again.
        let stamp = match std::fs::metadata(&file) {
            Ok(meta) => Stamp::of(&meta, now, racy),
            // Deleted between the listing and now: gone, as if listed a moment later.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                loaded.errors.push(meshgate_api::cannot_read(&file, &e));
                continue;
            }
        };
        let part = match parsed.remove(&file) {
            Some(p) if p.stamp.is_some() && p.stamp == stamp => p,
            _ => {
                parses += 1;
                match meshgate_api::load_file(&file) {
                    Ok(loaded) => Parsed { stamp, loaded },
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    // Not kept: a read that failed (out of descriptors, an I/O error) is tried
                    // again at the next load, not remembered until the file changes.
                    Err(e) => {
                        let mut loaded = Loaded::default();
                        loaded.errors.push(meshgate_api::cannot_read(&file, &e));
                        Parsed { stamp: None, loaded }
                    }
                }
            }
        };
        loaded.objects.extend(part.loaded.objects.iter().cloned());
        loaded.errors.0.extend(part.loaded.errors.0.iter().cloned());
        next.insert(file, part);
    }
    *parsed = next;
    (loaded, parses)
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
        Ok(DirStore {
            root,
            changes: tx,
            _watcher: Some(Arc::new(std::sync::Mutex::new(watcher))),
            parsed: Arc::default(),
            settling: Arc::default(),
        })
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
        let (root, parsed) = (self.root.clone(), self.parsed.clone());
        let (changes, settling) = (self.changes.clone(), self.settling.clone());
        tokio::task::spawn_blocking(move || {
            // One load at a time (the state reloads one at a time already). A load that
            // panicked leaves only whole entries behind (each a file's stamp with what it held
            // then), so a poisoned cache is still right: what is missing is parsed again.
            let mut parsed = parsed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let loaded = load_changed(&root, &mut parsed, RACY).0;
            // Files too recent to trust are parsed again at every load until they are not:
            // one more load once they have settled (a store just written, as a checkout or a
            // script makes one) so that the next change does not pay for them all.
            if parsed.values().any(|p| p.stamp.is_none()) && !settling.swap(true, Ordering::AcqRel) {
                std::thread::spawn(move || {
                    std::thread::sleep(RACY + Duration::from_millis(100));
                    settling.store(false, Ordering::Release);
                    changes.send_modify(|v| *v += 1);
                });
            }
            loaded
        })
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
        // No change notice of our own: whoever writes reloads right after (the API does), and
        // the file watcher reports the write too; a notice here made every change cost one
        // more reload that found nothing (~0.2 s at 10,000 Services).
        write_atomically(&target, yaml.as_bytes())?;
        Ok(())
    }

    async fn delete(&self, id: &ObjectRef) -> Result<bool, StoreError> {
        match self.files_defining(id).await?.as_slice() {
            [] => Ok(false),
            [(file, 1)] => {
                std::fs::remove_file(file)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, port: u16) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  ports: [{{port: {port}}}]\n"
        )
    }

    fn names(l: &Loaded) -> Vec<String> {
        let mut v: Vec<String> = l.objects.iter().map(|o| o.id.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn a_load_parses_only_the_files_that_changed() {
        let dir = meshgate_testkit::TempDir::new("dir-store");
        for n in ["a", "b", "c"] {
            std::fs::write(dir.path().join(format!("{n}.yaml")), service(n, 80)).unwrap();
        }
        let mut parsed = HashMap::new();
        let (first, parses) = load_changed(dir.path(), &mut parsed, Duration::ZERO);
        assert_eq!((first.objects.len(), parses), (3, 3));
        let (again, parses) = load_changed(dir.path(), &mut parsed, Duration::ZERO);
        assert_eq!((names(&again), parses), (names(&first), 0));

        // Changed (by rename, as `apply` writes), added, removed.
        write_atomically(&dir.path().join("b.yaml"), service("b", 8080).as_bytes()).unwrap();
        std::fs::write(dir.path().join("d.yaml"), service("d", 80)).unwrap();
        std::fs::remove_file(dir.path().join("a.yaml")).unwrap();
        let (after, parses) = load_changed(dir.path(), &mut parsed, Duration::ZERO);
        assert_eq!(parses, 2);
        assert_eq!(names(&after), ["Service shop/b", "Service shop/c", "Service shop/d"]);
        let b = after.objects.iter().find(|o| o.id.name.as_ref() == "b").unwrap();
        assert!(serde_json::to_string(&b.resource).unwrap().contains("8080"));
        assert_eq!(parsed.len(), 3, "a removed file leaves the cache");

        // A file that stops parsing: its error replaces its objects; fixed, it is back.
        std::fs::write(dir.path().join("c.yaml"), "kind: [").unwrap();
        let (broken, _) = load_changed(dir.path(), &mut parsed, Duration::ZERO);
        assert_eq!(names(&broken), ["Service shop/b", "Service shop/d"]);
        assert_eq!(broken.errors.0.len(), 1, "{:?}", broken.errors);
        std::fs::write(dir.path().join("c.yaml"), service("c", 80)).unwrap();
        let (fixed, _) = load_changed(dir.path(), &mut parsed, Duration::ZERO);
        assert_eq!(names(&fixed).len(), 3);
        assert!(fixed.errors.0.is_empty());
    }

    #[test]
    fn a_file_dated_ahead_of_the_clock_is_not_parsed_at_every_load() {
        let dir = meshgate_testkit::TempDir::new("dir-store");
        let f = dir.path().join("s.yaml");
        std::fs::write(&f, service("s", 80)).unwrap();
        let ahead = SystemTime::now() + Duration::from_secs(3600);
        std::fs::File::options().write(true).open(&f).unwrap().set_modified(ahead).unwrap();
        let mut parsed = HashMap::new();
        assert_eq!(load_changed(dir.path(), &mut parsed, RACY).1, 1);
        assert_eq!(load_changed(dir.path(), &mut parsed, RACY).1, 0);
    }

    #[test]
    fn a_rewrite_in_place_of_the_same_size_right_after_a_load_is_seen() {
        // Same size, same inode, and (inside one clock tick) the same times: only the racy
        // rule tells it changed.
        let dir = meshgate_testkit::TempDir::new("dir-store");
        let f = dir.path().join("s.yaml");
        std::fs::write(&f, service("s", 8081)).unwrap();
        let mut parsed = HashMap::new();
        let (first, _) = load_changed(dir.path(), &mut parsed, RACY);
        assert!(serde_json::to_string(&first.objects[0].resource).unwrap().contains("8081"));
        std::fs::write(&f, service("s", 8082)).unwrap();
        let (second, parses) = load_changed(dir.path(), &mut parsed, RACY);
        assert_eq!(parses, 1);
        assert!(serde_json::to_string(&second.objects[0].resource).unwrap().contains("8082"));
    }
}
