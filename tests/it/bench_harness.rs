//! `meshflow bench` end to end at `small`: every scenario for about a second, with delta ADS
//! clients and the full-recompute baseline. Checks correctness, not speed: the report is
//! complete and its counts add up, and at the end of every scenario the served configuration
//! equals the reference translation of the same input. With `--envoy`, a real Envoy among the
//! clients: every step is timed to its ACK.

use std::time::Duration;

use meshflow::bench::{BenchArgs, Mode, SourceKind, run};

use crate::support;

fn args(out: &std::path::Path) -> BenchArgs {
    BenchArgs {
        preset: "small".into(),
        scenario: "all".into(),
        duration: Duration::from_millis(800),
        rate: 200.0,
        clients: 2,
        nack_clients: 0,
        slow_clients: 0,
        slow_delay: Duration::from_millis(200),
        streams_per_connection: 1,
        envoy: None,
        mode: Mode::Both,
        debounce: Duration::from_millis(100),
        source: SourceKind::Engine,
        seed: 7,
        out: out.to_path_buf(),
        export: None,
        max_steps: None,
        verify: true,
    }
}

#[test]
fn every_scenario_at_small_reports_consistent_counts_and_ends_equal_to_the_reference() {
    let out = tempfile::tempdir().unwrap();
    let report = run(&args(out.path())).expect("bench run");
    assert_eq!(report.scenarios.len(), 11, "every scenario ran");

    // report.json carries the top-level fields.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("report.json")).unwrap()).unwrap();
    for field in ["events", "cpu_seconds", "latency_ms", "resources_pushed", "bytes_pushed", "peak_rss_bytes"] {
        assert!(json.get(field).is_some(), "report.json lacks {field}");
    }
    for q in ["p50", "p90", "p99", "max"] {
        assert!(json["latency_ms"][q].as_f64().is_some(), "latency_ms.{q}");
    }
    assert!(json["peak_rss_bytes"].as_u64().unwrap() > 0);
    assert!(json["cpu_seconds"].as_f64().unwrap() > 0.0);

    let mut events = 0;
    let mut pushed = 0;
    for s in &report.scenarios {
        let name = &s.scenario;
        let inc = s.incremental.as_ref().unwrap_or_else(|| panic!("{name}: no incremental result"));
        let full = s.full.as_ref().unwrap_or_else(|| panic!("{name}: no baseline"));
        // The end state equals the from-scratch translation.
        assert!(inc.verify.resources > 100, "{name}: verified {} resources", inc.verify.resources);
        assert_eq!(inc.verify.mismatches, 0, "{name}: engine != reference: {:?}", inc.verify.examples);
        assert!(inc.initial_resources > 100, "{name}");
        assert!(inc.clients_initial_sync_ms.is_some(), "{name}: both clients received the initial configuration");
        events += inc.events;
        pushed += inc.resources_pushed;
        if name == "initial-sync" {
            assert_eq!(inc.events, 0);
            assert_eq!(inc.output_batch_ms.count, 1);
            continue;
        }
        assert!(inc.events > 0, "{name}: no steps");
        assert_eq!(s.step_labels.values().sum::<u64>(), inc.events, "{name}: step labels add up to the events");
        // Every step got its output batch, and every step either reached a client or is counted
        // as not having done so.
        assert_eq!(inc.output_batch_ms.count, inc.events, "{name}: a batch for every step");
        assert_eq!(
            inc.first_frame_ms.count + inc.steps_without_frames,
            inc.events,
            "{name}: steps with and without xDS frames add up"
        );
        assert!(inc.last_client_ms.count <= inc.first_frame_ms.count, "{name}");
        assert!(inc.batches >= 1 && inc.batches <= inc.events, "{name}: {} batches", inc.batches);
        let l = &inc.output_batch_ms;
        assert!(l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.max, "{name}: percentiles ordered: {l:?}");
        // First frame after the batch it carries, last client after the first.
        if inc.first_frame_ms.count > 0 {
            assert!(inc.first_frame_ms.max >= inc.first_frame_ms.p50);
        }
        // Step by step: the batch, then its first frame on the wire (the server's write), then
        // the first client that read it, then the last.
        let by_step = |samples: &meshflow::bench::report::Samples| -> std::collections::HashMap<u64, u64> {
            samples.points.iter().map(|(t, us)| (t.to_bits(), *us)).collect()
        };
        let (batch, wire, first, last) = (
            by_step(&s.batch_samples),
            by_step(&s.frame_samples),
            by_step(&s.first_client_samples),
            by_step(&s.last_samples),
        );
        assert_eq!(first.len() as u64, inc.first_client_ms.count, "{name}");
        for (t, client) in &first {
            let wrote = wire.get(t).unwrap_or_else(|| panic!("{name}: a client read a step never written"));
            assert!(
                batch[t] <= *wrote && wrote <= client,
                "{name}: batch {} µs, wire {wrote} µs, client {client} µs",
                batch[t]
            );
            if let Some(last) = last.get(t) {
                assert!(client <= last, "{name}");
            }
        }
        if name == "gateway-change" {
            // A Gateway's server on its own port: that port's listener and route config of the
            // ingress gateway's class change, added or removed, and nothing the sidecars hold.
            let types: Vec<&str> = inc.changed_by_type.keys().map(String::as_str).collect();
            assert_eq!(types, ["LDS", "RDS"], "{name}: {:?}", inc.changed_by_type);
            assert_eq!(inc.changed_by_type["LDS"], inc.changed_by_type["RDS"], "{name}");
            assert!(inc.resources_changed <= 2 * inc.events, "{name}: {} changes", inc.resources_changed);
            assert!(inc.changed_bytes > 0, "{name}");
            assert_eq!(inc.resources_pushed, 0, "{name}: the sidecar clients receive nothing");
            assert_eq!(inc.steps_without_frames, inc.events, "{name}");
        }
        let per_event = inc.resources_pushed as f64 / inc.events as f64;
        assert!((inc.per_event.resources - per_event).abs() < 1e-9, "{name}: per-event resources");
        // The baseline was given the same steps (it may fall behind and leave some).
        assert_eq!(full.events + full.events_unprocessed, inc.events, "{name}: baseline got the same steps");
        assert!(full.events > 0, "{name}: baseline processed nothing");
        assert_eq!(full.latency_ms.count, full.events, "{name}");
        assert!(full.batches >= 1 && full.batches <= full.events, "{name}");
        // Plots written.
        for plot in ["latency-over-time", "latency-cdf"] {
            let svg = std::fs::read_to_string(out.path().join(format!("{name}-{plot}.svg"))).unwrap();
            assert!(svg.starts_with("<svg") && svg.contains("circle") | svg.contains("polyline"), "{name}-{plot}");
        }
        // And the samples behind them: one line per step and series.
        let csv = std::fs::read_to_string(out.path().join(format!("{name}-samples.csv"))).unwrap();
        let batches = csv.lines().filter(|l| l.starts_with("\"meshflow: → output batch\",")).count() as u64;
        assert_eq!(batches, inc.output_batch_ms.count, "{name}: a batch sample per line");
        let fulls = csv.lines().filter(|l| l.starts_with("\"full recompute: → batch\",")).count() as u64;
        assert_eq!(fulls, full.latency_ms.count, "{name}: a baseline sample per line");
    }
    assert_eq!(report.events, events, "top-level events is the sum over scenarios");
    assert_eq!(report.resources_pushed, pushed);
}

