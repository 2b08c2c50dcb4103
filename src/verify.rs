//! Proof in production that the incremental output equals the from-scratch answer: the
//! reference translator run on the engine's current input, compared resource by resource with
//! what the cache serves.
//!
//! [`InputTap`] sits between the sources and the engine: it keeps the current input objects
//! and, to verify, takes a copy of them and sends the engine a [`Command::Then`] behind every
//! change already sent; when the engine runs it, the cache holds exactly the output of that
//! input, and [`Verifier`] compares the two.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::cache::{Cache, Resource, content_version};
use crate::engine::{Command, CommandSender};
use crate::model::{Object, ObjectKey};
use crate::translate::{ResourceType, Scope, reference};

/// The `Synced` name that asks the tap for a verification now ([`InputTap::request`]); the tap
/// keeps it from the engine.
const VERIFY_REQUEST: &str = "meshflow-verify:request";

/// One resource where the cache and the reference disagree.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Mismatch {
    pub ty: String,
    pub name: String,
    /// `missing`: the reference has it, the cache does not; `unexpected`: the other way;
    /// `differs`: both have it with different bytes (versions given).
    pub what: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.ty, self.name, self.what)
    }
}

/// Compares what the cache serves with the reference translation of the same input.
pub fn compare(
    expected: &reference::Resources,
    served: &BTreeMap<(Scope, ResourceType, String), Arc<Resource>>,
) -> Vec<Mismatch> {
    let mut out = Vec::new();
    // Resources of one proxy class are named with the class after `@`.
    let m = |scope: &Scope, ty: &ResourceType, name: &str, what: String| Mismatch {
        ty: ty.short().into(),
        name: match scope {
            Scope::Class(_)
            | Scope::Namespace(_)
            | Scope::SidecarsIn(_)
            | Scope::Proxyless
            | Scope::Locality(_)
            | Scope::LocalityIn(..)
            | Scope::Prioritized(..)
            | Scope::PrioritizedIn(..) => {
                format!("{name} @{scope}")
            }
            _ => name.into(),
        },
        what,
    };
    for (key, body) in expected {
        let (scope, ty, name) = key;
        match served.get(key) {
            None => out.push(m(scope, ty, name, "missing".into())),
            Some(r) if r.body[..] != body[..] => out.push(m(
                scope,
                ty,
                name,
                format!("differs: served version {}, reference version {}", r.version, content_version(body)),
            )),
            Some(_) => {}
        }
    }
    // The captured proxies' static resources are put in the cache by `serve`, not the engine.
    for key in served.keys().filter(|(scope, _, _)| *scope != Scope::Captured) {
        if !expected.contains_key(key) {
            let (scope, ty, name) = key;
            out.push(m(scope, ty, name, "unexpected".into()));
        }
    }
    out
}

/// The result of one verification.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Outcome {
    pub resources: usize,
    pub mismatches: Vec<Mismatch>,
    /// Time to translate from scratch and compare.
    pub seconds: f64,
    /// Seconds since the Unix epoch when it finished.
    pub finished_at: u64,
}

/// Verification state shared with the admin server.
#[derive(Default)]
pub struct Verifier {
    /// The mesh config the engine was started with: the reference translates with it too.
    mesh: crate::translate::MeshConfig,
    last: Mutex<Option<Outcome>>,
    runs: AtomicU64,
    mismatches: AtomicU64,
}

impl Verifier {
    /// A verifier for an engine started with `mesh`.
    pub fn new(mesh: crate::translate::MeshConfig) -> Verifier {
        Verifier { mesh, ..Verifier::default() }
    }

    pub fn last(&self) -> Option<Outcome> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Mismatches found by the last verification (the `meshflow_verify_mismatches` gauge).
    pub fn mismatches(&self) -> u64 {
        self.mismatches.load(Ordering::Relaxed)
    }

    pub fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }

    /// Translates `input` from scratch and compares with `served`; records and logs the result.
    pub fn verify(&self, input: &[Object], served: &BTreeMap<(Scope, ResourceType, String), Arc<Resource>>) -> Outcome {
        let started = Instant::now();
        let expected = reference::translate_all_with(input, &self.mesh);
        let mismatches = compare(&expected, served);
        let outcome = Outcome {
            resources: expected.len(),
            mismatches,
            seconds: started.elapsed().as_secs_f64(),
            finished_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        if outcome.mismatches.is_empty() {
            tracing::info!(
                resources = outcome.resources,
                seconds = outcome.seconds,
                "verify: served configuration equals the reference translation"
            );
        } else {
            for m in outcome.mismatches.iter().take(20) {
                tracing::error!(resource_type = %m.ty, name = %m.name, "verify mismatch: {}", m.what);
            }
            tracing::error!(
                mismatches = outcome.mismatches.len(),
                "verify: served configuration differs from the reference translation"
            );
        }
        self.mismatches.store(outcome.mismatches.len() as u64, Ordering::Relaxed);
        self.runs.fetch_add(1, Ordering::Relaxed);
        let metrics = crate::metrics::global();
        metrics.verify_mismatches.set(outcome.mismatches.len() as i64);
        metrics.verify_runs.inc();
        metrics.verify_seconds.observe(outcome.seconds);
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome.clone());
        outcome
    }
}

