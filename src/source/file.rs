//! The config-directory source: multi-document YAML and JSON files under a directory, as
//! users write them for `kubectl apply`, watched for changes.
//!
//! Each file's objects are remembered with the hash of its bytes. A file-system event only
//! marks paths for a rescan; after a short quiet period every marked file is re-read, and a
//! file whose bytes did not change produces nothing. A changed file is diffed object by object
//! against what it held before, so an edit becomes exactly the add/update/delete events it
//! implies. An object defined in two files is taken from the first path in sorted order (and
//! the clash is logged); removing that file hands it over to the other one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use crate::engine::{Command, CommandSender};
use crate::model::{InputEvent, Object, ObjectKey, ParseOutcome, parse_document};

/// Name of this source for readiness reporting.
pub const SOURCE_NAME: &str = "config-dir";

/// Namespace for objects that name none, as `kubectl apply` without `-n` would.
pub const DEFAULT_NAMESPACE: &str = "default";

/// How long the directory must be quiet before marked files are re-read: editors write a
/// file in several steps (truncate, write, rename a swap file).
const QUIET: Duration = Duration::from_millis(50);

/// The longest a change waits for the directory to go quiet: under a steady stream of writes
/// (a generator, a sync tool) the marked files are re-read at least this often, as istiod caps
/// its debounce (`PILOT_DEBOUNCE_MAX`).
const MAX_WAIT: Duration = Duration::from_millis(200);

/// One problem found while loading a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadError {
    pub path: PathBuf,
    /// The document's index in the file, from 0.
    pub document: usize,
    pub message: String,
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (document {}): {}", self.path.display(), self.document, self.message)
    }
}

#[derive(Default)]
struct FileState {
    hash: u64,
    /// The file's objects, sorted by key (a sorted slice: a B-tree of one or a few objects
    /// would cost a ~2 KB leaf each).
    objects: Box<[(ObjectKey, Object)]>,
}

impl FileState {
    fn keys(&self) -> impl Iterator<Item = &ObjectKey> {
        self.objects.iter().map(|(k, _)| k)
    }

    fn get(&self, key: &ObjectKey) -> Option<&Object> {
        self.objects.binary_search_by(|(k, _)| k.cmp(key)).ok().map(|i| &self.objects[i].1)
    }
}

/// The directory's current contents, file by file.
pub struct ConfigDir {
    root: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    /// For every object: the files that define it, in path order (the first one's version
    /// counts). Only the paths: each object is held once, in its file's state. (A map of
    /// file → object per key held every object twice, and a B-tree leaf of ~2 KB per object:
    /// 270 MB at 125,000 objects.)
    owners: HashMap<ObjectKey, Vec<PathBuf>>,
    /// Problems found by the last load of each file.
    errors: BTreeMap<PathBuf, Vec<LoadError>>,
    /// The kinds meshflow does not read, per file (`apiVersion/kind`, one per document).
    skipped: BTreeMap<PathBuf, Vec<String>>,
}

fn is_config_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if name.starts_with('.') || name.ends_with('~') {
        return false;
    }
    matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
}

fn hidden(path: &Path, root: &Path) -> bool {
    path.strip_prefix(root)
        .map(|rel| rel.components().any(|c| c.as_os_str().to_str().is_some_and(|s| s.starts_with('.'))))
        .unwrap_or(false)
}

/// Reads the documents of one file: a JSON file is one document (a `List` is unpacked later);
/// a YAML file is a `---`-separated stream.
pub fn read_documents(path: &Path, text: &str) -> Vec<Result<serde_json::Value, String>> {
    use serde::Deserialize;
    if path.extension().and_then(|e| e.to_str()) == Some("json") {
        return vec![serde_json::from_str(text).map_err(|e| e.to_string())];
    }
    let mut docs = Vec::new();
    for de in serde_yaml_ng::Deserializer::from_str(text) {
        match serde_json::Value::deserialize(de) {
            Ok(v) => docs.push(Ok(v)),
            Err(e) => {
                docs.push(Err(e.to_string()));
                // A syntax error leaves the stream unusable past this point.
                if e.location().is_some() {
                    break;
                }
            }
        }
    }
    docs
}

/// What one document of a file turned into: its index in the file (from 0) and its parse
/// outcomes (one per `List` item), or why it is not a document at all.
pub type DocumentOutcomes = (usize, Result<Vec<ParseOutcome>, String>);

