//! One real Envoy among the bench's clients (`meshflow bench --envoy PATH`): the end-to-end
//! figure, event → that Envoy's ACK.
//!
//! The Envoy runs on meshflow's own bootstrap (delta ADS to the bench's xDS server, listeners
//! bound to a loopback address of its own). The server tells the bench of every answer this
//! Envoy gives through an [`AnswerTap`]: the type, and for an ACK the cache sequence number the
//! ACKed response was built at. A step's output batch took the cache to sequence number `s`;
//! the step has reached Envoy when Envoy has ACKed every response built at the first sequence
//! number at or past `s` that it was sent (a later change may have been coalesced into the
//! same responses: then that is when Envoy holds the step's change too).

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::agent::bootstrap::{BootstrapConfig, bootstrap};
use crate::translate::ResourceType;
use crate::xds::sync::{AnswerTap, Connections};

/// What the bench's Envoy answered: ACKs (type, the sequence number the response was built
/// at, when) and a count of NACKs.
#[derive(Default)]
pub struct Answers {
    acks: Mutex<Vec<(ResourceType, u64, Instant)>>,
    nacks: AtomicU64,
}

impl Answers {
    fn acks(&self) -> std::sync::MutexGuard<'_, Vec<(ResourceType, u64, Instant)>> {
        self.acks.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn nacks(&self) -> u64 {
        self.nacks.load(Ordering::Relaxed)
    }

    /// When Envoy held every change up to cache sequence number `seq`: the last ACK of the
    /// responses built at the first sequence number at or past `seq` it was sent. None if it
    /// has ACKed nothing built there yet.
    pub fn held_at(&self, seq: u64) -> Option<Instant> {
        let acks = self.acks();
        let first = acks.iter().map(|(_, s, _)| *s).filter(|s| *s >= seq).min()?;
        acks.iter().filter(|(_, s, _)| *s == first).map(|(_, _, at)| *at).max()
    }

    /// The ACK most recently received, if any: its type, sequence number and time.
    fn last(&self) -> Option<(ResourceType, u64, Instant)> {
        self.acks().iter().max_by_key(|(_, _, at)| *at).copied()
    }

    fn acked_types(&self, since: u64) -> Vec<ResourceType> {
        let acks = self.acks();
        let mut types: Vec<ResourceType> = acks.iter().filter(|(_, s, _)| *s >= since).map(|(t, _, _)| *t).collect();
        types.sort_by_key(|t| *t as usize);
        types.dedup();
        types
    }
}

/// The bench's Envoy, killed when dropped.
pub struct BenchEnvoy {
    child: Child,
    pub node: String,
    pub answers: Arc<Answers>,
    log: PathBuf,
}

/// A loopback address for the Envoy's listeners, by pid so that concurrent runs rarely share
/// one (127.0.0.1 is the clients').
fn bind_address() -> Ipv4Addr {
    let pid = std::process::id();
    Ipv4Addr::new(127, 201, (pid >> 8) as u8, (pid % 250) as u8 + 2)
}

