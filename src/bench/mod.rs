//! `meshflow bench`: a seeded synthetic cluster, churn scenarios, K simulated delta-xDS proxies,
//! and a non-incremental baseline measured in the same run.
//!
//! For each scenario the bench runs meshflow as it is deployed (sources' events into the
//! engine, its batches into the cache, the real delta ADS server to K in-process clients that
//! subscribe and ACK as Envoy does) and then the baseline on the same seeded steps (every
//! resource recomputed by the reference translator per batch, pushed state-of-the-world).
//! It prints a table, and writes `report.json` and SVG plots to `--out`.

pub mod clients;
pub mod envoy;
pub mod generate;
pub mod plot;
pub mod progress;
pub mod report;
pub mod run;
pub mod scenario;
pub mod stream;
pub mod sys;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use generate::{Preset, World};
use report::{Report, Samples, ScenarioReport};
use scenario::Scenario;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// meshflow only.
    Incremental,
    /// The full-recompute baseline only.
    Full,
    /// Both, on the same steps, with their ratio.
    Both,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceKind {
    /// Events fed to the engine in process.
    Engine,
    /// Files written into a watched config directory (the config-dir source).
    Dir,
}

/// Parses `100ms`, `10s`, `2m`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.find(|c: char| c.is_ascii_alphabetic()).map(|i| s.split_at(i)).unwrap_or((s, "s"));
    let v: f64 = num.trim().parse().map_err(|_| format!("{s:?} is not a duration such as 100ms, 10s or 2m"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        "us" | "µs" => v / 1e6,
        other => return Err(format!("{s:?}: unknown unit {other:?} (use ms, s or m)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s:?}: a duration must be zero or positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[derive(clap::Args, Clone, Debug)]
pub struct BenchArgs {
    /// Cluster size: small (100 services, 1,000 pods), medium (1,000 / 10,000), large (10,000 / 100,000).
    #[arg(long, default_value = "small", value_parser = ["small", "medium", "large"])]
    pub preset: String,
    /// A scenario, or `all`.
    #[arg(long, default_value = "all")]
    pub scenario: String,
    /// How long each scenario sends steps.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Steps (cluster changes) per second.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Simulated proxies on delta ADS streams (0: no xDS server).
    #[arg(long, default_value_t = 10)]
    pub clients: usize,
    /// Of the clients, this many NACK every response that carries resources (their
    /// deliveries still count in the latencies: the server sends them each change once).
    #[arg(long, default_value_t = 0)]
    pub nack_clients: usize,
    /// Of the clients, this many wait --slow-delay before reading each response; the
    /// latencies to the last client are over the others, so they show whether slow readers
    /// hold the others back.
    #[arg(long, default_value_t = 0)]
    pub slow_clients: usize,
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    pub slow_delay: Duration,
    /// The clients' streams on one HTTP/2 connection (1: a connection each, as each Envoy has;
    /// more: shared, as the channels of one proxyless gRPC process are).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub streams_per_connection: u32,
    /// One real Envoy (this binary) on the bench's xDS server beside the clients, on
    /// meshflow's bootstrap: adds event → Envoy's ACK to the report (`envoy_ack_ms`).
    /// `scripts/ensure-envoy` prints where one is.
    #[arg(long, value_name = "PATH")]
    pub envoy: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "both")]
    pub mode: Mode,
    /// The baseline's debounce (istiod's default PILOT_DEBOUNCE_AFTER is 100ms); 0 for none.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub debounce: Duration,
    #[arg(long, value_enum, default_value = "engine")]
    pub source: SourceKind,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where report.json and the plots go.
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
    /// Write the generated cluster as YAML that `meshflow serve --config-dir` loads, then exit.
    #[arg(long)]
    pub export: Option<PathBuf>,
    /// At most this many steps per scenario.
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Compare the served configuration with the reference translation at the end of each
    /// scenario (default on; `--verify false` to skip at large).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub verify: bool,
}

impl BenchArgs {
    pub fn preset(&self) -> anyhow::Result<Preset> {
        Preset::by_name(&self.preset).with_context(|| format!("unknown preset {:?}", self.preset))
    }

    pub fn scenarios(&self) -> anyhow::Result<Vec<Scenario>> {
        if self.scenario == "all" {
            return Ok(Scenario::ALL.to_vec());
        }
        self.scenario
            .split(',')
            .map(|name| {
                Scenario::ALL.into_iter().find(|s| s.name() == name.trim()).with_context(|| {
                    let names: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
                    format!("unknown scenario {name:?}: one of {}, or all", names.join(", "))
                })
            })
            .collect()
    }
}

/// Runs the bench as the command line asks; returns the report (also written to `--out`).
pub fn run(args: &BenchArgs) -> anyhow::Result<Report> {
    let preset = args.preset()?;
    if let Some(dir) = &args.export {
        let world = World::new(preset, args.seed);
        let files = world.export(dir)?;
        eprintln!("wrote {files} files to {}: meshflow serve --config-dir {}", dir.display(), dir.display());
        return Ok(Report::default());
    }
    let scenarios = args.scenarios()?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let cpu0 = sys::process_cpu_seconds();
    let world = World::new(preset, args.seed);
    let mut report = Report {
        preset,
        generated: world.counts().into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        seed: args.seed,
        rate: args.rate,
        duration_s: args.duration.as_secs_f64(),
        clients: args.clients,
        streams_per_connection: args.streams_per_connection,
        mode: format!("{:?}", args.mode).to_lowercase(),
        source: format!("{:?}", args.source).to_lowercase(),
        machine: report::Machine::current(),
        ..Default::default()
    };
    drop(world);
    let (mut all, mut envoy) = (Samples::default(), Samples::default());
    for scenario in scenarios {
        eprintln!("{}: running ({})", scenario.name(), report.mode);
        let mut s = ScenarioReport {
            scenario: scenario.name().into(),
            source: report.source.clone(),
            step_labels: BTreeMap::new(),
            ..Default::default()
        };
        if args.mode != Mode::Full {
            run::incremental(args, scenario, &mut s).with_context(|| format!("scenario {}", scenario.name()))?;
        }
        if args.mode != Mode::Incremental {
            let labels = s.step_labels.clone();
            run::full(args, scenario, &mut s).with_context(|| format!("baseline of {}", scenario.name()))?;
            s.step_labels = labels;
        }
        s.compute_ratio();
        if let Some(inc) = &s.incremental {
            report.events += inc.events;
            report.resources_pushed += inc.resources_pushed;
            report.bytes_pushed += inc.bytes_pushed;
            all.points.extend(s.batch_samples.points.iter().copied());
            envoy.points.extend(s.envoy_samples.points.iter().copied());
        }
        write_plots(args, &s)?;
        eprintln!("{}: done", scenario.name());
        report.scenarios.push(s);
    }
    report.latency_ms = all.summary();
    report.envoy_ack_ms = envoy.summary();
    report.cpu_seconds = sys::process_cpu_seconds() - cpu0;
    report.peak_rss_bytes = sys::peak_rss_bytes();
    let json = serde_json::to_string_pretty(&report)?;
    let path = args.out.join("report.json");
    std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
    print!("{}", report::table(&report));
    eprintln!("wrote {} and plots to {}", path.display(), args.out.display());
    Ok(report)
}

fn write_plots(args: &BenchArgs, s: &ScenarioReport) -> anyhow::Result<()> {
    let series: Vec<(&str, &Samples)> = [
        ("meshflow: → output batch", &s.batch_samples),
        ("meshflow: → 1st xDS frame", &s.frame_samples),
        ("meshflow: → 1st client", &s.first_client_samples),
        ("meshflow: → last client", &s.last_samples),
        ("meshflow: → Envoy ACK", &s.envoy_samples),
        ("full recompute: → batch", &s.full_samples),
    ]
    .into_iter()
    .filter(|(_, x)| !x.points.is_empty())
    .collect();
    if series.is_empty() {
        return Ok(());
    }
    let title = format!("{} ({}, {} clients)", s.scenario, args.preset, args.clients);
    let over_time = plot::latency_over_time(&format!("{title}: latency over time"), &series);
    let cdf = plot::latency_cdf(&format!("{title}: latency CDF"), &series);
    for (name, svg) in [("latency-over-time", over_time), ("latency-cdf", cdf)] {
        let path = args.out.join(format!("{}-{name}.svg", s.scenario));
        std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
    }
    // The samples behind the plots, for whoever wants to look at one step.
    let path = args.out.join(format!("{}-samples.csv", s.scenario));
    std::fs::write(&path, samples_csv(&series)).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// One line per sample: the series, seconds since the scenario started, the latency in ms.
fn samples_csv(series: &[(&str, &Samples)]) -> String {
    let mut csv = String::from("series,at_s,latency_ms\n");
    for (name, samples) in series {
        for (at, micros) in &samples.points {
            csv.push_str(&format!("\"{name}\",{at:.6},{:.3}\n", *micros as f64 / 1000.0));
        }
    }
    csv
}
