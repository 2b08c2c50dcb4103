//! Delegate VirtualServices: a root VirtualService (one with `hosts`) whose HTTP route names a
//! `delegate` gets the delegate's (child's) HTTP routes in place of that route.
//!
//! As istiod's `mergeVirtualServices` (`pilot/pkg/model/virtualservice_controller.go`) and
//! `MergeHTTPRoutes`, `mergeHTTPRoute`, `mergeHTTPMatchRequests`, `mergeHTTPMatchRequest`,
//! `hasConflict`, `stringMatchConflict` (`pilot/pkg/model/virtualservice.go`):
//! - the delegate is looked up by `delegate.name` in `delegate.namespace` (default: the root's);
//!   only VirtualServices without `hosts` are delegates. Missing, or not exported to the root's
//!   namespace: the delegating route is left out (istiod logs a warning; meshflow reports a
//!   [`Diagnostic`] on the root, field `spec.http[i].delegate`).
//! - each child route's match blocks are merged with the root route's: a child block must fit
//!   under at least one root block (no conflicting condition) and is merged with every root
//!   block it fits under; a child block that fits under none drops the whole child route
//!   (istiod warns; meshflow reports it too).
//! - the child route inherits `rewrite`, `directResponse`, `timeout`, `retries`, `fault`,
//!   `mirror`, `mirrorPercent`, `mirrorPercentage`, `corsPolicy`, `mirrors` and `headers` from the
//!   root route where it has none; names join as `root-child`.
//! - the child's hosts (destinations, mirrors) and match `gateways` are resolved in the child's
//!   namespace before merging (istiod's `ResolveVirtualServiceShortnames` of the delegate), so the
//!   merged VirtualService, which lives in the root's namespace, routes where the child meant.
//!
//! A delegate VirtualService is never used on its own: [`merged_virtual_service`] gives `None`
//! for it.

use std::collections::BTreeMap;

use super::Diagnostic;
use super::gateway::resolve_gateway_name;
use super::outbound::{ConfigKey, exported_to};
use super::route::{MESH_GATEWAY, resolve_host};
use crate::model::istio::{HttpMatchRequest, HttpRoute, StringMatch, VirtualService};

/// Whether the VirtualService is a delegate (child): it has no `hosts`.
pub fn is_delegate(vs: &VirtualService) -> bool {
    vs.spec.hosts.is_empty()
}

/// Whether the VirtualService is a root: it has `hosts` and one of its HTTP routes delegates.
pub fn is_root(vs: &VirtualService) -> bool {
    !is_delegate(vs) && vs.spec.http.iter().any(|h| h.delegate.is_some())
}

/// The (namespace, name) of the delegate an HTTP route names (namespace defaults to the root's).
pub fn delegate_key(root: &VirtualService, http: &HttpRoute) -> Option<ConfigKey> {
    let d = http.delegate.as_ref()?;
    let ns = d.namespace.as_deref().filter(|n| !n.is_empty()).unwrap_or(&root.namespace);
    Some((ns.to_string(), d.name.clone().unwrap_or_default()))
}

/// The delegates a root names (the keys the dataflow joins the VirtualServices on).
pub fn delegate_keys(root: &VirtualService) -> Vec<ConfigKey> {
    if is_delegate(root) {
        return Vec::new();
    }
    let mut keys: Vec<ConfigKey> = root.spec.http.iter().filter_map(|h| delegate_key(root, h)).collect();
    keys.sort();
    keys.dedup();
    keys
}

/// What the rest of translation sees of a VirtualService: itself when it delegates nothing, the
/// root merged with its delegates (`children`: any delegates, extra ones are ignored), `None`
/// for a delegate.
pub fn merged_virtual_service(
    vs: &VirtualService,
    children: &[&VirtualService],
) -> Option<(VirtualService, Vec<Diagnostic>)> {
    if is_delegate(vs) {
        return None;
    }
    if !is_root(vs) {
        return Some((vs.clone(), Vec::new()));
    }
    Some(merge_delegates(vs, children))
}