/// Parses one file's text, document by document: the one reading of a file shared by
/// [`load_file`] (the config-directory source) and `meshflow validate`.
pub fn parse_file(path: &Path, text: &str) -> Vec<DocumentOutcomes> {
    read_documents(path, text)
        .into_iter()
        .enumerate()
        .map(|(document, doc)| (document, doc.map(|doc| parse_document(doc, DEFAULT_NAMESPACE))))
        .collect()
}

/// Parses one file's text into objects, with every problem found on the way.
pub fn load_file(path: &Path, text: &str) -> (BTreeMap<ObjectKey, Object>, Vec<LoadError>) {
    let (objects, errors, _) = load_file_with_skipped(path, text);
    (objects, errors)
}

/// [`load_file`], with the kinds of the documents meshflow does not read (`apiVersion/kind`,
/// one per document).
pub fn load_file_with_skipped(path: &Path, text: &str) -> (BTreeMap<ObjectKey, Object>, Vec<LoadError>, Vec<String>) {
    let mut objects = BTreeMap::new();
    let mut errors = Vec::new();
    let mut skipped = Vec::new();
    for (document, outcomes) in parse_file(path, text) {
        let err = |message: String| LoadError { path: path.to_path_buf(), document, message };
        let outcomes = match outcomes {
            Ok(outcomes) => outcomes,
            Err(message) => {
                errors.push(err(malformed_message(&message)));
                continue;
            }
        };
        for outcome in outcomes {
            match outcome {
                ParseOutcome::Object(object) => {
                    let key = object.key();
                    if objects.insert(key.clone(), object).is_some() {
                        errors.push(err(defined_twice_message(&key)));
                    }
                }
                ParseOutcome::Skipped { api_version, kind } => {
                    tracing::debug!(file = %path.display(), document, %api_version, %kind, "skipping a kind meshflow does not read");
                    skipped.push(format!("{api_version}/{kind}"));
                }
                ParseOutcome::Rejected { what, errors: fields } => {
                    let reasons: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
                    errors.push(err(format!("{what} rejected: {}", reasons.join("; "))));
                }
            }
        }
    }
    (objects, errors, skipped)
}

/// How the loader reports a document that is not YAML/JSON.
pub fn malformed_message(reason: &str) -> String {
    format!("malformed document: {reason}")
}

/// How the loader reports a second definition of one object in one file.
pub fn defined_twice_message(key: &ObjectKey) -> String {
    format!("{key} is defined twice in this file; the later one is used")
}

/// Every config file (`*.yaml`, `*.yml`, `*.json`, not hidden) at or under `path`, in path
/// order, as the config-directory source reads them. A file given directly is taken whatever
/// its extension.
pub fn config_files(path: &Path) -> Vec<PathBuf> {
    if path.is_dir() {
        let mut found = BTreeSet::new();
        walk(path, path, &mut found);
        found.into_iter().collect()
    } else {
        vec![path.to_path_buf()]
    }
}

impl ConfigDir {
    pub fn new(root: impl Into<PathBuf>) -> ConfigDir {
        ConfigDir {
            root: root.into(),
            files: BTreeMap::new(),
            owners: HashMap::new(),
            errors: BTreeMap::new(),
            skipped: BTreeMap::new(),
        }
    }

    /// Objects loaded, by kind (`Service=2 VirtualService=1`, kinds in the model's order).
    pub fn counts_by_kind(&self) -> BTreeMap<crate::model::Kind, usize> {
        let mut counts = BTreeMap::new();
        for key in self.owners.keys() {
            *counts.entry(key.kind).or_insert(0) += 1;
        }
        counts
    }

    /// Documents of kinds meshflow does not read, by `apiVersion/kind`.
    pub fn skipped_kinds(&self) -> BTreeMap<&str, usize> {
        let mut counts = BTreeMap::new();
        for kind in self.skipped.values().flatten() {
            *counts.entry(kind.as_str()).or_insert(0) += 1;
        }
        counts
    }

