//! The `meshflow` command.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use meshflow::admin::AdminConfig;
use meshflow::agent::bootstrap::{self, BootstrapConfig};
use meshflow::cache::Cache;
use meshflow::engine::Engine;
use meshflow::source;
use meshflow::source::kube::KubeOptions;
use meshflow::translate::capture::OutboundTrafficPolicy;
use meshflow::verify::{InputTap, Verifier};
use meshflow::xds::classes::ClassRegistry;
use meshflow::xds::sync::Connections;

/// mimalloc, not the system allocator: see Cargo.toml. (`--features system-allocator` keeps the
/// system's, for heap profilers that intercept malloc: heaptrack, valgrind's massif.)
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_arena_eager_commit` and `mi_option_purge_delay` (mimalloc.h,
/// `mi_option_e`, v2).
#[cfg(not(feature = "system-allocator"))]
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
#[cfg(not(feature = "system-allocator"))]
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Two of mimalloc's options:
/// - Arena memory is committed as it is used, not a whole arena (1 GiB) at once. By default
///   mimalloc commits arenas eagerly where the OS overcommits (Linux); on this machine that
///   cost the engine's initial translation at `large` ~2.5 s more kernel time (purges of
///   committed memory) and ~0.1 GB more RSS.
/// - Freed memory is given back to the OS at once (purge delay 0), not 10 ms later. mimalloc
///   runs a delayed purge only when the thread that scheduled it allocates again, and a thread
///   that goes idle never does: 3 s after a fan-out to 5,000 streams the server still held
///   ~0.8 KB more RSS per idle stream, and at `large` the bench peaked at 1.42–1.53 GB against
///   1.23 GB, with no more CPU (BENCHMARKS.md, "Session 25"). `MIMALLOC_PURGE_DELAY` in the
///   environment still decides, for an operator who measures otherwise.
///
/// And the engine thread, idle after its output thread freed what it allocated, takes those
/// blocks back at once rather than at its next event (see `meshflow::engine::set_allocator_collect`).
fn tune_allocator() {
    // SAFETY: sets process-wide options; mimalloc reads them when it reserves its next arena
    // and when it next frees a page.
    #[cfg(not(feature = "system-allocator"))]
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0);
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
        }
    }
    // SAFETY: collects the calling thread's heap; no other effect on memory in use.
    #[cfg(not(feature = "system-allocator"))]
    meshflow::engine::set_allocator_collect(|| unsafe { libmimalloc_sys::mi_collect(false) });
}

/// How long a proxy class stays computed after its last proxy disconnected, so a proxy that
/// reconnects finds it ready.
const CLASS_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Parser)]
#[command(
    name = "meshflow",
    version,
    about = "Istio-compatible discovery service: differential dataflow in, delta xDS out"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Translate a config directory and/or a Kubernetes cluster into Envoy configuration and
    /// serve it over delta ADS.
    Serve {
        /// Directory of Kubernetes and Istio YAML/JSON, watched for changes.
        #[arg(long, required_unless_present = "kubernetes")]
        config_dir: Option<PathBuf>,
        /// Watch a Kubernetes cluster (Services, EndpointSlices, Pods, Nodes, Namespaces, the
        /// Istio networking CRDs, and the Secrets of gateway namespaces).
        #[arg(long)]
        kubernetes: bool,
        /// Kubeconfig file; default: KUBECONFIG, ~/.kube/config, or the in-cluster service account.
        #[arg(long, requires = "kubernetes")]
        kubeconfig: Option<PathBuf>,
        /// Watch only this namespace for namespaced kinds (repeatable); default: all.
        #[arg(long = "watch-namespace", requires = "kubernetes")]
        watch_namespaces: Vec<String>,
        /// Read the Secrets (gateway certificates) that match this label selector, e.g.
        /// `meshflow.io/gateway-cert=true`, cluster-wide or in the --watch-namespace ones.
        /// Default: only Secrets of the namespaces that hold an Istio Gateway or a connected
        /// gateway proxy, never the cluster's other Secrets.
        #[arg(long, value_name = "SELECTOR", requires = "kubernetes")]
        secret_selector: Option<String>,
        /// Address of the xDS (ADS) gRPC server.
        #[arg(long, default_value = "127.0.0.1:15010")]
        xds_addr: SocketAddr,
        /// Address of the admin HTTP server (/ready, /stats, /debug/resources).
        #[arg(long, default_value = "127.0.0.1:15014")]
        admin_addr: SocketAddr,
        /// Every INTERVAL (e.g. 60s), recompute everything from scratch with the reference
        /// translator on the engine's current input and compare with what is served: log
        /// lines, metric meshflow_verify_mismatches, /debug/verify.
        #[arg(long, value_parser = meshflow::bench::parse_duration)]
        verify: Option<std::time::Duration>,
        /// Mesh config outboundTrafficPolicy.mode: where a captured proxy sends a connection
        /// that no service claims (allow-any: to its original destination through
        /// PassthroughCluster; registry-only: nowhere, BlackHoleCluster).
        #[arg(long, value_enum, default_value_t = OutboundTrafficPolicy::AllowAny)]
        outbound_traffic_policy: OutboundTrafficPolicy,
        /// istiod's `meshConfig.rootNamespace`: its DestinationRules (exported to a proxy's
        /// namespace) apply after the proxy's own namespace's and the host's.
        #[arg(long, default_value = meshflow::translate::outbound::ROOT_NAMESPACE)]
        root_namespace: String,
    },
    /// Run Envoy beside a workload: bootstrap, supervise, drain on SIGTERM (like pilot-agent).
    Agent(meshflow::agent::AgentArgs),
    /// Install traffic capture in this network namespace, as istio-init does: iptables rules
    /// that send outbound TCP to Envoy's 15001 and inbound TCP to 15006, except Envoy's own
    /// (UID/GID 1337). Needs root and `iptables-restore`.
    Init(meshflow::capture::InitArgs),
    /// Check config files as `serve` would load them, with istiod's warnings; exit 1 if any
    /// object is invalid.
    Validate {
        /// Files or directories (recursive: every *.yaml, *.yml, *.json).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Benchmark convergence under churn: a seeded synthetic cluster, scenarios, simulated
    /// delta-xDS proxies, and a full-recompute baseline measured in the same run.
    Bench(meshflow::bench::BenchArgs),
    /// Print the CustomResourceDefinitions of the Istio networking kinds meshflow reads.
    Crds,
    /// An xDS client: subscribe like Envoy, ACK, and print each resource received as one JSON
    /// line (`{"event":"added|changed|removed","type":"cds","name":...,"version":...,
    /// "resource":{...}}`, Envoy's field names). Without --watch it exits once the server has
    /// been quiet for a second.
    Xds(XdsArgs),
    /// Print an Envoy bootstrap (YAML) that takes its configuration from meshflow.
    Bootstrap {
        /// Istio node id: sidecar~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local
        #[arg(long)]
        node_id: String,
        /// meshflow's xDS address, IP:port or host:port.
        #[arg(long, default_value = "127.0.0.1:15010")]
        xds_addr: String,
        /// Bind every listener to this IP instead of 0.0.0.0 (no traffic interception).
        #[arg(long)]
        bind_address: Option<IpAddr>,
        /// Envoy's admin port, on 127.0.0.1.
        #[arg(long, default_value_t = 15000)]
        admin_port: u16,
        /// A label of the proxy, `key=value` (repeatable), sent as node metadata LABELS: what
        /// a Gateway's `selector` matches.
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// The proxy's namespace, sent as node metadata NAMESPACE (must match the node id).
        #[arg(long)]
        namespace: Option<String>,
        /// Envoy stats to keep beyond the ones every proxy keeps, by prefix (comma-separated,
        /// as Istio's `sidecar.istio.io/statsInclusionPrefixes`; `cluster.outbound` keeps
        /// each outbound cluster's). `{pod_ip}` stands for the node id's IP.
        #[arg(long, value_delimiter = ',', value_name = "PREFIX,...")]
        stats_inclusion_prefixes: Vec<String>,
        /// The same, by suffix.
        #[arg(long, value_delimiter = ',', value_name = "SUFFIX,...")]
        stats_inclusion_suffixes: Vec<String>,
        /// The same, by regular expression (RE2, matched against the whole stat name).
        #[arg(long, value_delimiter = ',', value_name = "REGEX,...")]
        stats_inclusion_regexps: Vec<String>,
    },
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct XdsArgs {
    #[command(subcommand)]
    action: Option<XdsAction>,
    /// The xDS server, host:port or http://host:port.
    #[arg(long, default_value = "127.0.0.1:15010")]
    server: String,
    /// The node id to present, e.g. sidecar~10.0.0.1~app-1.default~default.svc.cluster.local
    #[arg(long, required = true)]
    node_id: Option<String>,
    /// A type to subscribe to (repeatable): cds, eds, lds, rds, sds. Default: cds, eds (of the
    /// clusters received), lds, rds (of the listeners received), like Envoy.
    #[arg(long = "type", value_name = "TYPE", value_parser = meshflow::xds::client::parse_type)]
    types: Vec<meshflow::translate::ResourceType>,
    /// Subscribe to this resource name only (repeatable; for every type asked for).
    #[arg(long = "resource", value_name = "NAME")]
    resources: Vec<String>,
    /// State-of-the-world ADS instead of delta.
    #[arg(long)]
    sotw: bool,
    /// Keep printing changes until interrupted.
    #[arg(long)]
    watch: bool,
    /// Without --watch: exit once no response came for this long (e.g. 500ms, 2s).
    #[arg(long, default_value = "1s", value_parser = meshflow::bench::parse_duration)]
    quiet: std::time::Duration,
}

#[derive(Subcommand)]
enum XdsAction {
    /// Run the ADS conformance suite against a server (delta; the `sotw-*` rules over state of
    /// the world): one check per protocol rule, a table of rules held and broken (exit 1 if
    /// any is broken). The served resources are
    /// changed through CONTROL, run as `CONTROL <verb> <args>…` (see README, "xDS
    /// conformance"); for meshflow: `meshflow xds control --config-dir DIR`.
    Conformance {
        /// The xDS server, host:port or http://host:port.
        #[arg(long)]
        server: String,
        /// The control adapter command (may carry its own arguments; run by `sh -c`).
        #[arg(long)]
        control: String,
        /// The node id the suite's streams present.
        #[arg(long, default_value = "sidecar~10.0.0.1~conformance.default~default.svc.cluster.local")]
        node_id: String,
        /// Only this rule (repeatable); default: every rule.
        #[arg(long = "rule")]
        rules: Vec<String>,
        /// Print the outcomes as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Load: K delta-ADS streams to a server, each behaving as the bench's simulated proxies
    /// (wildcard CDS and LDS, EDS and RDS for what they name, ACK everything). Prints when
    /// every stream holds the configuration, then keeps them open and idle for --hold (to
    /// measure the server's memory per idle stream from another shell).
    Load {
        /// The xDS server, host:port or http://host:port.
        #[arg(long)]
        server: String,
        #[command(flatten)]
        options: meshflow::bench::clients::LoadOptions,
    },
    /// meshflow's control adapter for the conformance suite: changes `conformance-*.yaml`
    /// files in a config directory that `meshflow serve --config-dir` watches. Verbs: reset,
    /// add-service NAME, remove-service NAME, set-endpoint NAME IP:PORT, change-cluster NAME,
    /// names NAME.
    Control {
        #[arg(long)]
        config_dir: PathBuf,
        verb: String,
        args: Vec<String>,
    },
}

fn xds_conformance(
    server: String,
    control: String,
    node_id: String,
    rules: Vec<String>,
    json: bool,
) -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut control = meshflow::xds::conformance::CommandControl { cmd: control };
    let outcomes = runtime
        .block_on(meshflow::xds::conformance::run(&server, &node_id, &mut control, &rules))
        .map_err(anyhow::Error::msg)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&outcomes)?);
    } else {
        print!("{}", meshflow::xds::conformance::table(&outcomes));
    }
    Ok(outcomes.iter().all(|o| o.held))
}