/// The root with each delegating HTTP route replaced by its delegate's routes, merged as istiod
/// merges them, and a diagnostic for each delegating route left out (delegate missing or not
/// exported to the root's namespace) and each child route dropped for conflicting matches.
pub fn merge_delegates(root: &VirtualService, children: &[&VirtualService]) -> (VirtualService, Vec<Diagnostic>) {
    let by_key: BTreeMap<ConfigKey, &VirtualService> =
        children.iter().filter(|c| is_delegate(c)).map(|c| ((c.namespace.clone(), c.name.clone()), *c)).collect();
    let mut out = root.clone();
    let mut diagnostics = Vec::new();
    let mut http = Vec::new();
    for (i, route) in root.spec.http.iter().enumerate() {
        let Some((ns, name)) = delegate_key(root, route) else {
            http.push(route.clone());
            continue;
        };
        let field = format!("spec.http[{i}].delegate");
        let report = |message: String| Diagnostic { object: root.object_key(), field: field.clone(), message };
        let Some(child) = by_key.get(&(ns.clone(), name.clone())) else {
            diagnostics.push(report(format!(
                "delegate VirtualService {ns}/{name} not found (a delegate has no hosts): the route is left out, as \
                 istiod leaves it out"
            )));
            continue;
        };
        if !exported_to(&child.spec.export_to, &child.namespace, Some(&root.namespace)) {
            diagnostics.push(report(format!(
                "delegate VirtualService {ns}/{name} is not exported to namespace {}: the route is left out, as istiod \
                 leaves it out",
                root.namespace
            )));
            continue;
        }
        for (j, sub) in child.spec.http.iter().enumerate() {
            match merge_http_route(route, &resolve_child_route(sub, &child.namespace)) {
                Some(merged) => http.push(merged),
                None => diagnostics.push(report(format!(
                    "the matches of route spec.http[{j}] of delegate VirtualService {ns}/{name} conflict with this \
                     route's: that route is left out, as istiod leaves it out"
                ))),
            }
        }
    }
    out.spec.http = http;
    (out, diagnostics)
}

/// A child route with its hosts and match gateways resolved in the child's namespace, as
/// istiod's `ResolveVirtualServiceShortnames` resolves a delegate.
fn resolve_child_route(route: &HttpRoute, namespace: &str) -> HttpRoute {
    let mut r = route.clone();
    for d in &mut r.route {
        d.destination.host = resolve_host(&d.destination.host, namespace);
    }
    if let Some(m) = &mut r.mirror {
        m.host = resolve_host(&m.host, namespace);
    }
    for m in &mut r.mirrors {
        m.destination.host = resolve_host(&m.destination.host, namespace);
    }
    for m in &mut r.r#match {
        for g in &mut m.gateways {
            if g != MESH_GATEWAY {
                *g = resolve_gateway_name(g, namespace);
            }
        }
    }
    r
}

/// istiod's `mergeHTTPRoute`: the child route with merged matches and the root's fields where it
/// has none; `None` when the matches conflict.
fn merge_http_route(root: &HttpRoute, child: &HttpRoute) -> Option<HttpRoute> {
    let mut out = child.clone();
    out.r#match = merge_match_requests(&root.r#match, &child.r#match)?;
    out.name = join_names(&root.name, &child.name);
    out.delegate = None;
    inherit(&mut out.rewrite, &root.rewrite);
    inherit(&mut out.direct_response, &root.direct_response);
    inherit(&mut out.timeout, &root.timeout);
    inherit(&mut out.retries, &root.retries);
    inherit(&mut out.fault, &root.fault);
    inherit(&mut out.mirror, &root.mirror);
    inherit(&mut out.mirror_percent, &root.mirror_percent);
    inherit(&mut out.mirror_percentage, &root.mirror_percentage);
    inherit(&mut out.cors_policy, &root.cors_policy);
    if out.mirrors.is_empty() {
        out.mirrors = root.mirrors.clone();
    }
    inherit(&mut out.headers, &root.headers);
    Some(out)
}

fn inherit<T: Clone>(child: &mut Option<T>, root: &Option<T>) {
    if child.is_none() {
        child.clone_from(root);
    }
}

