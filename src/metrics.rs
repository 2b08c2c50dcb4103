//! Prometheus metrics, served at the admin endpoint's `/metrics` in the Prometheus text format.
//!
//! Where a metric means what one of istiod's means, it has istiod's name, labels, type and
//! buckets (pilot/pkg/xds/monitoring.go, pkg/xds/monitoring.go, pilot/pkg/model/push_context.go),
//! so Istio's dashboards and alerts work on meshflow unchanged. istiod exports its counters
//! without a `_total` suffix (its OpenTelemetry exporter runs `WithoutCounterSuffixes`): so does
//! meshflow. meshflow's own metrics start with `meshflow_`.
//!
//! The metrics are process-wide (like istiod's): every recording is a counter or gauge update,
//! and a scrape costs the number of series, never the size of the mesh.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::model::Kind;
use crate::translate::ResourceType;

/// istiod's buckets for `pilot_xds_push_time` (seconds).
pub const PUSH_TIME_BUCKETS: [f64; 9] = [0.01, 0.1, 0.5, 1.0, 3.0, 5.0, 10.0, 20.0, 30.0];
/// istiod's buckets for `pilot_proxy_convergence_time` (seconds).
pub const CONVERGENCE_BUCKETS: [f64; 8] = [0.1, 0.5, 1.0, 3.0, 5.0, 10.0, 20.0, 30.0];

pub struct Metrics {
    registry: Registry,
    /// `pilot_xds{version}`: connected xDS streams, by the proxy's Istio version (node metadata
    /// `ISTIO_VERSION`, empty when it sends none), as istiod's `recordXDSClients`.
    pub xds_clients: IntGaugeVec,
    /// `pilot_xds_pushes{type}`: responses sent, by xDS type (cds, eds, lds, rds, sds).
    pub pushes: IntCounterVec,
    /// `pilot_xds_push_time{type}`: time to build and send one type's push to one proxy.
    pub push_time: HistogramVec,
    /// The two series above of each type, looked up on a type's first push: a push records
    /// into them directly, without `with_label_values`' lock and hash of the label (one push
    /// per stream per change: 5,000 of each on a fan-out).
    push_series: [std::sync::OnceLock<(IntCounter, Histogram)>; ResourceType::ALL.len()],
    /// `pilot_proxy_convergence_time`: from a configuration change reaching the cache to a
    /// proxy having been sent all of it.
    pub convergence: Histogram,
    /// `pilot_total_xds_rejects{type}`: NACKs, by type.
    pub total_rejects: IntCounterVec,
    /// `pilot_xds_{cds,eds,lds,rds}_reject{node,err}`: NACKs by proxy and gRPC code (istiod's
    /// older per-type gauges, kept for its dashboards).
    rejects: [IntGaugeVec; 4],
    /// `pilot_services`: services known (Kubernetes Services plus ServiceEntry hosts).
    pub services: IntGauge,
    /// `pilot_virt_services`: VirtualServices known.
    pub virt_services: IntGauge,
    /// `meshflow_xds_change_batches{how}`: batches of responses delta streams made for a cache
    /// change, `built` by the stream or `shared` (taken from a stream alike that built it).
    pub batches_built: IntCounter,
    pub batches_shared: IntCounter,
    /// `meshflow_input_events{kind,op}`: input events the engine received (op: apply, delete).
    pub input_events: IntCounterVec,
    /// `meshflow_input_objects{kind}`: objects the engine holds, by kind.
    pub input_objects: IntGaugeVec,
    /// `meshflow_engine_step_seconds`: one logical time of the engine, input to output applied.
    pub engine_step: Histogram,
    /// `meshflow_engine_batch_events`: input events folded into one logical time.
    pub engine_batch: Histogram,
    /// `meshflow_resources{type}`: resources served (filled at scrape time from the cache).
    pub resources: IntGaugeVec,
    /// `meshflow_verify_mismatches`: resources where the last verification (`serve --verify`)
    /// found the served configuration differing from the reference translation.
    pub verify_mismatches: IntGauge,
    /// `meshflow_verify_runs`: verifications run (none without `--verify`).
    pub verify_runs: IntCounter,
    /// `meshflow_verify_seconds`: what one verification took (the reference translation of the
    /// whole input and the comparison).
    pub verify_seconds: Histogram,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
    registry.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
    registry.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid counter");
    registry.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid gauge");
    registry.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid histogram");
    registry.register(Box::new(h.clone())).expect("unique metric");
    h
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        let push_time = HistogramVec::new(
            HistogramOpts::new(
                "pilot_xds_push_time",
                "Total time in seconds Pilot takes to push lds, rds, cds and eds.",
            )
            .buckets(PUSH_TIME_BUCKETS.to_vec()),
            &["type"],
        )
        .expect("valid histogram");
        r.register(Box::new(push_time.clone())).expect("unique metric");
        let reject = |ty: &str| {
            gauge_vec(
                &r,
                &format!("pilot_xds_{ty}_reject"),
                &format!("Pilot rejected {} configs.", ty),
                &["node", "err"],
            )
        };
        let rejects = [reject("cds"), reject("eds"), reject("lds"), reject("rds")];
        let batches = counter_vec(
            &r,
            "meshflow_xds_change_batches",
            "Batches of responses delta streams made for a cache change: built by the stream, or shared from a stream in the same state.",
            &["how"],
        );
        Metrics {
            xds_clients: gauge_vec(
                &r,
                "pilot_xds",
                "Number of endpoints connected to this pilot using XDS.",
                &["version"],
            ),
            pushes: counter_vec(
                &r,
                "pilot_xds_pushes",
                "Pilot build and send errors for lds, rds, cds and eds.",
                &["type"],
            ),
            push_time,
            push_series: Default::default(),
            convergence: histogram(
                &r,
                "pilot_proxy_convergence_time",
                "Delay in seconds between config change and a proxy receiving all required configuration.",
                CONVERGENCE_BUCKETS.to_vec(),
            ),
            total_rejects: counter_vec(
                &r,
                "pilot_total_xds_rejects",
                "Total number of XDS responses from pilot rejected by proxy.",
                &["type"],
            ),
            rejects,
            services: gauge(&r, "pilot_services", "Total services known to pilot."),
            virt_services: gauge(&r, "pilot_virt_services", "Total virtual services known to pilot."),
            batches_built: batches.with_label_values(&["built"]),
            batches_shared: batches.with_label_values(&["shared"]),
            input_events: counter_vec(
                &r,
                "meshflow_input_events",
                "Input events received by the engine, by object kind and operation (apply, delete).",
                &["kind", "op"],
            ),
            input_objects: gauge_vec(
                &r,
                "meshflow_input_objects",
                "Input objects the engine holds, by kind.",
                &["kind"],
            ),
            engine_step: histogram(
                &r,
                "meshflow_engine_step_seconds",
                "Time in seconds of one engine step: input fed, dataflow run, output applied to the cache.",
                vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
            ),
            engine_batch: histogram(
                &r,
                "meshflow_engine_batch_events",
                "Input events folded into one engine step.",
                vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0],
            ),
            resources: gauge_vec(&r, "meshflow_resources", "Envoy resources served, by xDS type.", &["type"]),
            verify_mismatches: gauge(
                &r,
                "meshflow_verify_mismatches",
                "Resources where the last verification found the served configuration differing from the reference translation.",
            ),
            verify_runs: counter(&r, "meshflow_verify_runs", "Verifications run (serve --verify)."),
            verify_seconds: histogram(
                &r,
                "meshflow_verify_seconds",
                "Time in seconds of one verification: the reference translation of the whole input and the comparison.",
                vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0],
            ),
            registry: r,
        }
    }

    /// Records one NACK: `pilot_total_xds_rejects{type}` and, for CDS, EDS, LDS and RDS,
    /// `pilot_xds_<type>_reject{node,err}` (`err`: the gRPC code of the NACK's `error_detail`),
    /// as istiod's `IncrementXDSRejects`.
    pub fn record_reject(&self, ty: ResourceType, node: &str, code: i32) {
        self.total_rejects.with_label_values(&[metric_type(ty)]).inc();
        let per_type = match ty {
            ResourceType::Cluster => Some(0),
            ResourceType::ClusterLoadAssignment => Some(1),
            ResourceType::Listener => Some(2),
            ResourceType::RouteConfiguration => Some(3),
            ResourceType::Secret => None,
        };
        if let Some(i) = per_type {
            self.rejects[i].with_label_values(&[node, &code.to_string()]).inc();
        }
    }

    /// Records one response sent: `pilot_xds_pushes{type}` and `pilot_xds_push_time{type}`.
    pub fn record_push(&self, ty: ResourceType, took: Duration) {
        let (pushes, time) = self.push_series[ty as usize].get_or_init(|| {
            let t = metric_type(ty);
            (self.pushes.with_label_values(&[t]), self.push_time.with_label_values(&[t]))
        });
        pushes.inc();
        time.observe(took.as_secs_f64());
    }

    /// The metrics in the Prometheus text format (version 0.0.4, as istiod serves them).
    pub fn render(&self) -> String {
        TextEncoder::new().encode_to_string(&self.registry.gather()).unwrap_or_else(|e| format!("# error: {e}\n"))
    }
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// istiod's name of an xDS type in metric labels (`GetMetricType`): cds, eds, lds, rds, sds.
pub fn metric_type(ty: ResourceType) -> &'static str {
    match ty {
        ResourceType::Cluster => "cds",
        ResourceType::ClusterLoadAssignment => "eds",
        ResourceType::Listener => "lds",
        ResourceType::RouteConfiguration => "rds",
        ResourceType::Secret => "sds",
    }
}

