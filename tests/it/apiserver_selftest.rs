//! Proves the test apiserver (tests/support/apiserver.rs) against the real kube client:
//! paginated lists, the runtime watcher's initial sync, resumption after a dropped watch,
//! relisting after 410 Gone, served API versions and discovery, Events through the
//! runtime `Recorder`, and an apiserver that goes down and comes back.

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Namespace, ObjectReference, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, PartialObjectMeta, Patch, PatchParams, PostParams,
    WatchEvent, WatchParams,
};
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{Event as RecordedEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher::{self, Event};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use support::apiserver::ApiServer;
use tokio::sync::mpsc;

/// Bound of every wait in these tests.
const WAIT: Duration = Duration::from_secs(30);

/// Runs a test body with an overall time limit.
async fn bounded<F: Future<Output = ()>>(body: F) {
    tokio::time::timeout(Duration::from_secs(60), body).await.expect("the test took longer than 60 s");
}

fn pod(ns: &str, name: &str, app: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
        "status": {"phase": "Running", "podIP": "10.0.0.1"}})
}

fn virtual_service(name: &str, api_version: &str) -> Value {
    json!({"apiVersion": api_version, "kind": "VirtualService",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"hosts": [name], "http": [{"route": [{"destination": {"host": name}}]}]}})
}

fn virtual_service_resource(version: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("networking.istio.io", version, "VirtualService"),
        "virtualservices",
    )
}

type WatchItem<K> = Result<Event<K>, watcher::Error>;

/// Runs a kube runtime watcher in a task (so it keeps being polled) and forwards its items.
fn spawn_watcher<K>(api: Api<K>, config: watcher::Config, backoff: bool) -> mpsc::UnboundedReceiver<WatchItem<K>>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = if backoff {
            watcher::watcher(api, config).default_backoff().boxed()
        } else {
            watcher::watcher(api, config).boxed()
        };
        while let Some(item) = stream.next().await {
            if tx.send(item).is_err() {
                break;
            }
        }
    });
    rx
}

fn key<K: ResourceExt>(o: &K) -> String {
    format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any())
}

fn describe<K: ResourceExt>(item: &WatchItem<K>) -> String {
    match item {
        Ok(Event::Init) => "Init".into(),
        Ok(Event::InitApply(o)) => format!("InitApply {}", key(o)),
        Ok(Event::InitDone) => "InitDone".into(),
        Ok(Event::Apply(o)) => format!("Apply {}", key(o)),
        Ok(Event::Delete(o)) => format!("Delete {}", key(o)),
        Err(e) => format!("Err {e}"),
    }
}

async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(WAIT, rx.recv()).await.expect("timed out waiting for a watcher event").expect("watcher ended")
}

/// Next item that is not an error (errors are expected around dropped connections).
async fn next_ok<K: ResourceExt>(rx: &mut mpsc::UnboundedReceiver<WatchItem<K>>) -> Event<K> {
    loop {
        match next(rx).await {
            Ok(event) => return event,
            Err(e) => eprintln!("watcher error (tolerated): {e}"),
        }
    }
}

/// Reads `Init`, `InitApply`*, `InitDone`; returns the keys applied.
async fn initial_sync<K: ResourceExt>(rx: &mut mpsc::UnboundedReceiver<WatchItem<K>>) -> BTreeSet<String> {
    let first = next_ok(rx).await;
    assert!(matches!(first, Event::Init), "expected Init, got {}", describe(&Ok(first)));
    let mut keys = BTreeSet::new();
    loop {
        match next_ok(rx).await {
            Event::InitApply(o) => assert!(keys.insert(key(&o)), "{} applied twice in one sync", key(&o)),
            Event::InitDone => return keys,
            other => panic!("unexpected {} during the initial sync", describe(&Ok(other))),
        }
    }
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The value of a query parameter in a logged request.
fn query_param(request: &str, name: &str) -> Option<String> {
    let query = request.split_once('?')?.1;
    query.split('&').find_map(|kv| kv.strip_prefix(&format!("{name}=")).map(str::to_string))
}

fn is_watch(request: &str) -> bool {
    query_param(request, "watch").as_deref() == Some("true")
}

fn pod_requests(server: &ApiServer) -> (Vec<String>, Vec<String>) {
    server
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("GET /api/v1/pods") || r.starts_with("GET /api/v1/namespaces/default/pods?"))
        .partition(|r| !is_watch(r))
}