/// Names as istiod joins them: the child's alone when the root has none, the root's alone when
/// the child has none, else `root-child`.
fn join_names(root: &Option<String>, child: &Option<String>) -> Option<String> {
    let root = root.as_deref().filter(|n| !n.is_empty());
    match (root, child.as_deref().filter(|n| !n.is_empty())) {
        (_, None) => root.map(String::from),
        (None, Some(c)) => Some(c.to_string()),
        (Some(r), Some(c)) => Some(format!("{r}-{c}")),
    }
}

/// istiod's `mergeHTTPMatchRequests`: no root blocks → the child's; no child blocks → the
/// root's; else each child block merged with every root block it does not conflict with, `None`
/// (conflict) when a child block fits under no root block.
fn merge_match_requests(root: &[HttpMatchRequest], child: &[HttpMatchRequest]) -> Option<Vec<HttpMatchRequest>> {
    if root.is_empty() {
        return Some(child.to_vec());
    }
    if child.is_empty() {
        return Some(root.to_vec());
    }
    let mut out = Vec::new();
    for sub in child {
        let before = out.len();
        out.extend(root.iter().filter(|r| !has_conflict(r, sub)).map(|r| merge_match_request(r, sub)));
        if out.len() == before {
            return None;
        }
    }
    Some(out)
}

/// istiod's `mergeHTTPMatchRequest`: the child block with the root's conditions where it has
/// none; maps merged key by key, the child's value winning.
fn merge_match_request(root: &HttpMatchRequest, child: &HttpMatchRequest) -> HttpMatchRequest {
    let mut out = child.clone();
    out.name = join_names(&root.name, &child.name);
    inherit(&mut out.uri, &root.uri);
    inherit(&mut out.scheme, &root.scheme);
    inherit(&mut out.method, &root.method);
    inherit(&mut out.authority, &root.authority);
    out.headers = merge_maps(&root.headers, &child.headers);
    out.without_headers = merge_maps(&root.without_headers, &child.without_headers);
    out.query_params = merge_maps(&root.query_params, &child.query_params);
    if out.port.unwrap_or(0) == 0 {
        out.port = root.port;
    }
    out.source_labels = merge_maps(&root.source_labels, &child.source_labels);
    if out.source_namespace.as_deref().unwrap_or("").is_empty() {
        out.source_namespace.clone_from(&root.source_namespace);
    }
    if out.gateways.is_empty() {
        out.gateways.clone_from(&root.gateways);
    }
    if out.stat_prefix.as_deref().unwrap_or("").is_empty() {
        out.stat_prefix.clone_from(&root.stat_prefix);
    }
    out
}

fn merge_maps<V: Clone>(root: &BTreeMap<String, V>, child: &BTreeMap<String, V>) -> BTreeMap<String, V> {
    let mut out = root.clone();
    out.extend(child.iter().map(|(k, v)| (k.clone(), v.clone())));
    out
}

/// A condition as istiod's `hasConflict` sees it: absent (`nil`), or present with a matcher
/// (`{}`, a header present condition, is present with none).
type Cond<'a> = Option<Option<&'a StringMatch>>;

fn field(m: &Option<StringMatch>) -> Cond<'_> {
    m.as_ref().map(Some)
}

fn entry<'a>(map: &'a BTreeMap<String, Option<StringMatch>>, key: &str) -> Cond<'a> {
    map.get(key).map(Option::as_ref)
}

/// istiod's `hasConflict`: whether a child match block cannot be narrowed under a root block.
fn has_conflict(root: &HttpMatchRequest, leaf: &HttpMatchRequest) -> bool {
    let pairs = [
        (&root.uri, &leaf.uri),
        (&root.scheme, &leaf.scheme),
        (&root.method, &leaf.method),
        (&root.authority, &leaf.authority),
    ];
    if pairs.into_iter().any(|(r, l)| string_match_conflict(field(r), field(l))) {
        return true;
    }
    for (root_map, leaf_map) in [
        (&root.headers, &leaf.headers),
        (&root.without_headers, &leaf.without_headers),
        (&root.query_params, &leaf.query_params),
    ] {
        if leaf_map.iter().any(|(k, v)| string_match_conflict(entry(root_map, k), Some(v.as_ref()))) {
            return true;
        }
    }
    if root.ignore_uri_case != leaf.ignore_uri_case {
        return true;
    }
    let (rp, lp) = (root.port.unwrap_or(0), leaf.port.unwrap_or(0));
    if rp > 0 && lp > 0 && rp != lp {
        return true;
    }
    let root_ns = root.source_namespace.as_deref().unwrap_or("");
    if !root_ns.is_empty() && leaf.source_namespace.as_deref().unwrap_or("") != root_ns {
        return true;
    }
    if leaf.source_labels.iter().any(|(k, v)| root.source_labels.get(k).is_some_and(|r| r != v)) {
        return true;
    }
    if !root.gateways.is_empty() && !leaf.gateways.is_empty() {
        if root.gateways.len() < leaf.gateways.len() {
            return true;
        }
        if leaf.gateways.iter().any(|g| !root.gateways.contains(g)) {
            return true;
        }
    }
    false
}

