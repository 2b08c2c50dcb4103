//! What flows out of the engine's graphs and between them (see [`super::graphs`]): the rows
//! every graph outputs, and what each hands the next: class labels (proxy → config graph),
//! cluster facts (config → endpoint and located graphs), located addresses (endpoint →
//! located graph).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model::k8s::Labels;
use crate::model::proxy::ProxyKind;
use crate::translate::locality::LocalityLb;
use crate::translate::outbound::{ClusterRow, Context, SubsetRef};
use crate::translate::{Diagnostic, EndpointAddr, ResourceType, Scope, VirtualHostPart};

/// What leaves the graphs: finished resources, and virtual hosts that are assembled into
/// route configs outside it (see [`super::output`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum OutputRow {
    Resource {
        scope: Scope,
        ty: ResourceType,
        name: String,
        /// Shared: the endpoint graph keeps each load assignment it output (to retract it),
        /// and the cache serves the same bytes; a copy is a reference count.
        body: std::sync::Arc<[u8]>,
    },
    VirtualHost {
        /// `Sidecars`, or the namespace whose proxies see this virtual host instead of the
        /// sidecars' one of the same name.
        scope: Scope,
        route: String,
        /// (Boxed, as the diagnostic is: the rows of a large initial time are held together
        /// before the cache takes them, and every row is as large as the largest variant.)
        vhost: Box<VirtualHostPart>,
    },
    /// A problem with an input object that does not stop it from being served: a field meshflow
    /// does not translate yet, a route to a host or subset that does not exist.
    Diagnostic(Box<Diagnostic>),
    /// A Pod's locality (its own label, else its Node's): not a resource, but what a proxy of
    /// that Pod that does not tell its locality is placed in when it connects.
    PodLocality { pod: (String, String), locality: String },
}

/// A cluster's name inside the endpoint graphs: every endpoint row is keyed by one, and the
/// merges of the arrangements copy it (a reference count, not an allocation).
///
/// Ordered by a hash of the name first: the arrangements' seeks and merges compare keys, and
/// cluster names share long prefixes (`outbound|8080||reviews.`…), so comparing the names
/// themselves was a `memcmp` each (~9% of the engine thread at one pod event per time). Two
/// names compare by their text only when their hashes are equal.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Name {
    hash: u64,
    text: Arc<str>,
}

impl std::ops::Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.text
    }
}

impl std::hash::Hash for Name {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.text, f)
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Name {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Name, D::Error> {
        Ok(name(&String::deserialize(d)?))
    }
}

/// The [`Name`] of `s`. (The hash is the same for equal text within one process, which is all
/// the arrangements need; it is not stable across Rust releases and never leaves the process.)
pub fn name(s: &str) -> Name {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    Name { hash: BuildHasherDefault::<DefaultHasher>::default().hash_one(s), text: s.into() }
}

/// With `failoverPriority`: the base cluster whose endpoints' labels are compared, and the
/// subset whose labels select among them.
pub type LocatedBase = Option<(String, Option<SubsetRef>)>;

/// What the config graph knows of a cluster that the endpoint graphs need. The config graph
/// outputs these beside its resources; they are fed into the unsliced graph's input
/// (`EntryOwner`) and the endpoint graph's (the rest), so those run only when these, or
/// endpoints, change.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ClusterFact {
    /// An EDS cluster that gets a load assignment in this scope (empty if it has no endpoint:
    /// Envoy keeps an EDS cluster warming until one arrives).
    Assignment(Scope, String),
    /// A cluster without subset of a host exported to some namespaces only: each namespace's
    /// copy has its own assignment (there is no default one to share).
    ScopedBase(String, Scope),
    /// A cluster whose assignment depends on the proxy's locality, keyed by where its
    /// addresses are (its own context's scope, else the shared one), with its context.
    Located((Scope, String), (Context, LocalityLb, LocatedBase)),
    /// A base cluster whose endpoints' labels a located cluster's `failoverPriority` compares
    /// (once, however many name it).
    Prioritized(String),
    /// A subset cluster (scope, name) of the base cluster named first.
    Subset(String, ((Scope, String), SubsetRef)),
    /// An EDS cluster of a host that a ServiceEntry of this namespace won.
    EntryOwner(String, String),
    /// A DNS cluster whose inline endpoints depend on the proxy's locality: the cluster itself
    /// is computed per place of connected proxies.
    DnsLocated(Context, Box<ClusterRow>, LocalityLb),
}

/// A proxy class's labels: (class id, (kind, namespace, labels)).
pub type ClassLabelRow = (String, (ProxyKind, String, Labels));

/// What the endpoint graph hands the located graph ([`super::located`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LocatedInput {
    /// An address of a cluster whose assignment depends on the proxy's locality: (context,
    /// cluster, policy), the base whose endpoint labels `failoverPriority` compares, the address.
    Address((Context, String, LocalityLb), LocatedBase, EndpointAddr),
    /// With `failoverPriority`: the labels of an endpoint (base cluster, address).
    Labels((String, EndpointAddr), Labels),
}
