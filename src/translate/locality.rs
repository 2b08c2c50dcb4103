//! Locality load balancing relative to the proxy's locality, as istiod's
//! `loadbalancer.ApplyLocalityLoadBalancer` computes it (pilot/pkg/networking/core/loadbalancer).
//!
//! A ClusterLoadAssignment depends on the locality of the proxy that reads it only when the
//! cluster's effective DestinationRule policy (subset and port merged, as istiod's
//! `getSubsetTrafficPolicy`) enables it: `localityLbSetting.enabled` is not `false` (the mesh
//! default enables it), and either `distribute` is set (weights per locality, applied with or
//! without outlier detection) or outlier detection is set (failover priorities: Envoy only
//! drops to a lower priority when hosts are ejected). Those assignments are computed once per
//! (locality that a connected proxy has) × (such cluster); every other assignment is shared.
//!
//! With `failoverPriority` (and outlier detection, no `distribute`), istiod's
//! `applyFailoverPriorities` ranks each endpoint by how many of the listed labels it shares
//! with the proxy, so the assignment depends on the proxy's labels as well: those are computed
//! once per (locality, labels) that a connected proxy has ([`crate::translate::Scope::Prioritized`]).
//! Labels are compared as istiod augments them (`AugmentLabels`): the endpoint's and the proxy's
//! own, with `topology.kubernetes.io/region`, `topology.kubernetes.io/zone` and
//! `topology.istio.io/subzone` from their localities and `topology.istio.io/cluster` the one
//! cluster meshflow serves. Left out: `kubernetes.io/hostname` and `topology.istio.io/network`
//! are only compared where the labels carry them (meshflow knows no networks, and does not
//! read the proxy's Node); `zoneAwareLbSetting` (reported).

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as envoy_endpoint;
use envoy_types::pb::google::protobuf::UInt32Value;
use prost::Message;
use serde::{Deserialize, Serialize};

use super::{EndpointAddr, Scope};
use crate::model::istio::{LocalityLbSetting, TrafficPolicy};
use crate::model::k8s::Labels;

/// What a located assignment is computed from, besides its endpoints and the proxy's locality.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LocalityLb {
    /// `distribute`: from (a proxy locality pattern) → [(to pattern, weight)], in order. When
    /// set, weights replace failover (istiod applies one or the other).
    pub distribute: Vec<(String, Vec<(String, u32)>)>,
    /// `failover`: from region → to region.
    pub failover: Vec<(String, String)>,
    /// `failoverPriority`: label names, each optionally `name=value` (the value to compare
    /// with instead of the proxy's), in order of importance.
    pub failover_priority: Vec<String>,
    /// Whether outlier detection is set: failover priorities apply only then.
    pub outlier_detection: bool,
}

/// The effective locality setting of a policy: the DestinationRule's, else the mesh default
/// (`localityLbSetting: {enabled: true}`, as istiod's default mesh config).
fn effective_setting(policy: Option<&TrafficPolicy>) -> Option<LocalityLbSetting> {
    let lb = policy.and_then(|p| p.load_balancer.as_ref());
    if lb.is_some_and(|lb| lb.zone_aware_lb_setting.is_some()) {
        // istiod's GetEffectiveLbSetting prefers zone-aware settings; not translated (reported).
        return None;
    }
    match lb.and_then(|lb| lb.locality_lb_setting.as_ref()) {
        Some(s) if s.enabled == Some(false) => None,
        Some(s) => Some(s.clone()),
        None => Some(LocalityLbSetting { enabled: Some(true), ..Default::default() }),
    }
}

/// Whether (and how) a cluster's load assignment depends on the proxy's locality, from the
/// cluster's merged policy. `None`: the assignment is the same for every proxy.
pub fn locality_lb(policy: Option<&TrafficPolicy>) -> Option<LocalityLb> {
    let setting = effective_setting(policy)?;
    let outlier_detection = policy.is_some_and(|p| p.outlier_detection.is_some());
    let distribute: Vec<(String, Vec<(String, u32)>)> = setting
        .distribute
        .iter()
        .map(|d| (d.from.clone().unwrap_or_default(), d.to.iter().map(|(k, v)| (k.clone(), *v)).collect()))
        .collect();
    if distribute.is_empty() && !outlier_detection {
        // No weights, and no failover without outlier detection.
        return None;
    }
    let failover = setting
        .failover
        .iter()
        .map(|f| (f.from.clone().unwrap_or_default(), f.to.clone().unwrap_or_default()))
        .collect();
    let failover_priority = setting.failover_priority.clone();
    Some(LocalityLb { distribute, failover, failover_priority, outlier_detection })
}