#[tokio::test]
async fn list_pages_1200_pods_in_pages_of_500_from_one_snapshot() {
    bounded(async {
        let server = ApiServer::start();
        for i in 0..1200 {
            server.apply(pod(["a", "b", "c"][i % 3], &format!("pod-{i:04}"), "web"));
        }
        let api: Api<Pod> = Api::all(server.kube_client());
        let mut lp = ListParams::default().limit(500);
        let mut pages = Vec::new();
        let mut seen = BTreeMap::new();
        let mut list_rvs = BTreeSet::new();
        loop {
            let list = api.list(&lp).await.expect("list");
            pages.push(list.items.len());
            list_rvs.insert(list.metadata.resource_version.clone().expect("list resourceVersion"));
            for p in &list.items {
                assert!(seen.insert(key(p), p.resource_version().unwrap()).is_none(), "{} listed twice", key(p));
            }
            if pages.len() == 1 {
                // Changes between pages do not show: the pages are one snapshot.
                assert_eq!(list.metadata.remaining_item_count, Some(700));
                server.apply(pod("c", "pod-1199", "changed"));
                assert!(server.delete("v1", "Pod", Some("c"), "pod-1196"));
                server.apply(pod("c", "pod-9999", "new"));
            }
            match list.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => lp = lp.continue_token(&token),
                None => break,
            }
        }
        assert_eq!(pages, [500, 500, 200]);
        assert_eq!(seen.len(), 1200);
        assert_eq!(list_rvs.len(), 1, "every page carries the snapshot's resourceVersion");
        assert!(seen.contains_key("c/pod-1196") && !seen.contains_key("c/pod-9999"));
        let fresh = api.list(&ListParams::default()).await.unwrap();
        assert_eq!(fresh.items.len(), 1200);
        let changed = fresh.items.iter().find(|p| p.name_any() == "pod-1199").unwrap();
        assert_eq!(changed.labels()["app"], "changed");
        assert_ne!(changed.resource_version(), seen.get("c/pod-1199").cloned());

        let (lists, _) = pod_requests(&server);
        assert_eq!(lists.len(), 4, "{lists:?}");
        assert!(lists[..3].iter().all(|r| query_param(r, "limit").as_deref() == Some("500")), "{lists:?}");
        assert!(lists[1..3].iter().all(|r| query_param(r, "continue").is_some()), "{lists:?}");

        // A continue token from before a compaction is too old: 410.
        let first = api.list(&ListParams::default().limit(10)).await.unwrap();
        server.compact();
        let token = first.metadata.continue_.unwrap();
        match api.list(&ListParams::default().limit(10).continue_token(&token)).await {
            Err(kube::Error::Api(status)) => assert_eq!((status.code, status.reason.as_str()), (410, "Expired")),
            other => panic!("expected 410 Expired, got {other:?}"),
        }
        // A namespaced list sees its namespace only.
        let in_a: Api<Pod> = Api::namespaced(server.kube_client(), "a");
        assert_eq!(in_a.list(&ListParams::default()).await.unwrap().items.len(), 400);
    })
    .await;
}

#[tokio::test]
async fn watcher_pages_its_initial_list_and_sees_every_object_once() {
    bounded(async {
        let server = ApiServer::start();
        for i in 0..1200 {
            server.apply(pod("default", &format!("pod-{i:04}"), "web"));
        }
        let mut rx = spawn_watcher(Api::<Pod>::all(server.kube_client()), watcher::Config::default(), false);
        let keys = initial_sync(&mut rx).await;
        assert_eq!(keys.len(), 1200);
        let (lists, _) = pod_requests(&server);
        assert_eq!(lists.len(), 3, "three pages: {lists:?}");
        assert!(lists.iter().all(|r| query_param(r, "limit").as_deref() == Some("500")), "{lists:?}");
    })
    .await;
}