#[test]
fn the_pod_churn_baseline_pushes_more_than_meshflow_per_event() {
    let out = tempfile::tempdir().unwrap();
    let mut a = args(out.path());
    a.scenario = "pod-churn".into();
    a.debounce = Duration::ZERO;
    let report = run(&a).expect("bench run");
    let s = &report.scenarios[0];
    let (inc, full) = (s.incremental.as_ref().unwrap(), s.full.as_ref().unwrap());
    // One pod changes one service's endpoints: delta xDS sends its assignments only, a
    // state-of-the-world server every assignment to every client. Compared per output batch,
    // not per event: how many events one baseline batch folds depends on the machine's speed.
    let per_batch = |pushed: u64, batches: u64| pushed as f64 / batches.max(1) as f64;
    let (inc_batch, full_batch) =
        (per_batch(inc.resources_pushed, inc.batches), per_batch(full.resources_pushed, full.batches));
    assert!(inc.per_event.resources > 0.0, "{inc:?}");
    assert!(inc_batch * 10.0 < full_batch, "{inc:?}\n{full:?}");
    assert!(full_batch >= 100.0 * a.clients as f64, "{full:?}");
}

#[test]
fn nacking_and_slow_clients_neither_stop_the_others_nor_get_their_rejected_versions_again() {
    let out = tempfile::tempdir().unwrap();
    let mut a = args(out.path());
    a.scenario = "pod-churn".into();
    a.mode = Mode::Incremental;
    a.clients = 4;
    a.nack_clients = 1;
    a.slow_clients = 1;
    // Far above what a step takes to reach a reading client: were the slow client counted (or
    // did it hold the others back), the latencies to the last client would be above it.
    a.slow_delay = Duration::from_secs(3);
    a.duration = Duration::from_millis(1500);
    // Two streams to a connection: the NACKing client shares one with a reading client, and so
    // does the slow one (their task and their connection's writes too).
    a.streams_per_connection = 2;
    let report = run(&a).expect("bench run");
    let inc = report.scenarios[0].incremental.as_ref().unwrap();
    assert_eq!((inc.nacking_clients, inc.slow_clients), (1, 1));
    assert!(inc.nacks_sent >= 2, "the NACKing client rejected its initial sync and the churn: {inc:?}");
    assert_eq!(inc.verify.mismatches, 0, "{:?}", inc.verify.examples);
    assert!(inc.clients_initial_sync_ms.is_some(), "the three counted clients synced");
    assert!(inc.last_client_ms.count > 0, "steps reached every counted client: {inc:?}");
    assert!(inc.last_client_ms.p50 < 3000.0, "the slow client is not waited for: {:?}", inc.last_client_ms);
}