impl LocalityLb {
    /// Whether the assignment depends on the proxy's labels too (istiod's
    /// `FailoverPriorityLabels`: `failoverPriority` set and no `distribute`; applied only
    /// with outlier detection).
    pub fn by_labels(&self) -> bool {
        self.distribute.is_empty() && self.outlier_detection && !self.failover_priority.is_empty()
    }

    /// The label names `failoverPriority` compares (an entry's `=value` override left off).
    pub fn priority_labels(&self) -> impl Iterator<Item = &str> {
        self.failover_priority.iter().map(|p| p.split('=').next().unwrap_or_default())
    }
}

/// The cluster id istiod adds to every label set (`topology.istio.io/cluster`): meshflow serves
/// one cluster, istiod's default id.
pub const CLUSTER_ID: &str = "Kubernetes";

/// A label's value as istiod's `AugmentLabels` sees it: the topology labels of a locality
/// (where that part is set) and the cluster id over the object's own labels; "" when absent
/// (a Go map's zero value).
fn augmented<'a>(labels: &'a Labels, locality: (&'a str, &'a str, &'a str), key: &str) -> &'a str {
    match key {
        "topology.kubernetes.io/region" if !locality.0.is_empty() => locality.0,
        "topology.kubernetes.io/zone" if !locality.1.is_empty() => locality.1,
        "topology.istio.io/subzone" if !locality.2.is_empty() => locality.2,
        "topology.istio.io/cluster" => CLUSTER_ID,
        _ => labels.get(key).map_or("", String::as_str),
    }
}

/// Where a resource placed for proxies in `locality` with `labels` is served: per locality in
/// the default context (`namespace: None`), per (locality, namespace) for a namespace's own
/// rule; with the labels too where `failoverPriority` reads them (`by_labels`).
pub fn located_scope(namespace: Option<&str>, by_labels: bool, locality: &str, labels: &Labels) -> Scope {
    let locality = locality.to_string();
    match (namespace, by_labels) {
        (None, false) => Scope::Locality(locality),
        (None, true) => Scope::Prioritized(locality, labels.id()),
        (Some(ns), false) => Scope::LocalityIn(locality, ns.to_string()),
        (Some(ns), true) => Scope::PrioritizedIn(locality, labels.id(), ns.to_string()),
    }
}

/// The labels of the proxy that asks, as far as failover priorities read them.
#[derive(Clone, Copy, Debug)]
pub struct ProxyLabels<'a> {
    pub locality: &'a str,
    pub labels: &'a Labels,
}

/// Whether the cluster gets `common_lb_config.locality_weighted_lb_config`, as istiod's
/// `LocalityLBSettings.ApplyToCluster` sets it: locality LB enabled and either `distribute`
/// set, or outlier detection with `failover` or `failoverPriority` set.
pub fn locality_weighted(policy: Option<&TrafficPolicy>) -> bool {
    let Some(setting) = effective_setting(policy) else { return false };
    let outlier_detection = policy.is_some_and(|p| p.outlier_detection.is_some());
    !setting.distribute.is_empty()
        || (outlier_detection && (!setting.failover.is_empty() || !setting.failover_priority.is_empty()))
}

/// A locality as istiod's `LocalityToString` writes it: `region[/zone[/subzone]]`, trailing
/// empty parts left off ("" for none).
pub fn locality_string(region: &str, zone: &str, sub_zone: &str) -> String {
    let mut s = region.to_string();
    if zone.is_empty() {
        return s;
    }
    s.push('/');
    s.push_str(zone);
    if sub_zone.is_empty() {
        return s;
    }
    s.push('/');
    s.push_str(sub_zone);
    s
}

fn split(locality: &str) -> (&str, &str, &str) {
    let mut parts = locality.splitn(3, '/');
    (parts.next().unwrap_or_default(), parts.next().unwrap_or_default(), parts.next().unwrap_or_default())
}

fn parts(l: Option<&core::Locality>) -> (&str, &str, &str) {
    l.map(|l| (l.region.as_str(), l.zone.as_str(), l.sub_zone.as_str())).unwrap_or_default()
}

/// istiod's `util.LocalityMatch`: whether `locality` matches a rule's `region/zone/subzone`
/// pattern (`*` matches anything; a missing zone or subzone too).
fn locality_match(locality: (&str, &str, &str), rule: &str) -> bool {
    let (region, zone, subzone) = split(rule);
    (region == "*" || locality.0 == region)
        && (zone == "*" || zone.is_empty() || locality.1 == zone)
        && (subzone == "*" || subzone.is_empty() || locality.2 == subzone)
}