#[tokio::test]
async fn watcher_initial_sync_then_apply_and_delete() {
    bounded(async {
        let server = ApiServer::start();
        for name in ["a", "b", "c"] {
            server.apply(pod("default", name, "web"));
        }
        let list_rv = server.resource_version();
        let api: Api<Pod> = Api::namespaced(server.kube_client(), "default");
        let mut rx = spawn_watcher(api, watcher::Config::default(), false);
        let keys = initial_sync(&mut rx).await;
        assert_eq!(keys, BTreeSet::from(["default/a".into(), "default/b".into(), "default/c".into()]));
        wait_until("the watch to open", || server.open_watches() == 1).await;

        server.apply(pod("default", "b", "api"));
        match next_ok(&mut rx).await {
            Event::Apply(p) => {
                assert_eq!(key(&p), "default/b");
                assert_eq!(p.labels()["app"], "api");
                assert_eq!(p.resource_version(), Some(server.resource_version().to_string()));
            }
            other => panic!("expected Apply, got {}", describe(&Ok(other))),
        }
        server.apply(pod("default", "b", "api")); // no change: no event
        assert!(server.delete("v1", "Pod", Some("default"), "a"));
        match next_ok(&mut rx).await {
            Event::Delete(p) => assert_eq!(key(&p), "default/a"),
            other => panic!("expected Delete, got {}", describe(&Ok(other))),
        }
        let (_, watches) = pod_requests(&server);
        assert_eq!(watches.len(), 1, "{watches:?}");
        assert_eq!(query_param(&watches[0], "resourceVersion"), Some(list_rv.to_string()));
        assert_eq!(query_param(&watches[0], "allowWatchBookmarks").as_deref(), Some("true"));
        assert_eq!(query_param(&watches[0], "timeoutSeconds").as_deref(), Some("290"));
    })
    .await;
}

#[tokio::test]
async fn watcher_resumes_from_its_last_resource_version_after_a_dropped_watch() {
    bounded(async {
        let server = ApiServer::start();
        server.apply(pod("default", "a", "web"));
        server.apply(pod("default", "b", "web"));
        let mut rx = spawn_watcher(Api::<Pod>::all(server.kube_client()), watcher::Config::default(), false);
        initial_sync(&mut rx).await;
        wait_until("the watch to open", || server.open_watches() == 1).await;
        let rv_at_drop = server.resource_version();

        server.drop_watches();
        server.apply(pod("default", "c", "web"));
        server.apply(pod("default", "a", "changed"));
        assert!(server.delete("v1", "Pod", Some("default"), "b"));

        let mut seen = Vec::new();
        while seen.len() < 3 {
            let event = next_ok(&mut rx).await;
            assert!(
                matches!(event, Event::Apply(_) | Event::Delete(_)),
                "a re-watch, not a relist: {}",
                describe(&Ok(event))
            );
            seen.push(describe(&Ok(event)));
        }
        assert_eq!(seen, ["Apply default/c", "Apply default/a", "Delete default/b"]);
        wait_until("the watch to reopen", || server.open_watches() == 1).await;
        let (lists, watches) = pod_requests(&server);
        assert_eq!(lists.len(), 1, "no relist: {lists:?}");
        assert_eq!(watches.len(), 2, "{watches:?}");
        let resumed_at: u64 = query_param(&watches[1], "resourceVersion").unwrap().parse().unwrap();
        assert!(resumed_at <= rv_at_drop, "resumed from {resumed_at}, changes began after {rv_at_drop}");
    })
    .await;
}