/// An input, and what the cache served once the engine had translated it.
type Check = (Vec<Object>, BTreeMap<(Scope, ResourceType, String), Arc<Resource>>);

/// Between the sources and the engine: keeps the current input, and runs verifications.
pub struct InputTap {
    tx: Sender<Command>,
    engine: Sender<CommandSender>,
}

impl InputTap {
    /// Starts the tap, whose [`sender`](Self::sender) the sources use; then hand the engine's
    /// sender (an engine whose sink is `cache`'s) to [`connect`](Self::connect). With
    /// `interval`, a verification runs that often.
    pub fn start(cache: Arc<Cache>, verifier: Arc<Verifier>, interval: Option<Duration>) -> InputTap {
        let (tx, rx) = crossbeam_channel::unbounded::<Command>();
        let (engine_tx, engine_rx) = crossbeam_channel::bounded::<CommandSender>(1);
        let (check_tx, check_rx) = crossbeam_channel::unbounded::<Check>();
        std::thread::Builder::new()
            .name("meshflow-verify".into())
            .spawn(move || {
                while let Ok((input, served)) = check_rx.recv() {
                    verifier.verify(&input, &served);
                }
            })
            .expect("spawning the verify thread");
        std::thread::Builder::new()
            .name("meshflow-input".into())
            .spawn(move || {
                if let Ok(engine) = engine_rx.recv() {
                    forward(rx, engine, cache, check_tx, interval);
                }
            })
            .expect("spawning the input tap thread");
        InputTap { tx, engine: engine_tx }
    }

    /// Connects the tap to the engine it feeds.
    pub fn connect(&self, engine: CommandSender) {
        let _ = self.engine.send(engine);
    }

    pub fn sender(&self) -> CommandSender {
        // (The tap's thread blocks on its channel.)
        CommandSender::new(self.tx.clone(), None)
    }

    /// Asks for a verification now (after every change sent so far).
    pub fn request(&self) {
        let _ = self.tx.send(Command::Synced(VERIFY_REQUEST.to_string()));
    }
}

fn forward(
    rx: Receiver<Command>,
    engine: CommandSender,
    cache: Arc<Cache>,
    checks: Sender<Check>,
    interval: Option<Duration>,
) {
    let mut current: BTreeMap<ObjectKey, Object> = BTreeMap::new();
    let mut next_due = interval.map(|i| Instant::now() + i);
    loop {
        let command = match next_due {
            Some(due) => match rx.recv_deadline(due) {
                Ok(c) => Some(c),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => None,
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
            },
            None => match rx.recv() {
                Ok(c) => Some(c),
                Err(_) => return,
            },
        };
        let verify_now = match command {
            Some(Command::Synced(name)) if name == VERIFY_REQUEST => true,
            Some(command) => {
                hold(&mut current, &command);
                if engine.send(command).is_err() {
                    return;
                }
                false
            }
            None => true,
        };
        if verify_now {
            if let (Some(due), Some(interval)) = (next_due, interval)
                && Instant::now() >= due
            {
                next_due = Some(Instant::now() + interval);
            }
            let input: Vec<Object> = current.values().cloned().collect();
            let (cache, checks) = (cache.clone(), checks.clone());
            // Run once the engine's output for `input` is in the cache: it holds exactly that.
            let then = Command::Then(Box::new(move || {
                let _ = checks.send((input, cache.snapshot()));
            }));
            if engine.send(then).is_err() {
                return;
            }
        }
    }
}

/// Keeps `current` as the engine's input after `command`.
fn hold(current: &mut BTreeMap<ObjectKey, Object>, command: &Command) {
    match command {
        Command::Events(events) => {
            for e in events {
                match &e.object {
                    Some(o) => current.insert(e.key.clone(), o.clone()),
                    None => current.remove(&e.key),
                };
            }
        }
        Command::Batch(commands) => commands.iter().for_each(|c| hold(current, c)),
        Command::Synced(_) | Command::Then(_) => {}
    }
}
