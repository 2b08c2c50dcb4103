//! The state file and the conformance suite's control adapter.
//!
//! `DIR/xds-peer-state.txt` holds one line per served suite service:
//! `NAME IP PORT CONNECT_TIMEOUT_MS`. `control` rewrites it aside and renames it into place, so
//! the server (which polls it) never reads half a file; a verb exits 0 once the file holds the
//! change.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// The suite's namespace, as meshflow's adapter names it.
pub const NAMESPACE: &str = "conformance";
/// The connect timeout of a service no `change-cluster` touched (istiod's default, 10 s).
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;

/// One suite service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub connect_timeout_ms: u64,
}

pub type State = BTreeMap<String, Service>;

pub fn state_path(dir: &Path) -> PathBuf {
    dir.join("xds-peer-state.txt")
}

/// Reads the state; a missing file is the empty state.
pub fn read_state(dir: &Path) -> Result<State, String> {
    let path = state_path(dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::new()),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    parse_state(&text).map_err(|e| format!("{}: {e}", path.display()))
}

pub fn parse_state(text: &str) -> Result<State, String> {
    let mut state = State::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let bad = |what: &str| format!("line {}: {what} in {line:?}", n + 1);
        if f.len() != 4 {
            return Err(bad("not `NAME IP PORT CONNECT_TIMEOUT_MS`"));
        }
        valid_name(f[0]).map_err(|e| bad(&e))?;
        let service = Service {
            ip: f[1].parse().map_err(|_| bad("IP is not an IPv4 address"))?,
            port: f[2].parse().map_err(|_| bad("PORT is not a port"))?,
            connect_timeout_ms: f[3].parse().map_err(|_| bad("CONNECT_TIMEOUT_MS is not a number"))?,
        };
        state.insert(f[0].to_string(), service);
    }
    Ok(state)
}

fn write_state(dir: &Path, state: &State) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut text = String::new();
    for (name, s) in state {
        text.push_str(&format!("{name} {} {} {}\n", s.ip, s.port, s.connect_timeout_ms));
    }
    let path = state_path(dir);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &path).map_err(|e| format!("renaming to {}: {e}", path.display()))
}

fn valid_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 50
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!("service name {name:?} is not a DNS label"))
    }
}

/// FNV-1a: a stable hash to derive a service's addresses from its name.
pub fn fnv(text: &str) -> u64 {
    fnv_bytes(text.as_bytes())
}

