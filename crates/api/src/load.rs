//! Reading resources: files and directories of multi-document YAML (JSON is YAML too),
//! and `kind: List` documents as `kubectl get -o yaml` writes them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{ConfigError, Errors};
use crate::kind::Kind;
use crate::resource::{Object, ObjectRef, Resource, Source};

/// What loading produced: every resource that decoded, and every error found.
#[derive(Debug, Default, Clone)]
pub struct Loaded {
    /// Resources that decoded and passed their own validation.
    pub objects: Vec<Object>,
    /// Everything that did not.
    pub errors: Errors,
}

impl Loaded {
    fn extend(&mut self, other: Loaded) {
        self.objects.extend(other.objects);
        self.errors.0.extend(other.errors.0);
    }
}

/// Loads every resource under `paths`: files as given, directories recursively (files ending
/// in `.yaml`, `.yml` or `.json`, in name order, hidden files skipped).
pub fn load_paths(paths: &[PathBuf]) -> Loaded {
    let mut loaded = Loaded::default();
    for path in paths {
        let mut files = Vec::new();
        if let Err(e) = collect_files(path, &mut files) {
            loaded.errors.push(cannot_read(path, &e));
            continue;
        }
        for file in files {
            match load_file(&file) {
                Ok(l) => loaded.extend(l),
                // Deleted between the listing and the read (a store being written to): gone,
                // as if listed a moment later; not an error.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && file != *path => {}
                Err(e) => loaded.errors.push(cannot_read(&file, &e)),
            }
        }
    }
    loaded
}

/// The resources of one file, named after its path.
pub fn load_file(file: &Path) -> std::io::Result<Loaded> {
    let text = std::fs::read_to_string(file)?;
    Ok(load_str(&file.display().to_string().into(), &text))
}

/// The error for a file or directory that could not be read.
pub fn cannot_read(path: &Path, e: &std::io::Error) -> ConfigError {
    ConfigError::file(&path.display().to_string().into(), format!("cannot read: {e}"))
}

/// Lists the resource files under `path` (the path itself when it is a file).
pub fn collect_files(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_dir() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for entry in entries {
        let name = entry.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') {
            continue;
        }
        if entry.is_dir() {
            match collect_files(&entry, out) {
                // Removed between the listing and now: gone, as if listed a moment later
                // (failing the whole listing would make a store being edited look empty).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                r => r?,
            }
        } else if is_resource_file(&entry) {
            out.push(entry);
        }
    }
    Ok(())
}

/// Whether a directory entry is read as resources.
pub fn is_resource_file(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
}

/// Loads every document of one YAML text; `source` names it in errors.
pub fn load_str(source: &Arc<str>, text: &str) -> Loaded {
    let mut loaded = Loaded::default();
    for (line, doc) in split_documents(text) {
        if doc.lines().all(|l| {
            let t = l.trim();
            t.is_empty() || t.starts_with('#')
        }) {
            continue;
        }
        let value: Value = match serde_saphyr::from_str_with_options(doc, yaml_options()) {
            Ok(v) => v,
            Err(e) => {
                let (l, c) = e.location().map_or((0, 0), |loc| (loc.line() as usize, loc.column() as usize));
                let mut err = ConfigError::file(source, format!("invalid YAML: {}", yaml_message(&e)));
                err.position = Some((line + l.saturating_sub(1), c));
                loaded.errors.push(err);
                continue;
            }
        };
        if value.is_null() {
            continue;
        }
        let src = Source { file: source.clone(), line };
        match decode_value(&src, value, "") {
            Ok(objects) => loaded.objects.extend(objects),
            Err(errors) => loaded.errors.0.extend(errors.0),
        }
    }
    loaded
}

/// YAML 1.2 scalars (`yes`, `y`, `on` stay strings), duplicate keys refused, plain errors.
fn yaml_options() -> serde_saphyr::Options {
    let mut options = serde_saphyr::Options::default();
    options.strict_booleans = true;
    options.with_snippet = false;
    options
}

/// The message of a YAML error without its own location prefix (ours is added instead).
fn yaml_message(e: &serde_saphyr::Error) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or("").trim();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    match first.split_once(": ") {
        Some((loc, rest)) if loc.starts_with("line ") => rest.to_string(),
        _ => first.to_string(),
    }
}

