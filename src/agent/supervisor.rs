//! Keeps one Envoy alive: start it, restart it with backoff when it exits on its own, give
//! up when it keeps crashing, and on a stop signal drain it and stop it.
//!
//! ```text
//!            spawn ok                    exit (not asked for)
//! Starting ───────────▶ Running ──────────────────────────▶ Restarting ──backoff──▶ Running …
//!                          │                                     │ > max restarts in window: give up (exit 1)
//!                          │ SIGTERM/SIGINT                      │ signal: stop (exit 0)
//!                          ▼
//!                       Draining: POST /drain_listeners?graceful, poll active connections
//!                          │ 0 connections or drain time up        │ second signal: kill (exit 1)
//!                          ▼
//!                       POST /quitquitquit, wait (kill after 5 s) → Stopped (exit 0)
//! ```

use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::process::Child;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::envoy::{self, EnvoyCommand};
use super::envoy_admin::EnvoyAdmin;
use super::restart::{Backoff, CrashWindow, HEALTHY_RUN, Verdict};
use super::status::{Phase, Status};

/// How often the active connections are read while draining.
const DRAIN_POLL: Duration = Duration::from_millis(100);
/// How long Envoy may take to exit after `/quitquitquit` before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the rest of Envoy's output may take to arrive after it exited.
const LOG_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// A stop request: the name of the signal that asked for it.
pub type StopSignal = &'static str;

/// How supervision ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Stopped on a signal, after draining (or with no Envoy running at the time).
    Stopped,
    /// A second signal while draining or stopping: Envoy was killed at once.
    Killed,
    /// Envoy exited unexpectedly too often within the crash window.
    GaveUp(String),
    /// The first Envoy could not even be spawned.
    CannotStart(String),
}

pub struct Supervisor {
    pub proxy: Arc<str>,
    pub command: EnvoyCommand,
    pub admin: EnvoyAdmin,
    /// Longest wait for connections to finish after a stop signal.
    pub drain: Duration,
    pub backoff: Backoff,
    pub crashes: CrashWindow,
    /// `--max-restarts`, for messages.
    pub max_restarts: usize,
    pub status: Arc<Status>,
}

/// One running Envoy process.
struct Running {
    child: Child,
    pid: u32,
    started: Instant,
    logs: Vec<JoinHandle<()>>,
}

impl Running {
    /// Waits (briefly) until Envoy's remaining output has been logged.
    async fn flush_logs(&mut self) {
        for task in self.logs.drain(..) {
            let _ = tokio::time::timeout(LOG_FLUSH_TIMEOUT, task).await;
        }
    }

    async fn kill(&mut self) -> String {
        let _ = self.child.start_kill();
        let exit = describe(self.child.wait().await);
        self.flush_logs().await;
        exit
    }
}

fn describe(exit: std::io::Result<ExitStatus>) -> String {
    match exit {
        Ok(status) => status.to_string(),
        Err(e) => format!("unknown ({e})"),
    }
}

impl Supervisor {
    fn spawn(&self) -> Result<Running, String> {
        let mut child = self
            .command
            .command()
            .spawn()
            .map_err(|e| format!("cannot start envoy {}: {e}", self.command.bin.display()))?;
        let pid = child.id().unwrap_or_default();
        let mut logs = Vec::with_capacity(2);
        if let Some(out) = child.stdout.take() {
            logs.push(tokio::spawn(envoy::forward_logs(out, self.proxy.clone(), pid)));
        }
        if let Some(err) = child.stderr.take() {
            logs.push(tokio::spawn(envoy::forward_logs(err, self.proxy.clone(), pid)));
        }
        Ok(Running { child, pid, started: Instant::now(), logs })
    }