pub fn fnv_bytes(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// The address a service's Kubernetes Service would have (for its virtual host's domains).
pub fn cluster_ip(name: &str) -> Ipv4Addr {
    let h = fnv(name);
    Ipv4Addr::new(10, 96, 200 + ((h >> 8) % 50) as u8, 1 + (h % 250) as u8)
}

fn default_service(name: &str) -> Service {
    let h = fnv(name);
    Service {
        ip: Ipv4Addr::new(10, 100 + ((h >> 16) % 50) as u8, ((h >> 8) % 256) as u8, 1 + (h % 250) as u8),
        port: 8080,
        connect_timeout_ms: DEFAULT_TIMEOUT_MS,
    }
}

/// The xDS names of a suite service (what `names` prints).
pub fn cluster_name(name: &str) -> String {
    format!("outbound|80||{name}.{NAMESPACE}.svc.cluster.local")
}
pub const LISTENER_NAME: &str = "0.0.0.0_80";
pub const ROUTE_NAME: &str = "80";

/// `xds-peer control --state DIR VERB ARGS...`; returns what to print.
pub fn main(args: &[String]) -> Result<String, String> {
    let (dir, rest) = match args {
        [flag, dir, rest @ ..] if flag == "--state" => (Path::new(dir), rest),
        _ => return Err("control: usage: xds-peer control --state DIR VERB [ARGS]...".into()),
    };
    let (verb, args) = rest.split_first().ok_or("control: no verb")?;
    run(dir, verb, args)
}

pub fn run(dir: &Path, verb: &str, args: &[String]) -> Result<String, String> {
    let arg = |i: usize| -> Result<&str, String> {
        args.get(i).map(String::as_str).ok_or_else(|| format!("control {verb}: missing argument {}", i + 1))
    };
    let name = |i: usize| -> Result<&str, String> {
        let n = arg(i)?;
        valid_name(n).map_err(|e| format!("control {verb}: {e}"))?;
        Ok(n)
    };
    let mut state = read_state(dir)?;
    match verb {
        "reset" => {
            let want: State = ["alpha", "beta"].iter().map(|n| (n.to_string(), default_service(n))).collect();
            if state != want || !state_path(dir).exists() {
                write_state(dir, &want)?;
            }
        }
        "add-service" => {
            let n = name(0)?;
            state.insert(n.to_string(), default_service(n));
            write_state(dir, &state)?;
        }
        "remove-service" => {
            let n = name(0)?;
            if state.remove(n).is_some() {
                write_state(dir, &state)?;
            }
        }
        "set-endpoint" => {
            let n = name(0)?;
            let endpoint = arg(1)?;
            let (ip, port) = endpoint
                .rsplit_once(':')
                .ok_or_else(|| format!("control set-endpoint: endpoint {endpoint:?} is not IP:PORT"))?;
            let ip: Ipv4Addr =
                ip.parse().map_err(|_| format!("control set-endpoint: {ip:?} is not an IPv4 address"))?;
            let port: u16 = port.parse().map_err(|_| format!("control set-endpoint: {port:?} is not a port"))?;
            let s = state.get_mut(n).ok_or_else(|| format!("control set-endpoint: service {n:?} is not served"))?;
            s.ip = ip;
            s.port = port;
            write_state(dir, &state)?;
        }
        "change-cluster" => {
            let n = name(0)?;
            let s = state.get_mut(n).ok_or_else(|| format!("control change-cluster: service {n:?} is not served"))?;
            // The connect timeout changes: the Cluster changes, its assignment does not.
            s.connect_timeout_ms = if s.connect_timeout_ms >= 9000 { 1001 } else { s.connect_timeout_ms + 1 };
            write_state(dir, &state)?;
        }
        "names" => {
            let n = name(0)?;
            let c = cluster_name(n);
            return Ok(format!("cds {c}\neds {c}\nlds {LISTENER_NAME}\nrds {ROUTE_NAME}\n"));
        }
        other => {
            return Err(format!(
            "control: unknown verb {other:?} (reset, add-service, remove-service, set-endpoint, change-cluster, names)"
        ))
        }
    }
    Ok(String::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_edit_the_state_file() {
        let dir = std::env::temp_dir().join(format!("xds-peer-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        run(&dir, "reset", &[]).unwrap();
        assert_eq!(read_state(&dir).unwrap().keys().collect::<Vec<_>>(), ["alpha", "beta"]);
        run(&dir, "add-service", &s(&["gamma"])).unwrap();
        run(&dir, "set-endpoint", &s(&["gamma", "10.1.2.3:9090"])).unwrap();
        let g = read_state(&dir).unwrap()["gamma"].clone();
        assert_eq!((g.ip, g.port), (Ipv4Addr::new(10, 1, 2, 3), 9090));
        run(&dir, "change-cluster", &s(&["gamma"])).unwrap();
        assert_eq!(read_state(&dir).unwrap()["gamma"].connect_timeout_ms, 1001);
        run(&dir, "remove-service", &s(&["gamma"])).unwrap();
        assert!(!read_state(&dir).unwrap().contains_key("gamma"));
        assert!(run(&dir, "set-endpoint", &s(&["gamma", "10.1.2.3:1"])).is_err());
        assert!(run(&dir, "add-service", &s(&["Bad_Name"])).is_err());
        let names = run(&dir, "names", &s(&["alpha"])).unwrap();
        assert!(names.starts_with("cds outbound|80||alpha.conformance.svc.cluster.local\n"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
