//! The state of one state-of-the-world ADS stream (`StreamAggregatedResources`), kept apart
//! from the network so it can be driven and tested directly.
//!
//! Per resource type the stream tracks what the client subscribed to and the latest response
//! it sent: its nonce, its `version_info` and the version of each resource in it. Every
//! response carries the full set of the type's resources the client subscribed to, as the
//! protocol requires. `version_info` is a hash of the (name, content version) pairs of that set,
//! so equal sets have equal versions, across streams and restarts.
//!
//! Subscriptions follow Envoy's xDS protocol: for LDS and CDS an empty name list on the first
//! request (and as long as the client never named a resource) is the legacy wildcard, `*` the
//! explicit one; RDS, EDS and SDS are by name only. A request answers the type's latest
//! response by nonce: an ACK, or a NACK (`error_detail`) whose set is then not sent again until
//! it changes. A request carrying an older nonce is stale and ignored, as istiod ignores it.
//!
//! On a cache change the stream rebuilds the set of each type in which a subscribed resource
//! changed and sends it when its version differs from the one sent (and from the one rejected):
//! types in dependency order (CDS, EDS, SDS, LDS, RDS), a response that only removes
//! resources after the others, in reverse order (make before break). A response that changes
//! a Cluster the client holds is followed by the EDS set even when no assignment changed:
//! Envoy warms the new cluster until its assignment arrives.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;

use super::delta::{Answer, render_shared};
use super::wire::SotwResponse;
use crate::cache::{Cache, View};
use crate::translate::ResourceType;

#[derive(Default)]
struct TypeState {
    /// The client has sent at least one request for this type.
    started: bool,
    /// The client named a resource at least once: from then on an empty list means none.
    explicit: bool,
    wildcard: bool,
    names: BTreeSet<String>,
    /// The latest response: its nonce, its version and the version of each resource in it.
    nonce: Option<String>,
    version: Option<String>,
    sent: BTreeMap<String, String>,
    /// The cache sequence number the latest response was built at.
    seq: u64,
    /// The version the client rejected last: not sent again until the set changes.
    nacked: Option<String>,
    /// The version the client accepted last.
    acked: Option<String>,
}

impl TypeState {
    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

pub struct SotwStream {
    /// The node id, for logs (shared with the stream's `/debug/syncz` record).
    pub node: Arc<str>,
    /// Listeners bind here instead of 0.0.0.0 (node metadata `MESHFLOW_BIND_ADDRESS`).
    bind: Option<IpAddr>,
    view: View,
    types: [TypeState; ResourceType::ALL.len()],
    next_nonce: u64,
    /// The cache sequence number this stream has caught up with.
    seen: u64,
    /// Listeners left out for this proxy because another one binds their address (logged once).
    dropped: HashSet<String>,
}

/// A response built for one type, before it is ordered with the others.
struct Built {
    ty: ResourceType,
    response: SotwResponse,
    /// Some resource is new or changed (else the response only removes resources).
    adds: bool,
    /// Clusters the client held that this response changes.
    changed: Vec<String>,
}

/// The `version_info` of a set: a hash of its (name, content version) pairs, in name order.
fn set_version(sent: &BTreeMap<String, String>) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for (name, version) in sent {
        h.update(name.as_bytes());
        h.update(&[0]);
        h.update(version.as_bytes());
        h.update(&[0]);
    }
    format!("{:016x}", h.digest())
}

impl SotwStream {
    /// What this proxy sees of the cache.
    pub fn view(&self) -> &View {
        &self.view
    }

    pub fn new(node: Arc<str>, bind: Option<IpAddr>, view: View) -> SotwStream {
        SotwStream { node, bind, view, types: Default::default(), next_nonce: 0, seen: 0, dropped: HashSet::new() }
    }

