//! What a bench run reports: per scenario, the incremental run beside the full-recompute
//! baseline, and the totals that `report.json` carries at top level.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency percentiles in milliseconds, from an HDR histogram of microseconds.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// Samples in microseconds, kept for the percentiles and the plots.
#[derive(Clone, Debug, Default)]
pub struct Samples {
    /// (seconds since the scenario started, latency in µs)
    pub points: Vec<(f64, u64)>,
}

impl Samples {
    pub fn push(&mut self, at_s: f64, micros: u64) {
        self.points.push((at_s, micros));
    }

    pub fn histogram(&self) -> Histogram<u64> {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds");
        for (_, v) in &self.points {
            h.saturating_record((*v).max(1));
        }
        h
    }

    pub fn summary(&self) -> Latency {
        if self.points.is_empty() {
            return Latency::default();
        }
        let h = self.histogram();
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Latency {
            count: h.len(),
            p50: ms(0.5),
            p90: ms(0.9),
            p99: ms(0.99),
            max: h.max() as f64 / 1000.0,
            mean: h.mean() / 1000.0,
        }
    }
}

/// CPU seconds by part of the process during the measured steps (not the initial sync).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Cpu {
    /// The engine's worker thread (dataflow, output assembly, cache apply).
    pub engine_s: f64,
    /// The xDS server's runtime threads.
    pub xds_s: f64,
    /// The simulated clients' runtime threads.
    pub clients_s: f64,
    /// The whole process (includes the generator and the bench itself).
    pub process_s: f64,
}