    /// The start-up lines: what was loaded, by kind, with the errors; the kinds not read
    /// counted at info and listed at debug.
    fn log_loaded(&self) {
        let by_kind: Vec<String> = self.counts_by_kind().iter().map(|(k, n)| format!("{k:?}={n}")).collect();
        tracing::info!(
            source = SOURCE_NAME,
            dir = %self.root.display(),
            objects = self.owners.len(),
            by_kind = %by_kind.join(" "),
            errors = self.errors().len(),
            "config directory loaded"
        );
        let skipped = self.skipped_kinds();
        if !skipped.is_empty() {
            let documents: usize = skipped.values().sum();
            tracing::info!(
                documents,
                kinds = skipped.len(),
                "skipped documents of kinds meshflow does not read (RUST_LOG=meshflow=debug lists them)"
            );
            let list: Vec<String> = skipped.iter().map(|(k, n)| format!("{k}={n}")).collect();
            tracing::debug!(kinds = %list.join(" "), "kinds meshflow does not read");
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every problem of the current load, file by file.
    pub fn errors(&self) -> Vec<LoadError> {
        self.errors.values().flatten().cloned().collect()
    }

    /// Reads the whole directory. Returns the events that bring a consumer from what it had
    /// (nothing, the first time) to the directory's contents.
    pub fn scan_all(&mut self) -> Vec<InputEvent> {
        let mut found = BTreeSet::new();
        walk(&self.root, &self.root, &mut found);
        let gone: Vec<PathBuf> = self.files.keys().filter(|p| !found.contains(*p)).cloned().collect();
        self.rescan(found.into_iter().chain(gone))
    }

    /// Re-reads the given paths (files or directories, present or gone).
    pub fn rescan(&mut self, paths: impl IntoIterator<Item = PathBuf>) -> Vec<InputEvent> {
        let mut files = BTreeSet::new();
        for path in paths {
            if path.is_dir() {
                walk(&path, &self.root, &mut files);
            }
            // Whatever was known at or under the path (a removed or renamed directory).
            files
                .extend(self.files.range(path.clone()..).map(|(p, _)| p).take_while(|p| p.starts_with(&path)).cloned());
            if is_config_file(&path) && !hidden(&path, &self.root) {
                files.insert(path);
            }
        }
        let files: Vec<(PathBuf, Option<u64>)> =
            files.into_iter().map(|p| (p.clone(), self.files.get(&p).map(|f| f.hash))).collect();
        let reads = read_all(&files);
        let mut touched = BTreeSet::new();
        for ((path, _), read) in files.iter().zip(reads) {
            self.apply(path, read, &mut touched);
        }
        self.events_for(touched)
    }

    /// Takes in what a read of `path` found.
    fn apply(&mut self, path: &Path, read: Read, touched: &mut BTreeSet<ObjectKey>) {
        let new = match read {
            Read::Unchanged => return,
            Read::Unreadable(e) => {
                // Unreadable for now (permissions, a race): keep what it held.
                tracing::warn!(file = %path.display(), error = %e, "cannot read file; keeping its last contents");
                return;
            }
            Read::Gone => None,
            Read::Loaded { hash, objects, errors, skipped } => {
                if skipped.is_empty() {
                    self.skipped.remove(path);
                } else {
                    self.skipped.insert(path.to_path_buf(), skipped);
                }
                for e in &errors {
                    tracing::warn!(file = %e.path.display(), document = e.document, "{}", e.message);
                }
                if errors.is_empty() {
                    self.errors.remove(path);
                } else {
                    self.errors.insert(path.to_path_buf(), errors);
                }
                Some(FileState { hash, objects: objects.into_iter().collect() })
            }
        };
        let old = match new {
            Some(state) => self.files.insert(path.to_path_buf(), state),
            None => {
                self.errors.remove(path);
                self.skipped.remove(path);
                self.files.remove(path)
            }
        };
        for key in old.iter().flat_map(|f| f.keys()) {
            if let Some(owners) = self.owners.get_mut(key) {
                owners.retain(|p| p != path);
                touched.insert(key.clone());
            }
        }
        if let Some(state) = self.files.get(path) {
            for key in state.keys() {
                let owners = self.owners.entry(key.clone()).or_default();
                if let Err(at) = owners.binary_search_by(|p| p.as_path().cmp(path)) {
                    owners.insert(at, path.to_path_buf());
                }
                if owners.len() > 1 {
                    let files: Vec<String> = owners.iter().map(|p| p.display().to_string()).collect();
                    tracing::warn!(object = %key, ?files, "object defined in several files; using the first");
                }
                touched.insert(key.clone());
            }
        }
    }

    /// The effective object of each touched key as an apply, or a delete when no file defines
    /// it any more. A touched key whose object did not change (another document of the same
    /// file changed) still yields an apply; the engine's driver drops an apply equal to what
    /// it holds, so it never becomes an output change.
    fn events_for(&mut self, touched: BTreeSet<ObjectKey>) -> Vec<InputEvent> {
        let mut events = Vec::new();
        for key in touched {
            match self.effective(&key) {
                Some(object) => events.push(InputEvent::apply(object.clone())),
                None => {
                    self.owners.remove(&key);
                    events.push(InputEvent::delete(key));
                }
            }
        }
        events
    }

    /// Every object currently defined, for the reference translator and tests.
    pub fn objects(&self) -> Vec<Object> {
        let mut keys: Vec<&ObjectKey> = self.owners.keys().collect();
        keys.sort();
        keys.into_iter().filter_map(|k| self.effective(k).cloned()).collect()
    }

    /// The version of `key` that counts: the one of the first file (in path order) that
    /// defines it.
    fn effective(&self, key: &ObjectKey) -> Option<&Object> {
        let path = self.owners.get(key)?.first()?;
        self.files.get(path)?.get(key)
    }
}

/// What reading one file found.
enum Read {
    /// Its content hashes as what is held.
    Unchanged,
    /// It is gone (or is no longer a file).
    Gone,
    Unreadable(std::io::Error),
    Loaded {
        hash: u64,
        objects: BTreeMap<ObjectKey, Object>,
        errors: Vec<LoadError>,
        skipped: Vec<String>,
    },
}

/// Reads and parses one file; `known` is the hash of the content held for it.
fn read_file(path: &Path, known: Option<u64>) -> Read {
    let bytes = match std::fs::read(path) {
        Ok(bytes) if path.is_file() => bytes,
        Ok(_) => return Read::Gone,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Read::Gone,
        Err(e) => return Read::Unreadable(e),
    };
    let hash = xxhash_rust::xxh3::xxh3_64(&bytes);
    if known == Some(hash) {
        return Read::Unchanged;
    }
    let text = String::from_utf8_lossy(&bytes);
    let (objects, errors, skipped) = load_file_with_skipped(path, &text);
    Read::Loaded { hash, objects, errors, skipped }
}

/// Files read and parsed on one thread up to this many; more are shared among the cores (the
/// YAML parse of a 10,000-file directory is seconds of CPU, before the engine can start).
const FILES_PER_THREAD: usize = 256;

/// [`read_file`] of every (path, hash held), in order: on several threads when there are many.
fn read_all(files: &[(PathBuf, Option<u64>)]) -> Vec<Read> {
    let read = |files: &[(PathBuf, Option<u64>)]| files.iter().map(|(p, k)| read_file(p, *k)).collect::<Vec<_>>();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = files.len().div_ceil(FILES_PER_THREAD).clamp(1, cores);
    if threads == 1 {
        return read(files);
    }
    std::thread::scope(|scope| {
        let workers: Vec<_> =
            files.chunks(files.len().div_ceil(threads)).map(|c| scope.spawn(move || read(c))).collect();
        workers
            .into_iter()
            .flat_map(|w| match w.join() {
                Ok(reads) => reads,
                // A parse never panics on input; if it did, fail as the serial read would.
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    })
}

fn walk(dir: &Path, root: &Path, out: &mut BTreeSet<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if hidden(&path, root) {
            continue;
        }
        match entry.file_type() {
            Ok(t) if t.is_dir() => walk(&path, root, out),
            // Follow symlinks to files (Kubernetes ConfigMap mounts are symlinks).
            Ok(_) if is_config_file(&path) && path.is_file() => {
                out.insert(path);
            }
            _ => {}
        }
    }
}

/// Whether a watch event can mean a file's content changed. Reads are reported too (inotify's
/// open and close-without-write): the source's own reads of every file at start, then of each
/// file it reloads, would otherwise come back as events and make it rescan what it just read
/// (at 10,000 files, 10 s of CPU beside the engine's initial translation).
fn may_change_content(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    match kind {
        notify::EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        notify::EventKind::Access(_) => false,
        _ => true,
    }
}

/// Loads the directory, sends its objects and the sync marker to the engine, then watches
/// it on a thread of its own for as long as the engine accepts commands.
pub fn spawn(root: PathBuf, engine: CommandSender) -> anyhow::Result<std::thread::JoinHandle<()>> {
    if !root.is_dir() {
        anyhow::bail!("config directory {} does not exist or is not a directory", root.display());
    }
    let root = root.canonicalize()?;
    let (tx, rx) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.as_ref().is_ok_and(|e| !may_change_content(&e.kind)) {
            return;
        }
        let _ = tx.send(event);
    })?;
    watcher.watch(&root, RecursiveMode::Recursive)?;
    let mut dir = ConfigDir::new(root.clone());
    let events = dir.scan_all();
    dir.log_loaded();
    let initial_ok =
        engine.send(Command::Events(events)).is_ok() && engine.send(Command::Synced(SOURCE_NAME.into())).is_ok();
    let handle = std::thread::Builder::new().name("meshflow-config-dir".into()).spawn(move || {
        let _watcher = watcher;
        if !initial_ok {
            return;
        }
        while let Ok(first) = rx.recv() {
            let mut paths = BTreeSet::new();
            let mut rescan_all = false;
            let mut note = |event: notify::Result<notify::Event>| match event {
                Ok(event) => paths.extend(event.paths),
                Err(e) => {
                    // Lost events (queue overflow): only a full rescan is safe.
                    tracing::warn!(error = %e, "file watch error; rescanning the whole directory");
                    rescan_all = true;
                }
            };
            note(first);
            let deadline = std::time::Instant::now() + MAX_WAIT;
            loop {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                match rx.recv_timeout(QUIET.min(left)) {
                    Ok(event) => note(event),
                    Err(_) => break,
                }
            }
            let events = if rescan_all { dir.scan_all() } else { dir.rescan(paths) };
            if !events.is_empty() {
                tracing::debug!(events = events.len(), "config directory changed");
                if engine.send(Command::Events(events)).is_err() {
                    return;
                }
            }
        }
    })?;
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Kind;

    const SVC: &str =
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports: [{name: http, port: 80}]\n";

    fn keys(events: &[InputEvent]) -> Vec<(String, bool)> {
        events.iter().map(|e| (e.key.to_string(), e.object.is_some())).collect()
    }

    #[test]
    fn loaded_objects_are_counted_by_kind_and_unread_kinds_apart() {
        let tmp = tempfile::tempdir().unwrap();
        let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n";
        let deploy = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n";
        std::fs::write(tmp.path().join("a.yaml"), format!("{SVC}---\n{cm}---\n{deploy}---\n{cm}")).unwrap();
        std::fs::write(tmp.path().join("b.yaml"), "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n").unwrap();
        let mut dir = ConfigDir::new(tmp.path());
        dir.scan_all();
        assert_eq!(dir.counts_by_kind(), [(Kind::Namespace, 1), (Kind::Service, 1)].into_iter().collect());
        assert_eq!(dir.skipped_kinds(), [("apps/v1/Deployment", 1), ("v1/ConfigMap", 2)].into_iter().collect());
        std::fs::remove_file(tmp.path().join("a.yaml")).unwrap();
        dir.scan_all();
        assert!(dir.skipped_kinds().is_empty(), "a removed file's skipped kinds are forgotten");
    }

    #[test]
    fn rewriting_a_file_with_the_same_content_produces_no_event() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("a.yaml"), SVC).unwrap();
        let mut dir = ConfigDir::new(tmp.path());
        assert_eq!(keys(&dir.scan_all()), vec![("Service default/web".to_string(), true)]);
        std::fs::write(tmp.path().join("a.yaml"), SVC).unwrap();
        assert!(dir.rescan([tmp.path().join("a.yaml")]).is_empty());
    }

    #[test]
    fn removing_a_document_from_a_file_deletes_only_that_object() {
        let tmp = tempfile::tempdir().unwrap();
        let two = format!("{SVC}---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: shop}}\n");
        std::fs::write(tmp.path().join("a.yaml"), &two).unwrap();
        let mut dir = ConfigDir::new(tmp.path());
        assert_eq!(dir.scan_all().len(), 2);
        std::fs::write(tmp.path().join("a.yaml"), SVC).unwrap();
        let events = dir.rescan([tmp.path().join("a.yaml")]);
        assert_eq!(
            keys(&events),
            vec![("Namespace shop".to_string(), false), ("Service default/web".to_string(), true)]
        );
    }

    #[test]
    fn a_malformed_document_is_reported_and_the_others_still_load() {
        let tmp = tempfile::tempdir().unwrap();
        let text = format!(
            "{SVC}---\napiVersion: v1\nkind: Service\nmetadata: {{name: bad}}\nspec:\n  ports: [{{port: -1}}]\n"
        );
        std::fs::write(tmp.path().join("a.yaml"), text).unwrap();
        let mut dir = ConfigDir::new(tmp.path());
        let events = dir.scan_all();
        assert_eq!(keys(&events), vec![("Service default/web".to_string(), true)]);
        let errors = dir.errors();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].document, 1);
        assert!(errors[0].message.contains("Service default/bad"), "{}", errors[0]);
        assert!(errors[0].message.contains("spec.ports[0].port"), "{}", errors[0]);
    }

    #[test]
    fn secrets_load_with_data_and_string_data_and_a_bad_one_is_reported_without_its_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let text = "apiVersion: v1\nkind: Secret\nmetadata: {name: gw-cert, namespace: istio-system}\n\
                    type: kubernetes.io/tls\ndata: {tls.crt: Q0VSVA==}\nstringData: {tls.key: KEYTEXT}\n---\n\
                    apiVersion: v1\nkind: Secret\nmetadata: {name: broken}\ntype: kubernetes.io/tls\n\
                    data: {tls.crt: 'TOPSECRET!', tls.key: a2V5}\n---\n\
                    apiVersion: v1\nkind: Secret\nmetadata: {name: token}\ntype: kubernetes.io/service-account-token\n";
        std::fs::write(tmp.path().join("s.yaml"), text).unwrap();
        let mut dir = ConfigDir::new(tmp.path());
        let events = dir.scan_all();
        assert_eq!(keys(&events), vec![("Secret istio-system/gw-cert".to_string(), true)]);
        let Some(Object::Secret(secret)) = &events[0].object else { panic!("{:?}", events[0]) };
        assert_eq!(secret.get("tls.crt"), Some(&b"CERT"[..]));
        assert_eq!(secret.get("tls.key"), Some(&b"KEYTEXT"[..]));
        let errors = dir.errors();
        assert_eq!(errors.len(), 1, "the token Secret is skipped, not an error: {errors:?}");
        let message = errors[0].to_string();
        assert!(message.contains("Secret default/broken") && message.contains("data.tls.crt"), "{message}");
        assert!(!message.contains("TOPSECRET"), "{message}");
    }

    #[test]
    fn a_yaml_syntax_error_names_the_file_and_document() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("b.yaml"), format!("{SVC}---\nkind: [unclosed\n")).unwrap();
        let mut dir = ConfigDir::new(tmp.path());
        assert_eq!(dir.scan_all().len(), 1);
        let errors = dir.errors();
        assert_eq!((errors[0].path.clone(), errors[0].document), (tmp.path().join("b.yaml"), 1));
        assert!(errors[0].message.starts_with("malformed document"), "{}", errors[0]);
    }

    #[test]
    fn deleting_a_directory_deletes_the_objects_of_its_files() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("sub")).unwrap();
        std::fs::write(tmp.path().join("sub/a.yaml"), SVC).unwrap();
        std::fs::write(tmp.path().join("sub/.hidden.yaml"), SVC.replace("web", "hidden")).unwrap();
        let mut dir = ConfigDir::new(tmp.path());
        assert_eq!(dir.scan_all().len(), 1);
        std::fs::remove_dir_all(tmp.path().join("sub")).unwrap();
        assert_eq!(keys(&dir.rescan([tmp.path().join("sub")])), vec![("Service default/web".to_string(), false)]);
    }

    #[test]
    fn an_object_in_two_files_survives_the_removal_of_one() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("a.yaml"), SVC).unwrap();
        std::fs::write(tmp.path().join("b.yaml"), SVC.replace("port: 80", "port: 81")).unwrap();
        let mut dir = ConfigDir::new(tmp.path());
        let first = dir.scan_all();
        let Some(Object::Service(s)) = &first[0].object else { panic!() };
        assert_eq!(s.ports[0].port, 80, "the first file in path order wins");
        std::fs::remove_file(tmp.path().join("a.yaml")).unwrap();
        let events = dir.rescan([tmp.path().join("a.yaml")]);
        let Some(Object::Service(s)) = &events[0].object else { panic!("{events:?}") };
        assert_eq!(s.ports[0].port, 81);
        assert_eq!(dir.objects().iter().filter(|o| o.kind() == Kind::Service).count(), 1);
    }

    #[test]
    fn a_rescan_reads_only_the_named_files() {
        // One changed file costs O(changed files): a rescan of one path neither walks the
        // directory nor re-reads the others (their on-disk changes wait for their own event).
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("sub")).unwrap();
        for name in ["a", "b", "sub/c"] {
            let text = SVC.replace("name: web", &format!("name: {}", name.replace("sub/", "")));
            std::fs::write(tmp.path().join(format!("{name}.yaml")), text).unwrap();
        }
        let mut dir = ConfigDir::new(tmp.path());
        assert_eq!(dir.scan_all().len(), 3);
        for name in ["a", "b", "sub/c"] {
            std::fs::write(tmp.path().join(format!("{name}.yaml")), SVC.replace("name: web", "name: moved")).unwrap();
        }
        std::fs::write(tmp.path().join("new.yaml"), SVC.replace("name: web", "name: new")).unwrap();
        let events = dir.rescan([tmp.path().join("b.yaml")]);
        assert_eq!(
            keys(&events),
            vec![("Service default/b".to_string(), false), ("Service default/moved".to_string(), true)]
        );
        let names: Vec<String> = dir.objects().iter().map(|o| o.key().to_string()).collect();
        assert_eq!(names, ["Service default/a", "Service default/c", "Service default/moved"]);
    }

    #[test]
    fn reads_are_not_changes_and_writes_creates_removals_and_renames_are() {
        use notify::EventKind;
        use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, ModifyKind, RemoveKind, RenameMode};
        for read in
            [AccessKind::Open(AccessMode::Any), AccessKind::Read, AccessKind::Close(AccessMode::Read), AccessKind::Any]
        {
            assert!(!may_change_content(&EventKind::Access(read)), "{read:?}");
        }
        for change in [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Remove(RemoveKind::Any),
            EventKind::Any,
        ] {
            assert!(may_change_content(&change), "{change:?}");
        }
    }

    #[test]
    fn a_directory_of_many_files_is_read_on_several_threads_each_file_keeping_its_own_objects() {
        // More files than one thread reads, so the read is split among threads; each
        // object must still be held as its own file's.
        let n = FILES_PER_THREAD * 3 + 7;
        let tmp = tempfile::tempdir().unwrap();
        for i in 0..n {
            let text = SVC
                .replace("name: web", &format!("name: svc-{i:04}"))
                .replace("port: 80", &format!("port: {}", 1000 + i));
            std::fs::write(tmp.path().join(format!("svc-{i:04}.yaml")), text).unwrap();
        }
        let mut dir = ConfigDir::new(tmp.path());
        assert_eq!(dir.scan_all().len(), n);
        let objects = dir.objects();
        assert_eq!(objects.len(), n);
        for (i, object) in objects.iter().enumerate() {
            let Object::Service(svc) = object else { panic!("{object:?}") };
            assert_eq!((svc.name.as_str(), svc.ports[0].port as usize), (format!("svc-{i:04}").as_str(), 1000 + i));
        }
        // One file changed and one removed, found by a full rescan: exactly their objects.
        std::fs::write(tmp.path().join("svc-0300.yaml"), SVC.replace("name: web", "name: svc-0300")).unwrap();
        std::fs::remove_file(tmp.path().join("svc-0017.yaml")).unwrap();
        let events = dir.scan_all();
        assert_eq!(
            keys(&events),
            vec![("Service default/svc-0017".to_string(), false), ("Service default/svc-0300".to_string(), true)]
        );
        let Some(InputEvent { object: Some(Object::Service(svc)), .. }) = events.get(1) else { panic!("{events:?}") };
        assert_eq!(svc.ports[0].port, 80);
    }

    #[test]
    fn json_lists_are_unpacked() {
        let tmp = tempfile::tempdir().unwrap();
        let list = r#"{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"a"}}]}"#;
        std::fs::write(tmp.path().join("l.json"), list).unwrap();
        let mut dir = ConfigDir::new(tmp.path());
        assert_eq!(keys(&dir.scan_all()), vec![("Namespace a".to_string(), true)]);
    }
}
