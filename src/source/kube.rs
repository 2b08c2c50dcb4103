//! The Kubernetes source: kube-rs watchers over the cluster and the Istio CRDs.
//!
//! One watcher per kind (and per namespace with `--watch-namespace`), except Secrets (below).
//! Each keeps, per object it delivered, only a hash of the translated object, so that:
//! - the initial list becomes one batch of events, and the watch's sync is reported after it;
//! - a relist (after a dropped watch or 410 Gone: kube's `Init … InitApply* … InitDone`) is
//!   diffed against what was delivered: objects that are unchanged produce nothing, changed
//!   ones one update, vanished ones one delete — all in one batch, so no resource is removed
//!   and re-added on the way.
//!
//! Objects are cut down to what translation needs at the boundary (a Pod keeps namespace,
//! name, labels, IP, node, readiness and ports); the kube object is dropped right away. An
//! Istio object that fails validation is logged, reported as a Kubernetes Event on the object,
//! and left out (deleted if an earlier version was delivered). Errors back off and retry
//! (kube's default backoff) and are logged once per distinct cause.
//!
//! **Secrets** are read only where gateway certificates can be, never cluster-wide: a
//! cluster's Secrets are mostly service-account tokens and application credentials that
//! meshflow must not hold. meshflow serves a gateway proxy the Secrets of its own namespace
//! only (`credentialName` resolves in the Gateway's namespace and is refused unless that is
//! the proxy's, [`crate::translate::views::class_secret`]). So by default one Secret watch runs
//! per namespace in the union of the namespaces that hold a delivered Istio Gateway and those
//! of connected gateway proxies ([`SecretInterest`], fed by the xDS class registry), within
//! `--watch-namespace` if given. A namespace that gains interest gets a watch; one that loses
//! it has its watch aborted and every Secret that watch delivered deleted, in one batch. The
//! readiness name `kubernetes/secret` is reported once the Gateway watches have synced and
//! then the Secret watches of the namespaces known at that moment.
//!
//! With `--secret-selector` (a label selector) there is instead one static Secret watch
//! (cluster-wide, or per `--watch-namespace`), filtered by the apiserver on those labels.
//! Only Secrets of type kubernetes.io/tls and Opaque are delivered; their bytes are never
//! logged.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::discovery::v1 as discovery;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher::watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::engine::{Command, CommandSender};
use crate::model::{FieldError, InputEvent, Kind, Object, ObjectKey, istio, k8s};
use crate::source::interest::SecretInterest;

/// The Istio networking API group and the versions meshflow reads, most preferred first.
pub const ISTIO_GROUP: &str = "networking.istio.io";
const ISTIO_VERSIONS: [&str; 3] = ["v1", "v1beta1", "v1alpha3"];

/// Where the client configuration comes from.
#[derive(Clone, Debug, Default)]
pub struct KubeOptions {
    /// `--kubeconfig`; otherwise `KUBECONFIG`, `~/.kube/config`, or the in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    /// Namespaces to watch for namespaced kinds; empty means all.
    pub namespaces: Vec<String>,
    /// `--secret-selector`: read the Secrets with these labels (a Kubernetes label selector,
    /// e.g. `meshflow.io/gateway-cert=true`) through one static watch, cluster-wide or per
    /// namespace of `namespaces`. `None`: read Secrets only in the namespaces where gateways
    /// live (see the module doc).
    pub secret_selector: Option<String>,
    /// The namespaces of connected gateway proxies, whose Secrets are read (without
    /// `secret_selector`): the xDS class registry adds to it; the namespaces holding Gateways
    /// are added by the source itself.
    pub secret_interest: SecretInterest,
}

/// Builds a client from the options.
pub async fn client(options: &KubeOptions) -> anyhow::Result<Client> {
    let config = match &options.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| anyhow::anyhow!("reading kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?
        }
        None => kube::Config::infer().await?,
    };
    Ok(Client::try_from(config)?)
}