#[tokio::test]
async fn watcher_relists_after_410_gone() {
    bounded(async {
        let server = ApiServer::start();
        for name in ["a", "b", "c"] {
            server.apply(pod("default", name, "web"));
        }
        let mut rx = spawn_watcher(Api::<Pod>::all(server.kube_client()), watcher::Config::default(), false);
        initial_sync(&mut rx).await;
        wait_until("the watch to open", || server.open_watches() == 1).await;

        server.compact();
        server.drop_watches();
        // The cut itself may surface as an error; then the re-watch gets 410 Gone.
        loop {
            match next(&mut rx).await {
                Err(watcher::Error::WatchError(status)) => {
                    assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
                    break;
                }
                Err(e) => eprintln!("watcher error (tolerated): {e}"),
                Ok(event) => panic!("expected the 410 watch error, got {}", describe(&Ok(event))),
            }
        }
        let keys = initial_sync(&mut rx).await;
        assert_eq!(keys.len(), 3);
        server.apply(pod("default", "d", "web"));
        assert!(matches!(next_ok(&mut rx).await, Event::Apply(p) if p.name_any() == "d"));
        let (lists, watches) = pod_requests(&server);
        assert_eq!(
            (lists.len(), watches.len()),
            (2, 3),
            "list, watch, watch (410), list, watch: {lists:?} {watches:?}"
        );
    })
    .await;
}

/// Folds watcher events into the objects a reflector would hold.
#[derive(Default)]
struct Store {
    objects: BTreeMap<String, Pod>,
    buffer: Option<BTreeMap<String, Pod>>,
    inits: usize,
    errors: usize,
}

impl Store {
    fn apply(&mut self, item: WatchItem<Pod>) {
        match item {
            Ok(Event::Init) => {
                self.inits += 1;
                self.buffer = Some(BTreeMap::new());
            }
            Ok(Event::InitApply(p)) => {
                self.buffer.as_mut().expect("InitApply after Init").insert(key(&p), p);
            }
            Ok(Event::InitDone) => self.objects = self.buffer.take().expect("InitDone after Init"),
            Ok(Event::Apply(p)) => {
                self.objects.insert(key(&p), p);
            }
            Ok(Event::Delete(p)) => {
                self.objects.remove(&key(&p));
            }
            Err(_) => self.errors += 1,
        }
    }

    fn summary(&self) -> BTreeMap<String, String> {
        self.objects.iter().map(|(k, p)| (k.clone(), p.labels()["app"].clone())).collect()
    }
}

#[tokio::test]
async fn watcher_converges_after_the_apiserver_was_down_and_history_compacted() {
    bounded(async {
        let server = ApiServer::start();
        for name in ["a", "b", "c"] {
            server.apply(pod("default", name, "web"));
        }
        let mut rx = spawn_watcher(Api::<Pod>::all(server.kube_client()), watcher::Config::default(), true);
        let mut store = Store::default();
        while store.inits == 0 || store.buffer.is_some() {
            store.apply(next(&mut rx).await);
        }
        wait_until("the watch to open", || server.open_watches() == 1).await;

        server.set_down(true);
        assert_eq!(server.open_watches(), 0);
        server.apply(pod("default", "d", "web"));
        server.apply(pod("default", "b", "changed"));
        assert!(server.delete("v1", "Pod", Some("default"), "a"));
        server.compact();
        // The watcher fails to reconnect while down.
        while store.errors == 0 {
            store.apply(next(&mut rx).await);
        }
        server.set_down(false);

        let want = BTreeMap::from([
            ("default/b".to_string(), "changed".to_string()),
            ("default/c".to_string(), "web".to_string()),
            ("default/d".to_string(), "web".to_string()),
        ]);
        while store.summary() != want || store.buffer.is_some() {
            store.apply(next(&mut rx).await);
        }
        assert_eq!(store.inits, 2, "a relist after the 410");
    })
    .await;
}