/// Splits a YAML stream at `---` document markers, keeping each document's first line number.
fn split_documents(text: &str) -> Vec<(usize, &str)> {
    let mut docs = Vec::new();
    let mut start = 0usize;
    let mut start_line = 1usize;
    let mut offset = 0usize;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end_matches(['\n', '\r']);
        let marker = bare == "---" || bare.starts_with("--- ") || bare.starts_with("---\t") || bare == "...";
        if marker {
            docs.push((start_line, &text[start..offset]));
            start = offset + line.len();
            start_line = i + 2;
        }
        offset += line.len();
    }
    docs.push((start_line, &text[start..]));
    docs
}

/// Decodes one parsed document (a resource, or a `List` of them) into typed objects.
///
/// `prefix` is prepended to field paths (`items[3]` for members of a List).
pub fn decode_document(source: &Source, value: Value) -> Result<Vec<Object>, Errors> {
    decode_value(source, value, "")
}

fn decode_value(source: &Source, value: Value, prefix: &str) -> Result<Vec<Object>, Errors> {
    let file = &source.file;
    let at = |field: &str| if prefix.is_empty() { field.to_string() } else { format!("{prefix}.{field}") };
    let here = if prefix.is_empty() { String::new() } else { format!("{prefix}: ") };
    let Value::Object(map) = &value else {
        return Err(one(ConfigError::file(
            file,
            format!("{here}a resource must be a mapping with apiVersion, kind, metadata and spec"),
        )));
    };
    let api_version = map.get("apiVersion").and_then(Value::as_str).unwrap_or("").to_string();
    let kind_name = map.get("kind").and_then(Value::as_str).unwrap_or("").to_string();
    if kind_name.is_empty() {
        return Err(one(ConfigError::file(file, format!("{here}{}: required", at("kind")))));
    }
    if kind_name == "List"
        || (kind_name.ends_with("List") && Kind::from_name(&kind_name[..kind_name.len() - 4]).is_some())
    {
        let Some(Value::Array(items)) = map.get("items") else {
            return Err(one(ConfigError::file(file, format!("{here}{}: a List needs items", at("items")))));
        };
        let mut objects = Vec::new();
        let mut errors = Errors::default();
        for (i, item) in items.iter().enumerate() {
            match decode_value(source, item.clone(), &at(&format!("items[{i}]"))) {
                Ok(o) => objects.extend(o),
                Err(e) => errors.0.extend(e.0),
            }
        }
        return if errors.is_empty() { Ok(objects) } else { Err(errors) };
    }
    let meta = map.get("metadata");
    let name_value = meta.and_then(|m| m.get("name"));
    let name = name_value.and_then(Value::as_str).unwrap_or("").to_string();
    let namespace = meta.and_then(|m| m.get("namespace")).and_then(Value::as_str).map(str::to_string);
    let Some(kind) = Kind::from_name(&kind_name) else {
        let known: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
        let who = if name.is_empty() { String::new() } else { format!(" ({name})") };
        return Err(one(ConfigError::file(
            file,
            format!("{here}{}: unknown kind {kind_name:?}{who}; meshgate reads {}", at("kind"), known.join(", ")),
        )));
    };
    let id = ObjectRef {
        kind,
        namespace: kind.namespaced().then(|| namespace.clone().unwrap_or_else(|| "default".to_string()).into()),
        name: name.as_str().into(),
    };
    let mut errors = Errors::default();
    let mut err = |field: &str, msg: String| errors.push(ConfigError::field(file, &id, at(field), msg));
    if api_version.is_empty() {
        err("apiVersion", "required".into());
    } else if let Err(msg) = kind.check_api_version(&api_version) {
        err("apiVersion", msg);
    }
    match name_value {
        Some(Value::String(n)) if !n.is_empty() => {}
        Some(v) if !v.is_null() && !v.is_string() => err("metadata.name", format!("must be a string, got {v}")),
        _ => err("metadata.name", "required".into()),
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let resource = match kind {
        Kind::GatewayClass => typed(value).map(|r| Resource::GatewayClass(Arc::new(r))),
        Kind::Gateway => typed(value).map(|r| Resource::Gateway(Arc::new(r))),
        Kind::HttpRoute => typed(value).map(|r| Resource::HttpRoute(Arc::new(r))),
        Kind::BackendTlsPolicy => typed(value).map(|r| Resource::BackendTlsPolicy(Arc::new(r))),
        Kind::ConfigMap => typed(value).map(|r| Resource::ConfigMap(Arc::new(r))),
        Kind::GrpcRoute => typed(value).map(|r| Resource::GrpcRoute(Arc::new(r))),
        Kind::TlsRoute => typed(value).map(|r| Resource::TlsRoute(Arc::new(r))),
        Kind::TcpRoute => typed(value).map(|r| Resource::TcpRoute(Arc::new(r))),
        Kind::ReferenceGrant => typed(value).map(|r| Resource::ReferenceGrant(Arc::new(r))),
        Kind::Namespace => typed(value).map(|r| Resource::Namespace(Arc::new(r))),
        Kind::Service => typed(value).map(|r| Resource::Service(Arc::new(r))),
        Kind::EndpointSlice => typed(value).map(|r| Resource::EndpointSlice(Arc::new(r))),
        Kind::Endpoints => typed(value).map(|r| Resource::Endpoints(Arc::new(r))),
        Kind::IngressClass => typed(value).map(|r| Resource::IngressClass(Arc::new(r))),
        Kind::Ingress => typed(value).map(|r| Resource::Ingress(Arc::new(r))),
        Kind::Secret => typed(value).map(|r| Resource::Secret(Arc::new(r))),
        Kind::Workload => typed(value).map(|r| Resource::Workload(Arc::new(r))),
        Kind::TrafficPolicy => typed(value).map(|r| Resource::TrafficPolicy(Arc::new(r))),
        Kind::FaultInjection => typed(value).map(|r| Resource::FaultInjection(Arc::new(r))),
        Kind::HttpRouteFilter => typed(value).map(|r| Resource::HttpRouteFilter(Arc::new(r))),
        Kind::ListenerPolicy => typed(value).map(|r| Resource::ListenerPolicy(Arc::new(r))),
        Kind::PeerAuthentication => typed(value).map(|r| Resource::PeerAuthentication(Arc::new(r))),
        Kind::AuthorizationPolicy => typed(value).map(|r| Resource::AuthorizationPolicy(Arc::new(r))),
        Kind::MeshConfig => typed(value).map(|r| Resource::MeshConfig(Arc::new(r))),
    };
    let mut resource = match resource {
        Ok(r) => r,
        Err(problems) => {
            for (field, msg) in problems {
                errors.push(ConfigError::field(file, &id, at(&field), msg));
            }
            return Err(errors);
        }
    };
    if kind.namespaced() {
        resource.metadata_mut().namespace = Some(id.ns().to_string());
    } else {
        resource.metadata_mut().namespace = None;
    }
    let object = Object { id, source: source.clone(), resource };
    for problem in crate::validate::validate(&object) {
        errors.push(ConfigError::field(file, &object.id, at(&problem.field), problem.message));
    }
    if errors.is_empty() { Ok(vec![object]) } else { Err(errors) }
}

fn one(e: ConfigError) -> Errors {
    Errors(vec![e])
}

/// Deserializes `value` as `T`, reporting every field that is in no schema and the first
/// type error, each with its field path.
fn typed<T: DeserializeOwned>(value: Value) -> Result<T, Vec<(String, String)>> {
    let mut unknown: Vec<String> = Vec::new();
    let mut track = serde_path_to_error::Track::new();
    let result = {
        let mut on_ignored = |path: serde_ignored::Path<'_>| {
            let field = format_ignored(&path);
            // apiVersion and kind are checked above; derived root types skip them.
            if field != "apiVersion" && field != "kind" {
                unknown.push(field);
            }
        };
        let inner = serde_ignored::Deserializer::new(value, &mut on_ignored);
        T::deserialize(serde_path_to_error::Deserializer::new(inner, &mut track))
    };
    let mut problems: Vec<(String, String)> =
        unknown.into_iter().map(|f| (f, "unknown field (not in the schema of this kind)".to_string())).collect();
    match result {
        Ok(v) if problems.is_empty() => Ok(v),
        Ok(_) => Err(problems),
        Err(e) => {
            let path = track.path().to_string();
            let path = if path == "." { String::new() } else { path };
            problems.push((path, e.to_string()));
            Err(problems)
        }
    }
}

fn format_ignored(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path as P;
    match path {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", format_ignored(parent)),
        P::Map { parent, key } => {
            let p = format_ignored(parent);
            if p.is_empty() { key.clone() } else { format!("{p}.{key}") }
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => format_ignored(parent),
    }
}

#[cfg(test)]
mod tests;