/// The kinds watched, in the order their watchers start.
const WATCHED: [Kind; 10] = [
    Kind::Namespace,
    Kind::Node,
    Kind::Service,
    Kind::EndpointSlice,
    Kind::Pod,
    Kind::Gateway,
    Kind::VirtualService,
    Kind::DestinationRule,
    Kind::ServiceEntry,
    // Gateway certificates (`credentialName`): only types kubernetes.io/tls and Opaque are
    // delivered; their bytes are never logged. Watched per gateway namespace, or by label
    // selector: see the module doc.
    Kind::Secret,
];

fn watch_name(kind: Kind, namespace: Option<&str>) -> String {
    // EndpointSlice or, on clusters without that API, Endpoints: one readiness entry either way.
    let kind = if kind == Kind::EndpointSlice { "endpoints".to_string() } else { kind.as_str().to_ascii_lowercase() };
    match namespace {
        Some(ns) => format!("kubernetes/{kind}@{ns}"),
        None => format!("kubernetes/{kind}"),
    }
}

/// The readiness names of every watch the source will run. Known before any contact with the
/// apiserver, so that an unreachable apiserver keeps meshflow not ready.
pub fn source_names(options: &KubeOptions) -> Vec<String> {
    let mut names = Vec::new();
    for kind in WATCHED {
        let per_gateway_namespace = kind == Kind::Secret && options.secret_selector.is_none();
        if !kind.is_namespaced() || options.namespaces.is_empty() || per_gateway_namespace {
            names.push(watch_name(kind, None));
        } else {
            names.extend(options.namespaces.iter().map(|ns| watch_name(kind, Some(ns))));
        }
    }
    names
}

/// Starts the source on the current tokio runtime: API discovery (retried until the
/// apiserver answers), then one watcher task per kind and namespace, and (without
/// `--secret-selector`) the task that keeps one Secret watch per gateway namespace.
pub fn spawn(client: Client, options: KubeOptions, engine: CommandSender) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let apis = discover(&client).await;
        let recorder = Arc::new(Recorder::new(
            client.clone(),
            Reporter { controller: "meshflow".into(), instance: std::env::var("POD_NAME").ok() },
        ));
        let scopes: Vec<Option<String>> = if options.namespaces.is_empty() {
            vec![None]
        } else {
            options.namespaces.iter().cloned().map(Some).collect()
        };
        let per_gateway_namespace = options.secret_selector.is_none();
        let (scopes_tx, scopes_rx) = mpsc::unbounded_channel();
        let mut gateway_watches = 0;
        // One per watch the loop below starts.
        let watches = WATCHED
            .into_iter()
            .filter(|kind| !(*kind == Kind::Secret && per_gateway_namespace))
            .map(|kind| if kind.is_namespaced() { scopes.len() } else { 1 })
            .sum();
        let tally = Arc::new(Tally::new(watches));
        for kind in WATCHED {
            if kind == Kind::Secret && per_gateway_namespace {
                continue;
            }
            let namespaces: Vec<Option<String>> = if kind.is_namespaced() { scopes.clone() } else { vec![None] };
            for ns in namespaces {
                let mut watch = Watch::new(watch_name(kind, ns.as_deref()), kind, &apis, &engine, &recorder);
                watch.tally = Some(tally.clone());
                if kind == Kind::Gateway && per_gateway_namespace {
                    gateway_watches += 1;
                    watch.role = Role::Gateways {
                        interest: options.secret_interest.clone(),
                        namespaces: BTreeSet::new(),
                        scopes: scopes_tx.clone(),
                    };
                }
                spawn_watch(&client, &apis, kind, ns.as_deref(), options.secret_selector.as_deref(), watch);
            }
        }
        if per_gateway_namespace {
            let secrets = SecretScopes {
                client: client.clone(),
                recorder,
                engine,
                allowed: options.namespaces.iter().cloned().collect(),
                interest: options.secret_interest,
                tx: scopes_tx,
                running: BTreeMap::new(),
                refused: BTreeSet::new(),
                next_generation: 0,
                gateways_pending: gateway_watches,
                awaiting: None,
                reported: false,
            };
            tokio::spawn(secrets.run(scopes_rx));
        }
    })
}