/// istiod's `util.LbPriority`: 0 same region, zone and subzone; 1 same region and zone; 2 same
/// region; 3 otherwise.
fn lb_priority(proxy: (&str, &str, &str), endpoints: (&str, &str, &str)) -> u32 {
    match (proxy.0 == endpoints.0, proxy.1 == endpoints.1, proxy.2 == endpoints.2) {
        (true, true, true) => 0,
        (true, true, false) => 1,
        (true, false, _) => 2,
        (false, _, _) => 3,
    }
}

/// istiod's `ApplyLocalityLoadBalancer` on an assignment, for a proxy in `proxy.locality`
/// (`region/zone/subzone`, possibly empty) with `proxy.labels`. `endpoint_labels[i][j]` are
/// the labels of `cla.endpoints[i].lb_endpoints[j]` (read only with `failoverPriority`).
fn apply(
    cla: &mut envoy_endpoint::ClusterLoadAssignment,
    endpoint_labels: &[Vec<&Labels>],
    proxy: ProxyLabels<'_>,
    lb: &LocalityLb,
) {
    let at = split(proxy.locality);
    if !lb.distribute.is_empty() {
        apply_weights(cla, at, &lb.distribute);
    } else if lb.outlier_detection {
        if lb.failover_priority.is_empty() {
            apply_failover(cla, at, &lb.failover);
        } else {
            apply_failover_priorities(cla, endpoint_labels, proxy, &lb.failover_priority);
            // Region failover on top only when it is configured as well.
            if !lb.failover.is_empty() {
                apply_failover(cla, at, &lb.failover);
            }
        }
    }
}

/// istiod's `applyFailoverPriorities`: each endpoint's priority is 0 when it agrees with the
/// proxy on every listed label, else `n - j` for the first label `j` it disagrees on (a
/// disagreement on a leading `topology.istio.io/network` only adds `n`, the rest still
/// ranks); each LocalityLbEndpoints splits into one per priority present (weight: the sum of
/// its endpoints'), and the priorities are renumbered 0..N without gaps.
fn apply_failover_priorities(
    cla: &mut envoy_endpoint::ClusterLoadAssignment,
    endpoint_labels: &[Vec<&Labels>],
    proxy: ProxyLabels<'_>,
    failover_priority: &[String],
) {
    if cla.endpoints.is_empty() {
        return;
    }
    let n = failover_priority.len() as u32;
    let includes_network = failover_priority.first().is_some_and(|l| l == "topology.istio.io/network");
    // (label, the value the proxy has for it: its own, or the entry's override)
    let proxy_at = split(proxy.locality);
    let wanted: Vec<(&str, &str)> = failover_priority
        .iter()
        .map(|entry| {
            let mut parts = entry.split('=');
            let label = parts.next().unwrap_or_default();
            let value = match (parts.next(), parts.next()) {
                (Some(v), None) => v,
                _ => augmented(proxy.labels, proxy_at, label),
            };
            (label, value)
        })
        .collect();
    let no_labels = Vec::new();
    let mut split_up = Vec::with_capacity(cla.endpoints.len());
    for (i, group) in std::mem::take(&mut cla.endpoints).into_iter().enumerate() {
        let labels = endpoint_labels.get(i).unwrap_or(&no_labels);
        let at = parts(group.locality.as_ref());
        let mut by_priority: std::collections::BTreeMap<u32, Vec<envoy_endpoint::LbEndpoint>> = Default::default();
        for (j, ep) in group.lb_endpoints.iter().enumerate() {
            let empty = Labels::new();
            let own = labels.get(j).copied().unwrap_or(&empty);
            let (mut priority, mut adjust) = (0, 0);
            for (k, (label, value)) in wanted.iter().enumerate() {
                if augmented(own, at, label) != *value {
                    if k == 0 && includes_network {
                        adjust = n;
                        continue;
                    }
                    priority = n - k as u32;
                    break;
                }
            }
            by_priority.entry(priority + adjust).or_default().push(ep.clone());
        }
        for (priority, lb_endpoints) in by_priority {
            let weight = lb_endpoints
                .iter()
                .fold(0u32, |sum, e| sum.saturating_add(e.load_balancing_weight.as_ref().map_or(0, |w| w.value)));
            split_up.push(envoy_endpoint::LocalityLbEndpoints {
                lb_endpoints,
                priority,
                load_balancing_weight: Some(UInt32Value { value: weight }),
                ..group.clone()
            });
        }
    }
    let mut used: Vec<u32> = split_up.iter().map(|ep| ep.priority).collect();
    used.sort_unstable();
    used.dedup();
    for ep in split_up.iter_mut() {
        ep.priority = used.binary_search(&ep.priority).unwrap_or_default() as u32;
    }
    cla.endpoints = split_up;
}