/// One scenario, incremental (meshflow as it runs).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Incremental {
    pub initial_sync_ms: f64,
    pub initial_resources: usize,
    pub clients_initial_sync_ms: Option<f64>,
    /// Steps (cluster changes) fed, and the input events (objects) they carried.
    pub events: u64,
    pub input_objects: u64,
    pub wall_s: f64,
    pub events_per_s: f64,
    /// Engine output batches (logical times) the steps took.
    pub batches: u64,
    /// Step → its engine output batch (ResourceDelta at the cache).
    pub output_batch_ms: Latency,
    /// Step → first xDS frame carrying its output on the wire: the server's write of the first
    /// response built at or after the step's batch, to any proxy (simulated or Envoy).
    pub first_frame_ms: Latency,
    /// Step → the first simulated client that read a response carrying its output (the
    /// frame's trip through loopback and the client's own runtime on top of the above).
    pub first_client_ms: Latency,
    /// Step → the last of K clients having received all of its output.
    pub last_client_ms: Latency,
    /// Step → the bench's real Envoy (`--envoy`) ACKed the responses that carried its output
    /// (over the steps that changed what sidecars see). None without `--envoy`.
    pub envoy_ack_ms: Option<Latency>,
    /// Steps that changed what sidecars see and that Envoy never ACKed (it NACKed, or a
    /// response was still unanswered at the end).
    pub envoy_steps_unacked: u64,
    /// NACKs from the bench's Envoy (initial configuration included).
    pub envoy_nacks: u64,
    /// Steps whose output no proxy got (no simulated client read any of it and Envoy did not
    /// ACK it: a later change superseded it before it was sent, delta xDS sending only the
    /// latest version, or it changed nothing a connected proxy sees): not timed to a frame.
    pub steps_without_frames: u64,
    /// Resources the engine emitted that changed the cache (the ingress gateway's class
    /// included), by type (`CDS`, `EDS`, `LDS`, `RDS`, `SDS`), and the bytes of their new
    /// encodings: what the steps made meshflow re-encode.
    pub resources_changed: u64,
    pub changed_by_type: BTreeMap<String, u64>,
    pub changed_bytes: u64,
    /// Resources (and removals) and bytes pushed to all clients during the steps.
    pub resources_pushed: u64,
    pub bytes_pushed: u64,
    /// Clients that NACK what they receive, and the NACKs they sent (initial sync included).
    pub nacking_clients: usize,
    pub nacks_sent: u64,
    /// Clients that read late (`--slow-clients`): not counted in `last_client_ms`.
    pub slow_clients: usize,
    pub per_event: PerEvent,
    pub per_client: PerEvent,
    pub cpu: Cpu,
    /// Engine CPU per step, µs.
    pub engine_cpu_us_per_event: f64,
    pub verify: Verify,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct PerEvent {
    pub resources: f64,
    pub bytes: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Verify {
    pub resources: usize,
    pub mismatches: usize,
    /// The first few mismatches, `<type> <name>: <what>`.
    pub examples: Vec<String>,
    pub seconds: f64,
}

/// The non-incremental baseline on the same steps: every resource recomputed from scratch by
/// the reference translator per batch, and pushed as a state-of-the-world server would (every
/// resource of each changed type to every client).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Full {
    pub debounce_ms: f64,
    pub initial_sync_ms: f64,
    pub events: u64,
    /// Steps scheduled that the baseline had not processed when its time budget ran out.
    pub events_unprocessed: u64,
    pub batches: u64,
    pub latency_ms: Latency,
    pub cpu_s: f64,
    pub cpu_us_per_event: f64,
    pub resources_pushed: u64,
    pub bytes_pushed: u64,
    pub per_event: PerEvent,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Ratio {
    /// Baseline CPU per event ÷ meshflow engine CPU per event.
    pub cpu_per_event: Option<f64>,
    pub bytes_per_event: Option<f64>,
    pub resources_per_event: Option<f64>,
    /// Baseline p99 ÷ meshflow's p99 (event → output batch).
    pub latency_p99: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ScenarioReport {
    pub scenario: String,
    pub source: String,
    pub step_labels: BTreeMap<String, u64>,
    pub incremental: Option<Incremental>,
    pub full: Option<Full>,
    pub ratio: Ratio,
    #[serde(skip)]
    pub batch_samples: Samples,
    #[serde(skip)]
    pub frame_samples: Samples,
    #[serde(skip)]
    pub first_client_samples: Samples,
    #[serde(skip)]
    pub last_samples: Samples,
    #[serde(skip)]
    pub envoy_samples: Samples,
    #[serde(skip)]
    pub full_samples: Samples,
}

impl ScenarioReport {
    pub fn compute_ratio(&mut self) {
        let (Some(inc), Some(full)) = (&self.incremental, &self.full) else { return };
        let div = |a: f64, b: f64| (b > 0.0 && a.is_finite()).then(|| a / b);
        self.ratio = Ratio {
            cpu_per_event: div(full.cpu_us_per_event, inc.engine_cpu_us_per_event),
            bytes_per_event: div(full.per_event.bytes, inc.per_event.bytes),
            resources_per_event: div(full.per_event.resources, inc.per_event.resources),
            latency_p99: div(full.latency_ms.p99, inc.output_batch_ms.p99),
        };
    }
}

/// `report.json`: the top-level fields (over every scenario run), then the details.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub events: u64,
    pub cpu_seconds: f64,
    /// Event → output batch, over every scenario's steps (incremental mode).
    pub latency_ms: Latency,
    /// Event → the bench's real Envoy's ACK, over every scenario's steps (`--envoy`; count 0
    /// without).
    pub envoy_ack_ms: Latency,
    pub resources_pushed: u64,
    pub bytes_pushed: u64,
    pub peak_rss_bytes: u64,
    pub preset: super::generate::Preset,
    pub generated: BTreeMap<String, usize>,
    pub seed: u64,
    pub rate: f64,
    pub duration_s: f64,
    pub clients: usize,
    /// The clients' streams to one HTTP/2 connection (`--streams-per-connection`).
    pub streams_per_connection: u32,
    pub mode: String,
    pub source: String,
    pub machine: Machine,
    pub scenarios: Vec<ScenarioReport>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub load_average: String,
}

impl Machine {
    pub fn current() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Machine {
            cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name").and_then(|v| v.split_once(':')).map(|(_, v)| v.trim()))
                .unwrap_or("unknown")
                .to_string(),
            load_average: std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_string(),
        }
    }
}