/// The kind a watch delivers: EndpointSlice stands for Endpoints on clusters without slices.
fn watched_kind(kind: Kind, apis: &Apis) -> Kind {
    if kind == Kind::EndpointSlice && !apis.endpoint_slices { Kind::Endpoints } else { kind }
}

fn api_version(kind: Kind, apis: &Apis) -> String {
    match watched_kind(kind, apis) {
        Kind::EndpointSlice => "discovery.k8s.io/v1".into(),
        Kind::Gateway | Kind::VirtualService | Kind::DestinationRule | Kind::ServiceEntry => {
            format!("{ISTIO_GROUP}/{}", apis.istio_version.unwrap_or("v1"))
        }
        _ => "v1".into(),
    }
}

/// What the cluster serves, as far as meshflow cares.
struct Apis {
    endpoint_slices: bool,
    /// The Istio version to watch, or `None` when the CRDs are not installed.
    istio_version: Option<&'static str>,
}

/// Asks the apiserver which APIs it serves, retrying with backoff until it answers.
async fn discover(client: &Client) -> Apis {
    let mut delay = std::time::Duration::from_millis(200);
    let mut last_error = String::new();
    loop {
        match try_discover(client).await {
            Ok(apis) => {
                tracing::info!(
                    endpoint_slices = apis.endpoint_slices,
                    istio = apis.istio_version.unwrap_or("not installed"),
                    "Kubernetes API discovered"
                );
                return apis;
            }
            Err(e) => {
                let message = e.to_string();
                if message != last_error {
                    tracing::warn!(error = %message, "Kubernetes API discovery failed; retrying");
                    last_error = message;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(10));
            }
        }
    }
}

async fn try_discover(client: &Client) -> Result<Apis, kube::Error> {
    let optional_group = |result: Result<kube::discovery::ApiGroup, kube::Error>| match result {
        Ok(group) => Ok(Some(group)),
        Err(kube::Error::Discovery(kube::error::DiscoveryError::MissingApiGroup(_))) => Ok(None),
        Err(e) => Err(e),
    };
    let slices = optional_group(kube::discovery::group(client, "discovery.k8s.io").await)?;
    let istio = optional_group(kube::discovery::group(client, ISTIO_GROUP).await)?;
    let endpoint_slices = slices.is_some_and(|g| g.versions().any(|v| v == "v1"));
    let istio_version = istio.and_then(|g| {
        let served: Vec<&str> = g.versions().collect();
        ISTIO_VERSIONS.into_iter().find(|v| served.contains(v))
    });
    if istio_version.is_none() {
        tracing::warn!("networking.istio.io is not served: Istio objects are not watched");
    }
    Ok(Apis { endpoint_slices, istio_version })
}

fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn spawn_watch(client: &Client, apis: &Apis, kind: Kind, ns: Option<&str>, selector: Option<&str>, mut watch: Watch) {
    let c = client.clone();
    match kind {
        Kind::Namespace => tokio::spawn(
            watch.run(Api::<core::Namespace>::all(c), |n| Ok(Object::Namespace(k8s::namespace_from(&n.name_any(), n)))),
        ),
        Kind::Node => {
            tokio::spawn(watch.run(Api::<core::Node>::all(c), |n| Ok(Object::Node(k8s::node_from(&n.name_any(), n)))))
        }
        Kind::Service => tokio::spawn(watch.run(api::<core::Service>(&c, ns), |s| {
            k8s::service_from(&namespace(s), &s.name_any(), s).map(|o| Object::Service(Box::new(o)))
        })),
        Kind::EndpointSlice if apis.endpoint_slices => {
            tokio::spawn(watch.run(api::<discovery::EndpointSlice>(&c, ns), |s| {
                k8s::endpoint_slice_from(&namespace(s), &s.name_any(), s).map(|o| Object::EndpointSlice(Arc::new(o)))
            }))
        }
        Kind::EndpointSlice | Kind::Endpoints => tokio::spawn(watch.run(api::<core::Endpoints>(&c, ns), |e| {
            k8s::endpoints_from(&namespace(e), &e.name_any(), e).map(|o| Object::Endpoints(Box::new(o)))
        })),
        Kind::Pod => tokio::spawn(watch.run(api::<core::Pod>(&c, ns), |p| {
            k8s::pod_from(&namespace(p), &p.name_any(), p).map(|p| Object::Pod(p.into()))
        })),
        // Not a cluster object: connected proxies report their classes.
        Kind::ProxyClass | Kind::ProxyLocality => return,
        Kind::Secret => {
            let config = match selector {
                Some(selector) => watcher::Config::default().labels(selector),
                None => watcher::Config::default(),
            };
            tokio::spawn(secret_watch(api::<core::Secret>(&c, ns), config, watch))
        }
        Kind::Gateway | Kind::VirtualService | Kind::DestinationRule | Kind::ServiceEntry => {
            let Some(version) = apis.istio_version else {
                // Nothing to watch: synced, and empty.
                watch.initial_list_synced();
                return;
            };
            let ar = ApiResource {
                group: ISTIO_GROUP.into(),
                version: version.into(),
                api_version: format!("{ISTIO_GROUP}/{version}"),
                kind: kind.as_str().into(),
                plural: istio_plural(kind).into(),
            };
            let api = match ns {
                Some(ns) => Api::<DynamicObject>::namespaced_with(c, ns, &ar),
                None => Api::<DynamicObject>::all_with(c, &ar),
            };
            tokio::spawn(watch.run(api, move |o: &DynamicObject| {
                let spec = o.data.get("spec").cloned().unwrap_or(serde_json::Value::Null);
                if spec.is_null() {
                    return Err(vec![FieldError::new("spec", "required")]);
                }
                let created = k8s::creation_timestamp(&o.metadata);
                istio::decode(kind, &namespace(o), &o.name_any(), created.as_deref(), spec)
            }))
        }
    };
}

/// A Secret watch: only types kubernetes.io/tls and Opaque are delivered.
async fn secret_watch(api: Api<core::Secret>, config: watcher::Config, watch: Watch) {
    let convert = |s: &core::Secret| {
        crate::model::secret::secret_from(&namespace(s), &s.name_any(), s)
            .map(|o| o.map(|s| Object::Secret(Box::new(s))))
    };
    watch.run_opt(api, config, convert).await
}

fn istio_plural(kind: Kind) -> &'static str {
    match kind {
        Kind::Gateway => "gateways",
        Kind::VirtualService => "virtualservices",
        Kind::DestinationRule => "destinationrules",
        _ => "serviceentries",
    }
}

fn namespace<K: Resource>(o: &K) -> String {
    o.meta().namespace.clone().unwrap_or_default()
}

/// The state of one watcher.
struct Watch {
    name: String,
    kind: Kind,
    /// The apiVersion of the watched objects, for Event references.
    api_version: String,
    engine: CommandSender,
    recorder: Arc<Recorder>,
    /// Per delivered object, the hash of what was delivered.
    delivered: HashMap<ObjectKey, u64>,
    last_error: Option<String>,
    role: Role,
    /// The source's start-up count, told once of this watch's initial list (the watches
    /// started with the source; not the per-namespace Secret watches that come and go).
    tally: Option<Arc<Tally>>,
}

/// The source's start-up line: once every watch started with it has delivered its initial
/// list, one line at info with the objects by kind (each watch's own line is at debug).
struct Tally {
    /// Watches yet to deliver their initial list, and the objects delivered so far by kind.
    state: Mutex<(usize, BTreeMap<Kind, usize>)>,
}