#[tokio::test]
async fn istio_objects_are_served_at_the_configured_versions_only() {
    bounded(async {
        let server = ApiServer::start();
        server.set_served_versions("networking.istio.io", &["v1alpha3"]);
        server.apply(virtual_service("reviews", "networking.istio.io/v1"));
        let client = server.kube_client();
        let alpha: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), "default", &virtual_service_resource("v1alpha3"));
        let list = alpha.list(&ListParams::default()).await.unwrap();
        assert_eq!(list.items.len(), 1);
        let types = list.items[0].types.clone().expect("CRD list items carry apiVersion and kind");
        assert_eq!(types.api_version, "networking.istio.io/v1alpha3");
        let vs = alpha.get("reviews").await.unwrap();
        assert_eq!(vs.types.unwrap().api_version, "networking.istio.io/v1alpha3");
        assert_eq!(vs.data["spec"]["hosts"], json!(["reviews"]));

        let v1: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &virtual_service_resource("v1"));
        match v1.list(&ListParams::default()).await {
            Err(kube::Error::Api(status)) => assert_eq!(status.code, 404),
            other => panic!("v1 is not served: expected 404, got {other:?}"),
        }

        // The watcher reads at the served version, and sees a write made at another version.
        let mut rx = spawn_watcher(alpha.clone(), watcher::Config::default(), false);
        assert_eq!(initial_sync(&mut rx).await, BTreeSet::from(["default/reviews".to_string()]));
        server.apply(virtual_service("ratings", "networking.istio.io/v1beta1"));
        match next_ok(&mut rx).await {
            Event::Apply(o) => {
                assert_eq!(o.name_any(), "ratings");
                assert_eq!(o.types.unwrap().api_version, "networking.istio.io/v1alpha3");
            }
            other => panic!("expected Apply, got {}", describe(&Ok(other))),
        }

        server.set_served_versions("networking.istio.io", &["v1", "v1beta1", "v1alpha3"]);
        assert_eq!(v1.get("reviews").await.unwrap().types.unwrap().api_version, "networking.istio.io/v1");
        assert_eq!(
            server.get("networking.istio.io/v1beta1", "VirtualService", None, "ratings").unwrap()["apiVersion"],
            "networking.istio.io/v1beta1",
            "stored as written"
        );
    })
    .await;
}

#[tokio::test]
async fn discovery_lists_the_served_groups_and_versions() {
    bounded(async {
        let server = ApiServer::start();
        let client = server.kube_client();
        let full = kube::discovery::Discovery::new(client.clone()).run().await.expect("discovery");
        let istio = full.get("networking.istio.io").expect("istio group");
        assert_eq!(istio.versions().collect::<Vec<_>>(), ["v1", "v1beta1", "v1alpha3"]);
        assert_eq!(istio.preferred_version_or_latest(), "v1");
        assert!(full.has_group("discovery.k8s.io") && full.has_group("events.k8s.io"));
        let (pods, caps) = full.resolve_gvk(&GroupVersionKind::gvk("", "v1", "Pod")).expect("pods");
        assert_eq!(pods.plural, "pods");
        assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
        let (nodes, caps) = full.resolve_gvk(&GroupVersionKind::gvk("", "v1", "Node")).expect("nodes");
        assert_eq!((nodes.plural.as_str(), caps.scope), ("nodes", kube::discovery::Scope::Cluster));

        server.set_served_versions("networking.istio.io", &["v1alpha3"]);
        server.disable_group("discovery.k8s.io");
        for discovery in [
            kube::discovery::Discovery::new(client.clone()).run().await.expect("discovery"),
            kube::discovery::Discovery::new(client.clone()).run_aggregated().await.expect("aggregated discovery"),
        ] {
            let istio = discovery.get("networking.istio.io").expect("istio group");
            assert_eq!(istio.versions().collect::<Vec<_>>(), ["v1alpha3"]);
            assert_eq!(istio.preferred_version_or_latest(), "v1alpha3");
            let (vs, _) = istio.recommended_kind("VirtualService").expect("VirtualService");
            assert_eq!((vs.plural.as_str(), vs.version.as_str()), ("virtualservices", "v1alpha3"));
            assert!(!discovery.has_group("discovery.k8s.io"));
            assert!(discovery.resolve_gvk(&GroupVersionKind::gvk("", "v1", "Endpoints")).is_some());
        }
        match Api::<EndpointSlice>::all(client.clone()).list(&ListParams::default()).await {
            Err(kube::Error::Api(status)) => assert_eq!(status.code, 404),
            other => panic!("endpointslices are not served: expected 404, got {other:?}"),
        }
        let version = client.apiserver_version().await.expect("/version");
        assert_eq!((version.major.as_str(), version.minor.as_str()), ("1", "35"));
    })
    .await;
}

