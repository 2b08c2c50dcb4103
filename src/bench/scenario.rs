//! Scenarios: what happens to the cluster, step by step. A step is what one change in a real
//! cluster puts on the watches at once (a pod and its EndpointSlice, a VirtualService, ...)
//! and is what the bench times, from its scheduled send to the output it causes.

use std::collections::VecDeque;

use rand::Rng;

use super::generate::World;
use crate::model::InputEvent;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// The whole cluster in one batch.
    InitialSync,
    /// Pods added, removed and flipping readiness, each with its EndpointSlice, on random services.
    PodChurn,
    /// One deployment's pods replaced one by one by pods of the next version.
    RollingUpdate,
    /// One service scaled up to 3× its pods one at a time, then back down.
    ScaleUpDown,
    /// One VirtualService's v1 weight moved 0 → 100 and back in steps of 10.
    CanaryWeightShift,
    /// Pods of routed services moving between `version` subsets (the pod only).
    SubsetRelabel,
    /// Every pod of a node goes (with its slice update), node after node.
    NodeDrain,
    /// Every object of a namespace deleted, one watch event each, namespace after namespace.
    NamespaceDelete,
    /// New services (Service, pods, slice) created one after another.
    ServiceCreationStorm,
    /// Churn with some relabels, weight shifts, scaling and new services.
    Mixed,
    /// A Gateway gains a server on a port of its own or loses it, Gateway after Gateway: what
    /// the ingress gateway's class is served changes (that port's listener and route config),
    /// and nothing a sidecar holds.
    GatewayChange,
}

impl Scenario {
    pub const ALL: [Scenario; 11] = [
        Scenario::InitialSync,
        Scenario::PodChurn,
        Scenario::RollingUpdate,
        Scenario::ScaleUpDown,
        Scenario::CanaryWeightShift,
        Scenario::SubsetRelabel,
        Scenario::NodeDrain,
        Scenario::NamespaceDelete,
        Scenario::ServiceCreationStorm,
        Scenario::Mixed,
        Scenario::GatewayChange,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::InitialSync => "initial-sync",
            Scenario::PodChurn => "pod-churn",
            Scenario::RollingUpdate => "rolling-update",
            Scenario::ScaleUpDown => "scale-up-down",
            Scenario::CanaryWeightShift => "canary-weight-shift",
            Scenario::SubsetRelabel => "subset-relabel",
            Scenario::NodeDrain => "node-drain",
            Scenario::NamespaceDelete => "namespace-delete",
            Scenario::ServiceCreationStorm => "service-creation-storm",
            Scenario::Mixed => "mixed",
            Scenario::GatewayChange => "gateway-change",
        }
    }
}

/// One step: a label (what kind of change) and its input events.
pub struct Step {
    pub label: &'static str,
    pub events: Vec<InputEvent>,
}

/// Produces a scenario's steps from the world, one at a time.
pub struct Steps {
    scenario: Scenario,
    queue: VecDeque<Step>,
    /// The service a focused scenario (rolling update, scale, canary) works on.
    focus: Option<usize>,
    phase: usize,
    base_pods: usize,
}

impl Steps {
    pub fn new(scenario: Scenario) -> Steps {
        Steps { scenario, queue: VecDeque::new(), focus: None, phase: 0, base_pods: 0 }
    }

    /// The next step, or `None` when the scenario has nothing left to do (the cluster is
    /// exhausted: no namespace left to delete, no pod left to drain).
    pub fn next(&mut self, world: &mut World) -> Option<Step> {
        if let Some(step) = self.queue.pop_front() {
            return Some(step);
        }
        match self.scenario {
            Scenario::InitialSync => None,
            Scenario::PodChurn => churn(world),
            Scenario::SubsetRelabel => relabel(world),
            Scenario::RollingUpdate => self.rolling(world),
            Scenario::ScaleUpDown => self.scale(world),
            Scenario::CanaryWeightShift => self.canary(world),
            Scenario::NodeDrain => {
                for _ in 0..world.nodes {
                    let node = world.rng.random_range(0..world.nodes.max(1));
                    for (svc, pod) in world.pods_on_node(node) {
                        let events = world.pod_remove_named(svc, &pod);
                        self.queue.push_back(Step { label: "pod-evicted", events });
                    }
                    if !self.queue.is_empty() {
                        break;
                    }
                }
                self.queue.pop_front()
            }
            Scenario::NamespaceDelete => {
                let ns = world.pick_namespace()?;
                for events in world.namespace_delete(ns) {
                    self.queue.push_back(Step { label: "namespace-object-deleted", events });
                }
                self.queue.pop_front()
            }
            Scenario::GatewayChange => {
                world.gateway_change().map(|events| Step { label: "gateway-server-toggled", events })
            }
            Scenario::ServiceCreationStorm => {
                let pods = (world.preset.pods / world.preset.services.max(1)).max(1);
                Some(Step { label: "service-created", events: world.service_create(pods) })
            }
            Scenario::Mixed => {
                let roll = world.rng.random_range(0..100);
                match roll {
                    0..70 => churn(world),
                    70..80 => relabel(world),
                    80..90 => self.canary(world),
                    90..95 => self.scale(world),
                    _ => {
                        let pods = (world.preset.pods / world.preset.services.max(1)).max(1);
                        Some(Step { label: "service-created", events: world.service_create(pods) })
                    }
                }
            }
        }
    }