impl Tally {
    fn new(watches: usize) -> Tally {
        Tally { state: Mutex::new((watches, BTreeMap::new())) }
    }

    /// Counts one watch's initial list; when it was the last, returns the objects in all and
    /// by kind (`Pod=3 Service=1`, every watched kind, empty ones too).
    fn synced(&self, kind: Kind, objects: usize) -> Option<(usize, String)> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *state.1.entry(kind).or_default() += objects;
        if state.0 == 0 {
            return None;
        }
        state.0 -= 1;
        (state.0 == 0).then(|| {
            let by_kind: Vec<String> = state.1.iter().map(|(k, n)| format!("{k:?}={n}")).collect();
            (state.1.values().sum(), by_kind.join(" "))
        })
    }
}

/// What a watch does besides delivering objects.
enum Role {
    /// Reports its sync to the engine under its name.
    Plain,
    /// A Gateway watch while Secrets are read per gateway namespace: keeps `interest` told of
    /// the namespaces that hold a delivered Gateway (`namespaces`, one interest each), and
    /// tells the [`SecretScopes`] when its initial list is delivered (after updating the
    /// interest, so the namespaces known then include its Gateways').
    Gateways { interest: SecretInterest, namespaces: BTreeSet<String>, scopes: mpsc::UnboundedSender<ScopeMsg> },
    /// The Secret watch of one namespace, run by [`SecretScopes`]: reports its sync to them,
    /// not to the engine, and when dropped (aborted) deletes every Secret it delivered.
    NamespaceSecrets { namespace: String, generation: u64, scopes: mpsc::UnboundedSender<ScopeMsg> },
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Role::NamespaceSecrets { namespace, .. } = &self.role {
            let deletes: Vec<InputEvent> = self.delivered.drain().map(|(key, _)| InputEvent::delete(key)).collect();
            tracing::debug!(namespace = %namespace, secrets = deletes.len(), "Secrets of the namespace removed");
            if !deletes.is_empty() {
                let _ = self.engine.send(Command::Events(deletes));
            }
        }
    }
}

fn object_hash(o: &Object) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    o.hash(&mut h);
    h.finish()
}

impl Watch {
    fn new(name: String, kind: Kind, apis: &Apis, engine: &CommandSender, recorder: &Arc<Recorder>) -> Watch {
        Watch {
            name,
            kind: watched_kind(kind, apis),
            api_version: api_version(kind, apis),
            engine: engine.clone(),
            recorder: recorder.clone(),
            delivered: HashMap::new(),
            last_error: None,
            role: Role::Plain,
            tally: None,
        }
    }

    async fn run<K, F>(self, api: Api<K>, convert: F)
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
        K::DynamicType: Clone + Eq + Hash,
        F: Fn(&K) -> Result<Object, Vec<FieldError>> + Send + 'static,
    {
        self.run_opt(api, watcher::Config::default(), move |k| convert(k).map(Some)).await
    }