#[tokio::test]
async fn events_posted_through_the_recorder_are_kept() {
    bounded(async {
        let server = ApiServer::start();
        let client = server.kube_client();
        let recorder = Recorder::new(client.clone(), Reporter { controller: "meshflow".into(), instance: None });
        let reference = ObjectReference {
            api_version: Some("networking.istio.io/v1".into()),
            kind: Some("ServiceEntry".into()),
            name: Some("dup".into()),
            namespace: Some("default".into()),
            ..Default::default()
        };
        let event = RecordedEvent {
            type_: EventType::Warning,
            reason: "InvalidConfiguration".into(),
            note: Some("spec.ports[1].number: port number cannot be duplicated".into()),
            action: "Validate".into(),
            secondary: None,
        };
        recorder.publish(&event, &reference).await.expect("publish");
        let events = server.events();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["apiVersion"], "events.k8s.io/v1");
        assert_eq!(events[0]["reason"], "InvalidConfiguration");
        assert_eq!(events[0]["regarding"]["name"], "dup");
        assert_eq!(events[0]["metadata"]["namespace"], "default");

        // The same event again is a series: the recorder patches the stored one.
        recorder.publish(&event, &reference).await.expect("publish again");
        let events = server.events();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["series"]["count"], 2);
        let requests = server.requests();
        assert!(requests.iter().any(|r| r.starts_with("POST /apis/events.k8s.io/v1/namespaces/default/events")));
        assert!(requests.iter().any(|r| r.starts_with("PATCH /apis/events.k8s.io/v1/namespaces/default/events/dup.")));

        // core/v1 events too.
        let core: Api<CoreEvent> = Api::namespaced(client, "default");
        let posted = core
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"generateName": "meshflow-"},
                    "involvedObject": {"kind": "Pod", "name": "a", "namespace": "default"},
                    "reason": "Testing", "message": "hello", "type": "Normal"}))
                .unwrap(),
            )
            .await
            .expect("create a core/v1 Event");
        assert!(posted.name_any().starts_with("meshflow-") && posted.uid().is_some());
        let events = server.events();
        assert_eq!(events.len(), 2);
        assert_eq!((events[1]["apiVersion"].as_str(), events[1]["message"].as_str()), (Some("v1"), Some("hello")));
    })
    .await;
}

#[tokio::test]
async fn a_down_apiserver_fails_requests_and_recovers() {
    bounded(async {
        let server = ApiServer::start_down();
        server.apply(pod("default", "a", "web"));
        let api: Api<Pod> = Api::all(server.kube_client());
        assert!(api.list(&ListParams::default()).await.is_err(), "down at start");
        server.set_down(false);
        assert_eq!(api.list(&ListParams::default()).await.expect("up").items.len(), 1);

        let mut events = api.watch(&WatchParams::default(), "0").await.expect("watch").boxed();
        assert!(matches!(events.next().await, Some(Ok(WatchEvent::Added(_)))));
        assert_eq!(server.open_watches(), 1);
        server.set_down(true);
        // The open watch is cut (an error or the end of the stream, never a clean event).
        let cut = tokio::time::timeout(WAIT, events.next()).await.expect("the watch is cut");
        assert!(!matches!(cut, Some(Ok(_))), "{cut:?}");
        assert_eq!(server.open_watches(), 0);
        assert!(api.list(&ListParams::default()).await.is_err(), "down again");
        server.set_down(false);
        assert_eq!(api.list(&ListParams::default()).await.expect("up again").items.len(), 1);
    })
    .await;
}

