//! The file source: Services and EndpointSlices from `*.yaml`, `*.yml` and `*.json` files in a
//! directory, multi-document YAML and `kind: List` allowed. The directory is polled (cheap
//! metadata checks, a full re-read only when something changed), which works the same on every
//! file system and inside containers where inotify events may not arrive.
//!
//! A file or document that does not parse is reported with its file, document index and reason
//! and skipped; everything else still applies.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use serde::Deserialize;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::k8s::{EndpointSlice, Node, Service, Snapshot};
use crate::metrics::Metrics;

/// How often the directory is checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// One thing in the directory that could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestError {
    pub file: PathBuf,
    /// Index of the document within the file (0-based), when the file itself was readable.
    pub document: Option<usize>,
    pub reason: String,
}

impl std::fmt::Display for ManifestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.document {
            Some(d) => write!(f, "{} (document {d}): {}", self.file.display(), self.reason),
            None => write!(f, "{}: {}", self.file.display(), self.reason),
        }
    }
}

#[derive(Debug, Default)]
pub struct Loaded {
    pub snapshot: Snapshot,
    pub errors: Vec<ManifestError>,
}

fn is_manifest(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_file() && is_manifest(&path) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// A file's size, modification time and inode: a file replaced by rename (as editors and
/// `kubectl`-style writers do) always gets a new inode, even within one mtime tick.
type Stamp = (u64, Option<SystemTime>, u64);

/// What the directory looks like, cheaply: file names and stamps.
type Fingerprint = BTreeMap<PathBuf, Stamp>;

fn fingerprint(dir: &Path) -> Result<Fingerprint> {
    use std::os::unix::fs::MetadataExt as _;
    let mut fp = Fingerprint::new();
    for f in manifest_files(dir)? {
        if let Ok(m) = std::fs::metadata(&f) {
            fp.insert(f, (m.len(), m.modified().ok(), m.ino()));
        }
    }
    Ok(fp)
}

/// Parsed manifests by file: a file is parsed again only when its stamp changes, so an edit
/// to one small file next to large ones costs the small file's parse.
#[derive(Default)]
pub struct ParsedFiles {
    files: BTreeMap<PathBuf, (Stamp, Loaded)>,
    /// Files parsed so far (for tests and logs).
    pub parses: u64,
}

impl ParsedFiles {
    /// Brings the cache to `fp` and returns everything it holds as one snapshot.
    fn refresh(&mut self, fp: &Fingerprint) -> Loaded {
        self.files.retain(|f, _| fp.contains_key(f));
        for (file, stamp) in fp {
            if self.files.get(file).is_some_and(|(s, _)| s == stamp) {
                continue;
            }
            let mut loaded = Loaded::default();
            match std::fs::read_to_string(file) {
                Ok(text) => parse_file(file, &text, &mut loaded),
                Err(e) => loaded.errors.push(ManifestError {
                    file: file.clone(),
                    document: None,
                    reason: e.to_string(),
                }),
            }
            self.parses += 1;
            self.files.insert(file.clone(), (*stamp, loaded));
        }
        let mut out = Loaded::default();
        for (_, l) in self.files.values() {
            out.snapshot
                .services
                .extend(l.snapshot.services.iter().cloned());
            out.snapshot
                .slices
                .extend(l.snapshot.slices.iter().cloned());
            out.snapshot.nodes.extend(l.snapshot.nodes.iter().cloned());
            out.errors.extend(l.errors.iter().cloned());
        }
        out
    }
}

/// Reads every manifest in `dir`.
pub fn load_dir(dir: &Path) -> Result<Loaded> {
    let mut out = Loaded::default();
    for file in manifest_files(dir)? {
        match std::fs::read_to_string(&file) {
            Ok(text) => parse_file(&file, &text, &mut out),
            Err(e) => out.errors.push(ManifestError {
                file: file.clone(),
                document: None,
                reason: e.to_string(),
            }),
        }
    }
    Ok(out)
}

/// Parses one file's text (JSON or YAML, several documents allowed) into `out`.
pub fn parse_file(file: &Path, text: &str, out: &mut Loaded) {
    let mut err = |document: Option<usize>, reason: String| {
        out.errors.push(ManifestError {
            file: file.to_path_buf(),
            document,
            reason,
        })
    };
    let mut docs = Vec::new();
    if file.extension().and_then(|e| e.to_str()) == Some("json") {
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(v) => docs.push(v),
            Err(e) => err(Some(0), e.to_string()),
        }
    } else {
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            match serde_json::Value::deserialize(doc) {
                Ok(serde_json::Value::Null) => {} // an empty document (`---` at the end)
                Ok(v) => docs.push(v),
                Err(e) => {
                    err(Some(i), e.to_string());
                    // A syntax error ends the stream: later documents cannot be trusted.
                    break;
                }
            }
        }
    }
    let mut objects = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        flatten_lists(doc, i, &mut objects);
    }
    for (i, obj) in objects {
        if let Err(reason) = add_object(obj, &mut out.snapshot) {
            out.errors.push(ManifestError {
                file: file.to_path_buf(),
                document: Some(i),
                reason,
            });
        }
    }
}