    /// [`Watch::run`] for kinds of which some objects are not read (`Ok(None)`: a Secret of
    /// another type): those are left out without a warning. `config` may ask the apiserver to
    /// filter (a label selector).
    async fn run_opt<K, F>(mut self, api: Api<K>, config: watcher::Config, convert: F)
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
        K::DynamicType: Clone + Eq + Hash,
        F: Fn(&K) -> Result<Option<Object>, Vec<FieldError>> + Send + 'static,
    {
        let stream = watcher(api, config).default_backoff();
        futures_util::pin_mut!(stream);
        let mut listing: Option<HashMap<ObjectKey, Object>> = None;
        let mut synced = false;
        while let Some(event) = stream.next().await {
            let event = match event {
                Ok(event) => {
                    if self.last_error.take().is_some() {
                        tracing::info!(watch = %self.name, "watch recovered");
                    }
                    event
                }
                Err(e) => {
                    let message = e.to_string();
                    if self.last_error.as_deref() != Some(message.as_str()) {
                        tracing::warn!(watch = %self.name, error = %message, "watch failed; retrying with backoff");
                        self.last_error = Some(message);
                    }
                    continue;
                }
            };
            let events = match event {
                Event::Init => {
                    listing = Some(HashMap::new());
                    continue;
                }
                Event::InitApply(object) => {
                    if let (Some(list), Some(o)) = (listing.as_mut(), self.convert(&object, &convert).await) {
                        list.insert(o.key(), o);
                    }
                    continue;
                }
                Event::InitDone => self.relisted(listing.take().unwrap_or_default()),
                Event::Apply(object) => match self.convert(&object, &convert).await {
                    Some(o) => self.applied(o).into_iter().collect(),
                    None => self.deleted(&self.key_of(&object)).into_iter().collect(),
                },
                Event::Delete(object) => self.deleted(&self.key_of(&object)).into_iter().collect(),
            };
            if !events.is_empty() {
                if self.engine.send(Command::Events(events)).is_err() {
                    return;
                }
                self.delivered_changed();
            }
            if !synced && listing.is_none() {
                synced = true;
                tracing::debug!(watch = %self.name, objects = self.delivered.len(), "initial list synced");
                if !self.initial_list_synced() {
                    return;
                }
            }
        }
    }

    /// After a batch: a Gateway watch updates the Secret interest of the namespaces holding
    /// Gateways (a handful of objects: recounted, not tracked per event).
    fn delivered_changed(&mut self) {
        if let Role::Gateways { interest, namespaces, .. } = &mut self.role {
            let now: BTreeSet<String> = self.delivered.keys().map(|k| k.namespace.clone()).collect();
            for gained in now.difference(namespaces) {
                interest.add(gained);
            }
            for lost in namespaces.difference(&now) {
                interest.remove(lost);
            }
            *namespaces = now;
        }
    }

    /// The initial list is delivered: counted in the source's start-up line, and reported;
    /// false when the engine is gone.
    fn initial_list_synced(&mut self) -> bool {
        if let Some(tally) = self.tally.take()
            && let Some((objects, by_kind)) = tally.synced(self.kind, self.delivered.len())
        {
            tracing::info!(source = "kubernetes", objects, by_kind = %by_kind, "initial lists synced");
        }
        self.report_synced()
    }

    /// Reports the initial list delivered; false when the engine is gone.
    fn report_synced(&mut self) -> bool {
        match &self.role {
            Role::Plain => self.engine.send(Command::Synced(self.name.clone())).is_ok(),
            Role::Gateways { scopes, .. } => {
                let _ = scopes.send(ScopeMsg::GatewaysSynced);
                self.engine.send(Command::Synced(self.name.clone())).is_ok()
            }
            Role::NamespaceSecrets { namespace, generation, scopes } => {
                let synced = ScopeMsg::NamespaceSynced { namespace: namespace.clone(), generation: *generation };
                let _ = scopes.send(synced);
                true
            }
        }
    }

    /// Translates a kube object; an invalid one is logged, reported as an Event, and `None`.
    async fn convert<K, F>(&self, object: &K, convert: &F) -> Option<Object>
    where
        K: Resource,
        F: Fn(&K) -> Result<Option<Object>, Vec<FieldError>>,
    {
        match convert(object) {
            Ok(o) => o,
            Err(errors) => {
                let what = format!("{}/{}", namespace(object), object.meta().name.clone().unwrap_or_default());
                let note: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
                let note = note.join("; ");
                tracing::warn!(watch = %self.name, object = %what, errors = %note, "rejected: left out of the configuration");
                self.report(object, note).await;
                None
            }
        }
    }