#[tokio::test]
async fn raw_watch_gets_bookmarks_and_ends_at_its_timeout() {
    bounded(async {
        let server = ApiServer::start();
        server.set_bookmark_interval(Duration::from_millis(200));
        server.apply(pod("default", "a", "web"));
        let api: Api<Pod> = Api::all(server.kube_client());
        let rv = server.resource_version().to_string();
        let started = Instant::now();
        let mut events = api.watch(&WatchParams::default().timeout(2), &rv).await.expect("watch").boxed();
        server.apply(pod("default", "b", "web"));
        let mut kinds = Vec::new();
        while let Some(event) = events.next().await {
            match event.expect("no error on a clean watch") {
                WatchEvent::Added(p) => kinds.push(format!("ADDED {}", p.name_any())),
                WatchEvent::Bookmark(b) => {
                    assert_eq!((b.types.kind.as_str(), b.types.api_version.as_str()), ("Pod", "v1"));
                    assert!(b.metadata.resource_version.parse::<u64>().unwrap() >= server.resource_version());
                    kinds.push("BOOKMARK".into());
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(1900) && took < Duration::from_secs(5), "ended after {took:?}");
        assert_eq!(kinds[0], "ADDED b");
        assert!(kinds.iter().filter(|k| *k == "BOOKMARK").count() >= 5, "{kinds:?}");
        assert_eq!(server.open_watches(), 0);

        // A watch from before a compaction: one 410 ERROR event, then the end.
        server.compact();
        let mut events = api.watch(&WatchParams::default(), &rv).await.expect("watch").boxed();
        match events.next().await {
            Some(Ok(WatchEvent::Error(status))) => {
                assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
                assert!(status.message.starts_with(&format!("too old resource version: {rv} (")), "{}", status.message);
            }
            other => panic!("expected a 410 ERROR event, got {other:?}"),
        }
        assert!(events.next().await.is_none());
    })
    .await;
}

#[tokio::test]
async fn selectors_and_streaming_lists() {
    bounded(async {
        let server = ApiServer::start();
        server.apply(pod("default", "a", "web"));
        server.apply(pod("default", "b", "db"));
        server.apply(pod("other", "c", "web"));
        let api: Api<Pod> = Api::all(server.kube_client());
        let config = watcher::Config::default().labels("app=web").streaming_lists();
        let mut rx = spawn_watcher(api.clone(), config, false);
        assert_eq!(initial_sync(&mut rx).await, BTreeSet::from(["default/a".to_string(), "other/c".to_string()]));
        wait_until("the watch to open", || server.open_watches() == 1).await;
        // Leaving the selection is a delete, entering it an apply.
        server.apply(pod("default", "a", "db"));
        assert_eq!(describe(&Ok(next_ok(&mut rx).await)), "Delete default/a");
        server.apply(pod("default", "b", "web"));
        assert_eq!(describe(&Ok(next_ok(&mut rx).await)), "Apply default/b");
        let (_, watches) = pod_requests(&server);
        assert_eq!(query_param(&watches[0], "sendInitialEvents").as_deref(), Some("true"));

        let by_field = api.list(&ListParams::default().fields("metadata.namespace=other")).await.unwrap();
        assert_eq!(by_field.items.iter().map(key).collect::<Vec<_>>(), ["other/c"]);
        let by_set = api.list(&ListParams::default().labels("app in (db,cache),!missing")).await.unwrap();
        assert_eq!(by_set.items.iter().map(key).collect::<Vec<_>>(), ["default/a"]);
    })
    .await;
}

#[tokio::test]
async fn metadata_watcher_gets_partial_object_metadata() {
    bounded(async {
        let server = ApiServer::start();
        server.apply(pod("default", "a", "web"));
        let api: Api<PartialObjectMeta<Pod>> = Api::all(server.kube_client());
        let mut stream = watcher::watcher(api, watcher::Config::default()).boxed();
        let mut names = Vec::new();
        loop {
            match tokio::time::timeout(WAIT, stream.next()).await.expect("event").expect("stream") {
                Ok(Event::InitApply(m)) => {
                    assert_eq!(m.types.as_ref().map(|t| t.kind.as_str()), Some("PartialObjectMetadata"));
                    assert_eq!(m.labels()["app"], "web");
                    names.push(m.name_any());
                }
                Ok(Event::InitDone) => break,
                Ok(Event::Init) => {}
                other => panic!("unexpected {:?}", other.map(|_| ())),
            }
        }
        assert_eq!(names, ["a"]);
        server.apply(pod("default", "a", "api"));
        match tokio::time::timeout(WAIT, stream.next()).await.expect("event").expect("stream") {
            Ok(Event::Apply(m)) => assert_eq!(m.labels()["app"], "api"),
            other => panic!("unexpected {:?}", other.map(|_| ())),
        }
    })
    .await;
}

#[tokio::test]
async fn writes_through_the_api_follow_apiserver_rules() {
    bounded(async {
        let server = ApiServer::start();
        let api: Api<Pod> = Api::namespaced(server.kube_client(), "default");
        let created = api
            .create(&PostParams::default(), &serde_json::from_value(pod("default", "a", "web")).unwrap())
            .await
            .expect("create");
        assert!(created.uid().is_some() && created.creation_timestamp().is_some());
        let err = api.create(&PostParams::default(), &created).await.unwrap_err();
        assert!(matches!(err, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists"));

        let patched = api
            .patch("a", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"tier": "front"}}})))
            .await
            .expect("merge patch");
        assert_eq!(patched.labels()["tier"], "front");
        let stale = api.replace("a", &PostParams::default(), &created).await.unwrap_err();
        assert!(matches!(stale, kube::Error::Api(s) if s.code == 409 && s.reason == "Conflict"));
        let status = api
            .patch_status("a", &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": "Succeeded"}})))
            .await
            .expect("status patch");
        assert_eq!(status.status.unwrap().phase.as_deref(), Some("Succeeded"));
        let stored = server.get("v1", "Pod", Some("default"), "a").unwrap();
        assert_eq!(stored["status"]["phase"], "Succeeded");
        assert_eq!(stored["metadata"]["labels"]["tier"], "front");
        api.delete("a", &Default::default()).await.expect("delete");
        assert!(server.get("v1", "Pod", None, "a").is_none());
        assert!(matches!(api.get("a").await, Err(kube::Error::Api(s)) if s.code == 404));
    })
    .await;
}