impl BenchEnvoy {
    /// Starts `envoy` on a bootstrap for `xds`, its logs in `dir` (`<name>-envoy.log`), and taps
    /// `connections` for its answers (set the tap before the server starts: streams take it
    /// when they register).
    pub fn start(
        envoy: &Path,
        xds: SocketAddr,
        connections: &Connections,
        dir: &Path,
        name: &str,
    ) -> anyhow::Result<Self> {
        let ip = bind_address();
        let node = format!("sidecar~{ip}~bench-envoy.default~default.svc.cluster.local");
        let answers = Arc::new(Answers::default());
        let tap: AnswerTap = {
            let (answers, node) = (answers.clone(), node.clone());
            Arc::new(move |conn, ty, acked| {
                if *conn.node != *node {
                    return;
                }
                match acked {
                    Some(seq) => answers.acks().push((ty, seq, Instant::now())),
                    None => {
                        answers.nacks.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        anyhow::ensure!(connections.tap_answers(tap), "the xDS server's answers are tapped already");
        let admin_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        // (With istiod's stats inclusion list, as every bootstrap: Envoy's stats flush would
        // otherwise stall its main thread for ~0.6 s every 5 s at `large`.)
        let bootstrap = bootstrap(
            &BootstrapConfig {
                node_id: node.clone(),
                xds_addr: xds.to_string(),
                bind_address: Some(ip.into()),
                admin_port,
                stats: Default::default(),
            },
            &serde_json::Map::new(),
        )
        .map_err(|e| anyhow::anyhow!("Envoy bootstrap: {e}"))?;
        let bootstrap = serde_yaml_ng::to_string(&bootstrap)?;
        let config = dir.join(format!("{name}-envoy-bootstrap.yaml"));
        std::fs::write(&config, bootstrap).with_context(|| format!("writing {}", config.display()))?;
        let log = dir.join(format!("{name}-envoy.log"));
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(envoy)
            .arg("-c")
            .arg(&config)
            .args(["--disable-hot-restart", "--concurrency", "1", "--log-level", "warning"])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting Envoy {}", envoy.display()))?;
        Ok(BenchEnvoy { child, node, answers, log })
    }

    /// Waits until Envoy has ACKed clusters and listeners built at `seq` or later, and a
    /// response of each of `types` (those the cache serves; a sidecar may hold none of some,
    /// Secrets say), and then answered nothing more for a moment.
    pub fn wait_synced(&mut self, seq: u64, types: &[ResourceType], timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let quiet = Duration::from_millis(500);
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("Envoy exited ({status}) before it took the configuration; see {}", self.log.display());
            }
            let acked = self.answers.acked_types(seq);
            let has = |t| acked.contains(&t);
            let others = types
                .iter()
                .filter(|t| !matches!(t, ResourceType::Cluster | ResourceType::Listener | ResourceType::Secret))
                .all(|t| has(*t));
            if has(ResourceType::Cluster)
                && has(ResourceType::Listener)
                && others
                && self.answers.last().is_some_and(|(_, _, at)| at.elapsed() > quiet)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "Envoy did not take the configuration within {timeout:?} (ACKed {acked:?}, {} NACKs); see {}",
                    self.answers.nacks(),
                    self.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (up to `timeout`) until Envoy has ACKed a response built at `seq` or later, or
    /// has answered nothing for a second.
    pub fn wait_caught_up(&self, seq: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match self.answers.last() {
                Some((_, s, _)) if s >= seq => return,
                Some((_, _, at)) if at.elapsed() > Duration::from_secs(1) => return,
                _ => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

impl Drop for BenchEnvoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_is_held_at_the_last_ack_of_the_first_build_at_or_past_its_seq() {
        let answers = Answers::default();
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        answers.acks().extend([
            (ResourceType::Cluster, 3, at(10)),
            (ResourceType::ClusterLoadAssignment, 3, at(12)),
            // Step at seq 5 coalesced into the build at 6 (cluster and assignment).
            (ResourceType::Cluster, 6, at(30)),
            (ResourceType::ClusterLoadAssignment, 6, at(34)),
            (ResourceType::ClusterLoadAssignment, 9, at(50)),
        ]);
        assert_eq!(answers.held_at(3), Some(at(12)), "the last ACK built at 3, not the first");
        assert_eq!(answers.held_at(4), Some(at(34)));
        assert_eq!(answers.held_at(6), Some(at(34)));
        assert_eq!(answers.held_at(7), Some(at(50)));
        assert_eq!(answers.held_at(10), None, "nothing built at 10 or later was ACKed");
        assert_eq!(answers.acked_types(6), vec![ResourceType::Cluster, ResourceType::ClusterLoadAssignment]);
        assert_eq!(answers.acked_types(7), vec![ResourceType::ClusterLoadAssignment]);
    }
}