/// istiod's `applyLocalityWeights`: the first `distribute` entry whose `from` matches the
/// proxy spreads the load over the localities of its `to` (a pattern matching several
/// localities shares its weight among them by their own weights); localities no `to`
/// matches keep their entry, emptied of endpoints.
fn apply_weights(
    cla: &mut envoy_endpoint::ClusterLoadAssignment,
    proxy: (&str, &str, &str),
    distribute: &[(String, Vec<(String, u32)>)],
) {
    let Some((_, to)) = distribute.iter().find(|(from, _)| locality_match(proxy, from)) else { return };
    let mut unmatched: Vec<bool> = vec![true; cla.endpoints.len()];
    for (pattern, weight) in to {
        let mut matched: Vec<(usize, u64)> = Vec::new();
        for (i, ep) in cla.endpoints.iter().enumerate() {
            if unmatched[i] && locality_match(parts(ep.locality.as_ref()), pattern) {
                unmatched[i] = false;
                matched.push((i, ep.load_balancing_weight.as_ref().map_or(1, |w| u64::from(w.value))));
            }
        }
        let total: u64 = matched.iter().map(|(_, w)| w).sum();
        for (i, original) in matched {
            if total == 0 {
                continue;
            }
            // ceil(original × weight / total), as istiod's float division and math.Ceil.
            let value = (original * u64::from(*weight)).div_ceil(total);
            if value > 0 {
                cla.endpoints[i].load_balancing_weight =
                    Some(UInt32Value { value: value.min(u64::from(u32::MAX)) as u32 });
            }
        }
    }
    for (ep, unmatched) in cla.endpoints.iter_mut().zip(unmatched) {
        if unmatched {
            ep.lb_endpoints.clear();
        }
    }
}

/// istiod's `applyLocalityFailover`: each locality's priority relative to the proxy's
/// ([`lb_priority`]); a locality of another region is priority 4 instead of 3 when a
/// `failover` entry from the proxy's region names another region as the one to fail over to;
/// then the priorities are renumbered 0..N without gaps, in order.
fn apply_failover(
    cla: &mut envoy_endpoint::ClusterLoadAssignment,
    proxy: (&str, &str, &str),
    failover: &[(String, String)],
) {
    for ep in cla.endpoints.iter_mut() {
        let locality = parts(ep.locality.as_ref());
        let mut priority = lb_priority(proxy, locality);
        if priority == 3
            && let Some((_, to)) = failover.iter().find(|(from, _)| from == proxy.0)
            && locality.0 != to
        {
            priority = 4;
        }
        ep.priority = ep.priority * 5 + priority;
    }
    let mut used: Vec<u32> = cla.endpoints.iter().map(|ep| ep.priority).collect();
    used.sort_unstable();
    used.dedup();
    for ep in cla.endpoints.iter_mut() {
        ep.priority = used.binary_search(&ep.priority).unwrap_or_default() as u32;
    }
}

/// The assignment of a cluster whose load balancing depends on the proxy's locality, for
/// proxies in `proxy.locality` (with `proxy.labels`, read with `failoverPriority` only).
/// `endpoints` sorted and free of duplicates, as for [`super::load_assignment`], each with its
/// own labels (its Pod's; only read with `failoverPriority`).
pub fn located_load_assignment(
    cluster_name: &str,
    endpoints: &[(&EndpointAddr, &Labels)],
    proxy: ProxyLabels<'_>,
    lb: &LocalityLb,
) -> Vec<u8> {
    let addrs: Vec<&EndpointAddr> = endpoints.iter().map(|(a, _)| *a).collect();
    let mut cla = super::load_assignment_message(cluster_name, &addrs);
    apply_to(&mut cla, endpoints, proxy, lb);
    cla.encode_to_vec()
}