    /// Supervises until a stop signal arrives on `signals` or Envoy keeps crashing.
    pub async fn run(mut self, signals: &mut mpsc::UnboundedReceiver<StopSignal>) -> Outcome {
        let mut restarts = 0u32;
        loop {
            let (exit, uptime) = match self.spawn() {
                Ok(mut running) => {
                    let pid = running.pid;
                    self.status.update(|s| {
                        s.state = Phase::Running;
                        s.pid = Some(pid);
                        s.restart_in_ms = None;
                    });
                    tracing::info!(pid, restarts, "envoy started");
                    tokio::select! {
                        exit = running.child.wait() => {
                            running.flush_logs().await;
                            (describe(exit), running.started.elapsed())
                        }
                        signal = signals.recv() => return self.shutdown(running, signal.unwrap_or("stop"), signals).await,
                    }
                }
                Err(e) if restarts == 0 => {
                    self.status.update(|s| s.state = Phase::Stopped);
                    return Outcome::CannotStart(e);
                }
                Err(e) => (e, Duration::ZERO),
            };

            // Envoy went away without being asked to.
            if uptime >= HEALTHY_RUN {
                self.backoff.reset();
            }
            let crashes = match self.crashes.record(Instant::now()) {
                Verdict::Restart { crashes } => crashes,
                Verdict::GiveUp { crashes } => {
                    self.status.update(|s| {
                        s.state = Phase::Stopped;
                        s.pid = None;
                        s.last_exit = Some(exit.clone());
                    });
                    return Outcome::GaveUp(format!(
                        "envoy exited {crashes} times within {}s (last: {exit}); giving up after {restarts} \
                         restarts (--max-restarts {})",
                        self.crashes.window().as_secs(),
                        self.max_restarts
                    ));
                }
            };
            let delay = self.backoff.next_delay();
            tracing::error!(
                %exit,
                uptime_ms = uptime.as_millis() as u64,
                crashes_in_window = crashes,
                "envoy exited unexpectedly; restarting it in {delay:?}"
            );
            self.status.update(|s| {
                s.state = Phase::Restarting;
                s.pid = None;
                s.last_exit = Some(exit.clone());
                s.restart_in_ms = Some(delay.as_millis() as u64);
            });
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                signal = signals.recv() => {
                    tracing::info!(signal = signal.unwrap_or("stop"), "envoy is not running: stopping");
                    self.status.update(|s| s.state = Phase::Stopped);
                    return Outcome::Stopped;
                }
            }
            restarts += 1;
            self.status.update(|s| s.restarts = restarts);
            tracing::warn!(restart = restarts, "restarting envoy");
        }
    }

    /// Drains Envoy's listeners until no downstream connection is left or the drain time is
    /// up, then stops Envoy. A second signal kills Envoy at once.
    async fn shutdown(
        &self,
        mut running: Running,
        signal: StopSignal,
        signals: &mut mpsc::UnboundedReceiver<StopSignal>,
    ) -> Outcome {
        self.status.update(|s| s.state = Phase::Draining);
        tracing::info!(signal, pid = running.pid, "draining envoy's listeners (for at most {:?})", self.drain);
        if let Err(e) = self.admin.drain_listeners().await {
            // Typically an Envoy still starting, whose admin is not up yet: it has no
            // connections worth waiting for.
            tracing::warn!("cannot drain envoy's listeners ({e}): stopping it at once");
            return self.stop(running, signals).await;
        }
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.drain;
        let mut poll = tokio::time::interval(DRAIN_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut active: Option<u64> = None;
        loop {
            tokio::select! {
                exit = running.child.wait() => {
                    running.flush_logs().await;
                    tracing::info!(exit = %describe(exit), "envoy exited while draining");
                    return self.stopped();
                }
                second = signals.recv() => {
                    let exit = running.kill().await;
                    tracing::warn!(signal = second.unwrap_or("stop"), %exit, "second signal: killed envoy without waiting for its connections");
                    self.status.update(|s| { s.state = Phase::Stopped; s.pid = None; });
                    return Outcome::Killed;
                }
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(active_connections = active, "drain time is up with connections still active");
                    break;
                }
                _ = poll.tick() => match self.admin.active_downstream_connections().await {
                    Ok(0) => {
                        tracing::info!(drained_ms = started.elapsed().as_millis() as u64, "no downstream connections left");
                        break;
                    }
                    Ok(n) => active = Some(n),
                    Err(e) => tracing::debug!("reading envoy's active connections: {e}"),
                },
            }
        }
        self.stop(running, signals).await
    }

    async fn stop(&self, mut running: Running, signals: &mut mpsc::UnboundedReceiver<StopSignal>) -> Outcome {
        if let Err(e) = self.admin.quit().await {
            tracing::warn!("asking envoy to quit failed ({e}): killing it");
            let _ = running.child.start_kill();
        }
        tokio::select! {
            exit = running.child.wait() => {
                running.flush_logs().await;
                tracing::info!(exit = %describe(exit), "envoy stopped");
            }
            _ = tokio::time::sleep(STOP_TIMEOUT) => {
                let exit = running.kill().await;
                tracing::warn!(%exit, "envoy did not exit within {STOP_TIMEOUT:?}: killed it");
            }
            second = signals.recv() => {
                let exit = running.kill().await;
                tracing::warn!(signal = second.unwrap_or("stop"), %exit, "second signal: killed envoy");
                self.status.update(|s| { s.state = Phase::Stopped; s.pid = None; });
                return Outcome::Killed;
            }
        }
        self.stopped()
    }

    fn stopped(&self) -> Outcome {
        self.status.update(|s| {
            s.state = Phase::Stopped;
            s.pid = None;
        });
        Outcome::Stopped
    }
}