/// From a sync test, through a kubeconfig file, the way the meshflow binary connects.
#[test]
fn a_kubeconfig_file_reaches_the_server_from_a_sync_test() {
    let server = ApiServer::start();
    server.apply_yaml(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default\n---\n\
         apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata:\n    name: istio-system\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let path = server.kubeconfig(dir.path());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let names = rt.block_on(async {
        let kubeconfig = kube::config::Kubeconfig::read_from(&path).expect("read kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.expect("config");
        assert_eq!(config.default_namespace, "default");
        let client = kube::Client::try_from(config).expect("client");
        let list = Api::<Namespace>::all(client).list(&ListParams::default()).await.expect("list");
        list.items.iter().map(|n| n.name_any()).collect::<Vec<_>>()
    });
    assert_eq!(names, ["default", "istio-system"]);
}

/// On the wire: a watch that times out ends with the terminating chunk; `drop_watches` cuts
/// the connection without it (what a broken connection looks like to a client).
#[test]
fn drop_watches_cuts_the_chunked_body_while_a_timeout_ends_it_cleanly() {
    use std::io::{Read, Write};

    fn watch_raw(server: &ApiServer, query: &str, cut: bool) -> String {
        let mut conn = std::net::TcpStream::connect(server.addr()).unwrap();
        conn.set_read_timeout(Some(WAIT)).unwrap();
        write!(conn, "GET /api/v1/pods?watch=true&{query} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
        let mut received = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&received).contains("\"ADDED\"") {
            let n = conn.read(&mut buf).unwrap();
            assert!(n > 0, "closed before the first event");
            received.extend_from_slice(&buf[..n]);
        }
        if cut {
            server.drop_watches();
        }
        // Until the end of the body (the connection is kept alive) or of the connection.
        while !received.ends_with(b"\r\n0\r\n\r\n") {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&received).into_owned()
    }

    let server = ApiServer::start();
    server.apply(pod("default", "a", "web"));
    let started = Instant::now();
    let clean = watch_raw(&server, "resourceVersion=0&timeoutSeconds=1", false);
    assert!(clean.contains("Transfer-Encoding: chunked") || clean.contains("transfer-encoding: chunked"), "{clean}");
    assert!(clean.ends_with("\r\n0\r\n\r\n"), "a timed-out watch ends cleanly: {clean:?}");
    let cut = watch_raw(&server, "resourceVersion=0", true);
    assert!(cut.contains("\"ADDED\"") && !cut.ends_with("0\r\n\r\n"), "a dropped watch is cut: {cut:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert_eq!(server.open_watches(), 0);
}