/// istiod's `ApplyLocalityLoadBalancer` on an assignment built by
/// [`super::load_assignment_message`] from `endpoints` (in that order), for `proxy`: a DNS
/// cluster's inline assignment, or an EDS one.
pub fn apply_to(
    cla: &mut envoy_endpoint::ClusterLoadAssignment,
    endpoints: &[(&EndpointAddr, &Labels)],
    proxy: ProxyLabels<'_>,
    lb: &LocalityLb,
) {
    // The labels in the order load_assignment_message groups the endpoints: by locality, in
    // their order within each.
    let mut by_locality: std::collections::BTreeMap<&str, Vec<&Labels>> = Default::default();
    for (a, l) in endpoints {
        by_locality.entry(&*a.locality).or_default().push(*l);
    }
    let labels: Vec<Vec<&Labels>> = by_locality.into_values().collect();
    apply(cla, &labels, proxy, lb);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::istio::DestinationRuleSpec;

    fn policy(json: serde_json::Value) -> TrafficPolicy {
        let spec: DestinationRuleSpec =
            serde_json::from_value(serde_json::json!({"host": "h", "trafficPolicy": json})).unwrap();
        *spec.traffic_policy.unwrap()
    }

    /// The located assignment for a proxy in `locality` without labels, of endpoints without
    /// labels.
    fn located(refs: &[&EndpointAddr], locality: &str, lb: &LocalityLb) -> Vec<u8> {
        let none = Labels::new();
        let eps: Vec<(&EndpointAddr, &Labels)> = refs.iter().map(|a| (*a, &none)).collect();
        located_load_assignment("c", &eps, ProxyLabels { locality, labels: &none }, lb)
    }

    fn addr(ip: &str, locality: &str) -> EndpointAddr {
        EndpointAddr { locality: locality.into(), ..EndpointAddr::new(ip, 80) }
    }

    /// (locality, priority, weight, endpoint count) of each LocalityLbEndpoints, decoded.
    fn decoded(body: &[u8]) -> Vec<(String, u32, u32, usize)> {
        let cla = envoy_endpoint::ClusterLoadAssignment::decode(body).unwrap();
        cla.endpoints
            .iter()
            .map(|e| {
                let l = e.locality.clone().unwrap_or_default();
                (
                    locality_string(&l.region, &l.zone, &l.sub_zone),
                    e.priority,
                    e.load_balancing_weight.as_ref().map_or(0, |w| w.value),
                    e.lb_endpoints.len(),
                )
            })
            .collect()
    }

    const OUTLIER: &str = r#"{"consecutive5xxErrors": 1, "interval": "1s", "baseEjectionTime": "1m"}"#;

    fn with_outlier(extra: serde_json::Value) -> TrafficPolicy {
        let mut p = extra;
        p["outlierDetection"] = serde_json::from_str(OUTLIER).unwrap();
        policy(p)
    }

    #[test]
    fn only_outlier_detection_or_distribute_make_the_assignment_depend_on_the_proxy() {
        assert_eq!(locality_lb(None), None, "no rule: the same for every proxy");
        assert_eq!(locality_lb(Some(&policy(serde_json::json!({})))), None);
        // The mesh default enables locality LB: outlier detection alone turns failover on.
        let od = with_outlier(serde_json::json!({}));
        assert_eq!(
            locality_lb(Some(&od)),
            Some(LocalityLb {
                distribute: vec![],
                failover: vec![],
                failover_priority: vec![],
                outlier_detection: true
            })
        );
        // `enabled: false` turns it off, outlier detection or not.
        let off = with_outlier(serde_json::json!({"loadBalancer": {"localityLbSetting": {"enabled": false}}}));
        assert_eq!(locality_lb(Some(&off)), None);
        assert!(!locality_weighted(Some(&off)));
        // Failover without outlier detection: nothing (Envoy would never fail over).
        let no_od = policy(serde_json::json!({"loadBalancer": {"localityLbSetting": {
            "failover": [{"from": "us-east", "to": "eu-west"}]}}}));
        assert_eq!(locality_lb(Some(&no_od)), None);
        assert!(!locality_weighted(Some(&no_od)));
        // distribute applies without outlier detection.
        let weights = policy(serde_json::json!({"loadBalancer": {"localityLbSetting": {
            "distribute": [{"from": "us-west/zone1/*", "to": {"us-west/zone1/*": 80, "us-west/zone2/*": 20}}]}}}));
        assert!(locality_lb(Some(&weights)).is_some());
        assert!(locality_weighted(Some(&weights)));
        // failoverPriority with outlier detection: by the proxy's labels as well; without
        // outlier detection nothing; with distribute, weights only.
        let by_labels = with_outlier(serde_json::json!({"loadBalancer": {"localityLbSetting": {
            "failoverPriority": ["topology.kubernetes.io/zone"]}}}));
        assert!(locality_lb(Some(&by_labels)).is_some_and(|lb| lb.by_labels()));
        assert!(locality_weighted(Some(&by_labels)));
        let no_od = policy(serde_json::json!({"loadBalancer": {"localityLbSetting": {
            "failoverPriority": ["topology.kubernetes.io/zone"]}}}));
        assert_eq!(locality_lb(Some(&no_od)), None);
        let both = policy(serde_json::json!({"loadBalancer": {"localityLbSetting": {
            "failoverPriority": ["version"],
            "distribute": [{"from": "r/*", "to": {"r/*": 100}}]}}}));
        assert!(locality_lb(Some(&both)).is_some_and(|lb| !lb.by_labels()));
        // istiod sets locality_weighted_lb_config for failover with outlier detection only,
        // not for the default failover.
        assert!(!locality_weighted(Some(&od)));
        let failover = with_outlier(serde_json::json!({"loadBalancer": {"localityLbSetting": {
            "failover": [{"from": "us-east", "to": "eu-west"}]}}}));
        assert!(locality_weighted(Some(&failover)));
    }

    /// istio.io "Locality failover": a proxy in region1/zone1/sub_zone1 sends to its own
    /// locality first, then its zone, then its region, then other regions.
    #[test]
    fn default_failover_ranks_by_subzone_zone_region() {
        let lb = locality_lb(Some(&with_outlier(serde_json::json!({})))).unwrap();
        let eps = [
            addr("10.0.0.1", "region1/zone1/subzone1"),
            addr("10.0.0.2", "region1/zone1/subzone2"),
            addr("10.0.0.3", "region1/zone2/subzone1"),
            addr("10.0.0.4", "region2/zone1/subzone1"),
        ];
        let refs: Vec<&EndpointAddr> = eps.iter().collect();
        let body = located(&refs, "region1/zone1/subzone1", &lb);
        assert_eq!(
            decoded(&body),
            [
                ("region1/zone1/subzone1".into(), 0, 1, 1),
                ("region1/zone1/subzone2".into(), 1, 1, 1),
                ("region1/zone2/subzone1".into(), 2, 1, 1),
                ("region2/zone1/subzone1".into(), 3, 1, 1),
            ]
        );
        // Priorities have no gaps: a proxy in region2 sees its region first, all of region1 next.
        let body = located(&refs, "region2/zone9", &lb);
        let p: Vec<u32> = decoded(&body).iter().map(|d| d.1).collect();
        assert_eq!(p, [1, 1, 1, 0]);
        // A proxy without locality: only endpoints without locality would be its own; here
        // every endpoint is of another region, all priority 0.
        let body = located(&refs, "", &lb);
        assert!(decoded(&body).iter().all(|d| d.1 == 0));
    }

    /// `failover: [{from: us-east, to: eu-west}]`: from us-east, eu-west comes before every
    /// other region.
    #[test]
    fn failover_names_the_region_to_fail_over_to() {
        let lb = locality_lb(Some(&with_outlier(serde_json::json!({"loadBalancer": {"localityLbSetting": {
            "failover": [{"from": "us-east", "to": "eu-west"}]}}}))))
        .unwrap();
        let eps = [
            addr("10.0.0.1", "ap-south/z/s"),
            addr("10.0.0.2", "eu-west/z/s"),
            addr("10.0.0.3", "us-east/a/s"),
            addr("10.0.0.4", "us-east/b/s"),
        ];
        let refs: Vec<&EndpointAddr> = eps.iter().collect();
        let p: Vec<u32> = decoded(&located(&refs, "us-east/a/s", &lb)).iter().map(|d| d.1).collect();
        // us-east/a/s P0; us-east/b P2 → 1; eu-west P3 → 2; ap-south P4 → 3.
        assert_eq!(p, [3, 2, 0, 1]);
        // The rule is for proxies in us-east only: from eu-west, the other regions tie.
        let p: Vec<u32> = decoded(&located(&refs, "eu-west/z/s", &lb)).iter().map(|d| d.1).collect();
        assert_eq!(p, [1, 0, 1, 1]);
    }

    /// istio.io "Locality weighted distribution": from region1/zone1 80% stays in zone1, 20%
    /// goes to zone2; localities the rule does not name get no traffic.
    #[test]
    fn distribute_sets_locality_weights_and_empties_the_rest() {
        let lb = locality_lb(Some(&policy(serde_json::json!({"loadBalancer": {"localityLbSetting": {
        "distribute": [
            {"from": "region1/zone1/*", "to": {"region1/zone1/*": 80, "region1/zone2/*": 20}},
            {"from": "region1/zone2/*", "to": {"region1/zone2/*": 100}}
        ]}}}))))
        .unwrap();
        let eps = [
            addr("10.0.0.1", "region1/zone1/a"),
            addr("10.0.0.2", "region1/zone1/a"),
            addr("10.0.0.3", "region1/zone1/b"),
            addr("10.0.0.4", "region1/zone2/a"),
            addr("10.0.0.5", "region2/zone1/a"),
        ];
        let refs: Vec<&EndpointAddr> = eps.iter().collect();
        let d = decoded(&located(&refs, "region1/zone1/a", &lb));
        // zone1's 80 shared by its two localities by their own weights (2 and 1): ceil(2×80/3)
        // = 54, ceil(80/3) = 27; zone2 all 20; region2 emptied (weight kept, no endpoints).
        assert_eq!(
            d,
            [
                ("region1/zone1/a".into(), 0, 54, 2),
                ("region1/zone1/b".into(), 0, 27, 1),
                ("region1/zone2/a".into(), 0, 20, 1),
                ("region2/zone1/a".into(), 0, 1, 0),
            ]
        );
        // The first matching `from` wins; a proxy no `from` matches gets the plain assignment.
        let d = decoded(&located(&refs, "region1/zone2/x", &lb));
        assert_eq!(d.iter().map(|e| e.3).collect::<Vec<_>>(), [0, 0, 1, 0]);
        assert_eq!(d[2].2, 100);
        let plain = decoded(&super::super::load_assignment("c", &refs));
        assert_eq!(decoded(&located(&refs, "region3/z/s", &lb)), plain);
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// (locality, priority, weight, the endpoints' IPs) of each LocalityLbEndpoints, decoded.
    fn ranked(body: &[u8]) -> Vec<(String, u32, u32, Vec<String>)> {
        let cla = envoy_endpoint::ClusterLoadAssignment::decode(body).unwrap();
        cla.endpoints
            .iter()
            .map(|e| {
                let l = e.locality.clone().unwrap_or_default();
                let ips = e
                    .lb_endpoints
                    .iter()
                    .map(|lb| match &lb.host_identifier {
                        Some(envoy_endpoint::lb_endpoint::HostIdentifier::Endpoint(ep)) => {
                            match ep.address.as_ref().and_then(|a| a.address.as_ref()) {
                                Some(core::address::Address::SocketAddress(s)) => s.address.clone(),
                                _ => String::new(),
                            }
                        }
                        _ => String::new(),
                    })
                    .collect();
                (
                    locality_string(&l.region, &l.zone, &l.sub_zone),
                    e.priority,
                    e.load_balancing_weight.as_ref().map_or(0, |w| w.value),
                    ips,
                )
            })
            .collect()
    }

    fn prioritized(
        eps: &[(EndpointAddr, Labels)],
        proxy_locality: &str,
        proxy_labels: &Labels,
        setting: serde_json::Value,
    ) -> Vec<(String, u32, u32, Vec<String>)> {
        let lb = locality_lb(Some(&with_outlier(serde_json::json!({"loadBalancer": {"localityLbSetting": setting}}))))
            .unwrap();
        assert!(lb.by_labels());
        let refs: Vec<(&EndpointAddr, &Labels)> = eps.iter().map(|(a, l)| (a, l)).collect();
        ranked(&located_load_assignment(
            "c",
            &refs,
            ProxyLabels { locality: proxy_locality, labels: proxy_labels },
            &lb,
        ))
    }

    fn four_endpoints() -> Vec<(EndpointAddr, Labels)> {
        const NET: &str = "topology.istio.io/network";
        vec![
            (addr("1.1.1.1", "r1/z1/s1"), labels(&[(NET, "n1")])),
            (addr("2.2.2.2", "r1/z1/s1"), labels(&[("key", "value"), (NET, "n2")])),
            (addr("3.3.3.3", "r2/z2/s2"), labels(&[("key", "value"), (NET, "n1")])),
            (addr("4.4.4.4", "r2/z2/s2"), labels(&[("key", "value"), (NET, "n2")])),
        ]
    }

    fn row(l: &str, p: u32, w: u32, ips: &[&str]) -> (String, u32, u32, Vec<String>) {
        (l.into(), p, w, ips.iter().map(|s| s.to_string()).collect())
    }

    /// istiod's `applyFailoverPriorityPerLocality`: priority 0 for an endpoint that agrees on
    /// every label, `n - j` for the first label `j` it disagrees on; each locality splits into
    /// one LocalityLbEndpoints per priority, weighing its endpoints.
    #[test]
    fn failover_priority_ranks_endpoints_by_the_labels_they_share_with_the_proxy() {
        let proxy = labels(&[("key", "value"), ("topology.istio.io/network", "n1")]);
        let d = prioritized(
            &four_endpoints(),
            "r1/z1/s1",
            &proxy,
            serde_json::json!({"failoverPriority": ["key", "topology.istio.io/network"]}),
        );
        // 1.1.1.1 lacks `key` (j=0: 2); 2.2.2.2 and 4.4.4.4 differ on the network (j=1: 1);
        // 3.3.3.3 agrees on both (0). Locality (r1 ahead of r2) plays no part.
        assert_eq!(
            d,
            [
                row("r1/z1/s1", 1, 1, &["2.2.2.2"]),
                row("r1/z1/s1", 2, 1, &["1.1.1.1"]),
                row("r2/z2/s2", 0, 1, &["3.3.3.3"]),
                row("r2/z2/s2", 1, 1, &["4.4.4.4"]),
            ]
        );
        // A leading network label that differs adds n and lets the other labels still rank.
        let d = prioritized(
            &four_endpoints(),
            "r1/z1/s1",
            &proxy,
            serde_json::json!({"failoverPriority": ["topology.istio.io/network", "key"]}),
        );
        assert_eq!(
            d,
            [
                row("r1/z1/s1", 1, 1, &["1.1.1.1"]),
                row("r1/z1/s1", 2, 1, &["2.2.2.2"]),
                row("r2/z2/s2", 0, 1, &["3.3.3.3"]),
                row("r2/z2/s2", 2, 1, &["4.4.4.4"]),
            ]
        );
        // `label=value` compares with that value instead of the proxy's.
        let d = prioritized(
            &four_endpoints(),
            "r1/z1/s1",
            &proxy,
            serde_json::json!({"failoverPriority": ["topology.istio.io/network=n2"]}),
        );
        assert_eq!(
            d,
            [
                row("r1/z1/s1", 0, 1, &["2.2.2.2"]),
                row("r1/z1/s1", 1, 1, &["1.1.1.1"]),
                row("r2/z2/s2", 0, 1, &["4.4.4.4"]),
                row("r2/z2/s2", 1, 1, &["3.3.3.3"]),
            ]
        );
    }

    /// The topology labels come from the localities (istiod's `AugmentLabels`), for the proxy
    /// and for each endpoint; priorities are renumbered without gaps.
    #[test]
    fn failover_priority_reads_topology_labels_from_localities() {
        let none = Labels::new();
        let eps = vec![
            (addr("10.0.0.1", "r1/z1/s1"), none.clone()),
            (addr("10.0.0.2", "r1/z1/s1"), none.clone()),
            (addr("10.0.0.3", "r1/z2/s9"), none.clone()),
            (addr("10.0.0.4", "r2/z2"), none.clone()),
        ];
        let d = prioritized(
            &eps,
            "r1/z2",
            &none,
            serde_json::json!({"failoverPriority": ["topology.kubernetes.io/region", "topology.kubernetes.io/zone"]}),
        );
        assert_eq!(
            d,
            [
                row("r1/z1/s1", 1, 2, &["10.0.0.1", "10.0.0.2"]),
                row("r1/z2/s9", 0, 1, &["10.0.0.3"]),
                row("r2/z2", 2, 1, &["10.0.0.4"]),
            ]
        );
        // The cluster label is the same on both sides: it never splits.
        let d =
            prioritized(&eps, "r1/z2", &none, serde_json::json!({"failoverPriority": ["topology.istio.io/cluster"]}));
        assert!(d.iter().all(|r| r.1 == 0), "{d:?}");
    }

    /// With `failover` as well, region failover ranks within the label priorities
    /// (priority × 5 + the locality's), as istiod's `ApplyLocalityLoadBalancer`.
    #[test]
    fn failover_priority_then_region_failover() {
        let v = |x: &str| labels(&[("version", x)]);
        let eps = vec![
            (addr("10.0.0.1", "r1/z1/s1"), v("v2")),
            (addr("10.0.0.2", "r2/z/s"), v("v1")),
            (addr("10.0.0.3", "r3/z/s"), v("v1")),
        ];
        let d = prioritized(
            &eps,
            "r1/z1/s1",
            &v("v1"),
            serde_json::json!({"failoverPriority": ["version"], "failover": [{"from": "r1", "to": "r3"}]}),
        );
        // v1 first (r3, the failover region, ahead of r2), the proxy's own locality last.
        assert_eq!(
            d,
            [
                row("r1/z1/s1", 2, 1, &["10.0.0.1"]),
                row("r2/z/s", 1, 1, &["10.0.0.2"]),
                row("r3/z/s", 0, 1, &["10.0.0.3"]),
            ]
        );
    }

    #[test]
    fn localities_are_written_as_istiod_writes_them() {
        assert_eq!(locality_string("r", "z", "s"), "r/z/s");
        assert_eq!(locality_string("r", "z", ""), "r/z");
        assert_eq!(locality_string("r", "", "s"), "r");
        assert_eq!(locality_string("", "", ""), "");
        assert!(locality_match(("r", "z", "s"), "r/*"));
        assert!(locality_match(("r", "z", "s"), "r"));
        assert!(!locality_match(("r", "z", "s"), "r/y/*"));
        assert!(locality_match(("x", "z", "s"), "*"));
    }
}