    /// Handles one request. Returns what it answered and, when the cache is ready, the
    /// responses it calls for.
    pub fn on_request(
        &mut self,
        req: &DiscoveryRequest,
        cache: &Cache,
    ) -> Result<(Answer, Vec<SotwResponse>), tonic::Status> {
        let ty = ResourceType::from_type_url(&req.type_url)
            .ok_or_else(|| tonic::Status::invalid_argument(format!("unsupported type_url {:?}", req.type_url)))?;
        let st = &mut self.types[ty as usize];
        let first = !st.started;
        let answer = if req.response_nonce.is_empty() || first {
            Answer::Subscription
        } else if st.nonce.as_deref() != Some(req.response_nonce.as_str()) {
            // An answer to a response that a later one superseded: the client will answer that
            // one too. Its names are as stale as its nonce.
            return Ok((Answer::Stale { nonce: req.response_nonce.clone() }, Vec::new()));
        } else if let Some(error) = &req.error_detail {
            st.nacked = st.version.clone();
            let names = st.sent.keys().cloned().collect();
            Answer::Nack { ty, nonce: req.response_nonce.clone(), names, message: error.message.clone() }
        } else {
            st.acked = st.version.clone();
            Answer::Ack { ty, nonce: req.response_nonce.clone(), seq: st.seq }
        };

        st.started = true;
        let names: BTreeSet<String> = req.resource_names.iter().filter(|n| *n != "*").cloned().collect();
        st.explicit |= !names.is_empty();
        let wildcard = req.resource_names.iter().any(|n| n == "*")
            || (ty.is_wildcard_type() && req.resource_names.is_empty() && !st.explicit);
        let changed = first || wildcard != st.wildcard || names != st.names;
        st.wildcard = wildcard;
        st.names = names;
        if first && !req.version_info.is_empty() {
            // A client reconnecting says which version it holds: not resent if still current.
            st.version = Some(req.version_info.clone());
            st.acked = Some(req.version_info.clone());
        }
        if !changed || !cache.is_ready() {
            return Ok((answer, Vec::new()));
        }
        let responses = self.respond(cache, cache.seq(), &[ty]);
        Ok((answer, responses))
    }

    /// Catches up with the cache: the full set of every type in which a subscribed resource
    /// changed since the last call. Nothing before the cache is ready.
    pub fn on_cache_change(&mut self, cache: &Cache) -> Vec<SotwResponse> {
        if !cache.is_ready() {
            return Vec::new();
        }
        let (seq, changed) = cache.changed_since(self.seen, &self.view);
        let mut affected = [false; ResourceType::ALL.len()];
        match changed {
            Some(names) if self.seen > 0 => {
                for (ty, name) in names {
                    let st = &self.types[ty as usize];
                    // A listener's rendering for a bound proxy depends on the other listeners.
                    let bound_listener = ty == ResourceType::Listener && self.bind.is_some();
                    affected[ty as usize] |=
                        st.started && (bound_listener || st.wants(&name) || st.sent.contains_key(&name));
                }
            }
            // First push after readiness, or the log no longer reaches back: compare all.
            _ => {
                for ty in ResourceType::ALL {
                    affected[ty as usize] = self.types[ty as usize].started;
                }
            }
        }
        self.seen = seq;
        let types: Vec<ResourceType> = ResourceType::ALL.into_iter().filter(|t| affected[*t as usize]).collect();
        self.respond(cache, seq, &types)
    }

    /// Responses for `types` (in dependency order), each the full subscribed set when it
    /// differs from the one sent: additions and changes first, then pure removals in reverse.
    fn respond(&mut self, cache: &Cache, seq: u64, types: &[ResourceType]) -> Vec<SotwResponse> {
        let mut built: Vec<Built> = Vec::new();
        for ty in ResourceType::ALL {
            let mut force = false;
            if ty == ResourceType::ClusterLoadAssignment {
                // A changed cluster the client holds: it waits for its assignment again.
                let eds = &self.types[ty as usize];
                force = built
                    .iter()
                    .filter(|b| b.ty == ResourceType::Cluster)
                    .flat_map(|b| &b.changed)
                    .any(|c| eds.wants(c));
            }
            if !types.contains(&ty) && !force {
                continue;
            }
            if let Some(b) = self.build(cache, seq, ty, force) {
                built.push(b);
            }
        }
        let (adds, removals): (Vec<Built>, Vec<Built>) = built.into_iter().partition(|b| b.adds);
        adds.into_iter().chain(removals.into_iter().rev()).map(|b| b.response).collect()
    }

