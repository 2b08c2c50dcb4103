//! The proxy graph: each connected proxy class's labels, the first of the five graphs (see
//! [`super::graphs`]).
//!
//! ```text
//! proxy classes (router, sidecar) ─labels given, else ⋈ their Pod's (by name), else
//!                                  ⋈ live pods by IP ─reduce per class: the Pod at its IP─▶ class labels
//! ```
//!
//! It reads only the Pods a class names or that are at a class's IP: the driver's Pod index
//! ([`super::pods`]) feeds it those and no other. A Pod change runs this small graph only then,
//! and the config graph only if a class's labels change.

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use timely::dataflow::Scope as Graph;

use super::inputs::{graph_inputs, input};
use super::rows::ClassLabelRow;
use crate::model::k8s::Labels;
use crate::model::proxy::{ClassLabels, ProxyClass, ProxyKind};
use crate::translate::views;

/// What the proxy graph reads of a Pod: its name, labels and live IP (its IP while it is not
/// terminal). A readiness flip or a container change leaves it equal, so the graph does not
/// run for it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PodIdentity {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    /// The Pod's IP while it is not terminal.
    pub ip: Option<String>,
}

/// What meets per proxy class whose named Pod does not exist: the class (kind, namespace) and
/// the live Pods (namespace, name, labels) at the proxy's IP (named: two Pods alike are two).
/// `Class` sorts first.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum PodAtIp {
    Class(ProxyKind, String),
    Candidate(String, String, Labels),
}

graph_inputs! {
    /// The proxy graph's inputs.
    pub struct Inputs {
        pub pods: PodIdentity,
        pub classes: ProxyClass,
    }
}

/// Builds the proxy graph: what the proxy said its labels are, else its Pod's (following the Pod).
pub fn build<'s>(scope: Graph<'s, u64>) -> (Inputs, VecCollection<'s, u64, ClassLabelRow>) {
    let (pods_in, pods) = input::<PodIdentity>(&scope);
    let (classes_in, classes) = input::<ProxyClass>(&scope);
    let labels_by_pod = pods.clone().map(|p: PodIdentity| ((p.namespace.clone(), p.name.clone()), p.labels));

    let labelled_classes = classes.filter(|c: &ProxyClass| c.kind != ProxyKind::Proxyless);
    let given_labels = labelled_classes.clone().flat_map(|c: ProxyClass| match &c.labels {
        ClassLabels::Given(l) => Some((c.id(), (c.kind, c.namespace.clone(), l.clone()))),
        _ => None,
    });
    let of_pod = labelled_classes.flat_map(|c: ProxyClass| match &c.labels {
        ClassLabels::OfPod { pod, ip } => Some(((c.namespace.clone(), pod.clone()), (c.id(), c.kind, ip.clone()))),
        _ => None,
    });
    let pod_labels_found = of_pod.clone().join_map(
        labels_by_pod.clone(),
        |(ns, _), (id, kind, _): &(String, ProxyKind, Option<String>), labels: &Labels| {
            (id.clone(), (*kind, ns.clone(), labels.clone()))
        },
    );
    // No Pod of that name: the Pod with the proxy's IP (keyed by IP, so a Pod's change costs the
    // classes at its IP), else no labels.
    let pod_missing =
        of_pod.antijoin(labels_by_pod.clone().map(|(k, _)| k)).map(|((ns, _), (id, kind, ip))| (id, (kind, ns, ip)));
    let pods_by_ip = pods.flat_map(|p: PodIdentity| Some((p.ip?, (p.namespace, p.name, p.labels))));
    let ip_candidates = pod_missing.clone().flat_map(|(id, (_, _, ip))| ip.map(|ip| (ip, id))).join_map(
        pods_by_ip,
        |_, id: &String, (ns, name, labels): &(String, String, Labels)| {
            (id.clone(), PodAtIp::Candidate(ns.clone(), name.clone(), labels.clone()))
        },
    );
    let pod_at_ip = pod_missing
        .map(|(id, (kind, ns, _))| (id, PodAtIp::Class(kind, ns)))
        .concat(ip_candidates)
        .reduce_named("select: pod at the proxy's IP", |_id: &String, input: &[(&PodAtIp, isize)], output| {
            let mut class = None;
            let mut candidates = Vec::new();
            for (i, _) in input {
                match i {
                    PodAtIp::Class(kind, ns) => class = Some((*kind, ns)),
                    PodAtIp::Candidate(ns, _, labels) => candidates.push((ns.as_str(), labels)),
                }
            }
            let Some((kind, ns)) = class else { return };
            let labels = views::pod_by_ip(ns, &candidates).cloned().unwrap_or_default();
            output.push(((kind, ns.clone(), labels), 1isize));
        });
    let class_labels = given_labels.concat(pod_labels_found).concat(pod_at_ip);
    (Inputs { pods: pods_in, classes: classes_in }, class_labels)
}