/// `kind: List` (what `kubectl get -o yaml` prints) holds its objects under `items`.
fn flatten_lists(v: serde_json::Value, doc: usize, out: &mut Vec<(usize, serde_json::Value)>) {
    let is_list = v
        .get("kind")
        .and_then(|k| k.as_str())
        .is_some_and(|k| k.ends_with("List"));
    match (is_list, v) {
        (true, serde_json::Value::Object(mut m)) => {
            if let Some(serde_json::Value::Array(items)) = m.remove("items") {
                out.extend(items.into_iter().map(|i| (doc, i)));
            }
        }
        (_, v) => out.push((doc, v)),
    }
}

fn add_object(v: serde_json::Value, snap: &mut Snapshot) -> std::result::Result<(), String> {
    let kind = v
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or_default()
        .to_string();
    match kind.as_str() {
        "Service" => snap
            .services
            .push(serde_json::from_value::<Service>(v).map_err(|e| format!("Service: {e}"))?),
        "EndpointSlice" => snap.slices.push(
            serde_json::from_value::<EndpointSlice>(v)
                .map_err(|e| format!("EndpointSlice: {e}"))?,
        ),
        // The node the agent runs on (its zone label), as the cluster source watches it.
        "Node" => snap
            .nodes
            .push(serde_json::from_value::<Node>(v).map_err(|e| format!("Node: {e}"))?),
        "" => return Err("document has no kind".into()),
        other => debug!(
            kind = other,
            "ignoring an object that is not a Service, EndpointSlice or Node"
        ),
    }
    Ok(())
}