    /// The response of one type, built at cache sequence number `seq` (read before the
    /// resources), unless the client holds or rejected that set.
    fn build(&mut self, cache: &Cache, seq: u64, ty: ResourceType, force: bool) -> Option<Built> {
        let st = &self.types[ty as usize];
        if !st.started {
            return None;
        }
        let mut names: BTreeSet<String> = st.names.clone();
        if st.wildcard {
            names.extend(cache.names(&self.view, ty));
        }
        let mut resources = Vec::with_capacity(names.len());
        let mut sent = BTreeMap::new();
        for name in names {
            let Some(current) = cache.get(&self.view, ty, &name) else { continue };
            match render_shared(cache, &self.view, self.bind, ty, &current) {
                Some(rendered) => {
                    sent.insert(name, rendered.version.clone());
                    resources.push(rendered);
                }
                None => {
                    if !crate::translate::capture::is_virtual_listener(&name) && self.dropped.insert(name.clone()) {
                        tracing::warn!(
                            node = %self.node, listener = %name,
                            "listener binds the same address and port as another one for this proxy: not sent"
                        );
                    }
                }
            }
        }
        let st = &self.types[ty as usize];
        let version = set_version(&sent);
        if st.nacked.as_ref() == Some(&version) || (!force && st.version.as_ref() == Some(&version)) {
            return None;
        }
        if resources.is_empty() && !st.wildcard && st.sent.is_empty() && st.version.is_none() {
            // Nothing the client named exists yet, and it holds nothing: nothing to say (an empty
            // LDS or CDS set would tell it the names it asked for do not exist, and gRPC fails
            // its channel on that, while a proxyless client's resources are being computed).
            return None;
        }
        let adds = sent.iter().any(|(n, v)| st.sent.get(n) != Some(v)) || (force && !sent.is_empty());
        let changed = if ty == ResourceType::Cluster {
            sent.iter().filter(|(n, v)| st.sent.get(*n).is_some_and(|old| old != *v)).map(|(n, _)| n.clone()).collect()
        } else {
            Vec::new()
        };
        self.next_nonce += 1;
        let nonce = self.next_nonce.to_string();
        let st = &mut self.types[ty as usize];
        st.nonce = Some(nonce.clone());
        st.version = Some(version.clone());
        st.sent = sent;
        st.seq = seq;
        let response =
            SotwResponse { version_info: version, resources, type_url: ty.type_url().to_string(), nonce, seq };
        Some(Built { ty, response, adds, changed })
    }

    /// The names of the latest set sent of a type, with their versions (for tests and debugging).
    pub fn sent(&self, ty: ResourceType) -> Vec<(String, String)> {
        self.types[ty as usize].sent.iter().map(|(n, v)| (n.clone(), v.clone())).collect()
    }

