//! DestinationRule → Envoy Cluster: the outbound EDS cluster of a service port (or of one subset of
//! it) with the DestinationRule traffic policy that applies to that port and subset.
//!
//! Follows istiod (`pilot/pkg/networking/core/cluster_builder.go`, `cluster_traffic_policy.go`,
//! `cluster_tls.go`, `pilot/pkg/networking/util/util.go` `MergeSubsetTrafficPolicy`,
//! `pilot/pkg/model/destination_rule.go` `MergeTrafficPolicy`, `route/route.go`
//! `ConsistentHashToHashPolicy`). The order of the steps in [`cluster`] is istiod's: the upstream
//! protocol of the port first, then HTTP/2 upgrade, connection pool, outlier detection, load
//! balancer and TLS, each of which may read what the previous ones did.

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::common::matcher::v3 as matcher;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use envoy_types::pb::envoy::extensions::upstreams::http::v3 as upstream_http;
use envoy_types::pb::envoy::r#type::matcher::v3 as string_matcher;
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{Duration, UInt32Value, UInt64Value};
use envoy_types::util::pack_any;
use prost::{Message, Name};

use super::{PortProtocol, ServicePortRow, ads_config_source, outbound_cluster_name, seconds};
use crate::model::FieldError;
use crate::model::istio::{
    ClientTlsMode, ClientTlsSettings, ConnectionPoolSettings, DestinationRule, DestinationRuleSpec, H2UpgradePolicy,
    LoadBalancerSettings, OutlierDetection, PortTrafficPolicy, SimpleLb, TcpKeepalive, TrafficPolicy,
    WarmupConfiguration, parse_duration,
};

use upstream_http::http_protocol_options::{
    ExplicitHttpConfig, UpstreamProtocolOptions, UseDownstreamHttpConfig, explicit_http_config::ProtocolConfig,
};

/// The trust bundle used when a SIMPLE or MUTUAL policy names no `caCertificates`. istiod verifies
/// against the system roots then (its agent serves them as the SDS secret `file-root:system`);
/// meshflow has no SDS, and Envoy 1.40 has no usable "system roots" option, so the cluster points
/// at the Debian/Ubuntu system bundle, which the Envoy images carry.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The outbound EDS cluster of a service port, or of one subset of it (`subset: Some(name)` →
/// `outbound|<port>|<subset>|<fqdn>`, EDS service_name = the cluster name), with `policy`: the
/// DestinationRule traffic policy already merged for this port and subset (see [`merged_policy`]).
///
/// Without a policy: 10 s connect timeout, LEAST_REQUEST, circuit breakers opened to the maximum
/// (Envoy's own defaults of 1024 are a hidden limit users of a mesh do not expect), HTTP/2 upstream
/// for gRPC and HTTP/2 ports, the downstream protocol for ports of unknown protocol.
pub fn cluster(row: &ServicePortRow, subset: Option<&str>, policy: Option<&TrafficPolicy>) -> Vec<u8> {
    let inline = super::service_entry::inline_endpoints(row, None);
    cluster_with(row, subset, policy, inline.as_deref())
}

/// [`cluster`] with the endpoints a DNS cluster of a ServiceEntry port carries inline (already
/// chosen for the subset): the discovery type follows the entry's resolution
/// ([`super::service_entry::apply_resolution`]) before the policy applies, as in istiod.
pub fn cluster_with(
    row: &ServicePortRow,
    subset: Option<&str>,
    policy: Option<&TrafficPolicy>,
    inline: Option<&[super::EndpointAddr]>,
) -> Vec<u8> {
    cluster_message(row, subset, policy, inline).encode_to_vec()
}

/// [`cluster_with`] as a message (a DNS cluster's inline assignment is then placed relative to
/// the proxy's locality: [`super::outbound::ClusterRow::encode_located`]).
pub fn cluster_message(
    row: &ServicePortRow,
    subset: Option<&str>,
    policy: Option<&TrafficPolicy>,
    inline: Option<&[super::EndpointAddr]>,
) -> cluster::Cluster {
    let name = outbound_cluster_name(row.port.port, subset.unwrap_or_default(), &row.fqdn());
    let mut c = cluster::Cluster {
        name: name.clone(),
        alt_stat_name: name.clone(),
        cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
            cluster::cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::cluster::EdsClusterConfig {
            eds_config: Some(ads_config_source()),
            service_name: name,
        }),
        connect_timeout: Some(seconds(10)),
        lb_policy: cluster::cluster::LbPolicy::LeastRequest as i32,
        ..Default::default()
    };
    super::service_entry::apply_resolution(&mut c, row, inline);
    let protocol = row.protocol();
    // istiod's setUpstreamProtocol (buildCluster), before any policy is applied.
    let mut http: Option<upstream_http::HttpProtocolOptions> = match protocol {
        PortProtocol::Http2 | PortProtocol::Grpc => Some(h2_options()),
        PortProtocol::Unknown => Some(downstream_protocol_options()),
        _ => None,
    };

    let empty_pool = ConnectionPoolSettings::default();
    let pool = policy.and_then(|p| p.connection_pool.as_ref()).unwrap_or(&empty_pool);
    if should_h2_upgrade(pool) {
        let options = http.get_or_insert_with(Default::default);
        if options.upstream_protocol_options.is_none() {
            options.upstream_protocol_options = h2_options().upstream_protocol_options;
        }
    }
    apply_connection_pool(&mut c, &mut http, pool);

    let outlier = policy.and_then(|p| p.outlier_detection.as_ref());
    if let Some(outlier) = outlier {
        apply_outlier_detection(&mut c, outlier);
        if !outlier.outlier_detection_http_error_codes.is_empty() {
            http.get_or_insert_with(Default::default).outlier_detection =
                Some(error_code_matcher(&outlier.outlier_detection_http_error_codes));
        }
    }
    apply_load_balancer(&mut c, policy.and_then(|p| p.load_balancer.as_ref()));
    // istiod's LocalityLBSettings.ApplyToCluster (the priorities and weights themselves are in
    // the assignments served per proxy locality: super::locality).
    if super::locality::locality_weighted(policy) {
        c.common_lb_config.get_or_insert_with(Default::default).locality_config_specifier = Some(
            cluster::cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(Default::default()),
        );
    }
    // istiod's applyTrafficPolicy ends so for every ORIGINAL_DST cluster (a NONE entry's too).
    if c.cluster_discovery_type
        == Some(cluster::cluster::ClusterDiscoveryType::Type(cluster::cluster::DiscoveryType::OriginalDst as i32))
    {
        c.lb_policy = cluster::cluster::LbPolicy::ClusterProvided as i32;
    }
    if let Some(settings) = policy.and_then(|p| p.tls.as_ref()) {
        apply_tls(&mut c, &mut http, settings);
    }
    if row.headless {
        c.metadata = Some(super::capture::headless_metadata());
    }

    if let Some(mut options) = http {
        // Envoy requires one upstream protocol: istiod's clusterWrapper.build() falls back to HTTP/1.
        if options.upstream_protocol_options.is_none() {
            options.upstream_protocol_options = Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::HttpProtocolOptions(Default::default())),
            }));
        }
        c.typed_extension_protocol_options.insert(upstream_http::HttpProtocolOptions::full_name(), pack_any(options));
    }
    c
}

fn h2_options() -> upstream_http::HttpProtocolOptions {
    upstream_http::HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(Default::default())),
        })),
        ..Default::default()
    }
}

pub(super) fn downstream_protocol_options() -> upstream_http::HttpProtocolOptions {
    upstream_http::HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(
            UseDownstreamHttpConfig {
                http_protocol_options: Some(Default::default()),
                http2_protocol_options: Some(Default::default()),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

/// The HTTP/2 options of a cluster that speaks HTTP/2 explicitly (istiod's isHttp2Cluster).
fn explicit_h2(options: &mut Option<upstream_http::HttpProtocolOptions>) -> Option<&mut core::Http2ProtocolOptions> {
    match options.as_mut()?.upstream_protocol_options.as_mut()? {
        UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(h2)),
        }) => Some(h2),
        _ => None,
    }
}

/// istiod's shouldH2Upgrade with the mesh default `h2UpgradePolicy: DO_NOT_UPGRADE`: only an
/// explicit UPGRADE (without useClientProtocol) upgrades, whatever the port's protocol. It does not
/// replace an upstream protocol already chosen (a port of unknown protocol keeps following the
/// downstream one), as istiod's setH2Options.
fn should_h2_upgrade(pool: &ConnectionPoolSettings) -> bool {
    match &pool.http {
        Some(http) if http.use_client_protocol => false,
        Some(http) => http.h2_upgrade_policy == Some(H2UpgradePolicy::Upgrade),
        None => false,
    }
}

/// A duration as Istio writes it (`"5s"`, `"30ms"`, `"1h"`), as a protobuf Duration.
fn duration(s: &str) -> Option<Duration> {
    let nanos = parse_duration(s)?;
    Some(Duration {
        seconds: nanos.div_euclid(1_000_000_000),
        nanos: i32::try_from(nanos.rem_euclid(1_000_000_000)).unwrap_or_default(),
    })
}

fn opt_duration(s: &Option<String>) -> Option<Duration> {
    s.as_deref().and_then(duration)
}

fn positive(v: Option<i32>) -> Option<UInt32Value> {
    v.filter(|v| *v > 0).map(|v| UInt32Value { value: v.unsigned_abs() })
}