/// The (exact, prefix, regex) of a matcher, `""` where unset, as Go's getters read them.
fn parts(m: Option<&StringMatch>) -> (&str, &str, &str) {
    match m {
        Some(StringMatch::Exact(s)) => (s.as_str(), "", ""),
        Some(StringMatch::Prefix(s)) => ("", s.as_str(), ""),
        Some(StringMatch::Regex(s)) => ("", "", s.as_str()),
        None => ("", "", ""),
    }
}

/// istiod's `stringMatchConflict`: the child condition must be a narrowing of the root's (equal
/// exact, an exact or prefix under a prefix); anything else conflicts unless one side is absent.
fn string_match_conflict(root: Cond<'_>, leaf: Cond<'_>) -> bool {
    let (Some(root), Some(leaf)) = (root, leaf) else { return false };
    let (r_exact, r_prefix, r_regex) = parts(root);
    let (l_exact, l_prefix, l_regex) = parts(leaf);
    if !r_regex.is_empty() && (!l_regex.is_empty() || !l_prefix.is_empty() || !l_exact.is_empty()) {
        return true;
    }
    if !l_regex.is_empty() && (!r_regex.is_empty() || !r_prefix.is_empty() || !r_exact.is_empty()) {
        return true;
    }
    if !r_exact.is_empty() {
        return !l_prefix.is_empty() || l_exact != r_exact;
    }
    if !r_prefix.is_empty() {
        if !l_prefix.is_empty() {
            return !l_prefix.starts_with(r_prefix);
        }
        if !l_exact.is_empty() {
            return !l_exact.starts_with(r_prefix);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Kind;
    use crate::model::istio::decode;

    fn vs(ns: &str, name: &str, spec: serde_json::Value) -> VirtualService {
        match decode(Kind::VirtualService, ns, name, None, spec).expect("valid VirtualService") {
            crate::model::Object::VirtualService(vs) => *vs,
            other => panic!("not a VirtualService: {other:?}"),
        }
    }

    fn root() -> VirtualService {
        vs(
            "default",
            "root",
            serde_json::json!({
                "hosts": ["reviews"],
                "http": [
                    {"name": "r", "match": [{"uri": {"prefix": "/reviews"}}], "delegate": {"name": "child", "namespace": "team"},
                     "timeout": "3s", "retries": {"attempts": 2}},
                    {"route": [{"destination": {"host": "reviews"}}]},
                ],
            }),
        )
    }

    fn child(export_to: &[&str]) -> VirtualService {
        vs(
            "team",
            "child",
            serde_json::json!({
                "exportTo": export_to,
                "http": [
                    {"name": "v2", "match": [{"headers": {"end-user": {"exact": "jason"}}}],
                     "route": [{"destination": {"host": "reviews", "subset": "v2"}}], "timeout": "1s"},
                    {"route": [{"destination": {"host": "reviews", "subset": "v1"}}]},
                ],
            }),
        )
    }

    #[test]
    fn child_routes_replace_the_delegating_route_with_merged_matches_and_inherited_fields() {
        let child = child(&[]);
        let (merged, diags) = merge_delegates(&root(), &[&child]);
        assert!(diags.is_empty(), "{diags:?}");
        let http = &merged.spec.http;
        assert_eq!(http.len(), 3, "two child routes, then the root's own");
        // First child route: its header match under the root's prefix, its own timeout, the
        // root's retries; names joined root-child.
        assert_eq!(http[0].name.as_deref(), Some("r-v2"));
        assert_eq!(http[0].r#match.len(), 1);
        let m = &http[0].r#match[0];
        assert_eq!(m.uri, Some(StringMatch::Prefix("/reviews".into())));
        assert_eq!(m.headers.get("end-user"), Some(&Some(StringMatch::Exact("jason".into()))));
        assert_eq!(http[0].timeout.as_deref(), Some("1s"));
        assert_eq!(http[0].retries.as_ref().and_then(|r| r.attempts), Some(2));
        assert!(http[0].delegate.is_none());
        // The child's short host is resolved in the child's namespace.
        assert_eq!(http[0].route[0].destination.host, "reviews.team.svc.cluster.local");
        assert_eq!(http[0].route[0].destination.subset.as_deref(), Some("v2"));
        // Second child route has no match: it takes the root's, and the root's timeout.
        assert_eq!(http[1].name.as_deref(), Some("r"));
        assert_eq!(http[1].r#match.len(), 1);
        assert_eq!(http[1].r#match[0].uri, Some(StringMatch::Prefix("/reviews".into())));
        assert_eq!(http[1].timeout.as_deref(), Some("3s"));
        // The root's own route is unchanged (its host resolved later, in the root's namespace).
        assert_eq!(http[2].route[0].destination.host, "reviews");
        assert_eq!((merged.namespace.as_str(), merged.name.as_str()), ("default", "root"));
        assert_eq!(merged.spec.hosts, ["reviews"]);
    }

    #[test]
    fn a_child_match_that_does_not_narrow_the_root_drops_that_child_route_only() {
        let child = vs(
            "team",
            "child",
            serde_json::json!({"http": [
                {"match": [{"uri": {"prefix": "/ratings"}}], "route": [{"destination": {"host": "ratings"}}]},
                {"match": [{"uri": {"exact": "/reviews/1"}}], "route": [{"destination": {"host": "reviews"}}]},
                {"match": [{"uri": {"prefix": "/reviews/x"}}], "route": [{"destination": {"host": "reviews"}}]},
                {"match": [{"uri": {"regex": "/reviews/.*"}}], "route": [{"destination": {"host": "reviews"}}]},
            ]}),
        );
        let (merged, diags) = merge_delegates(&root(), &[&child]);
        let uris: Vec<_> = merged.spec.http.iter().map(|h| h.r#match.first().and_then(|m| m.uri.clone())).collect();
        assert_eq!(
            uris,
            [Some(StringMatch::Exact("/reviews/1".into())), Some(StringMatch::Prefix("/reviews/x".into())), None],
            "/ratings is not under /reviews; a regex never narrows a prefix"
        );
        let fields: Vec<_> = diags.iter().map(|d| (d.object.name.as_str(), d.field.as_str())).collect();
        assert_eq!(fields, [("root", "spec.http[0].delegate"), ("root", "spec.http[0].delegate")]);
        assert!(diags[0].message.contains("spec.http[0]") && diags[1].message.contains("spec.http[3]"));
    }

    #[test]
    fn conflicts_follow_istiod_has_conflict() {
        let m = |v: serde_json::Value| -> HttpMatchRequest { serde_json::from_value(v).expect("match") };
        // Equal exact values do not conflict; different ones do.
        assert!(!has_conflict(
            &m(serde_json::json!({"uri": {"exact": "/a"}})),
            &m(serde_json::json!({"uri": {"exact": "/a"}}))
        ));
        assert!(has_conflict(
            &m(serde_json::json!({"uri": {"exact": "/a"}})),
            &m(serde_json::json!({"uri": {"exact": "/b"}}))
        ));
        // A header the root does not constrain is free; a `{}` (present) header conflicts with any.
        assert!(!has_conflict(&m(serde_json::json!({})), &m(serde_json::json!({"headers": {"x": {"exact": "1"}}}))));
        assert!(has_conflict(
            &m(serde_json::json!({"headers": {"x": {}}})),
            &m(serde_json::json!({"headers": {"x": {"exact": "1"}}}))
        ));
        // ignoreUriCase must agree; ports may not differ when both are set.
        assert!(has_conflict(&m(serde_json::json!({"ignoreUriCase": true})), &m(serde_json::json!({}))));
        assert!(has_conflict(&m(serde_json::json!({"port": 80})), &m(serde_json::json!({"port": 81}))));
        assert!(!has_conflict(&m(serde_json::json!({"port": 80})), &m(serde_json::json!({}))));
        // sourceNamespace set on the root must be the child's; source labels must agree.
        assert!(has_conflict(&m(serde_json::json!({"sourceNamespace": "a"})), &m(serde_json::json!({}))));
        assert!(has_conflict(
            &m(serde_json::json!({"sourceLabels": {"app": "a"}})),
            &m(serde_json::json!({"sourceLabels": {"app": "b"}}))
        ));
        // gateways: the child's must be among the root's.
        assert!(has_conflict(
            &m(serde_json::json!({"gateways": ["a/g"]})),
            &m(serde_json::json!({"gateways": ["a/h"]}))
        ));
    }

    #[test]
    fn a_child_block_merges_with_every_root_block_it_fits_under() {
        let root = vs(
            "default",
            "root",
            serde_json::json!({"hosts": ["reviews"], "http": [{
                "match": [{"uri": {"prefix": "/a"}, "port": 80}, {"uri": {"prefix": "/a/b"}}, {"uri": {"prefix": "/c"}}],
                "delegate": {"name": "child"}}]}),
        );
        let child = vs(
            "default",
            "child",
            serde_json::json!({"http": [{"match": [{"uri": {"prefix": "/a/b/c"}, "headers": {"x": {"exact": "1"}}}],
                                 "route": [{"destination": {"host": "reviews"}}]}]}),
        );
        let (merged, diags) = merge_delegates(&root, &[&child]);
        assert!(diags.is_empty());
        let blocks = &merged.spec.http[0].r#match;
        assert_eq!(blocks.len(), 2, "under /a (port 80) and /a/b, not /c");
        assert_eq!(blocks[0].port, Some(80));
        assert_eq!(blocks[1].port, None);
        assert!(blocks.iter().all(|b| b.uri == Some(StringMatch::Prefix("/a/b/c".into())) && b.headers.len() == 1));
        // The delegate namespace defaulted to the root's.
        assert_eq!(merged.spec.http[0].route[0].destination.host, "reviews.default.svc.cluster.local");
    }

    #[test]
    fn a_missing_or_unexported_delegate_leaves_the_route_out_and_is_reported() {
        let (merged, diags) = merge_delegates(&root(), &[]);
        assert_eq!(merged.spec.http.len(), 1, "only the root's own route");
        assert_eq!(diags.len(), 1);
        assert_eq!(diags[0].field, "spec.http[0].delegate");
        assert_eq!(diags[0].object, root().object_key());
        assert!(diags[0].message.contains("team/child not found"), "{}", diags[0].message);

        for (export_to, visible) in
            [(&["."][..], false), (&["shop"][..], false), (&["default"][..], true), (&["*"][..], true)]
        {
            let child = child(export_to);
            let (merged, diags) = merge_delegates(&root(), &[&child]);
            assert_eq!(merged.spec.http.len(), if visible { 3 } else { 1 }, "exportTo {export_to:?}");
            assert_eq!(diags.len(), usize::from(!visible), "exportTo {export_to:?}");
            if !visible {
                assert!(diags[0].message.contains("not exported to namespace default"));
            }
        }
        // A VirtualService with hosts is no delegate.
        let not_child = vs(
            "team",
            "child",
            serde_json::json!({"hosts": ["x"], "http": [{"route": [{"destination": {"host": "x"}}]}]}),
        );
        let (merged, diags) = merge_delegates(&root(), &[&not_child]);
        assert_eq!((merged.spec.http.len(), diags.len()), (1, 1));
    }

    #[test]
    fn only_roots_are_merged_and_delegates_are_never_used_alone() {
        let child = child(&[]);
        assert!(merged_virtual_service(&child, &[]).is_none());
        let plain = vs(
            "default",
            "plain",
            serde_json::json!({"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]}),
        );
        assert_eq!(merged_virtual_service(&plain, &[&child]).map(|(v, _)| v), Some(plain.clone()));
        assert_eq!(delegate_keys(&root()), [("team".to_string(), "child".to_string())]);
        assert!(delegate_keys(&child).is_empty());
    }
}