#[test]
fn the_directory_source_feeds_the_steps_through_written_files() {
    let out = tempfile::tempdir().unwrap();
    let mut a = args(out.path());
    a.scenario = "pod-churn".into();
    a.mode = Mode::Incremental;
    a.source = SourceKind::Dir;
    a.rate = 20.0;
    a.duration = Duration::from_millis(1500);
    let report = run(&a).expect("bench run");
    assert_eq!(report.source, "dir");
    let inc = report.scenarios[0].incremental.as_ref().unwrap();
    assert!(inc.events > 0, "{inc:?}");
    assert_eq!(inc.output_batch_ms.count, inc.events, "every written step came out of the engine");
    assert!(inc.first_frame_ms.count > 0, "and reached the clients: {inc:?}");
    assert_eq!(inc.verify.mismatches, 0, "{:?}", inc.verify.examples);
}

#[test]
fn a_real_envoy_acks_the_churn_and_each_step_is_timed_to_its_ack() {
    let out = tempfile::tempdir().unwrap();
    let mut a = args(out.path());
    a.scenario = "pod-churn".into();
    a.mode = Mode::Incremental;
    a.clients = 1;
    a.rate = 20.0;
    a.duration = Duration::from_millis(1500);
    a.envoy = Some(support::envoy_bin());
    let report = run(&a).expect("bench run with a real Envoy");
    let s = &report.scenarios[0];
    let inc = s.incremental.as_ref().unwrap();
    let acked = inc.envoy_ack_ms.as_ref().expect("envoy_ack_ms is reported with --envoy");
    assert!(inc.events > 0, "{inc:?}");
    // Each step that changed what sidecars see is either timed to Envoy's ACK or counted as
    // not ACKed; the steps that reached the simulated clients (sidecars too) are among them.
    let timed = acked.count + inc.envoy_steps_unacked;
    assert!(inc.first_frame_ms.count <= timed && timed <= inc.events, "{inc:?}");
    if unsafe { libc::geteuid() } == 0 {
        // As root Envoy can bind every listener (a ServiceEntry's on 443): nothing to reject.
        assert_eq!(inc.envoy_nacks, 0, "see {}/pod-churn-envoy.log", out.path().display());
        assert_eq!(inc.envoy_steps_unacked, 0, "{inc:?}");
    }
    assert!(acked.count > 0, "{inc:?}");
    assert!(acked.p50 <= acked.p99 && acked.p99 <= acked.max, "{acked:?}");
    // Step by step, Envoy's ACK comes after the step's output batch.
    let batch: std::collections::HashMap<u64, u64> =
        s.batch_samples.points.iter().map(|(t, us)| (t.to_bits(), *us)).collect();
    for (t, us) in &s.envoy_samples.points {
        let b = batch[&t.to_bits()];
        assert!(*us >= b, "step at {t:.3}s: Envoy ACK after {us} µs, before its batch ({b} µs)");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(json["envoy_ack_ms"]["count"].as_u64(), Some(acked.count), "top level sums the scenarios");
    let svg = std::fs::read_to_string(out.path().join("pod-churn-latency-cdf.svg")).unwrap();
    assert!(svg.contains("Envoy ACK"), "the plot has the Envoy series");
    // It ran (Envoy accepted it) with istiod's stats inclusion list, as a sidecar does.
    let bootstrap: serde_json::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(out.path().join("pod-churn-envoy-bootstrap.yaml")).unwrap())
            .unwrap();
    let patterns = &bootstrap["stats_config"]["stats_matcher"]["inclusion_list"]["patterns"];
    assert!(patterns.as_array().is_some_and(|p| p.contains(&serde_json::json!({"prefix": "cluster.xds-grpc"}))));
}