fn nonempty(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

/// istiod's applyConnectionPool (retry budget aside: it is reported as untranslated).
fn apply_connection_pool(
    c: &mut cluster::Cluster,
    http: &mut Option<upstream_http::HttpProtocolOptions>,
    pool: &ConnectionPoolSettings,
) {
    let max = Some(UInt32Value { value: u32::MAX });
    let mut threshold = cluster::circuit_breakers::Thresholds {
        max_connections: max,
        max_pending_requests: max,
        max_requests: max,
        max_retries: max,
        track_remaining: true,
        ..Default::default()
    };
    let mut idle_timeout = None;
    let mut max_requests_per_connection = None;
    let mut max_concurrent_streams = None;
    let mut keepalive = None;
    let mut max_connection_duration = None;
    if let Some(h) = &pool.http {
        if let Some(v) = positive(h.http2_max_requests) {
            threshold.max_requests = Some(v);
        }
        if let Some(v) = positive(h.http1_max_pending_requests) {
            threshold.max_pending_requests = Some(v);
        }
        if let Some(v) = positive(h.max_retries) {
            threshold.max_retries = Some(v);
        }
        idle_timeout = opt_duration(&h.idle_timeout);
        max_requests_per_connection = positive(h.max_requests_per_connection);
        max_concurrent_streams = positive(h.max_concurrent_streams);
        keepalive = h.http2_keep_alive.as_ref().map(|k| core::KeepaliveSettings {
            interval: opt_duration(&k.interval),
            timeout: opt_duration(&k.timeout),
            ..Default::default()
        });
    }
    if let Some(tcp) = &pool.tcp {
        if let Some(timeout) = opt_duration(&tcp.connect_timeout) {
            c.connect_timeout = Some(timeout);
        }
        if let Some(v) = positive(tcp.max_connections) {
            threshold.max_connections = Some(v);
        }
        max_connection_duration = opt_duration(&tcp.max_connection_duration);
        if idle_timeout.is_none() {
            idle_timeout = opt_duration(&tcp.idle_timeout);
        }
        if let Some(k) = &tcp.tcp_keepalive {
            c.upstream_connection_options = Some(cluster::UpstreamConnectionOptions {
                tcp_keepalive: Some(tcp_keepalive(k)),
                ..Default::default()
            });
        }
    }
    c.circuit_breakers = Some(cluster::CircuitBreakers { thresholds: vec![threshold], ..Default::default() });

    if idle_timeout.is_some()
        || max_requests_per_connection.is_some()
        || max_connection_duration.is_some()
        || max_concurrent_streams.is_some()
        || keepalive.is_some()
    {
        let options = http.get_or_insert_with(Default::default);
        let common = options.common_http_protocol_options.get_or_insert_with(Default::default);
        if idle_timeout.is_some() {
            common.idle_timeout = idle_timeout;
        }
        if max_requests_per_connection.is_some() {
            common.max_requests_per_connection = max_requests_per_connection;
        }
        if max_connection_duration.is_some() {
            common.max_connection_duration = max_connection_duration;
        }
        if let Some(h2) = explicit_h2(http) {
            if max_concurrent_streams.is_some() {
                h2.max_concurrent_streams = max_concurrent_streams;
            }
            if keepalive.is_some() {
                h2.connection_keepalive = keepalive;
            }
        }
    }
    if pool.http.as_ref().is_some_and(|h| h.use_client_protocol) {
        let options = http.get_or_insert_with(Default::default);
        options.upstream_protocol_options = downstream_protocol_options().upstream_protocol_options;
    }
}

/// istiod's setKeepAliveSettings: an empty keepalive turns SO_KEEPALIVE on with the OS defaults;
/// time and interval are whole seconds (truncated).
fn tcp_keepalive(k: &TcpKeepalive) -> core::TcpKeepalive {
    let whole_seconds = |s: &Option<String>| {
        opt_duration(s).map(|d| UInt32Value { value: u32::try_from(d.seconds.max(0)).unwrap_or(u32::MAX) })
    };
    core::TcpKeepalive {
        keepalive_probes: k.probes.filter(|p| *p > 0).map(|value| UInt32Value { value }),
        keepalive_time: whole_seconds(&k.time),
        keepalive_interval: whole_seconds(&k.interval),
    }
}

/// istiod's applyOutlierDetection: success-rate ejection off, each consecutive-error count with its
/// enforcement at 100 % (0 when the count is 0), and the panic threshold set to minHealthPercent —
/// 0 when unset, which disables Envoy's panic mode (its default is 50 %).
fn apply_outlier_detection(c: &mut cluster::Cluster, o: &OutlierDetection) {
    let u32v = |value| Some(UInt32Value { value });
    let enforcing = |v: u32| u32v(if v > 0 { 100 } else { 0 });
    let mut out = cluster::OutlierDetection { enforcing_success_rate: u32v(0), ..Default::default() };
    if let Some(v) = o.consecutive_5xx_errors {
        out.consecutive_5xx = u32v(v);
        out.enforcing_consecutive_5xx = enforcing(v);
    }
    if let Some(v) = o.consecutive_gateway_errors {
        out.consecutive_gateway_failure = u32v(v);
        out.enforcing_consecutive_gateway_failure = enforcing(v);
    }
    out.interval = opt_duration(&o.interval);
    out.base_ejection_time = opt_duration(&o.base_ejection_time);
    out.max_ejection_percent = positive(o.max_ejection_percent);
    if o.split_external_local_origin_errors {
        out.split_external_local_origin_errors = true;
        if let Some(v) = o.consecutive_local_origin_failures.filter(|v| *v > 0) {
            out.consecutive_local_origin_failure = u32v(v);
            out.enforcing_consecutive_local_origin_failure = u32v(100);
        }
        out.enforcing_local_origin_success_rate = u32v(0);
    }
    c.outlier_detection = Some(out);
    let min_health = o.min_health_percent.unwrap_or(0);
    if min_health >= 0 {
        c.common_lb_config.get_or_insert_with(Default::default).healthy_panic_threshold =
            Some(Percent { value: f64::from(min_health) });
    }
}

/// istiod's applyOutlierDetectionErrorCodes: only these response codes count as errors.
fn error_code_matcher(codes: &[u32]) -> upstream_http::http_protocol_options::OutlierDetection {
    use matcher::match_predicate::Rule;
    let mut rules: Vec<matcher::MatchPredicate> = codes
        .iter()
        .map(|code| matcher::MatchPredicate {
            rule: Some(Rule::HttpResponseHeadersMatch(matcher::HttpHeadersMatch {
                headers: vec![route::HeaderMatcher {
                    name: ":status".to_string(),
                    header_match_specifier: Some(route::header_matcher::HeaderMatchSpecifier::StringMatch(
                        string_matcher::StringMatcher {
                            match_pattern: Some(string_matcher::string_matcher::MatchPattern::Exact(code.to_string())),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                }],
            })),
        })
        .collect();
    let predicate = if rules.len() == 1 {
        rules.remove(0)
    } else {
        matcher::MatchPredicate { rule: Some(Rule::OrMatch(matcher::match_predicate::MatchSet { rules })) }
    };
    upstream_http::http_protocol_options::OutlierDetection { error_matcher: Some(predicate) }
}

/// istiod's applyLoadBalancer (locality and zone-aware settings aside: reported as untranslated).
pub(crate) fn apply_load_balancer(c: &mut cluster::Cluster, lb: Option<&LoadBalancerSettings>) {
    use cluster::cluster::{LbConfig, LbPolicy};
    match lb.and_then(|lb| lb.simple) {
        Some(SimpleLb::Random) => c.lb_policy = LbPolicy::Random as i32,
        Some(SimpleLb::RoundRobin) => {
            c.lb_policy = LbPolicy::RoundRobin as i32;
            if let Some(slow_start) = lb.and_then(slow_start) {
                c.lb_config = Some(LbConfig::RoundRobinLbConfig(cluster::cluster::RoundRobinLbConfig {
                    slow_start_config: Some(slow_start),
                }));
            }
        }
        Some(SimpleLb::Passthrough) => {
            // istiod sends such traffic to the address the client asked for: an ORIGINAL_DST
            // cluster, whose load balancing is the cluster's own, and no EDS.
            c.lb_policy = LbPolicy::ClusterProvided as i32;
            c.cluster_discovery_type =
                Some(cluster::cluster::ClusterDiscoveryType::Type(cluster::cluster::DiscoveryType::OriginalDst as i32));
            c.eds_cluster_config = None;
            // A DNS entry's inline endpoints go too (istiod wipes the LoadAssignment).
            c.load_assignment = None;
            return;
        }
        // LEAST_REQUEST, the deprecated LEAST_CONN, and istiod's default.
        Some(SimpleLb::LeastRequest | SimpleLb::LeastConn | SimpleLb::Unspecified) | None => {
            c.lb_policy = LbPolicy::LeastRequest as i32;
            if let Some(slow_start) = lb.and_then(slow_start) {
                c.lb_config = Some(LbConfig::LeastRequestLbConfig(cluster::cluster::LeastRequestLbConfig {
                    slow_start_config: Some(slow_start),
                    ..Default::default()
                }));
            }
        }
    }
    // istiod's ApplyRingHashLoadBalancer.
    let Some(hash) = lb.and_then(|lb| lb.consistent_hash.as_ref()) else { return };
    if let Some(maglev) = &hash.maglev {
        c.lb_policy = LbPolicy::Maglev as i32;
        if let Some(size) = maglev.table_size.filter(|s| *s != 0) {
            c.lb_config = Some(LbConfig::MaglevLbConfig(cluster::cluster::MaglevLbConfig {
                table_size: Some(UInt64Value { value: size }),
            }));
        }
    } else if let Some(ring) = &hash.ring_hash {
        c.lb_policy = LbPolicy::RingHash as i32;
        if let Some(size) = ring.minimum_ring_size.filter(|s| *s != 0) {
            c.lb_config = Some(LbConfig::RingHashLbConfig(cluster::cluster::RingHashLbConfig {
                minimum_ring_size: Some(UInt64Value { value: size }),
                ..Default::default()
            }));
        }
    } else {
        c.lb_policy = LbPolicy::RingHash as i32;
        let size = hash.minimum_ring_size.filter(|s| *s != 0).unwrap_or(1024);
        c.lb_config = Some(LbConfig::RingHashLbConfig(cluster::cluster::RingHashLbConfig {
            minimum_ring_size: Some(UInt64Value { value: size }),
            ..Default::default()
        }));
    }
}

/// istiod's setWarmup (preferred) or setSlowStartConfig (deprecated warmupDurationSecs).
fn slow_start(lb: &LoadBalancerSettings) -> Option<cluster::cluster::SlowStartConfig> {
    if let Some(WarmupConfiguration { duration: window, minimum_percent, aggression }) = &lb.warmup {
        return Some(cluster::cluster::SlowStartConfig {
            slow_start_window: duration(window),
            // istiod's fixed runtime key, which no runtime layer sets.
            aggression: Some(core::RuntimeDouble {
                default_value: aggression.map_or(1.0, |a| a.0),
                runtime_key: "(".to_string(),
            }),
            min_weight_percent: Some(Percent { value: minimum_percent.map_or(10.0, |m| m.0) }),
        });
    }
    let window = opt_duration(&lb.warmup_duration_secs)?;
    Some(cluster::cluster::SlowStartConfig { slow_start_window: Some(window), ..Default::default() })
}

/// istiod's buildUpstreamClusterTLSContext for SIMPLE and MUTUAL with certificate files, written
/// inline instead of istiod's file-backed SDS secrets. DISABLE, ISTIO_MUTUAL (needs the mesh CA)
/// and credentialName (needs SDS) leave TLS off; the last two are reported by [`untranslated`].
fn apply_tls(
    c: &mut cluster::Cluster,
    http: &mut Option<upstream_http::HttpProtocolOptions>,
    settings: &ClientTlsSettings,
) {
    let mutual = match settings.effective_mode() {
        ClientTlsMode::Simple => false,
        ClientTlsMode::Mutual => true,
        ClientTlsMode::Disable | ClientTlsMode::IstioMutual => return,
    };
    if nonempty(&settings.credential_name).is_some() {
        // As istiod does for a sidecar when the rule has no workloadSelector.
        return;
    }
    let file = |path: &str| core::DataSource {
        specifier: Some(core::data_source::Specifier::Filename(path.to_string())),
        ..Default::default()
    };
    let mut common = tls::CommonTlsContext {
        tls_params: Some(tls::TlsParameters {
            tls_minimum_protocol_version: tls::tls_parameters::TlsProtocol::TlSv12 as i32,
            tls_maximum_protocol_version: tls::tls_parameters::TlsProtocol::TlSv13 as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    if mutual {
        let (Some(cert), Some(key)) = (nonempty(&settings.client_certificate), nonempty(&settings.private_key)) else {
            // istiod fails to build the TLS context and leaves the cluster without it.
            return;
        };
        common.tls_certificates = vec![tls::TlsCertificate {
            certificate_chain: Some(file(cert)),
            private_key: Some(file(key)),
            ..Default::default()
        }];
    }
    let insecure = settings.insecure_skip_verify == Some(true);
    let validation = if insecure {
        tls::CertificateValidationContext::default()
    } else {
        tls::CertificateValidationContext {
            trusted_ca: Some(file(nonempty(&settings.ca_certificates).unwrap_or(SYSTEM_CA_BUNDLE))),
            match_typed_subject_alt_names: settings.subject_alt_names.iter().flat_map(|n| san_matchers(n)).collect(),
            crl: nonempty(&settings.ca_crl).map(file),
            ..Default::default()
        }
    };
    common.validation_context_type =
        Some(tls::common_tls_context::ValidationContextType::ValidationContext(validation));
    if explicit_h2(http).is_some() {
        common.alpn_protocols = vec!["h2".to_string()];
    }
    let sni = nonempty(&settings.sni).unwrap_or_default().to_string();
    // istiod's setAutoSniAndAutoSanValidation: without an explicit SNI, Envoy takes it from the
    // request's Host, and checks the server certificate against it when no SAN is listed.
    let auto_sni = sni.is_empty();
    let auto_san = auto_sni && settings.subject_alt_names.is_empty() && !insecure;
    if auto_sni || auto_san {
        let upstream = http
            .get_or_insert_with(Default::default)
            .upstream_http_protocol_options
            .get_or_insert_with(Default::default);
        upstream.auto_sni = auto_sni;
        upstream.auto_san_validation = auto_san;
    }
    let context = tls::UpstreamTlsContext { common_tls_context: Some(common), sni, ..Default::default() };
    c.transport_socket = Some(core::TransportSocket {
        name: "envoy.transport_sockets.tls".to_string(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(pack_any(context))),
    });
}

/// One exact matcher per SAN type: istiod writes the untyped (deprecated) `match_subject_alt_names`,
/// which Envoy checks against DNS, URI, email and IP SANs alike.
fn san_matchers(name: &str) -> impl Iterator<Item = tls::SubjectAltNameMatcher> + '_ {
    use tls::subject_alt_name_matcher::SanType;
    [SanType::Dns, SanType::Uri, SanType::Email, SanType::IpAddress].into_iter().map(move |t| {
        tls::SubjectAltNameMatcher {
            san_type: t as i32,
            matcher: Some(string_matcher::StringMatcher {
                match_pattern: Some(string_matcher::string_matcher::MatchPattern::Exact(name.to_string())),
                ..Default::default()
            }),
            ..Default::default()
        }
    })
}

/// The four parts a port-level policy carries, as a traffic policy (istiod's
/// shadowCopyPortTrafficPolicy: tunnel, proxyProtocol and retryBudget are not inherited).
fn port_policy(p: &PortTrafficPolicy) -> TrafficPolicy {
    TrafficPolicy {
        load_balancer: p.load_balancer.clone(),
        connection_pool: p.connection_pool.clone(),
        outlier_detection: p.outlier_detection.clone(),
        tls: p.tls.clone(),
        ..Default::default()
    }
}

/// istiod's GetPortLevelTrafficPolicy: the port's entry replaces the policy wholesale (a part it
/// leaves out takes its default, not the policy's), else the policy without its port settings.
fn for_port(policy: &TrafficPolicy, port: u16) -> (TrafficPolicy, bool) {
    let entry = policy.port_level_settings.iter().find(|p| p.port.as_ref().map(|s| s.number) == Some(u32::from(port)));
    match entry {
        Some(entry) => (port_policy(entry), true),
        None => (TrafficPolicy { port_level_settings: Vec::new(), ..policy.clone() }, false),
    }
}

/// istiod's merge for one cluster (`MergeSubsetTrafficPolicy`): the rule's top-level policy, or
/// its portLevelSettings entry for `port`, which replaces loadBalancer, connectionPool,
/// outlierDetection and tls wholesale (a part the entry leaves out falls back to the default, not
/// to the top level: "port-level settings will override the destination-level settings"); then
/// the subset's policy overrides each part it sets — or, if it has an entry for `port`, all four
/// parts. None when nothing applies.
pub fn merged_policy(rule: &DestinationRuleSpec, port: u16, subset: Option<&str>) -> Option<TrafficPolicy> {
    let original = rule.traffic_policy.as_deref().map(|p| for_port(p, port).0);
    let subset_policy =
        subset.and_then(|name| rule.subsets.iter().find(|s| s.name == name)).and_then(|s| s.traffic_policy.as_deref());
    let merged = match (original, subset_policy) {
        (original, None) => original,
        (None, Some(sp)) => Some(for_port(sp, port).0),
        (Some(mut merged), Some(sp)) => {
            let (sp, port_level) = for_port(sp, port);
            if sp.connection_pool.is_some() || port_level {
                merged.connection_pool = sp.connection_pool;
            }
            if sp.outlier_detection.is_some() || port_level {
                merged.outlier_detection = sp.outlier_detection;
            }
            if sp.load_balancer.is_some() || port_level {
                merged.load_balancer = sp.load_balancer;
            }
            if sp.tls.is_some() || port_level {
                merged.tls = sp.tls;
            }
            if sp.tunnel.is_some() {
                merged.tunnel = sp.tunnel;
            }
            if sp.proxy_protocol.is_some() {
                merged.proxy_protocol = sp.proxy_protocol;
            }
            if sp.retry_budget.is_some() {
                merged.retry_budget = sp.retry_budget;
            }
            Some(merged)
        }
    };
    merged.filter(|p| *p != TrafficPolicy::default())
}

/// Route-level hash policy for consistent-hash load balancing (Envoy needs RING_HASH/MAGLEV on the
/// cluster AND a hash_policy on the route action), as istiod's ConsistentHashToHashPolicy: from
/// `policy.load_balancer.consistent_hash` — httpHeaderName, httpCookie (name, path, ttl, attributes;
/// a ttl makes Envoy generate the cookie), useSourceIp, httpQueryParameterName. Empty when the
/// policy has no consistent hash.
pub fn hash_policy(policy: Option<&TrafficPolicy>) -> Vec<route::route_action::HashPolicy> {
    use route::route_action::hash_policy::{self as hp, PolicySpecifier};
    let Some(hash) = policy.and_then(|p| p.load_balancer.as_ref()).and_then(|lb| lb.consistent_hash.as_ref()) else {
        return Vec::new();
    };
    let specifier = if let Some(header) = &hash.http_header_name {
        PolicySpecifier::Header(hp::Header { header_name: header.clone(), ..Default::default() })
    } else if let Some(cookie) = &hash.http_cookie {
        PolicySpecifier::Cookie(hp::Cookie {
            name: cookie.name.clone(),
            ttl: opt_duration(&cookie.ttl),
            path: cookie.path.clone().unwrap_or_default(),
            attributes: cookie
                .attributes
                .iter()
                .map(|a| hp::CookieAttribute { name: a.name.clone(), value: a.value.clone().unwrap_or_default() })
                .collect(),
        })
    } else if let Some(source_ip) = hash.use_source_ip {
        PolicySpecifier::ConnectionProperties(hp::ConnectionProperties { source_ip })
    } else if let Some(name) = &hash.http_query_parameter_name {
        PolicySpecifier::QueryParameter(hp::QueryParameter { name: name.clone() })
    } else {
        return Vec::new();
    };
    vec![route::route_action::HashPolicy { policy_specifier: Some(specifier), ..Default::default() }]
}

/// Every valid field of this rule that meshflow does not translate yet, one entry each, with its
/// path from the object root and the reason. The caller reports each once per object.
pub fn untranslated(rule: &DestinationRule) -> Vec<FieldError> {
    let spec = &rule.spec;
    let mut out = Vec::new();
    if let Some(policy) = &spec.traffic_policy {
        traffic_policy_gaps(&mut out, "spec.trafficPolicy", policy);
    }
    for (i, subset) in spec.subsets.iter().enumerate() {
        if let Some(policy) = &subset.traffic_policy {
            traffic_policy_gaps(&mut out, &format!("spec.subsets[{i}].trafficPolicy"), policy);
        }
    }
    if spec.workload_selector.is_some() {
        out.push(FieldError::new(
            "spec.workloadSelector",
            "per-workload DestinationRules are not applied yet (sidecar classes do not carry workload labels): \
             the rule is left out for every proxy",
        ));
    }
    out
}

fn traffic_policy_gaps(out: &mut Vec<FieldError>, path: &str, policy: &TrafficPolicy) {
    parts_gaps(out, path, policy.load_balancer.as_ref(), policy.outlier_detection.as_ref(), policy.tls.as_ref());
    for (i, port) in policy.port_level_settings.iter().enumerate() {
        let p = format!("{path}.portLevelSettings[{i}]");
        parts_gaps(out, &p, port.load_balancer.as_ref(), port.outlier_detection.as_ref(), port.tls.as_ref());
    }
    let mut gap = |field: &str, reason: &str| out.push(FieldError::new(format!("{path}.{field}"), reason));
    if policy.tunnel.is_some() {
        gap("tunnel", "tunneling TCP over HTTP CONNECT/POST is not translated yet: traffic is sent untunneled");
    }
    if policy.proxy_protocol.is_some() {
        gap(
            "proxyProtocol",
            "the upstream PROXY protocol transport socket is not translated yet: no PROXY header is sent",
        );
    }
    if policy.retry_budget.is_some() {
        gap("retryBudget", "retry budgets are not translated yet: only the maxRetries circuit breaker limits retries");
    }
}

fn parts_gaps(
    out: &mut Vec<FieldError>,
    path: &str,
    lb: Option<&LoadBalancerSettings>,
    outlier: Option<&OutlierDetection>,
    client_tls: Option<&ClientTlsSettings>,
) {
    let mut gap = |field: &str, reason: &str| out.push(FieldError::new(format!("{path}.{field}"), reason));
    if let Some(lb) = lb {
        if lb.zone_aware_lb_setting.is_some() {
            gap(
                "loadBalancer.zoneAwareLbSetting",
                "zone-aware load balancing (Envoy's zone-aware routing, fed by a self-discovery local cluster) is not \
                 translated yet: it is left off",
            );
        }
        if lb.backend_utilization.is_some() {
            gap(
                "loadBalancer.backendUtilization",
                "client-side weighted round robin is not translated yet: the default LEAST_REQUEST is used",
            );
        }
    }
    if outlier.is_some_and(|o| o.consecutive_errors.is_some()) {
        gap(
            "outlierDetection.consecutiveErrors",
            "deprecated and ignored, as istiod ignores it: use consecutive5xxErrors or consecutiveGatewayErrors",
        );
    }
    if let Some(t) = client_tls {
        if t.effective_mode() == ClientTlsMode::IstioMutual {
            gap("tls.mode", "ISTIO_MUTUAL needs the mesh CA, which meshflow does not have yet: TLS is left off");
        } else if matches!(t.effective_mode(), ClientTlsMode::Simple | ClientTlsMode::Mutual)
            && nonempty(&t.credential_name).is_some()
        {
            gap(
                "tls.credentialName",
                "credentials from a Secret need SDS, which meshflow does not serve yet: TLS is left off (as istiod \
                 does for sidecars when the rule has no workloadSelector)",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Object, ParseOutcome, parse_document};
    use cluster::cluster::{ClusterDiscoveryType, DiscoveryType, LbConfig, LbPolicy};
    use route::route_action::hash_policy::PolicySpecifier;

    const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/corpus");

    fn row(port_name: &str, port: u16) -> ServicePortRow {
        crate::translate::tests::row("prod", "ratings", port_name, port)
    }

    fn policy(yaml: &str) -> TrafficPolicy {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn spec(yaml: &str) -> DestinationRuleSpec {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn build(row: &ServicePortRow, subset: Option<&str>, policy: Option<&TrafficPolicy>) -> cluster::Cluster {
        cluster::Cluster::decode(&cluster(row, subset, policy)[..]).unwrap()
    }

    fn with(yaml: &str) -> cluster::Cluster {
        build(&row("http", 9080), None, Some(&policy(yaml)))
    }

    fn http_options(c: &cluster::Cluster) -> Option<upstream_http::HttpProtocolOptions> {
        let any = c.typed_extension_protocol_options.get("envoy.extensions.upstreams.http.v3.HttpProtocolOptions")?;
        Some(upstream_http::HttpProtocolOptions::decode(&any.value[..]).unwrap())
    }

    fn common_http(c: &cluster::Cluster) -> core::HttpProtocolOptions {
        http_options(c).unwrap().common_http_protocol_options.unwrap()
    }

    fn thresholds(c: &cluster::Cluster) -> cluster::circuit_breakers::Thresholds {
        c.circuit_breakers.as_ref().unwrap().thresholds[0]
    }

    fn tls_context(c: &cluster::Cluster) -> Option<tls::UpstreamTlsContext> {
        let socket = c.transport_socket.as_ref()?;
        assert_eq!(socket.name, "envoy.transport_sockets.tls");
        let Some(core::transport_socket::ConfigType::TypedConfig(any)) = &socket.config_type else { panic!() };
        assert_eq!(any.type_url, "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext");
        Some(tls::UpstreamTlsContext::decode(&any.value[..]).unwrap())
    }

    fn validation(ctx: &tls::UpstreamTlsContext) -> tls::CertificateValidationContext {
        match ctx.common_tls_context.as_ref().unwrap().validation_context_type.clone() {
            Some(tls::common_tls_context::ValidationContextType::ValidationContext(v)) => v,
            other => panic!("{other:?}"),
        }
    }

    fn filename(d: &Option<core::DataSource>) -> &str {
        match d.as_ref().and_then(|d| d.specifier.as_ref()) {
            Some(core::data_source::Specifier::Filename(f)) => f,
            other => panic!("{other:?}"),
        }
    }

    fn u32v(value: u32) -> Option<UInt32Value> {
        Some(UInt32Value { value })
    }

    fn secs(seconds: i64, nanos: i32) -> Option<Duration> {
        Some(Duration { seconds, nanos })
    }

    fn is_explicit_h2(o: &upstream_http::HttpProtocolOptions) -> bool {
        matches!(
            &o.upstream_protocol_options,
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(_))
            }))
        )
    }

    fn is_downstream(o: &upstream_http::HttpProtocolOptions) -> bool {
        matches!(&o.upstream_protocol_options, Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(_)))
    }

    /// The DestinationRule of a corpus file, through the same intake as every other source.
    fn corpus_rule(file: &str) -> DestinationRule {
        let text = std::fs::read_to_string(format!("{CORPUS}/{file}")).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = serde_json::Value::deserialize(doc).unwrap();
            for outcome in parse_document(value, "default") {
                match outcome {
                    ParseOutcome::Object(Object::DestinationRule(rule)) => return *rule,
                    ParseOutcome::Rejected { what, errors } => panic!("{what}: {errors:?}"),
                    _ => {}
                }
            }
        }
        panic!("no DestinationRule in {file}")
    }
    use serde::Deserialize;

    // --- defaults and names ----------------------------------------------------------------------

    #[test]
    fn without_policy_a_grpc_port_gets_istiods_defaults_and_http2() {
        let mut r = row("grpc-api", 9080);
        r.namespace = "shop".into();
        r.service = "reviews".into();
        let c = build(&r, None, None);
        assert_eq!(c.name, "outbound|9080||reviews.shop.svc.cluster.local");
        assert_eq!(c.cluster_discovery_type, Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)));
        let eds = c.eds_cluster_config.clone().unwrap();
        assert_eq!(eds.service_name, c.name);
        assert!(matches!(
            eds.eds_config.unwrap().config_source_specifier,
            Some(core::config_source::ConfigSourceSpecifier::Ads(_))
        ));
        assert_eq!(c.connect_timeout, Some(seconds(10)));
        assert_eq!(c.lb_policy, LbPolicy::LeastRequest as i32);
        let t = thresholds(&c);
        assert_eq!(
            (t.max_connections, t.max_pending_requests, t.max_requests, t.max_retries, t.track_remaining),
            (u32v(u32::MAX), u32v(u32::MAX), u32v(u32::MAX), u32v(u32::MAX), true)
        );
        assert!(is_explicit_h2(&http_options(&c).unwrap()), "gRPC needs HTTP/2 to the upstream");
        assert!(c.outlier_detection.is_none() && c.transport_socket.is_none() && c.common_lb_config.is_none());
    }

    #[test]
    fn ports_of_unknown_protocol_follow_the_downstream_protocol_and_http_ports_set_nothing() {
        assert!(is_downstream(&http_options(&build(&row("metrics", 9090), None, None)).unwrap()));
        assert!(http_options(&build(&row("http", 80), None, None)).is_none());
        assert!(http_options(&build(&row("tcp-db", 5432), None, None)).is_none());
    }

    #[test]
    fn a_subset_cluster_is_named_with_its_subset_and_is_its_own_eds_resource() {
        let c = build(&row("http", 9080), Some("v1"), None);
        assert_eq!(c.name, "outbound|9080|v1|ratings.prod.svc.cluster.local");
        assert_eq!(c.eds_cluster_config.unwrap().service_name, "outbound|9080|v1|ratings.prod.svc.cluster.local");
    }

    #[test]
    fn an_empty_policy_builds_the_same_cluster_as_none() {
        let r = row("http", 9080);
        assert_eq!(cluster(&r, None, Some(&TrafficPolicy::default())), cluster(&r, None, None));
    }

    // --- load balancer ---------------------------------------------------------------------------

    #[test]
    fn simple_load_balancers_map_to_envoy_lb_policies() {
        let lb = |s: &str| with(&format!("loadBalancer: {{simple: {s}}}")).lb_policy;
        assert_eq!(lb("ROUND_ROBIN"), LbPolicy::RoundRobin as i32);
        assert_eq!(lb("LEAST_REQUEST"), LbPolicy::LeastRequest as i32);
        assert_eq!(lb("LEAST_CONN"), LbPolicy::LeastRequest as i32, "deprecated alias of LEAST_REQUEST");
        assert_eq!(lb("RANDOM"), LbPolicy::Random as i32);
        assert_eq!(lb("UNSPECIFIED"), LbPolicy::LeastRequest as i32);
    }

    #[test]
    fn passthrough_makes_an_original_destination_cluster_without_eds() {
        // istiod applyLoadBalancer: PASSTHROUGH → ORIGINAL_DST with CLUSTER_PROVIDED.
        let c = with("loadBalancer: {simple: PASSTHROUGH}");
        assert_eq!(c.cluster_discovery_type, Some(ClusterDiscoveryType::Type(DiscoveryType::OriginalDst as i32)));
        assert_eq!(c.lb_policy, LbPolicy::ClusterProvided as i32);
        assert!(c.eds_cluster_config.is_none());
    }

    #[test]
    fn consistent_hash_picks_ring_hash_or_maglev_with_istiods_sizes() {
        let ring = |c: &cluster::Cluster| match &c.lb_config {
            Some(LbConfig::RingHashLbConfig(r)) => r.minimum_ring_size.map(|s| s.value),
            other => panic!("{other:?}"),
        };
        // No algorithm: ring hash with the deprecated size, or istiod's default 1024.
        let c = with("loadBalancer: {consistentHash: {httpHeaderName: x-user}}");
        assert_eq!((c.lb_policy, ring(&c)), (LbPolicy::RingHash as i32, Some(1024)));
        let c = with("loadBalancer: {consistentHash: {httpHeaderName: x-user, minimumRingSize: 2048}}");
        assert_eq!(ring(&c), Some(2048));
        let c = with("loadBalancer: {consistentHash: {useSourceIp: true, ringHash: {minimumRingSize: 4096}}}");
        assert_eq!((c.lb_policy, ring(&c)), (LbPolicy::RingHash as i32, Some(4096)));
        // ringHash without a size: no config, Envoy's own default applies.
        let c = with("loadBalancer: {consistentHash: {useSourceIp: true, ringHash: {}}}");
        assert_eq!((c.lb_policy, c.lb_config), (LbPolicy::RingHash as i32, None));
        let c = with("loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 65537}}}");
        assert_eq!(c.lb_policy, LbPolicy::Maglev as i32);
        assert_eq!(
            c.lb_config,
            Some(LbConfig::MaglevLbConfig(cluster::cluster::MaglevLbConfig {
                table_size: Some(UInt64Value { value: 65537 })
            }))
        );
    }

    #[test]
    fn warmup_becomes_the_slow_start_of_round_robin_and_least_request() {
        let c = with("loadBalancer: {simple: LEAST_REQUEST, warmupDurationSecs: 60s}");
        let Some(LbConfig::LeastRequestLbConfig(lr)) = c.lb_config else { panic!("{:?}", c.lb_config) };
        let slow = lr.slow_start_config.unwrap();
        assert_eq!((slow.slow_start_window, slow.aggression, slow.min_weight_percent), (secs(60, 0), None, None));
        // The newer `warmup`: istiod's defaults aggression 1.0 (linear) and 10 % minimum weight.
        let c = with("loadBalancer: {simple: ROUND_ROBIN, warmup: {duration: 30s}}");
        let Some(LbConfig::RoundRobinLbConfig(rr)) = c.lb_config else { panic!("{:?}", c.lb_config) };
        let slow = rr.slow_start_config.unwrap();
        assert_eq!(slow.slow_start_window, secs(30, 0));
        assert_eq!(slow.aggression.as_ref().map(|a| a.default_value), Some(1.0));
        assert!(!slow.aggression.unwrap().runtime_key.is_empty(), "Envoy requires a runtime key");
        assert_eq!(slow.min_weight_percent, Some(Percent { value: 10.0 }));
        let c = with("loadBalancer: {warmup: {duration: 30s, aggression: 2.5, minimumPercent: 20}}");
        assert_eq!(c.lb_policy, LbPolicy::LeastRequest as i32, "warmup on the default LEAST_REQUEST");
        let Some(LbConfig::LeastRequestLbConfig(lr)) = c.lb_config else { panic!() };
        let slow = lr.slow_start_config.unwrap();
        assert_eq!(slow.aggression.map(|a| a.default_value), Some(2.5));
        assert_eq!(slow.min_weight_percent, Some(Percent { value: 20.0 }));
    }

    // --- connection pool -------------------------------------------------------------------------

    #[test]
    fn tcp_settings_set_connections_timeout_and_keepalive() {
        let c = with(
            "connectionPool: {tcp: {maxConnections: 7, connectTimeout: 250ms, \
                      tcpKeepalive: {probes: 3, time: 7200s, interval: 75500ms}}}",
        );
        assert_eq!(thresholds(&c).max_connections, u32v(7));
        assert_eq!(thresholds(&c).max_requests, u32v(u32::MAX), "unset limits keep istiod's maximum");
        assert_eq!(c.connect_timeout, secs(0, 250_000_000));
        let k = c.upstream_connection_options.unwrap().tcp_keepalive.unwrap();
        // Whole seconds, as istiod's uint32(Seconds).
        assert_eq!((k.keepalive_probes, k.keepalive_time, k.keepalive_interval), (u32v(3), u32v(7200), u32v(75)));
        // An empty tcpKeepalive turns SO_KEEPALIVE on with the OS defaults.
        let c = with("connectionPool: {tcp: {tcpKeepalive: {}}}");
        assert_eq!(c.upstream_connection_options.unwrap().tcp_keepalive, Some(core::TcpKeepalive::default()));
        assert!(with("connectionPool: {tcp: {maxConnections: 1}}").upstream_connection_options.is_none());
    }

    #[test]
    fn http_settings_set_circuit_breakers_and_common_protocol_options() {
        let c = with(
            "connectionPool: {http: {http1MaxPendingRequests: 11, http2MaxRequests: 12, maxRetries: 13, \
                      maxRequestsPerConnection: 14, idleTimeout: 90s}}",
        );
        let t = thresholds(&c);
        assert_eq!((t.max_pending_requests, t.max_requests, t.max_retries), (u32v(11), u32v(12), u32v(13)));
        let common = common_http(&c);
        assert_eq!((common.max_requests_per_connection, common.idle_timeout), (u32v(14), secs(90, 0)));
        // The HTTP port had no upstream protocol: istiod's build() falls back to explicit HTTP/1.
        assert!(matches!(
            http_options(&c).unwrap().upstream_protocol_options,
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::HttpProtocolOptions(_))
            }))
        ));
        // Zero means "unset" to istiod: the maximum stays.
        let c = with("connectionPool: {http: {maxRetries: 0}}");
        assert_eq!(thresholds(&c).max_retries, u32v(u32::MAX));
        assert!(http_options(&c).is_none());
    }

    #[test]
    fn tcp_idle_timeout_and_max_connection_duration_apply_unless_http_sets_the_idle_timeout() {
        let c = with("connectionPool: {tcp: {idleTimeout: 30s, maxConnectionDuration: 1h}}");
        let common = common_http(&c);
        assert_eq!((common.idle_timeout, common.max_connection_duration), (secs(30, 0), secs(3600, 0)));
        let c = with("connectionPool: {tcp: {idleTimeout: 30s}, http: {idleTimeout: 5s}}");
        assert_eq!(common_http(&c).idle_timeout, secs(5, 0));
    }

    #[test]
    fn h2_upgrade_policy_upgrade_makes_the_upstream_http2_unless_a_protocol_is_already_chosen() {
        let c = with("connectionPool: {http: {h2UpgradePolicy: UPGRADE}}");
        assert!(is_explicit_h2(&http_options(&c).unwrap()));
        // As istiod's setH2Options: a port of unknown protocol keeps the downstream protocol.
        let p = policy("connectionPool: {http: {h2UpgradePolicy: UPGRADE}}");
        assert!(is_downstream(&http_options(&build(&row("metrics", 9090), None, Some(&p))).unwrap()));
        assert!(http_options(&with("connectionPool: {http: {h2UpgradePolicy: DO_NOT_UPGRADE}}")).is_none());
    }

    #[test]
    fn use_client_protocol_and_http2_only_settings() {
        let grpc = row("grpc", 9000);
        let p = policy("connectionPool: {http: {useClientProtocol: true}}");
        assert!(is_downstream(&http_options(&build(&grpc, None, Some(&p))).unwrap()));
        let p =
            policy("connectionPool: {http: {maxConcurrentStreams: 100, http2KeepAlive: {interval: 10s, timeout: 3s}}}");
        let options = http_options(&build(&grpc, None, Some(&p))).unwrap();
        let Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(h2)),
        })) = options.upstream_protocol_options
        else {
            panic!()
        };
        assert_eq!(h2.max_concurrent_streams, u32v(100));
        let keepalive = h2.connection_keepalive.unwrap();
        assert_eq!((keepalive.interval, keepalive.timeout), (secs(10, 0), secs(3, 0)));
    }

    // --- outlier detection -----------------------------------------------------------------------

    #[test]
    fn outlier_detection_follows_istiods_apply_outlier_detection() {
        let c = with(
            "outlierDetection: {consecutive5xxErrors: 5, consecutiveGatewayErrors: 0, interval: 10s, \
                      baseEjectionTime: 2m, maxEjectionPercent: 50, minHealthPercent: 30}",
        );
        let o = c.outlier_detection.unwrap();
        assert_eq!(o.enforcing_success_rate, u32v(0), "success-rate ejection is off");
        assert_eq!((o.consecutive_5xx, o.enforcing_consecutive_5xx), (u32v(5), u32v(100)));
        // An explicit 0 disables the detector: enforcement 0.
        assert_eq!((o.consecutive_gateway_failure, o.enforcing_consecutive_gateway_failure), (u32v(0), u32v(0)));
        assert_eq!((o.interval, o.base_ejection_time, o.max_ejection_percent), (secs(10, 0), secs(120, 0), u32v(50)));
        assert!(!o.split_external_local_origin_errors);
        assert_eq!(c.common_lb_config.unwrap().healthy_panic_threshold, Some(Percent { value: 30.0 }));
        // Unset minHealthPercent: istiod still writes 0, turning Envoy's 50 % panic mode off.
        let c = with("outlierDetection: {consecutive5xxErrors: 0}");
        assert_eq!(c.common_lb_config.unwrap().healthy_panic_threshold, Some(Percent { value: 0.0 }));
        let o = c.outlier_detection.unwrap();
        assert_eq!((o.consecutive_5xx, o.enforcing_consecutive_5xx), (u32v(0), u32v(0)));
        assert_eq!((o.consecutive_gateway_failure, o.interval, o.max_ejection_percent), (None, None, None));
    }

    #[test]
    fn local_origin_failures_are_split_when_asked() {
        let c = with("outlierDetection: {splitExternalLocalOriginErrors: true, consecutiveLocalOriginFailures: 4}");
        let o = c.outlier_detection.unwrap();
        assert!(o.split_external_local_origin_errors);
        assert_eq!(
            (o.consecutive_local_origin_failure, o.enforcing_consecutive_local_origin_failure),
            (u32v(4), u32v(100))
        );
        assert_eq!(o.enforcing_local_origin_success_rate, u32v(0));
    }

    #[test]
    fn outlier_http_error_codes_become_an_error_matcher_on_status() {
        use matcher::match_predicate::Rule;
        let status = |p: &matcher::MatchPredicate| match &p.rule {
            Some(Rule::HttpResponseHeadersMatch(m)) => {
                assert_eq!(m.headers[0].name, ":status");
                match &m.headers[0].header_match_specifier {
                    Some(route::header_matcher::HeaderMatchSpecifier::StringMatch(s)) => s.match_pattern.clone(),
                    other => panic!("{other:?}"),
                }
            }
            other => panic!("{other:?}"),
        };
        let exact = |s: &str| Some(string_matcher::string_matcher::MatchPattern::Exact(s.into()));
        let c = with("outlierDetection: {consecutive5xxErrors: 3, outlierDetectionHttpErrorCodes: [503]}");
        let one = http_options(&c).unwrap().outlier_detection.unwrap().error_matcher.unwrap();
        assert_eq!(status(&one), exact("503"));
        let c = with("outlierDetection: {consecutive5xxErrors: 3, outlierDetectionHttpErrorCodes: [429, 503]}");
        let any = http_options(&c).unwrap().outlier_detection.unwrap().error_matcher.unwrap();
        let Some(Rule::OrMatch(set)) = any.rule else { panic!() };
        assert_eq!(set.rules.iter().map(status).collect::<Vec<_>>(), [exact("429"), exact("503")]);
    }

    // --- TLS -------------------------------------------------------------------------------------

    #[test]
    fn simple_tls_without_sni_verifies_with_system_roots_and_auto_sni() {
        let c = with("tls: {mode: SIMPLE}");
        let ctx = tls_context(&c).unwrap();
        assert_eq!(ctx.sni, "");
        let common = ctx.common_tls_context.clone().unwrap();
        let params = common.tls_params.unwrap();
        assert_eq!(params.tls_minimum_protocol_version, tls::tls_parameters::TlsProtocol::TlSv12 as i32);
        assert_eq!(params.tls_maximum_protocol_version, tls::tls_parameters::TlsProtocol::TlSv13 as i32);
        assert!(common.tls_certificates.is_empty() && common.alpn_protocols.is_empty());
        assert_eq!(filename(&validation(&ctx).trusted_ca), SYSTEM_CA_BUNDLE);
        let upstream = http_options(&c).unwrap().upstream_http_protocol_options.unwrap();
        assert!(upstream.auto_sni && upstream.auto_san_validation);
    }

    #[test]
    fn simple_tls_with_sni_ca_sans_and_crl() {
        let c = with(
            "tls: {mode: SIMPLE, sni: api.example.com, caCertificates: /etc/certs/ca.pem, \
                      caCrl: /etc/certs/crl.pem, subjectAltNames: [api.example.com]}",
        );
        let ctx = tls_context(&c).unwrap();
        assert_eq!(ctx.sni, "api.example.com");
        let v = validation(&ctx);
        assert_eq!((filename(&v.trusted_ca), filename(&v.crl)), ("/etc/certs/ca.pem", "/etc/certs/crl.pem"));
        use tls::subject_alt_name_matcher::SanType;
        let types: Vec<i32> = v.match_typed_subject_alt_names.iter().map(|m| m.san_type).collect();
        assert_eq!(types, [SanType::Dns, SanType::Uri, SanType::Email, SanType::IpAddress].map(|t| t as i32));
        assert!(v.match_typed_subject_alt_names.iter().all(|m| m.matcher.as_ref().unwrap().match_pattern
            == Some(string_matcher::string_matcher::MatchPattern::Exact("api.example.com".into()))));
        // An explicit SNI: neither auto_sni nor auto_san_validation, so no HTTP options on an HTTP port.
        assert!(http_options(&c).is_none());
    }

    #[test]
    fn insecure_skip_verify_leaves_an_empty_validation_context() {
        let c = with("tls: {mode: SIMPLE, insecureSkipVerify: true}");
        assert_eq!(validation(&tls_context(&c).unwrap()), tls::CertificateValidationContext::default());
        let upstream = http_options(&c).unwrap().upstream_http_protocol_options.unwrap();
        assert!(upstream.auto_sni && !upstream.auto_san_validation);
    }

    #[test]
    fn mutual_tls_presents_the_client_certificate_files() {
        let c = with(
            "tls: {mode: MUTUAL, clientCertificate: /etc/certs/cert.pem, privateKey: /etc/certs/key.pem, \
                      caCertificates: /etc/certs/ca.pem, sni: db.example.com}",
        );
        let ctx = tls_context(&c).unwrap();
        let certs = ctx.common_tls_context.clone().unwrap().tls_certificates;
        assert_eq!(certs.len(), 1);
        assert_eq!(
            (filename(&certs[0].certificate_chain), filename(&certs[0].private_key)),
            ("/etc/certs/cert.pem", "/etc/certs/key.pem")
        );
        assert_eq!(filename(&validation(&ctx).trusted_ca), "/etc/certs/ca.pem");
    }

    #[test]
    fn tls_to_an_http2_upstream_offers_h2_by_alpn() {
        let p = policy("tls: {mode: SIMPLE, sni: grpc.example.com}");
        let c = build(&row("grpc", 9000), None, Some(&p));
        assert_eq!(tls_context(&c).unwrap().common_tls_context.unwrap().alpn_protocols, ["h2"]);
    }

    #[test]
    fn disable_istio_mutual_and_credential_name_leave_tls_off() {
        for yaml in [
            "tls: {mode: DISABLE}",
            "tls: {mode: ISTIO_MUTUAL}",
            "tls: {mode: SIMPLE, credentialName: my-secret}",
            "tls: {sni: x.example.com}",
        ] {
            let c = with(yaml);
            assert!(c.transport_socket.is_none() && c.transport_socket_matches.is_empty(), "{yaml}");
        }
    }

    // --- merge -----------------------------------------------------------------------------------

    const MERGE: &str = r#"