    async fn report<K: Resource>(&self, object: &K, note: String) {
        let meta = object.meta();
        let reference = ObjectReference {
            api_version: Some(self.api_version.clone()),
            kind: Some(self.kind.as_str().to_string()),
            namespace: meta.namespace.clone(),
            name: meta.name.clone(),
            uid: meta.uid.clone(),
            resource_version: meta.resource_version.clone(),
            ..Default::default()
        };
        let event = KubeEvent {
            type_: EventType::Warning,
            reason: "InvalidConfiguration".into(),
            // Kubernetes caps an event note at 1 KiB.
            note: Some(truncate(note, 1000)),
            action: "Validate".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &reference).await {
            tracing::debug!(watch = %self.name, error = %e, "could not publish a Kubernetes Event");
        }
    }

    fn key_of<K: Resource>(&self, object: &K) -> ObjectKey {
        let ns = if self.kind.is_namespaced() { namespace(object) } else { String::new() };
        ObjectKey::new(self.kind, ns, object.meta().name.clone().unwrap_or_default())
    }

    fn applied(&mut self, o: Object) -> Option<InputEvent> {
        let hash = object_hash(&o);
        let key = o.key();
        if self.delivered.get(&key) == Some(&hash) {
            return None;
        }
        self.delivered.insert(key, hash);
        Some(InputEvent::apply(o))
    }

    fn deleted(&mut self, key: &ObjectKey) -> Option<InputEvent> {
        self.delivered.remove(key).map(|_| InputEvent::delete(key.clone()))
    }