    fn focused(&mut self, world: &mut World, routed: bool) -> Option<usize> {
        if let Some(id) = self.focus.filter(|id| world.services.contains_key(id)) {
            return Some(id);
        }
        let id = world.pick_service(routed).or_else(|| world.pick_service(false))?;
        self.focus = Some(id);
        self.base_pods = world.services[&id].pods.len().max(1);
        self.phase = 0;
        Some(id)
    }

    /// One wave of a Deployment's rolling update (Kubernetes' default maxSurge and
    /// maxUnavailable, 25%): a quarter of the pods (at least one) replaced by pods of the new
    /// version in one step, so the service's EndpointSlice changes by a wave at a time.
    fn rolling(&mut self, world: &mut World) -> Option<Step> {
        let id = self.focused(world, true)?;
        let svc = &world.services[&id];
        // Everything at one version: the next rollout starts, to the version after it. Else a
        // rollout is under way: keep rolling out the version of the newest pod.
        let first = svc.pods.first()?.version;
        let target =
            if svc.pods.iter().all(|p| p.version == first) { (first + 1) % 3 } else { svc.pods.last()?.version };
        let wave = svc.pods.len().div_ceil(4).max(1);
        let mut events = Vec::new();
        for _ in 0..wave {
            let Some(index) = world.services[&id].pods.iter().position(|p| p.version != target) else { break };
            events.extend(world.pod_replace(id, index, target));
        }
        Some(Step { label: "wave-replaced", events })
    }

    fn scale(&mut self, world: &mut World) -> Option<Step> {
        let id = self.focused(world, false)?;
        let n = world.services[&id].pods.len();
        if self.phase == 0 && n >= 3 * self.base_pods {
            self.phase = 1;
        } else if self.phase == 1 && n <= self.base_pods {
            self.phase = 0;
        }
        if self.phase == 0 {
            Some(Step { label: "scaled-up", events: world.pod_add(id) })
        } else {
            Some(Step { label: "scaled-down", events: world.pod_remove(id, n.saturating_sub(1)) })
        }
    }

    fn canary(&mut self, world: &mut World) -> Option<Step> {
        let id = self.focused(world, true)?;
        if !world.services[&id].routed {
            return churn(world);
        }
        // 0, 10, ..., 100, 90, ..., 0, ...
        let k = self.phase % 20;
        self.phase += 1;
        let weight = if k <= 10 { k * 10 } else { (20 - k) * 10 };
        Some(Step { label: "weight-shifted", events: world.set_weight(id, weight as u32) })
    }
}

fn churn(world: &mut World) -> Option<Step> {
    let id = world.pick_service(false)?;
    let n = world.services[&id].pods.len();
    let index = world.rng.random_range(0..n.max(1));
    let roll = world.rng.random_range(0..4);
    Some(match roll {
        0 => Step { label: "pod-added", events: world.pod_add(id) },
        1 if n > 1 => Step { label: "pod-removed", events: world.pod_remove(id, index) },
        _ => Step { label: "pod-readiness-flipped", events: world.pod_flip_ready(id, index) },
    })
}

fn relabel(world: &mut World) -> Option<Step> {
    let id = world.pick_service(true).or_else(|| world.pick_service(false))?;
    let n = world.services[&id].pods.len();
    let index = world.rng.random_range(0..n.max(1));
    Some(Step { label: "pod-relabelled", events: world.pod_relabel(id, index) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::generate::Preset;
    use crate::model::Kind;

    #[test]
    fn a_rolling_update_replaces_a_quarter_of_the_pods_per_step_until_all_run_the_new_version() {
        let mut world = World::new(Preset::SMALL, 3);
        let mut steps = Steps::new(Scenario::RollingUpdate);
        let first = steps.next(&mut world).expect("a step");
        let id = steps.focus.expect("a focused service");
        let pods = world.services[&id].pods.len();
        assert!(pods >= 4, "{pods} pods");
        let deleted =
            |step: &Step| step.events.iter().filter(|e| e.key.kind == Kind::Pod && e.object.is_none()).count();
        assert_eq!(first.label, "wave-replaced");
        assert_eq!(deleted(&first), pods.div_ceil(4), "one wave: a quarter of {pods} pods");
        let target = world.services[&id].pods.last().unwrap().version;
        let mut waves = 1;
        while world.services[&id].pods.iter().any(|p| p.version != target) {
            let step = steps.next(&mut world).unwrap();
            assert!(deleted(&step) >= 1 && deleted(&step) <= pods.div_ceil(4));
            assert_eq!(world.services[&id].pods.len(), pods, "a wave keeps the replica count");
            waves += 1;
            assert!(waves <= 4, "a rollout takes at most four waves");
        }
        // The next step starts the next rollout, to another version.
        steps.next(&mut world).unwrap();
        assert_ne!(world.services[&id].pods.last().unwrap().version, target);
    }
}