fn fmt_ms(l: &Latency) -> String {
    if l.count == 0 { "-".into() } else { format!("{:.2}/{:.2}/{:.1}", l.p50, l.p99, l.max) }
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map(|v| if v >= 100.0 { format!("{v:.0}×") } else { format!("{v:.1}×") }).unwrap_or_else(|| "-".into())
}

/// Resources re-encoded per step and their bytes, e.g. `1.0 RDS (2,345 B)`; the types
/// named when at most two changed.
fn changed_per_event(x: &Incremental) -> String {
    if x.events == 0 {
        return "-".into();
    }
    let n = x.events as f64;
    let types = if x.changed_by_type.is_empty() {
        "0".to_string()
    } else if x.changed_by_type.len() <= 2 {
        x.changed_by_type.iter().map(|(t, c)| format!(" {:.1} {t}", *c as f64 / n)).collect::<String>()
    } else {
        format!(" {:.1}", x.resources_changed as f64 / n)
    };
    format!("{} ({:.0} B)", types.trim_start(), x.changed_bytes as f64 / n)
}

/// The table printed at the end of a run.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "preset {} (seed {}), {} clients ({} to a connection), rate {}/s, duration {:.0}s, source {}; latencies p50/p99/max ms\n",
        report.preset.name,
        report.seed,
        report.clients,
        report.streams_per_connection,
        report.rate,
        report.duration_s,
        report.source
    ));
    out.push_str("| scenario | events | ev/s | → batch | → 1st frame | → 1st client | → last client | → Envoy ACK | changed/ev | res/ev | bytes/ev | engine µs/ev | full → batch | full µs/ev | full bytes/ev | CPU ratio | bytes ratio |\n");
    out.push_str(
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for s in &report.scenarios {
        let (inc, full) = (s.incremental.as_ref(), s.full.as_ref());
        let i = |f: &dyn Fn(&Incremental) -> String| inc.map(f).unwrap_or_else(|| "-".into());
        let b = |f: &dyn Fn(&Full) -> String| full.map(f).unwrap_or_else(|| "-".into());
        let events = match (inc, full) {
            (Some(i), _) => i.events,
            (None, Some(f)) => f.events,
            _ => 0,
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            s.scenario,
            events,
            i(&|x| format!("{:.0}", x.events_per_s)),
            i(&|x| if s.scenario == "initial-sync" {
                format!("{:.0} ms", x.initial_sync_ms)
            } else {
                fmt_ms(&x.output_batch_ms)
            }),
            i(&|x| fmt_ms(&x.first_frame_ms)),
            i(&|x| fmt_ms(&x.first_client_ms)),
            i(&|x| fmt_ms(&x.last_client_ms)),
            i(&|x| x.envoy_ack_ms.as_ref().map(fmt_ms).unwrap_or_else(|| "-".into())),
            i(&|x| changed_per_event(x)),
            i(&|x| format!("{:.1}", x.per_event.resources)),
            i(&|x| format!("{:.0}", x.per_event.bytes)),
            i(&|x| format!("{:.0}", x.engine_cpu_us_per_event)),
            b(&|x| if s.scenario == "initial-sync" {
                format!("{:.0} ms", x.initial_sync_ms)
            } else {
                fmt_ms(&x.latency_ms)
            }),
            b(&|x| format!("{:.0}", x.cpu_us_per_event)),
            b(&|x| format!("{:.0}", x.per_event.bytes)),
            fmt_opt(s.ratio.cpu_per_event),
            fmt_opt(s.ratio.bytes_per_event),
        ));
    }
    out.push_str(&format!(
        "events {}, CPU {:.2} s, peak RSS {} MiB, pushed {} resources / {} bytes\n",
        report.events,
        report.cpu_seconds,
        report.peak_rss_bytes >> 20,
        report.resources_pushed,
        report.bytes_pushed
    ));
    out
}