/// The label value of an input kind.
pub fn kind_label(kind: Kind) -> String {
    format!("{kind:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of one sample line `name{labels} value` of a text exposition.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn istiod_names_without_counter_suffix_and_istiod_buckets() {
        let m = Metrics::new();
        m.record_push(ResourceType::Cluster, Duration::from_millis(20));
        m.record_reject(ResourceType::Listener, "sidecar~1", 3);
        m.record_reject(ResourceType::Secret, "sidecar~1", 3);
        let text = m.render();
        assert_eq!(sample(&text, "pilot_xds_pushes{type=\"cds\"}"), Some(1.0), "{text}");
        assert!(text.contains("# TYPE pilot_xds_pushes counter"), "{text}");
        assert_eq!(sample(&text, "pilot_total_xds_rejects{type=\"lds\"}"), Some(1.0), "{text}");
        assert_eq!(sample(&text, "pilot_total_xds_rejects{type=\"sds\"}"), Some(1.0), "{text}");
        assert_eq!(sample(&text, "pilot_xds_lds_reject{err=\"3\",node=\"sidecar~1\"}"), Some(1.0), "{text}");
        // 20 ms: above istiod's first bucket (10 ms), within the second (100 ms).
        assert_eq!(sample(&text, "pilot_xds_push_time_bucket{type=\"cds\",le=\"0.01\"}"), Some(0.0), "{text}");
        assert_eq!(sample(&text, "pilot_xds_push_time_bucket{type=\"cds\",le=\"0.1\"}"), Some(1.0), "{text}");
        assert!(text.contains("pilot_proxy_convergence_time_bucket{le=\"0.1\"} 0"), "{text}");
        assert!(!text.contains("_total{"), "no OpenMetrics counter suffix: {text}");
    }
}
