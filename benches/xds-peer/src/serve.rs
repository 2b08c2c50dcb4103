//! `xds-peer serve`: nebucloud-xds's `XdsServer` over its `ShardedCache`, which this module fills.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use xds_cache::{Cache, ShardedCache, Snapshot};
use xds_core::{BoxResource, NodeHash, Resource, TypeUrl};

use crate::control::{fnv, fnv_bytes, parse_state, state_path};
use crate::resources::{self, Resources, TYPES};

/// The node id `meshflow xds conformance` presents by default.
const CONFORMANCE_NODE: &str = "sidecar~10.0.0.1~conformance.default~default.svc.cluster.local";
/// The node id of the dump command in the brief (`meshflow xds --node-id ...`).
const DUMP_NODE: &str = "sidecar~10.0.0.1~x.default~default.svc.cluster.local";

/// The node id of `meshflow xds load`'s (and `meshflow bench`'s) client `i`.
fn bench_node(i: usize) -> String {
    format!("sidecar~127.0.0.1~bench-{i}.default~default.svc.cluster.local")
}

pub struct Options {
    addr: SocketAddr,
    state: PathBuf,
    from: Option<String>,
    from_node_id: String,
    node_ids: Vec<String>,
    bench_nodes: usize,
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let mut o = Options {
            addr: "127.0.0.1:18010".parse().map_err(|_| "default address")?,
            state: PathBuf::new(),
            from: None,
            from_node_id: bench_node(0),
            node_ids: vec![CONFORMANCE_NODE.into(), DUMP_NODE.into()],
            bench_nodes: 0,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || it.next().cloned().ok_or_else(|| format!("serve: {flag} needs a value"));
            match flag.as_str() {
                "--addr" => {
                    let v = value()?;
                    o.addr = v.parse().map_err(|_| format!("serve: --addr {v:?} is not IP:PORT"))?;
                }
                "--state" => o.state = PathBuf::from(value()?),
                "--from" => o.from = Some(value()?),
                "--from-node-id" => o.from_node_id = value()?,
                "--node-id" => o.node_ids.push(value()?),
                "--bench-nodes" => {
                    let v = value()?;
                    o.bench_nodes = v.parse().map_err(|_| format!("serve: --bench-nodes {v:?} is not a number"))?;
                }
                other => return Err(format!("serve: unknown flag {other:?}")),
            }
        }
        if o.state.as_os_str().is_empty() {
            return Err("serve: --state DIR is required".into());
        }
        Ok(o)
    }
}

/// A resource as the crate stores it: its name and the encoded `Any`, given out as is.
#[derive(Debug)]
struct Raw {
    type_url: String,
    name: String,
    any: prost_types::Any,
}

impl Resource for Raw {
    fn type_url(&self) -> &str {
        &self.type_url
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn encode(&self) -> Result<prost_types::Any, Box<dyn std::error::Error + Send + Sync>> {
        Ok(self.any.clone())
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The crate versions a snapshot per type (every resource of a type carries its type's
/// version): the version of a type is a hash of its contents, so a change to one type leaves
/// the others' versions alone.
fn snapshot_of(all: &Resources) -> Snapshot {
    let mut versions = Vec::new();
    let mut typed = Vec::new();
    for t in TYPES {
        let mut text = String::new();
        let mut list: Vec<BoxResource> = Vec::new();
        for (name, any) in all.get(t).into_iter().flatten() {
            text.push_str(name);
            text.push('\0');
            text.push_str(&format!("{:016x}\n", fnv_bytes(&any.value)));
            list.push(Arc::new(Raw { type_url: t.to_string(), name: name.clone(), any: any.clone() }));
        }
        let v = format!("{:016x}", fnv(&text));
        versions.push(v.clone());
        typed.push((t, v, list));
    }
    let mut b = Snapshot::builder().version(format!("{:016x}", fnv(&versions.join("/"))));
    for (t, v, list) in typed {
        b = b.resources_with_version(TypeUrl::new(t), v, list);
    }
    b.build()
}

pub fn run(o: Options) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(serve(o))
}

async fn serve(o: Options) -> Result<(), String> {
    let from = match &o.from {
        Some(server) => {
            let r = crate::fetch::fetch(server, &o.from_node_id).await?;
            eprintln!(
                "xds-peer: fetched from meshflow {server} as {}: {} clusters, {} assignments, {} listeners, {} route configs",
                o.from_node_id,
                r[resources::CLUSTER].len(),
                r[resources::ENDPOINT].len(),
                r[resources::LISTENER].len(),
                r[resources::ROUTE].len()
            );
            r
        }
        None => Resources::new(),
    };
    let mut nodes: Vec<NodeHash> = o.node_ids.iter().map(|id| NodeHash::from_id(id)).collect();
    nodes.extend((0..o.bench_nodes).map(|i| NodeHash::from_id(&bench_node(i))));
    let cache = Arc::new(ShardedCache::with_capacity(nodes.len()));

    // The state file, polled: each change becomes a new snapshot for every known node.
    let path = state_path(&o.state);
    let publish = {
        let cache = cache.clone();
        move |text: &str| -> Result<(), String> {
            let state = parse_state(text).map_err(|e| format!("{}: {e}", path.display()))?;
            let all = resources::build(&state, &from)?;
            let snapshot = snapshot_of(&all);
            for n in &nodes {
                cache.set_snapshot(*n, snapshot.clone());
            }
            eprintln!(
                "xds-peer: snapshot {} for {} node ids: {} suite services; {} clusters, {} assignments, {} listeners, {} route configs",
                snapshot.version(),
                nodes.len(),
                state.len(),
                all[resources::CLUSTER].len(),
                all[resources::ENDPOINT].len(),
                all[resources::LISTENER].len(),
                all[resources::ROUTE].len()
            );
            Ok(())
        }
    };
    let path = state_path(&o.state);
    let read = move || std::fs::read_to_string(&path).unwrap_or_default();
    let mut last = read();
    publish(&last)?;
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = read();
            if now != last {
                if let Err(e) = publish(&now) {
                    eprintln!("xds-peer: {e} (still serving the previous snapshot)");
                }
                last = now;
            }
        }
    });

    let server = xds_server::XdsServer::builder()
        .cache(cache)
        .enable_delta()
        .disable_metrics()
        .graceful_shutdown(Duration::from_secs(1))
        .build()
        .map_err(|e| format!("building the nebucloud-xds server: {e}"))?;
    eprintln!("xds-peer: nebucloud-xds serving delta and SotW ADS on {}", o.addr);
    server.serve(o.addr).await.map_err(|e| format!("serving on {}: {e}", o.addr))
}