host: ratings.prod.svc.cluster.local
trafficPolicy:
  loadBalancer: {simple: RANDOM}
  outlierDetection: {consecutive5xxErrors: 5}
  connectionPool: {tcp: {maxConnections: 10}}
  proxyProtocol: {version: V1}
  portLevelSettings:
  - port: {number: 80}
    loadBalancer: {simple: ROUND_ROBIN}
subsets:
- name: v1
  labels: {version: v1}
  trafficPolicy:
    connectionPool: {tcp: {maxConnections: 20}}
    portLevelSettings:
    - port: {number: 81}
      tls: {mode: SIMPLE}
- name: v2
  labels: {version: v2}
"#;

    #[test]
    fn port_level_settings_replace_the_top_level_parts_wholesale() {
        let rule = spec(MERGE);
        let top = merged_policy(&rule, 9080, None).unwrap();
        assert_eq!(top.load_balancer.unwrap().simple, Some(SimpleLb::Random));
        assert_eq!(top.outlier_detection.unwrap().consecutive_5xx_errors, Some(5));
        assert!(top.proxy_protocol.is_some() && top.port_level_settings.is_empty());
        // Port 80: its entry replaces all four parts; the top-level outlier detection and pool are
        // not inherited (istiod GetPortLevelTrafficPolicy), nor are proxyProtocol etc.
        let p80 = merged_policy(&rule, 80, None).unwrap();
        assert_eq!(p80.load_balancer.unwrap().simple, Some(SimpleLb::RoundRobin));
        assert_eq!((p80.outlier_detection, p80.connection_pool, p80.proxy_protocol), (None, None, None));
    }

    #[test]
    fn a_subset_overrides_the_parts_it_sets_and_its_port_level_settings_override_it() {
        let rule = spec(MERGE);
        let v1 = merged_policy(&rule, 9080, Some("v1")).unwrap();
        let max = |p: &TrafficPolicy| p.connection_pool.as_ref().unwrap().tcp.as_ref().unwrap().max_connections;
        assert_eq!(max(&v1), Some(20), "subset over top level");
        assert_eq!(v1.load_balancer.as_ref().unwrap().simple, Some(SimpleLb::Random), "inherited");
        assert!(v1.outlier_detection.is_some() && v1.proxy_protocol.is_some());
        // Subset over port level: port 80's ROUND_ROBIN, the subset's pool.
        let v1_80 = merged_policy(&rule, 80, Some("v1")).unwrap();
        assert_eq!(v1_80.load_balancer.as_ref().unwrap().simple, Some(SimpleLb::RoundRobin));
        assert_eq!(max(&v1_80), Some(20));
        // The subset's own port-level entry replaces all four parts (hasPortLevel in MergeTrafficPolicy).
        let v1_81 = merged_policy(&rule, 81, Some("v1")).unwrap();
        assert_eq!(v1_81.tls.unwrap().mode, Some(ClientTlsMode::Simple));
        assert_eq!((v1_81.load_balancer, v1_81.connection_pool, v1_81.outlier_detection), (None, None, None));
        assert!(v1_81.proxy_protocol.is_some(), "not one of the four parts: kept from the top level");
        // A subset without a policy (or unknown) gets the rule's.
        assert_eq!(merged_policy(&rule, 9080, Some("v2")), merged_policy(&rule, 9080, None));
        assert_eq!(merged_policy(&rule, 9080, Some("nope")), merged_policy(&rule, 9080, None));
    }

    #[test]
    fn merged_policy_is_none_when_nothing_applies() {
        let rule = spec("host: a\nsubsets: [{name: v1, labels: {version: v1}}]");
        assert_eq!(merged_policy(&rule, 80, None), None);
        assert_eq!(merged_policy(&rule, 80, Some("v1")), None);
        let rule = spec("host: a\nsubsets: [{name: v1, trafficPolicy: {loadBalancer: {simple: RANDOM}}}]");
        assert_eq!(merged_policy(&rule, 80, None), None);
        assert!(merged_policy(&rule, 80, Some("v1")).is_some());
    }

    // --- hash policy -----------------------------------------------------------------------------

    #[test]
    fn hash_policy_follows_istiods_consistent_hash_to_hash_policy() {
        let one = |yaml: &str| {
            let mut h = hash_policy(Some(&policy(yaml)));
            assert_eq!(h.len(), 1, "{yaml}");
            h.remove(0).policy_specifier.unwrap()
        };
        let PolicySpecifier::Header(h) = one("loadBalancer: {consistentHash: {httpHeaderName: x-user}}") else {
            panic!()
        };
        assert_eq!(h.header_name, "x-user");
        let PolicySpecifier::Cookie(c) =
            one("loadBalancer: {consistentHash: {httpCookie: {name: user, path: /app, ttl: 10s, \
             attributes: [{name: SameSite, value: Strict}]}}}")
        else {
            panic!()
        };
        assert_eq!((c.name.as_str(), c.path.as_str(), c.ttl), ("user", "/app", secs(10, 0)));
        assert_eq!((c.attributes[0].name.as_str(), c.attributes[0].value.as_str()), ("SameSite", "Strict"));
        // Without a ttl Envoy does not generate the cookie.
        let PolicySpecifier::Cookie(c) = one("loadBalancer: {consistentHash: {httpCookie: {name: user}}}") else {
            panic!()
        };
        assert_eq!(c.ttl, None);
        let PolicySpecifier::ConnectionProperties(cp) = one("loadBalancer: {consistentHash: {useSourceIp: true}}")
        else {
            panic!()
        };
        assert!(cp.source_ip);
        let PolicySpecifier::QueryParameter(q) =
            one("loadBalancer: {consistentHash: {httpQueryParameterName: session}}")
        else {
            panic!()
        };
        assert_eq!(q.name, "session");
        assert!(hash_policy(Some(&policy("loadBalancer: {simple: RANDOM}"))).is_empty());
        assert!(hash_policy(None).is_empty());
    }

    /// istiod's LocalityLBSettings.ApplyToCluster: `locality_weighted_lb_config` with
    /// `distribute`, or with `failover` and outlier detection; not for the default failover
    /// nor when locality LB is disabled.
    #[test]
    fn locality_weighted_lb_config_as_istiod_sets_it() {
        use cluster::cluster::common_lb_config::LocalityConfigSpecifier;
        let weighted = |c: cluster::Cluster| {
            matches!(
                c.common_lb_config.and_then(|l| l.locality_config_specifier),
                Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(_))
            )
        };
        let od = "outlierDetection: {consecutive5xxErrors: 2}";
        assert!(!weighted(with(od)), "default failover: priorities only");
        assert!(weighted(with(&format!(
            "{{{od}, loadBalancer: {{localityLbSetting: {{failover: [{{from: us-east, to: eu-west}}]}}}}}}"
        ))));
        assert!(!weighted(with("loadBalancer: {localityLbSetting: {failover: [{from: us-east, to: eu-west}]}}")));
        let distribute = "loadBalancer: {localityLbSetting: {distribute: [{from: 'a/*', to: {'a/*': 100}}]}}";
        assert!(weighted(with(distribute)), "distribute, with or without outlier detection");
        assert!(!weighted(with(
            "loadBalancer: {localityLbSetting: {enabled: false, distribute: [{from: 'a/*', to: {'a/*': 100}}]}}"
        )));
    }

    // --- untranslated ----------------------------------------------------------------------------

    #[test]
    fn untranslated_names_every_field_left_out_with_its_path() {
        let rule = DestinationRule {
            creation_timestamp: None,
            namespace: "prod".into(),
            name: "everything".into(),
            spec: spec(
                r#"
host: ratings.prod.svc.cluster.local
exportTo: ["."]
workloadSelector: {matchLabels: {app: ratings}}
trafficPolicy:
  loadBalancer: {simple: ROUND_ROBIN, localityLbSetting: {enabled: true, failoverPriority: [topology.kubernetes.io/zone]}}
  tunnel: {targetHost: example.com, targetPort: 443}
  retryBudget: {percent: 10}
  outlierDetection: {consecutiveErrors: 3}
  portLevelSettings:
  - port: {number: 443}
    tls: {mode: SIMPLE, credentialName: client-secret}
    loadBalancer: {zoneAwareLbSetting: {enabled: true}}
subsets:
- name: v1
  trafficPolicy:
    proxyProtocol: {version: V2}
    tls: {mode: ISTIO_MUTUAL}
    loadBalancer: {backendUtilization: {}, localityLbSetting: {failover: [{from: us-east, to: eu-west}]}}
"#,
            ),
        };
        let mut fields: Vec<String> = untranslated(&rule).into_iter().map(|e| e.field).collect();
        fields.sort();
        assert_eq!(
            fields,
            [
                "spec.subsets[0].trafficPolicy.loadBalancer.backendUtilization",
                "spec.subsets[0].trafficPolicy.proxyProtocol",
                "spec.subsets[0].trafficPolicy.tls.mode",
                "spec.trafficPolicy.outlierDetection.consecutiveErrors",
                "spec.trafficPolicy.portLevelSettings[0].loadBalancer.zoneAwareLbSetting",
                "spec.trafficPolicy.portLevelSettings[0].tls.credentialName",
                "spec.trafficPolicy.retryBudget",
                "spec.trafficPolicy.tunnel",
                "spec.workloadSelector",
            ]
        );
        assert!(untranslated(&rule).iter().all(|e| !e.reason.is_empty()));
    }

    // --- the corpus ------------------------------------------------------------------------------

    #[test]
    fn corpus_istio_mutual_is_reported_and_left_without_tls() {
        let rule = corpus_rule("api-dr-istio-mutual.yaml");
        let gaps = untranslated(&rule);
        assert_eq!(gaps.len(), 1);
        assert_eq!(gaps[0].field, "spec.trafficPolicy.tls.mode");
        assert!(gaps[0].reason.contains("ISTIO_MUTUAL"));
        let c = build(&row("http", 9080), None, merged_policy(&rule.spec, 9080, None).as_ref());
        assert!(c.transport_socket.is_none());
    }

    #[test]
    fn corpus_circuit_breaker_examples() {
        // api-dr-circuit-breaker: max_connections 100 / max_requests 1000, max_requests_per_connection
        // 10; 7 consecutive 5xx eject for 15 min.
        let rule = corpus_rule("api-dr-circuit-breaker.yaml");
        assert!(untranslated(&rule).is_empty());
        let c = build(&row("http", 9080), None, merged_policy(&rule.spec, 9080, None).as_ref());
        let t = thresholds(&c);
        assert_eq!((t.max_connections, t.max_requests), (u32v(100), u32v(1000)));
        assert_eq!(common_http(&c).max_requests_per_connection, u32v(10));
        let o = c.outlier_detection.unwrap();
        assert_eq!((o.consecutive_5xx, o.enforcing_consecutive_5xx), (u32v(7), u32v(100)));
        assert_eq!((o.interval, o.base_ejection_time), (secs(300, 0), secs(900, 0)));

        // httpbin: max_connections=1, max_pending_requests=1, max_requests_per_connection=1, consecutive_5xx=1.
        let rule = corpus_rule("httpbin-circuit-breaker-destinationrule.yaml");
        let c = build(&row("http", 8000), None, merged_policy(&rule.spec, 8000, None).as_ref());
        let t = thresholds(&c);
        assert_eq!((t.max_connections, t.max_pending_requests), (u32v(1), u32v(1)));
        assert_eq!(common_http(&c).max_requests_per_connection, u32v(1));
        let o = c.outlier_detection.unwrap();
        assert_eq!((o.consecutive_5xx, o.max_ejection_percent), (u32v(1), u32v(100)));
        assert_eq!((o.interval, o.base_ejection_time), (secs(1, 0), secs(180, 0)));
    }

    #[test]
    fn corpus_consistent_hash_cookie() {
        // Ring hash on cookie `user`; ttl 0s → Envoy generates a session cookie.
        let rule = corpus_rule("api-dr-consistent-hash-cookie.yaml");
        let policy = merged_policy(&rule.spec, 9080, None);
        let c = build(&row("http", 9080), None, policy.as_ref());
        assert_eq!(c.lb_policy, LbPolicy::RingHash as i32);
        let hash = hash_policy(policy.as_ref());
        let Some(PolicySpecifier::Cookie(cookie)) = &hash[0].policy_specifier else { panic!("{hash:?}") };
        assert_eq!((cookie.name.as_str(), cookie.ttl), ("user", secs(0, 0)));
    }

    #[test]
    fn corpus_port_level_lb() {
        // outbound|80||ratings.prod → LEAST_REQUEST; outbound|9080||ratings.prod → ROUND_ROBIN.
        let rule = corpus_rule("api-dr-port-level-lb.yaml");
        let lb = |port| build(&row("http", port), None, merged_policy(&rule.spec, port, None).as_ref()).lb_policy;
        assert_eq!(lb(80), LbPolicy::LeastRequest as i32);
        assert_eq!(lb(9080), LbPolicy::RoundRobin as i32);
    }

    #[test]
    fn corpus_subset_traffic_policy() {
        // The host cluster uses LEAST_REQUEST; the testversion subset cluster ROUND_ROBIN.
        let rule = corpus_rule("api-dr-subset-traffic-policy.yaml");
        let r = row("http", 9080);
        let host = build(&r, None, merged_policy(&rule.spec, 9080, None).as_ref());
        assert_eq!(host.lb_policy, LbPolicy::LeastRequest as i32);
        let sub = build(&r, Some("testversion"), merged_policy(&rule.spec, 9080, Some("testversion")).as_ref());
        assert_eq!(sub.name, "outbound|9080|testversion|ratings.prod.svc.cluster.local");
        assert_eq!(sub.lb_policy, LbPolicy::RoundRobin as i32);
    }

    #[test]
    fn corpus_tcp_keepalive() {
        // max_connections 100, connect_timeout 0.030s, keepalive time 7200 interval 75.
        let rule = corpus_rule("api-dr-tcp-keepalive.yaml");
        let c = build(&row("redis", 6379), None, merged_policy(&rule.spec, 6379, None).as_ref());
        assert_eq!(thresholds(&c).max_connections, u32v(100));
        assert_eq!(c.connect_timeout, secs(0, 30_000_000));
        let k = c.upstream_connection_options.unwrap().tcp_keepalive.unwrap();
        assert_eq!((k.keepalive_time, k.keepalive_interval, k.keepalive_probes), (u32v(7200), u32v(75), None));
    }

    #[test]
    fn corpus_tls_simple_wildcard_host() {
        let rule = corpus_rule("api-dr-tls-simple-wildcard-host.yaml");
        let c = build(&row("https", 443), None, merged_policy(&rule.spec, 443, None).as_ref());
        let ctx = tls_context(&c).unwrap();
        assert!(ctx.common_tls_context.unwrap().tls_certificates.is_empty(), "no client certificate");
        assert!(http_options(&c).unwrap().upstream_http_protocol_options.unwrap().auto_sni);
    }

    #[test]
    fn corpus_reviews_random_with_subsets() {
        let rule = corpus_rule("bookinfo-destination-rule-reviews.yaml");
        let r = row("http", 9080);
        for subset in [None, Some("v1"), Some("v2"), Some("v3")] {
            let c = build(&r, subset, merged_policy(&rule.spec, 9080, subset).as_ref());
            assert_eq!(c.lb_policy, LbPolicy::Random as i32, "{subset:?}");
        }
    }

    #[test]
    fn corpus_tls_origination_on_port_443() {
        // edition.cnn.com: subset tls-origination, ROUND_ROBIN + port 443 SIMPLE → outbound|443|tls-origination|…
        // has a TLS transport socket.
        let rule = corpus_rule("egress-cnn-tls-origination.yaml");
        let r = row("https", 443);
        let sub = merged_policy(&rule.spec, 443, Some("tls-origination"));
        let c = build(&r, Some("tls-origination"), sub.as_ref());
        assert!(c.name.starts_with("outbound|443|tls-origination|"));
        assert!(tls_context(&c).is_some());
        assert!(http_options(&c).unwrap().upstream_http_protocol_options.unwrap().auto_sni);
        // The port-level entry replaced the subset's load balancer: istiod's default.
        assert_eq!(c.lb_policy, LbPolicy::LeastRequest as i32);
        // Port 80 of the subset: ROUND_ROBIN, no TLS.
        let c = build(
            &row("http", 80),
            Some("tls-origination"),
            merged_policy(&rule.spec, 80, Some("tls-origination")).as_ref(),
        );
        assert_eq!(c.lb_policy, LbPolicy::RoundRobin as i32);
        assert!(c.transport_socket.is_none());

        // www.googleapis.com: port 443 originates TLS, with SNI from the request's Host (auto_sni)
        // and the server certificate checked against it (auto_san_validation).
        let rule = corpus_rule("bookinfo-egress-rule-google-apis.yaml");
        let c = build(&r, None, merged_policy(&rule.spec, 443, None).as_ref());
        let ctx = tls_context(&c).unwrap();
        assert_eq!(ctx.sni, "");
        let upstream = http_options(&c).unwrap().upstream_http_protocol_options.unwrap();
        assert!(upstream.auto_sni && upstream.auto_san_validation);
        let c = build(&row("http", 80), None, merged_policy(&rule.spec, 80, None).as_ref());
        assert_eq!(c.lb_policy, LbPolicy::RoundRobin as i32);
        assert!(c.transport_socket.is_none());
    }
}