fn xds_client(args: XdsArgs) -> anyhow::Result<()> {
    use std::io::Write;
    let node_id = args.node_id.ok_or_else(|| anyhow::anyhow!("--node-id is required"))?;
    let mut options = meshflow::xds::client::ClientOptions::new(args.server, node_id);
    options.types = args.types;
    options.resources = args.resources;
    options.sotw = args.sotw;
    options.watch = args.watch;
    options.quiet = args.quiet;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let stdout = std::io::stdout();
        let printed = meshflow::xds::client::run(&options, |event| {
            let mut out = stdout.lock();
            let line = serde_json::to_string(event).unwrap_or_default();
            let _ = writeln!(out, "{line}").and_then(|_| out.flush());
        });
        tokio::select! {
            r = printed => r,
            _ = shutdown_signal() => Ok(()),
        }
    })
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    // The bench feeds the server tens of thousands of objects: only errors by default.
    // The xDS client prints JSON on stdout: only warnings on stderr by default.
    let default_filter = match cli.command {
        Command::Bench(_) => "meshflow=error",
        Command::Xds(_) => "meshflow=warn",
        _ => "meshflow=info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Agent(args) => return meshflow::agent::run(args),
        Command::Init(args) => return meshflow::capture::run_init(&args),
        Command::Bench(args) => meshflow::bench::run(&args).map(|_| ()),
        Command::Xds(XdsArgs { action: Some(XdsAction::Load { server, options }), .. }) => {
            meshflow::bench::clients::load(&server, &options).map(|_| ())
        }
        Command::Xds(XdsArgs {
            action: Some(XdsAction::Conformance { server, control, node_id, rules, json }),
            ..
        }) => {
            return match xds_conformance(server, control, node_id, rules, json) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("meshflow: {e:#}");
                    ExitCode::from(2)
                }
            };
        }
        Command::Xds(XdsArgs { action: Some(XdsAction::Control { config_dir, verb, args }), .. }) => {
            meshflow::xds::conformance::meshflow_control(&config_dir, &verb, &args)
                .map(|out| print!("{out}"))
                .map_err(anyhow::Error::msg)
        }
        Command::Xds(args) => xds_client(args),
        Command::Crds => {
            print!("{}", meshflow::model::crds::render_yaml());
            Ok(())
        }
        Command::Validate { paths } => return validate(&paths),
        Command::Serve {
            config_dir,
            kubernetes,
            kubeconfig,
            watch_namespaces,
            secret_selector,
            xds_addr,
            admin_addr,
            verify,
            outbound_traffic_policy,
            root_namespace,
        } => {
            let kube = kubernetes.then(|| KubeOptions {
                kubeconfig,
                namespaces: watch_namespaces,
                secret_selector,
                secret_interest: Default::default(),
            });
            let mesh = meshflow::translate::MeshConfig { root_namespace };
            serve(config_dir, kube, xds_addr, admin_addr, verify, outbound_traffic_policy, mesh)
        }
        Command::Bootstrap {
            node_id,
            xds_addr,
            bind_address,
            admin_port,
            labels,
            namespace,
            stats_inclusion_prefixes,
            stats_inclusion_suffixes,
            stats_inclusion_regexps,
        } => {
            let stats = bootstrap::StatsInclusion {
                prefixes: stats_inclusion_prefixes,
                suffixes: stats_inclusion_suffixes,
                regexps: stats_inclusion_regexps,
            };
            stats
                .check()
                .and_then(|()| bootstrap::hand_metadata(&node_id, &labels, namespace.as_deref()))
                .and_then(|meta| {
                    let config = BootstrapConfig { node_id, xds_addr, bind_address, admin_port, stats };
                    bootstrap::render_with_metadata(&config, &meta)
                })
                .map(|yaml| print!("{yaml}"))
                .map_err(anyhow::Error::msg)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshflow: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn validate(paths: &[PathBuf]) -> ExitCode {
    match meshflow::validate::validate_paths(paths) {
        Ok(report) => {
            for line in report.lines.iter().chain(&report.summary()) {
                println!("{line}");
            }
            if report.invalid > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS }
        }
        Err(e) => {
            eprintln!("meshflow: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn serve(
    config_dir: Option<PathBuf>,
    kube: Option<KubeOptions>,
    xds_addr: SocketAddr,
    admin_addr: SocketAddr,
    verify: Option<std::time::Duration>,
    policy: OutboundTrafficPolicy,
    mesh: meshflow::translate::MeshConfig,
) -> anyhow::Result<()> {
    // (The server's threads do not preempt the engine when a change wakes them: see
    // `batch_scheduling`.)
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .on_thread_start(meshflow::sched::batch_scheduling)
        .build()?;
    runtime.block_on(async move {
        let mut sources = Vec::new();
        if config_dir.is_some() {
            sources.push(source::file::SOURCE_NAME.to_string());
        }
        if let Some(kube) = &kube {
            sources.extend(source::kube::source_names(kube));
        }
        let cache = Cache::new(sources);
        // What every captured proxy gets whatever the input: set once, before any stream.
        let changes = meshflow::translate::capture::static_resources(policy)
            .into_iter()
            .map(|(scope, ty, name, body)| meshflow::engine::ResourceChange {
                scope,
                ty,
                name,
                body: Some(body.into()),
            })
            .collect();
        cache.apply(&meshflow::engine::ResourceDelta {
            time: 0,
            changes,
            diagnostics: Vec::new(),
            pod_localities: Vec::new(),
        });
        // With --verify, sources feed the engine through a tap that keeps their input.
        let verifier = verify.map(|_| Arc::new(Verifier::new(mesh.clone())));
        let engine = Engine::start_with(mesh, cache.engine_sink());
        let tap = verifier.as_ref().map(|verifier| {
            let tap = InputTap::start(cache.clone(), verifier.clone(), verify);
            tap.connect(engine.sender());
            tap
        });
        let input = tap.as_ref().map(InputTap::sender).unwrap_or_else(|| engine.sender());
        let _watch = match config_dir {
            Some(dir) => Some(source::file::spawn(dir, input.clone())?),
            None => None,
        };
        // Gateway proxies that connect make the Kubernetes source read their namespace's Secrets.
        let secret_interest = kube.as_ref().filter(|k| k.secret_selector.is_none()).map(|k| k.secret_interest.clone());
        if let Some(kube) = kube {
            let client = source::kube::client(&kube).await?;
            source::kube::spawn(client, kube, input.clone());
        }

        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        // Classes of connected proxies are input too: through the tap, so a verify sees them.
        let classes = ClassRegistry::with_secret_interest(input.clone(), CLASS_GRACE, secret_interest);
        let connections = Connections::new();
        let xds = tokio::spawn(meshflow::xds::serve_with_connections(
            cache.clone(),
            Some(classes),
            connections.clone(),
            xds_addr,
            stopped(stop_rx.clone()),
        ));
        let admin_config = AdminConfig { cache: cache.clone(), verifier, connections };
        let admin = tokio::spawn(meshflow::admin::serve_config(admin_config, admin_addr, stopped(stop_rx)));
        tokio::select! {
            r = xds => r??,
            r = admin => r??,
            _ = shutdown_signal() => {
                tracing::info!("shutting down");
                let _ = stop_tx.send(true);
            }
        }
        Ok::<_, anyhow::Error>(())
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The options set at start are the ones meant: the indexes are mimalloc's enum order, and
    /// an option's documented default, with its neighbours', tells it from the others.
    #[cfg(not(feature = "system-allocator"))]
    #[test]
    fn the_options_set_at_start_are_mimallocs_arena_eager_commit_and_purge_delay() {
        if std::env::var_os("MIMALLOC_ARENA_EAGER_COMMIT").is_some()
            || std::env::var_os("MIMALLOC_PURGE_DELAY").is_some()
        {
            return;
        }
        // SAFETY: reads process-wide options.
        let around = |option| unsafe {
            (
                libmimalloc_sys::mi_option_get(option - 1),
                libmimalloc_sys::mi_option_get(option),
                libmimalloc_sys::mi_option_get(option + 1),
            )
        };
        // arena_eager_commit 2 (eager where the OS overcommits), between eager_commit 1 and
        // purge_decommits 1; purge_delay 10 (ms), between eager_commit_delay 1 and
        // use_numa_nodes 0.
        assert_eq!(around(MI_OPTION_ARENA_EAGER_COMMIT), (1, 2, 1));
        assert_eq!(around(MI_OPTION_PURGE_DELAY), (1, 10, 0));
        tune_allocator();
        assert_eq!(around(MI_OPTION_ARENA_EAGER_COMMIT), (1, 0, 1));
        assert_eq!(around(MI_OPTION_PURGE_DELAY), (1, 0, 0));
    }
}