    /// The version the client last accepted of a type.
    pub fn acked(&self, ty: ResourceType) -> Option<&str> {
        self.types[ty as usize].acked.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{ResourceChange, ResourceDelta};
    use crate::translate::Scope;
    use envoy_types::pb::google::rpc::Status as RpcStatus;

    fn put(cache: &Cache, changes: &[(ResourceType, &str, Option<&[u8]>)]) {
        let changes = changes
            .iter()
            .map(|(ty, name, body)| ResourceChange {
                scope: Scope::All,
                ty: *ty,
                name: name.to_string(),
                body: body.map(std::sync::Arc::from),
            })
            .collect();
        cache.apply(&ResourceDelta { time: 0, changes, diagnostics: Vec::new(), pod_localities: Vec::new() });
    }

    fn req(ty: ResourceType, names: &[&str], nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: ty.type_url().into(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    /// The resources of a response, as (name-bearing) bodies: the test cache holds raw bytes.
    fn bodies(r: &SotwResponse) -> Vec<&[u8]> {
        r.resources.iter().map(|a| a.body()).collect()
    }

    fn ready(changes: &[(ResourceType, &str, Option<&[u8]>)]) -> std::sync::Arc<Cache> {
        let cache = Cache::new([]);
        put(&cache, changes);
        cache
    }

    #[test]
    fn wildcard_types_get_everything_and_by_name_types_what_they_name() {
        let cache = ready(&[
            (ResourceType::Cluster, "a", Some(b"ca")),
            (ResourceType::Cluster, "b", Some(b"cb")),
            (ResourceType::ClusterLoadAssignment, "a", Some(b"ea")),
            (ResourceType::ClusterLoadAssignment, "b", Some(b"eb")),
        ]);
        let mut s = SotwStream::new("n".into(), None, View::sidecar());
        let (answer, out) = s.on_request(&req(ResourceType::Cluster, &[], ""), &cache).unwrap();
        assert_eq!(answer, Answer::Subscription);
        assert_eq!(bodies(&out[0]), [b"ca", b"cb"]);
        assert!(!out[0].version_info.is_empty());
        let (_, out) = s.on_request(&req(ResourceType::ClusterLoadAssignment, &["b"], ""), &cache).unwrap();
        assert_eq!(bodies(&out[0]), [b"eb"]);
        // The full set again when the subscription grows.
        let nonce = out[0].nonce.clone();
        let (answer, out) =
            s.on_request(&req(ResourceType::ClusterLoadAssignment, &["a", "b"], &nonce), &cache).unwrap();
        assert!(matches!(answer, Answer::Ack { .. }));
        assert_eq!(bodies(&out[0]), [b"ea", b"eb"]);
        // An ACK with the same names calls for nothing.
        let nonce = out[0].nonce.clone();
        let (answer, out) =
            s.on_request(&req(ResourceType::ClusterLoadAssignment, &["a", "b"], &nonce), &cache).unwrap();
        assert!(matches!(answer, Answer::Ack { .. }), "{answer:?}");
        assert!(out.is_empty());
        // A change to an unsubscribed assignment is not pushed; a subscribed one pushes the set.
        put(&cache, &[(ResourceType::ClusterLoadAssignment, "c", Some(b"ec"))]);
        assert!(s.on_cache_change(&cache).is_empty());
        put(&cache, &[(ResourceType::ClusterLoadAssignment, "a", Some(b"ea2"))]);
        let out = s.on_cache_change(&cache);
        assert_eq!(bodies(&out[0]), [b"ea2".as_slice(), b"eb"]);
    }

    #[test]
    fn an_explicit_subscription_to_a_wildcard_type_is_by_name_and_star_is_wildcard() {
        let cache = ready(&[(ResourceType::Listener, "x", Some(b"lx")), (ResourceType::Listener, "y", Some(b"ly"))]);
        let mut s = SotwStream::new("n".into(), None, View::sidecar());
        let (_, out) = s.on_request(&req(ResourceType::Listener, &["y"], ""), &cache).unwrap();
        assert_eq!(bodies(&out[0]), [b"ly"]);
        // Once it named resources, an empty list is no resources, not the wildcard.
        let nonce = out[0].nonce.clone();
        let (_, out) = s.on_request(&req(ResourceType::Listener, &[], &nonce), &cache).unwrap();
        assert!(out[0].resources.is_empty());
        let nonce = out[0].nonce.clone();
        let (_, out) = s.on_request(&req(ResourceType::Listener, &["*"], &nonce), &cache).unwrap();
        assert_eq!(bodies(&out[0]), [b"lx", b"ly"]);
        // A removal under the wildcard: the set without it.
        put(&cache, &[(ResourceType::Listener, "x", None)]);
        let out = s.on_cache_change(&cache);
        assert_eq!(bodies(&out[0]), [b"ly"]);
    }

    #[test]
    fn a_nacked_set_is_not_resent_until_it_changes_and_stale_nonces_are_ignored() {
        let cache = ready(&[(ResourceType::Cluster, "a", Some(b"1"))]);
        let mut s = SotwStream::new("n".into(), None, View::sidecar());
        let (_, out) = s.on_request(&req(ResourceType::Cluster, &[], ""), &cache).unwrap();
        let first = out[0].clone();
        s.on_request(&req(ResourceType::Cluster, &[], &first.nonce), &cache).unwrap();
        assert_eq!(s.acked(ResourceType::Cluster), Some(first.version_info.as_str()));
        put(&cache, &[(ResourceType::Cluster, "b", Some(b"bad"))]);
        let out = s.on_cache_change(&cache);
        let bad = out[0].clone();
        let mut nack = req(ResourceType::Cluster, &[], &bad.nonce);
        nack.version_info = first.version_info.clone();
        nack.error_detail = Some(RpcStatus { code: 3, message: "bad cluster b".into(), details: vec![] });
        let (answer, out) = s.on_request(&nack, &cache).unwrap();
        assert_eq!(
            answer,
            Answer::Nack {
                ty: ResourceType::Cluster,
                nonce: bad.nonce.clone(),
                names: vec!["a".into(), "b".into()],
                message: "bad cluster b".into()
            }
        );
        assert!(out.is_empty());
        assert_eq!(s.acked(ResourceType::Cluster), Some(first.version_info.as_str()), "the client kept the first set");
        // Rewriting the same content is no change; an unrelated type changing does not resend.
        put(&cache, &[(ResourceType::Cluster, "b", Some(b"bad")), (ResourceType::Listener, "l", Some(b"l"))]);
        assert!(s.on_cache_change(&cache).is_empty());
        // The stale nonce of the first response is ignored, names and all.
        let (answer, out) = s.on_request(&req(ResourceType::Cluster, &["zzz"], &first.nonce), &cache).unwrap();
        assert_eq!(answer, Answer::Stale { nonce: first.nonce.clone() });
        assert!(out.is_empty());
        // The rejected resource changes: the new set goes out.
        put(&cache, &[(ResourceType::Cluster, "b", Some(b"fixed"))]);
        let out = s.on_cache_change(&cache);
        assert_eq!(bodies(&out[0]), [b"1".as_slice(), b"fixed"]);
        assert_ne!(out[0].version_info, bad.version_info);
    }

    #[test]
    fn types_go_out_in_dependency_order_removals_last_and_a_changed_cluster_brings_its_assignment() {
        let cache = ready(&[
            (ResourceType::Cluster, "c", Some(b"c1")),
            (ResourceType::ClusterLoadAssignment, "c", Some(b"e")),
            (ResourceType::Listener, "l", Some(b"l")),
            (ResourceType::RouteConfiguration, "r", Some(b"r")),
        ]);
        let mut s = SotwStream::new("n".into(), None, View::sidecar());
        for (ty, names) in [
            (ResourceType::Cluster, vec![]),
            (ResourceType::Listener, vec![]),
            (ResourceType::ClusterLoadAssignment, vec!["c"]),
            (ResourceType::RouteConfiguration, vec!["r"]),
        ] {
            s.on_request(&req(ty, &names, ""), &cache).unwrap();
        }
        put(
            &cache,
            &[
                (ResourceType::RouteConfiguration, "r", Some(b"r2")),
                (ResourceType::Listener, "l", None),
                (ResourceType::Cluster, "c", Some(b"c2")),
            ],
        );
        let out = s.on_cache_change(&cache);
        let order: Vec<&str> = out.iter().map(|r| r.type_url.rsplit('.').next().unwrap()).collect();
        assert_eq!(order, ["Cluster", "ClusterLoadAssignment", "RouteConfiguration", "Listener"]);
        assert_eq!(bodies(&out[1]), [b"e"], "the unchanged assignment follows its changed cluster");
        assert!(out[3].resources.is_empty(), "the listener set is now empty");
        // A new cluster alone does not resend assignments (the client asks for its own).
        put(&cache, &[(ResourceType::Cluster, "d", Some(b"d"))]);
        let out = s.on_cache_change(&cache);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn a_reconnecting_client_holding_the_current_version_is_not_resent_it() {
        let cache = ready(&[(ResourceType::Cluster, "a", Some(b"1"))]);
        let mut s = SotwStream::new("n".into(), None, View::sidecar());
        let (_, out) = s.on_request(&req(ResourceType::Cluster, &[], ""), &cache).unwrap();
        let version = out[0].version_info.clone();
        let mut again = SotwStream::new("n".into(), None, View::sidecar());
        let mut r = req(ResourceType::Cluster, &[], "");
        r.version_info = version;
        let (_, out) = again.on_request(&r, &cache).unwrap();
        assert!(out.is_empty());
        r.version_info = "something-else".into();
        let (_, out) = SotwStream::new("n".into(), None, View::sidecar()).on_request(&r, &cache).unwrap();
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn a_name_that_does_not_exist_yet_gets_no_empty_answer_and_its_arrival_is_pushed() {
        let cache = ready(&[(ResourceType::Listener, "other", Some(b"o"))]);
        let mut s = SotwStream::new("n".into(), None, View::sidecar());
        let (_, out) =
            s.on_request(&req(ResourceType::Listener, &["a.default.svc.cluster.local:80"], ""), &cache).unwrap();
        assert!(out.is_empty(), "{out:?}");
        put(&cache, &[(ResourceType::Listener, "a.default.svc.cluster.local:80", Some(b"api"))]);
        let out = s.on_cache_change(&cache);
        assert_eq!(bodies(&out[0]), [b"api"]);
    }

    #[test]
    fn nothing_is_served_before_the_cache_is_ready() {
        let cache = Cache::new(["files".to_string()]);
        put(&cache, &[(ResourceType::Cluster, "a", Some(b"1"))]);
        let mut s = SotwStream::new("n".into(), None, View::sidecar());
        let (_, out) = s.on_request(&req(ResourceType::Cluster, &[], ""), &cache).unwrap();
        assert!(out.is_empty());
        assert!(s.on_cache_change(&cache).is_empty());
        cache.source_synced("files");
        let out = s.on_cache_change(&cache);
        assert_eq!(bodies(&out[0]), [b"1"]);
    }
}