/// Watches `dir` and publishes a new snapshot whenever its manifests change.
pub async fn watch_dir(
    dir: PathBuf,
    tx: watch::Sender<Option<Snapshot>>,
    metrics: Metrics,
) -> Result<()> {
    let mut last: Option<Fingerprint> = None;
    let mut cache = ParsedFiles::default();
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let fp = match fingerprint(&dir) {
            Ok(fp) => fp,
            Err(e) => {
                warn!(dir = %dir.display(), error = %format!("{e:#}"), "cannot read the manifest directory");
                metrics.manifest_errors.inc();
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if last.as_ref() == Some(&fp) {
            continue;
        }
        let fp2 = fp.clone();
        let (back, loaded) = tokio::task::spawn_blocking(move || {
            let loaded = cache.refresh(&fp2);
            (cache, loaded)
        })
        .await?;
        cache = back;
        for e in &loaded.errors {
            warn!(file = %e.file.display(), document = ?e.document, reason = %e.reason, "skipping a manifest that does not parse");
            metrics.manifest_errors.inc();
        }
        info!(
            files = fp.len(),
            services = loaded.snapshot.services.len(),
            slices = loaded.snapshot.slices.len(),
            nodes = loaded.snapshot.nodes.len(),
            errors = loaded.errors.len(),
            "manifests loaded"
        );
        last = Some(fp);
        metrics.snapshots_published.inc();
        if tx.send(Some(loaded.snapshot)).is_err() {
            return Ok(()); // nobody listens any more: shutting down
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
  - addresses: [10.244.1.2]
---
"#;

    fn parse(name: &str, text: &str) -> Loaded {
        let mut out = Loaded::default();
        parse_file(Path::new(name), text, &mut out);
        out
    }

    #[test]
    fn multi_document_yaml() {
        let l = parse("a.yaml", GOOD);
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        assert_eq!(l.snapshot.services.len(), 1);
        assert_eq!(l.snapshot.slices.len(), 1);
    }

    #[test]
    fn json_and_lists() {
        let l = parse(
            "b.json",
            r#"{"kind":"List","items":[{"kind":"Service","metadata":{"name":"x"},"spec":{"clusterIP":"10.96.0.2"}},
                {"kind":"ConfigMap","metadata":{"name":"y"}}]}"#,
        );
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        assert_eq!(l.snapshot.services.len(), 1);
    }

    #[test]
    fn bad_documents_are_reported_with_their_index_and_the_rest_applies() {
        let text = format!(
            "{GOOD}kind: Service\nmetadata: {{name: bad}}\nspec: {{ports: 7}}\n---\nfoo: bar\n"
        );
        let l = parse("c.yaml", &text);
        assert_eq!(l.snapshot.services.len(), 1);
        assert_eq!(l.snapshot.slices.len(), 1);
        let docs: Vec<_> = l.errors.iter().map(|e| e.document).collect();
        assert_eq!(docs, [Some(2), Some(3)], "{:?}", l.errors);
        assert!(l.errors[0].reason.contains("Service"));
        assert!(l.errors[0].to_string().contains("c.yaml (document 2)"));
    }

    #[test]
    fn a_node_manifest_gives_the_zone() {
        let l = parse(
            "node.yaml",
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-a\n  labels: {topology.kubernetes.io/zone: zone-1}\n",
        );
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        assert_eq!(l.snapshot.zone(Some("node-a")), Some("zone-1"));
        assert_eq!(l.snapshot.zone(None), Some("zone-1"));
        let l = parse("bad.yaml", "kind: Node\nmetadata: {labels: 7}\n");
        assert_eq!(l.errors.len(), 1);
        assert!(l.errors[0].reason.starts_with("Node:"), "{:?}", l.errors);
    }

    #[test]
    fn broken_yaml_syntax_is_an_error_not_a_panic() {
        let l = parse("d.yml", "kind: Service\nmetadata: [unclosed\n");
        assert_eq!(l.errors.len(), 1);
        let l = parse("e.json", "{not json");
        assert_eq!(l.errors.len(), 1);
    }

    #[test]
    fn load_dir_reads_only_manifest_files() {
        let dir = std::env::temp_dir().join(format!("lb-manifests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("svc.yaml"), GOOD).unwrap();
        std::fs::write(dir.join("notes.txt"), "kind: Service").unwrap();
        std::fs::write(dir.join("broken.yml"), ":\n - [").unwrap();
        let l = load_dir(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(l.snapshot.services.len(), 1);
        assert_eq!(l.errors.len(), 1);
        assert!(l.errors[0].file.ends_with("broken.yml"));
    }

    #[test]
    fn only_changed_files_are_parsed_again() {
        let dir = std::env::temp_dir().join(format!("lb-manifest-cache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("big.yaml"), GOOD).unwrap();
        let edit = |n: u8| {
            let tmp = dir.join(".one.tmp");
            let text = GOOD
                .replace("web", "one")
                .replace("10.96.0.10", "10.96.0.11")
                .replace("10.244.1.2", &format!("10.244.9.{n}"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, dir.join("one.yaml")).unwrap();
        };
        edit(1);
        let mut cache = ParsedFiles::default();
        let l = cache.refresh(&fingerprint(&dir).unwrap());
        assert_eq!((l.snapshot.services.len(), cache.parses), (2, 2));
        // Nothing changed: nothing parsed.
        cache.refresh(&fingerprint(&dir).unwrap());
        assert_eq!(cache.parses, 2);
        // One file replaced (a new inode, even within one mtime tick): only it is parsed.
        edit(2);
        let l = cache.refresh(&fingerprint(&dir).unwrap());
        assert_eq!(cache.parses, 3);
        let eps: Vec<_> = l
            .snapshot
            .slices
            .iter()
            .flat_map(|s| {
                s.endpoints
                    .iter()
                    .flatten()
                    .flat_map(|e| e.addresses.clone())
            })
            .collect();
        assert!(eps.contains(&"10.244.9.2".to_string()), "{eps:?}");
        // A removed file leaves the snapshot.
        std::fs::remove_file(dir.join("one.yaml")).unwrap();
        let l = cache.refresh(&fingerprint(&dir).unwrap());
        assert_eq!(l.snapshot.services.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