    /// A complete list: what changed since the last delivery, and what is gone.
    fn relisted(&mut self, listed: HashMap<ObjectKey, Object>) -> Vec<InputEvent> {
        let gone: Vec<ObjectKey> = self.delivered.keys().filter(|k| !listed.contains_key(*k)).cloned().collect();
        let mut events: Vec<InputEvent> = gone.iter().filter_map(|k| self.deleted(k)).collect();
        events.extend(listed.into_values().filter_map(|o| self.applied(o)));
        events
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

// === impl SecretScopes ===

/// What the per-namespace watches tell [`SecretScopes`].
enum ScopeMsg {
    /// A Gateway watch delivered its initial list.
    GatewaysSynced,
    /// The Secret watch of `namespace` (started as `generation`) delivered its initial list.
    NamespaceSynced { namespace: String, generation: u64 },
}

/// The Secret watches of the namespaces where gateways live: one per namespace with
/// [`SecretInterest`] (within `--watch-namespace`), started when the namespace gains interest
/// and aborted when it loses it (the aborted [`Watch`] deletes what it delivered). Reports
/// `kubernetes/secret` synced once the Gateway watches synced and then the Secret watches of
/// the namespaces known at that moment.
struct SecretScopes {
    client: Client,
    recorder: Arc<Recorder>,
    engine: CommandSender,
    /// `--watch-namespace`: when not empty, the only namespaces that may be watched.
    allowed: BTreeSet<String>,
    interest: SecretInterest,
    /// Given to each watch, to report to `run`.
    tx: mpsc::UnboundedSender<ScopeMsg>,
    running: BTreeMap<String, NamespaceWatch>,
    /// Namespaces with interest outside `allowed`, logged once.
    refused: BTreeSet<String>,
    next_generation: u64,
    /// Gateway watches that have not delivered their initial list yet.
    gateways_pending: usize,
    /// Once the Gateway watches synced: the namespaces whose initial Secret list is awaited.
    awaiting: Option<BTreeSet<String>>,
    /// `kubernetes/secret` was reported synced.
    reported: bool,
}

struct NamespaceWatch {
    task: tokio::task::JoinHandle<()>,
    /// Tells a sync report of this watch from one of an earlier, aborted watch.
    generation: u64,
    synced: bool,
}

impl SecretScopes {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<ScopeMsg>) {
        let mut wanted = self.interest.subscribe();
        loop {
            let namespaces: BTreeSet<String> = wanted.borrow_and_update().keys().cloned().collect();
            self.reconcile(namespaces).await;
            if !self.check_synced() {
                return;
            }
            tokio::select! {
                changed = wanted.changed() => if changed.is_err() { return },
                msg = rx.recv() => match msg {
                    Some(msg) => self.handle(msg),
                    None => return,
                },
            }
        }
    }

    fn handle(&mut self, msg: ScopeMsg) {
        match msg {
            ScopeMsg::GatewaysSynced => self.gateways_pending = self.gateways_pending.saturating_sub(1),
            ScopeMsg::NamespaceSynced { namespace, generation } => {
                if let Some(w) = self.running.get_mut(&namespace)
                    && w.generation == generation
                {
                    w.synced = true;
                    if let Some(awaiting) = &mut self.awaiting {
                        awaiting.remove(&namespace);
                    }
                }
            }
        }
    }

    /// Starts and stops watches so that exactly the wanted (and allowed) namespaces have one.
    async fn reconcile(&mut self, wanted: BTreeSet<String>) {
        let wanted: BTreeSet<String> = wanted
            .into_iter()
            .filter(|ns| {
                let allowed = self.allowed.is_empty() || self.allowed.contains(ns);
                if !allowed && self.refused.insert(ns.clone()) {
                    tracing::info!(namespace = %ns, "gateway namespace outside --watch-namespace: its Secrets are not read");
                }
                allowed
            })
            .collect();
        let gone: Vec<String> = self.running.keys().filter(|ns| !wanted.contains(*ns)).cloned().collect();
        for ns in gone {
            let Some(w) = self.running.remove(&ns) else { continue };
            w.task.abort();
            // Once the task is gone its Watch has been dropped and has sent its deletes, so a
            // watch started again for the namespace delivers after them.
            let _ = w.task.await;
            if let Some(awaiting) = &mut self.awaiting {
                awaiting.remove(&ns);
            }
            tracing::info!(namespace = %ns, "Secret watch stopped: no gateway in the namespace");
        }
        for ns in wanted {
            if self.running.contains_key(&ns) {
                continue;
            }
            self.next_generation += 1;
            let generation = self.next_generation;
            let kind = Kind::Secret;
            let watch = Watch {
                name: watch_name(kind, Some(&ns)),
                kind,
                api_version: "v1".into(),
                engine: self.engine.clone(),
                recorder: self.recorder.clone(),
                delivered: HashMap::new(),
                last_error: None,
                role: Role::NamespaceSecrets { namespace: ns.clone(), generation, scopes: self.tx.clone() },
                tally: None,
            };
            let api = Api::<core::Secret>::namespaced(self.client.clone(), &ns);
            let task = tokio::spawn(secret_watch(api, watcher::Config::default(), watch));
            tracing::info!(namespace = %ns, "Secret watch started: a gateway is in the namespace");
            self.running.insert(ns, NamespaceWatch { task, generation, synced: false });
        }
    }

    /// Reports `kubernetes/secret` once it is due; false when the engine is gone.
    fn check_synced(&mut self) -> bool {
        if self.reported || self.gateways_pending > 0 {
            return true;
        }
        let awaiting = self
            .awaiting
            .get_or_insert_with(|| self.running.iter().filter(|(_, w)| !w.synced).map(|(ns, _)| ns.clone()).collect());
        if !awaiting.is_empty() {
            return true;
        }
        self.reported = true;
        self.awaiting = None;
        tracing::info!(namespaces = self.running.len(), "Secrets of the gateway namespaces synced");
        self.engine.send(Command::Synced(watch_name(Kind::Secret, None))).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_up_line_comes_once_when_the_last_watch_has_listed() {
        let tally = Tally::new(3);
        assert_eq!(tally.synced(Kind::Service, 2), None);
        assert_eq!(tally.synced(Kind::Pod, 5), None);
        assert_eq!(
            tally.synced(Kind::Pod, 1),
            Some((8, "Service=2 Pod=6".to_string())),
            "two namespaces' Pod watches add up; kinds in Kind order"
        );
        assert_eq!(tally.synced(Kind::Node, 1), None, "once only");
    }
}
