//! Traffic capture, as Istio's `istio-init` / `istio-cni` (`istio-iptables`) does it: iptables
//! `nat` rules in the workload's network namespace send its outbound TCP to Envoy's port 15001
//! and its inbound TCP to 15006, while Envoy's own traffic (by its UID/GID, 1337) passes.
//!
//! ```sh
//! meshflow init --dry-run                       # print the iptables-restore input
//! meshflow init                                 # install it (root, in the pod's netns)
//! meshflow init --clean                         # remove exactly what init installed
//! ```
//!
//! The rules are those of `tools/istio-iptables/pkg/capture/run.go` in REDIRECT mode, IPv4:
//! the same chains (`ISTIO_INBOUND`, `ISTIO_REDIRECT`, `ISTIO_IN_REDIRECT`, `ISTIO_OUTPUT`), the
//! same order, and flags with Istio's meaning and defaults as the sidecar injector passes them
//! (`-i '*'`, `-b '*'`, `-d 15090,15021,15020`). They are written in the form `iptables-save`
//! prints them back (`-s`/`-d`/`-i`/`-o`/`-p` first, `-m tcp` spelled out), so that what is
//! installed can be compared with `--dry-run` line for line.
//!
//! Everything is validated before anything runs; the rules go in with one `iptables-restore
//! --noflush` call, which the kernel applies atomically: nothing is ever half-installed.
//! Not done (as Istio's, when asked, would): TPROXY, IPv6 (`ip6tables`), DNS capture,
//! `--exclude-interfaces`, `--kube-virt-interfaces`, owner-group filters.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};

/// Outbound traffic to Envoy: `-j REDIRECT --to-ports <envoy-port>`.
pub const ISTIO_REDIRECT: &str = "ISTIO_REDIRECT";
/// Inbound traffic to Envoy: `-j REDIRECT --to-ports <inbound-capture-port>`.
pub const ISTIO_IN_REDIRECT: &str = "ISTIO_IN_REDIRECT";
/// Jumped to from `nat PREROUTING` (inbound TCP).
pub const ISTIO_INBOUND: &str = "ISTIO_INBOUND";
/// Jumped to from `nat OUTPUT` (everything the namespace sends).
pub const ISTIO_OUTPUT: &str = "ISTIO_OUTPUT";
/// The chains `init` creates, in the order it creates them (Istio's).
pub const CHAINS: [&str; 4] = [ISTIO_INBOUND, ISTIO_REDIRECT, ISTIO_IN_REDIRECT, ISTIO_OUTPUT];

/// The proxy's UID (and GID) whose traffic is never captured: Istio's `istio-proxy` user.
pub const DEFAULT_PROXY_UID: u32 = 1337;
/// Inbound ports never captured, whatever the flags say: Envoy's Prometheus port, the
/// agent's readiness port, and its status port (the injector's `-d 15090,15021,15020`).
pub const ALWAYS_EXCLUDED_INBOUND_PORTS: [u16; 3] = [15090, 15021, 15020];
/// Node metadata key of the interception mode (istiod reads `INTERCEPTION_MODE`).
pub const INTERCEPTION_MODE_KEY: &str = "INTERCEPTION_MODE";
/// The only interception mode meshflow installs.
pub const REDIRECT: &str = "REDIRECT";
/// Connections from Envoy's inbound passthrough cluster (bound to this source) pass.
const INBOUND_PASSTHROUGH_SOURCE: Ipv4Cidr = Ipv4Cidr { addr: Ipv4Addr::new(127, 0, 0, 6), len: 32 };
/// Istio's `ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR` default.
const HOST_LOOPBACK: Ipv4Cidr = Ipv4Cidr { addr: Ipv4Addr::new(127, 0, 0, 1), len: 32 };

// === Flags ===

/// The capture flags, shared by `meshflow init` and `meshflow agent --capture`. Names are
/// those of the sidecar annotations (`traffic.sidecar.istio.io/includeOutboundIPRanges` →
/// `--include-outbound-ip-ranges`); `istio-iptables`' own long names and short letters are
/// accepted too.
#[derive(clap::Args, Clone, Debug)]
pub struct CaptureArgs {
    /// Envoy's outbound port: where captured outbound TCP is redirected.
    #[arg(long, short = 'p', default_value_t = 15001, value_name = "PORT")]
    pub envoy_port: u16,
    /// Envoy's inbound port: where captured inbound TCP is redirected.
    #[arg(long, short = 'z', default_value_t = 15006, value_name = "PORT")]
    pub inbound_capture_port: u16,
    /// The HBONE tunnel port: inbound to it is never captured.
    #[arg(long, short = 'e', default_value_t = 15008, value_name = "PORT")]
    pub inbound_tunnel_port: u16,
    /// UID(s) (comma-separated) whose traffic is not captured: the proxy's. The agent runs
    /// Envoy as the first.
    #[arg(long, short = 'u', default_value_t = DEFAULT_PROXY_UID.to_string(), value_name = "UIDS")]
    pub proxy_uid: String,
    /// GID(s) (comma-separated) whose traffic is not captured. Default: the UIDs.
    #[arg(long, short = 'g', value_name = "GIDS")]
    pub proxy_gid: Option<String>,
    /// Outbound destinations captured: comma-separated IPv4 CIDRs, `*` for all, empty for none.
    #[arg(long, short = 'i', visible_alias = "istio-service-cidr", default_value = "*", value_name = "CIDRS")]
    pub include_outbound_ip_ranges: String,
    /// Outbound destinations not captured (comma-separated IPv4 CIDRs).
    #[arg(long, short = 'x', visible_alias = "istio-service-exclude-cidr", default_value = "", value_name = "CIDRS")]
    pub exclude_outbound_ip_ranges: String,
    /// Inbound ports captured: comma-separated, `*` for all, empty for none.
    #[arg(long, short = 'b', visible_alias = "istio-inbound-ports", default_value = "*", value_name = "PORTS")]
    pub include_inbound_ports: String,
    /// Inbound ports not captured when all are (`*`); 15090, 15021 and 15020 always are not.
    #[arg(long, short = 'd', visible_alias = "istio-local-exclude-ports", default_value = "", value_name = "PORTS")]
    pub exclude_inbound_ports: String,
    /// Outbound ports always captured, whatever the destination.
    #[arg(long, short = 'q', visible_alias = "istio-outbound-ports", default_value = "", value_name = "PORTS")]
    pub include_outbound_ports: String,
    /// Outbound ports never captured (TCP and UDP).
    #[arg(
        long,
        short = 'o',
        visible_alias = "istio-local-outbound-ports-exclude",
        default_value = "",
        value_name = "PORTS"
    )]
    pub exclude_outbound_ports: String,
}

/// `meshflow init`.
#[derive(clap::Args, Clone, Debug)]
pub struct InitArgs {
    #[command(flatten)]
    pub capture: CaptureArgs,
    /// Print the `iptables-restore` input instead of applying it (with `--clean`: what would
    /// be removed).
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Remove the capture rules (the ISTIO_* chains and the jumps to them) and nothing else.
    #[arg(long, visible_alias = "cleanup-only")]
    pub clean: bool,
}

// === Validated configuration ===

/// An IPv4 range; host bits are cleared, as the kernel stores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Ipv4Cidr {
    /// `a.b.c.d/n`, or a bare address (`/32`).
    pub fn parse(s: &str) -> Result<Ipv4Cidr, String> {
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (s, None),
        };
        if ip.contains(':') {
            return Err("an IPv6 range (meshflow captures IPv4 only)".into());
        }
        let addr: Ipv4Addr = ip.parse().map_err(|_| format!("{ip:?} is not an IPv4 address"))?;
        let len = match len {
            None => 32,
            Some(l) => match l.parse::<u8>() {
                Ok(n) if n <= 32 => n,
                _ => return Err(format!("{l:?} is not a prefix length (0-32)")),
            },
        };
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        Ok(Ipv4Cidr { addr: Ipv4Addr::from(u32::from(addr) & mask), len })
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Which destinations or ports are captured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection<T> {
    /// `*`.
    All,
    /// A list; empty captures nothing.
    Only(Vec<T>),
}

/// The capture flags, checked: what [`rules`] turns into iptables rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureConfig {
    pub envoy_port: u16,
    pub inbound_capture_port: u16,
    pub inbound_tunnel_port: u16,
    pub proxy_uids: Vec<u32>,
    pub proxy_gids: Vec<u32>,
    pub include_outbound_ip_ranges: Selection<Ipv4Cidr>,
    pub exclude_outbound_ip_ranges: Vec<Ipv4Cidr>,
    pub include_inbound_ports: Selection<u16>,
    /// Only applies when all inbound ports are captured; starts with
    /// [`ALWAYS_EXCLUDED_INBOUND_PORTS`].
    pub exclude_inbound_ports: Vec<u16>,
    pub include_outbound_ports: Vec<u16>,
    pub exclude_outbound_ports: Vec<u16>,
}

/// A flag whose value cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--{flag} {value:?}: {reason}")]
pub struct FlagError {
    pub flag: &'static str,
    pub value: String,
    pub reason: String,
}

impl CaptureConfig {
    /// Checks every flag; the first bad one is the error.
    pub fn from_args(args: &CaptureArgs) -> Result<CaptureConfig, FlagError> {
        let port = |flag: &'static str, p: u16| {
            if p == 0 {
                Err(FlagError { flag, value: "0".into(), reason: "not a port (1-65535)".into() })
            } else {
                Ok(p)
            }
        };
        let proxy_uids = ids("proxy-uid", &args.proxy_uid)?;
        let proxy_gids = match &args.proxy_gid {
            Some(g) => ids("proxy-gid", g)?,
            None => proxy_uids.clone(),
        };
        let include_outbound_ip_ranges = if args.include_outbound_ip_ranges.trim() == "*" {
            Selection::All
        } else {
            Selection::Only(cidrs("include-outbound-ip-ranges", &args.include_outbound_ip_ranges)?)
        };
        if args.exclude_outbound_ip_ranges.trim() == "*" {
            return Err(FlagError {
                flag: "exclude-outbound-ip-ranges",
                value: "*".into(),
                reason: "excluding every destination is not a range (use --include-outbound-ip-ranges '')".into(),
            });
        }
        let include_inbound_ports = if args.include_inbound_ports.trim() == "*" {
            Selection::All
        } else {
            Selection::Only(ports("include-inbound-ports", &args.include_inbound_ports)?)
        };
        let mut exclude_inbound_ports = ALWAYS_EXCLUDED_INBOUND_PORTS.to_vec();
        for p in ports("exclude-inbound-ports", &args.exclude_inbound_ports)? {
            if !exclude_inbound_ports.contains(&p) {
                exclude_inbound_ports.push(p);
            }
        }
        Ok(CaptureConfig {
            envoy_port: port("envoy-port", args.envoy_port)?,
            inbound_capture_port: port("inbound-capture-port", args.inbound_capture_port)?,
            inbound_tunnel_port: port("inbound-tunnel-port", args.inbound_tunnel_port)?,
            proxy_uids,
            proxy_gids,
            include_outbound_ip_ranges,
            exclude_outbound_ip_ranges: cidrs("exclude-outbound-ip-ranges", &args.exclude_outbound_ip_ranges)?,
            include_inbound_ports,
            exclude_inbound_ports,
            include_outbound_ports: ports("include-outbound-ports", &args.include_outbound_ports)?,
            exclude_outbound_ports: ports("exclude-outbound-ports", &args.exclude_outbound_ports)?,
        })
    }

    /// The UID and GID Envoy must run as for its traffic to pass: the first of each list.
    pub fn proxy_user(&self) -> (u32, u32) {
        (self.proxy_uids[0], self.proxy_gids[0])
    }
}

/// The non-empty, trimmed items of a comma-separated list.
fn items(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn ports(flag: &'static str, value: &str) -> Result<Vec<u16>, FlagError> {
    let mut out = Vec::new();
    for item in items(value) {
        match item.parse::<u16>() {
            Ok(p) if p != 0 => {
                if !out.contains(&p) {
                    out.push(p)
                }
            }
            _ => {
                return Err(FlagError {
                    flag,
                    value: value.into(),
                    reason: format!("{item:?} is not a port (1-65535)"),
                });
            }
        }
    }
    Ok(out)
}

fn cidrs(flag: &'static str, value: &str) -> Result<Vec<Ipv4Cidr>, FlagError> {
    let mut out = Vec::new();
    for item in items(value) {
        let cidr = Ipv4Cidr::parse(item).map_err(|reason| FlagError {
            flag,
            value: value.into(),
            reason: format!("{item:?}: {reason}"),
        })?;
        if !out.contains(&cidr) {
            out.push(cidr);
        }
    }
    Ok(out)
}

fn ids(flag: &'static str, value: &str) -> Result<Vec<u32>, FlagError> {
    let mut out = Vec::new();
    for item in items(value) {
        // Names would need the namespace's /etc/passwd; istio-init passes numbers too.
        match item.parse::<u32>() {
            Ok(id) if id != 0 => out.push(id),
            Ok(_) => {
                return Err(FlagError {
                    flag,
                    value: value.into(),
                    reason: "0 is root: exempting root's traffic would exempt the application's".into(),
                });
            }
            Err(_) => {
                return Err(FlagError { flag, value: value.into(), reason: format!("{item:?} is not a numeric id") });
            }
        }
    }
    if out.is_empty() {
        return Err(FlagError { flag, value: value.into(), reason: "at least one id is needed".into() });
    }
    Ok(out)
}

// === Rules ===

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    Uid(u32),
    Gid(u32),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Return,
    Jump(&'static str),
    Redirect(u16),
}

/// One `nat` rule. `(negated, value)` pairs are `! -d …` when negated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub chain: &'static str,
    pub source: Option<Ipv4Cidr>,
    pub destination: Option<(bool, Ipv4Cidr)>,
    pub out_interface: Option<&'static str>,
    pub proto: Option<Proto>,
    pub dport: Option<(bool, u16)>,
    pub owner: Option<(bool, Owner)>,
    pub target: Target,
}

impl Rule {
    fn new(chain: &'static str, target: Target) -> Rule {
        Rule {
            chain,
            source: None,
            destination: None,
            out_interface: None,
            proto: None,
            dport: None,
            owner: None,
            target,
        }
    }
    fn src(mut self, c: Ipv4Cidr) -> Rule {
        self.source = Some(c);
        self
    }
    fn dst(mut self, negated: bool, c: Ipv4Cidr) -> Rule {
        self.destination = Some((negated, c));
        self
    }
    fn out_lo(mut self) -> Rule {
        self.out_interface = Some("lo");
        self
    }
    fn proto(mut self, p: Proto) -> Rule {
        self.proto = Some(p);
        self
    }
    fn dport(mut self, negated: bool, port: u16) -> Rule {
        self.dport = Some((negated, port));
        self
    }
    fn owner(mut self, negated: bool, owner: Owner) -> Rule {
        self.owner = Some((negated, owner));
        self
    }
}

/// Renders the rule's `-A` line in `iptables-save`'s canonical form.
impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let not = |n: bool| if n { "! " } else { "" };
        write!(f, "-A {}", self.chain)?;
        if let Some(s) = self.source {
            write!(f, " -s {s}")?;
        }
        if let Some((n, d)) = self.destination {
            write!(f, " {}-d {d}", not(n))?;
        }
        if let Some(o) = self.out_interface {
            write!(f, " -o {o}")?;
        }
        let proto = match self.proto {
            Some(Proto::Tcp) => Some("tcp"),
            Some(Proto::Udp) => Some("udp"),
            None => None,
        };
        if let Some(p) = proto {
            write!(f, " -p {p}")?;
        }
        if let (Some((n, port)), Some(p)) = (self.dport, proto) {
            write!(f, " -m {p} {}--dport {port}", not(n))?;
        }
        if let Some((n, owner)) = self.owner {
            match owner {
                Owner::Uid(id) => write!(f, " -m owner {}--uid-owner {id}", not(n))?,
                Owner::Gid(id) => write!(f, " -m owner {}--gid-owner {id}", not(n))?,
            }
        }
        match &self.target {
            Target::Return => write!(f, " -j RETURN"),
            Target::Jump(chain) => write!(f, " -j {chain}"),
            Target::Redirect(port) => write!(f, " -j REDIRECT --to-ports {port}"),
        }
    }
}

/// The `nat` rules of `istio-iptables` in REDIRECT mode, in its order (see `run.go`, `Run`).
pub fn rules(cfg: &CaptureConfig) -> Vec<Rule> {
    use Target::*;
    let mut r = Vec::new();
    // Inbound to the tunnel port is never captured.
    r.push(Rule::new(ISTIO_INBOUND, Return).proto(Proto::Tcp).dport(false, cfg.inbound_tunnel_port));
    r.push(Rule::new(ISTIO_REDIRECT, Redirect(cfg.envoy_port)).proto(Proto::Tcp));
    r.push(Rule::new(ISTIO_IN_REDIRECT, Redirect(cfg.inbound_capture_port)).proto(Proto::Tcp));

    // Inbound.
    let inbound_any = match &cfg.include_inbound_ports {
        Selection::All => true,
        Selection::Only(ports) => !ports.is_empty(),
    };
    if inbound_any {
        r.push(Rule::new("PREROUTING", Jump(ISTIO_INBOUND)).proto(Proto::Tcp));
        match &cfg.include_inbound_ports {
            Selection::All => {
                for &p in &cfg.exclude_inbound_ports {
                    r.push(Rule::new(ISTIO_INBOUND, Return).proto(Proto::Tcp).dport(false, p));
                }
                r.push(Rule::new(ISTIO_INBOUND, Jump(ISTIO_IN_REDIRECT)).proto(Proto::Tcp));
            }
            Selection::Only(ports) => {
                for &p in ports {
                    r.push(Rule::new(ISTIO_INBOUND, Jump(ISTIO_IN_REDIRECT)).proto(Proto::Tcp).dport(false, p));
                }
            }
        }
    }

    // Outbound.
    r.push(Rule::new("OUTPUT", Jump(ISTIO_OUTPUT)));
    for &p in &cfg.exclude_outbound_ports {
        r.push(Rule::new(ISTIO_OUTPUT, Return).proto(Proto::Tcp).dport(false, p));
        r.push(Rule::new(ISTIO_OUTPUT, Return).proto(Proto::Udp).dport(false, p));
    }
    r.push(Rule::new(ISTIO_OUTPUT, Return).src(INBOUND_PASSTHROUGH_SOURCE).out_lo());
    let loopback_included = match &cfg.include_outbound_ip_ranges {
        Selection::All => false,
        Selection::Only(cidrs) => cidrs.iter().any(|c| c.addr.is_loopback()),
    };
    let owners = cfg.proxy_uids.iter().map(|&u| Owner::Uid(u)).chain(cfg.proxy_gids.iter().map(|&g| Owner::Gid(g)));
    for owner in owners {
        // The application calling itself through a service VIP: app → Envoy (outbound) →
        // Envoy (inbound, over lo) → app.
        r.push(
            Rule::new(ISTIO_OUTPUT, Jump(ISTIO_IN_REDIRECT))
                .dst(true, HOST_LOOPBACK)
                .out_lo()
                .proto(Proto::Tcp)
                .dport(true, cfg.inbound_tunnel_port)
                .owner(false, owner),
        );
        // The application calling itself by its own address: not through Envoy.
        if !loopback_included {
            r.push(Rule::new(ISTIO_OUTPUT, Return).out_lo().owner(true, owner));
        }
        // Envoy's own traffic: never back to Envoy.
        r.push(Rule::new(ISTIO_OUTPUT, Return).owner(false, owner));
    }
    // localhost: Envoy-aware applications and container-to-container traffic.
    r.push(Rule::new(ISTIO_OUTPUT, Return).dst(false, HOST_LOOPBACK));
    for &c in &cfg.exclude_outbound_ip_ranges {
        r.push(Rule::new(ISTIO_OUTPUT, Return).dst(false, c));
    }
    for &p in &cfg.include_outbound_ports {
        r.push(Rule::new(ISTIO_OUTPUT, Jump(ISTIO_REDIRECT)).proto(Proto::Tcp).dport(false, p));
    }
    match &cfg.include_outbound_ip_ranges {
        Selection::All => r.push(Rule::new(ISTIO_OUTPUT, Jump(ISTIO_REDIRECT))),
        Selection::Only(cidrs) => {
            for &c in cidrs {
                r.push(Rule::new(ISTIO_OUTPUT, Jump(ISTIO_REDIRECT)).dst(false, c));
            }
        }
    }
    r
}

/// The `iptables-restore --noflush` input that installs the capture: the chains (`-N`, which
/// fails, changing nothing, if one exists already) and [`rules`].
pub fn restore_input(cfg: &CaptureConfig) -> String {
    let mut out = String::from("*nat\n");
    for chain in CHAINS {
        out.push_str(&format!("-N {chain}\n"));
    }
    for rule in rules(cfg) {
        out.push_str(&format!("{rule}\n"));
    }
    out.push_str("COMMIT\n");
    out
}

// === What is installed ===

/// What `iptables-save -t nat` shows of the capture: the ISTIO_* chains that exist, and per
/// chain the `-A` lines that belong to the capture (every rule of an ISTIO_* chain, and the
/// rules of other chains that jump to one), in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Installed {
    pub chains: BTreeSet<String>,
    pub rules: BTreeMap<String, Vec<String>>,
}

impl Installed {
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty() && self.rules.is_empty()
    }
}

fn is_capture_chain(name: &str) -> bool {
    CHAINS.contains(&name)
}

/// Parses `iptables-save` output (or a restore input, for its `-A`/`-N` lines) into the
/// capture's part of the `nat` table.
pub fn installed(save: &str) -> Installed {
    let mut out = Installed::default();
    let mut in_nat = false;
    for line in save.lines().map(str::trim) {
        if let Some(table) = line.strip_prefix('*') {
            in_nat = table.trim() == "nat";
            continue;
        }
        if !in_nat {
            continue;
        }
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some(decl), _) if decl.starts_with(':') => {
                let chain = decl.trim_start_matches(':');
                if is_capture_chain(chain) {
                    out.chains.insert(chain.to_string());
                }
            }
            (Some("-N"), Some(chain)) if is_capture_chain(chain) => {
                out.chains.insert(chain.to_string());
            }
            (Some("-A"), Some(chain)) => {
                let jumps_to_capture = jump_target(line).is_some_and(is_capture_chain);
                if is_capture_chain(chain) || jumps_to_capture {
                    out.rules.entry(chain.to_string()).or_default().push(line.to_string());
                }
            }
            _ => {}
        }
    }
    out
}

fn jump_target(line: &str) -> Option<&str> {
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == "-j" || w == "--jump" {
            return words.next();
        }
    }
    None
}

/// The `iptables-restore --noflush` input that removes the capture from `save` (the output of
/// `iptables-save -t nat`): every rule outside the ISTIO_* chains that jumps into one, then
/// those chains. `None` when there is nothing to remove. Rules and chains that are not the
/// capture's are not touched.
pub fn clean_input(save: &str) -> Option<String> {
    let state = installed(save);
    if state.is_empty() {
        return None;
    }
    let mut out = String::from("*nat\n");
    for (chain, rules) in &state.rules {
        if is_capture_chain(chain) {
            continue;
        }
        for rule in rules {
            // `-A CHAIN spec` → `-D CHAIN spec`: the same spec deletes the same rule.
            out.push_str(&format!("-D{}\n", &rule[2..]));
        }
    }
    // Flush all first: a capture chain may jump to another.
    for chain in &state.chains {
        out.push_str(&format!("-F {chain}\n"));
    }
    for chain in &state.chains {
        out.push_str(&format!("-X {chain}\n"));
    }
    out.push_str("COMMIT\n");
    Some(out)
}

// === Running iptables ===

/// Why the capture could not be installed or removed.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(transparent)]
    Flag(#[from] FlagError),
    #[error(
        "{tool} not found on PATH: install the Debian package `iptables` (scripts/ensure-iptables does) and run as root"
    )]
    ToolMissing { tool: &'static str },
    #[error("{tool} failed ({status}): {stderr}")]
    ToolFailed { tool: String, status: String, stderr: String },
    #[error("cannot run {tool}: {error}")]
    Spawn { tool: String, error: std::io::Error },
    #[error(
        "other capture rules are installed already in this network namespace (chains {chains}); nothing was changed: \
         remove them first with `meshflow init --clean`"
    )]
    Conflict { chains: String },
}

/// The iptables binaries, as found on `PATH`.
#[derive(Clone, Debug)]
pub struct Iptables {
    pub restore: PathBuf,
    pub save: PathBuf,
}

impl Iptables {
    /// Finds `iptables-restore` and `iptables-save` on `path` (a `PATH` value).
    pub fn locate_in(path: Option<&std::ffi::OsStr>) -> Result<Iptables, CaptureError> {
        let find = |tool: &'static str| {
            path.into_iter()
                .flat_map(std::env::split_paths)
                .map(|dir| dir.join(tool))
                .find(|p| is_executable(p))
                .ok_or(CaptureError::ToolMissing { tool })
        };
        Ok(Iptables { restore: find("iptables-restore")?, save: find("iptables-save")? })
    }

    pub fn locate() -> Result<Iptables, CaptureError> {
        Iptables::locate_in(std::env::var_os("PATH").as_deref())
    }

    /// `iptables-save -t nat`.
    pub fn save_nat(&self) -> Result<String, CaptureError> {
        run(&self.save, &["-t", "nat"], None)
    }

    /// `iptables-restore --noflush`, `input` on stdin: one atomic commit.
    pub fn restore(&self, input: &str) -> Result<(), CaptureError> {
        run(&self.restore, &["--noflush"], Some(input)).map(|_| ())
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn run(bin: &Path, args: &[&str], stdin: Option<&str>) -> Result<String, CaptureError> {
    let tool = bin.display().to_string();
    let mut child = std::process::Command::new(bin)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| CaptureError::Spawn { tool: tool.clone(), error })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A write error shows up as the tool's failure below.
        let _ = pipe.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().map_err(|error| CaptureError::Spawn { tool: tool.clone(), error })?;
    if !out.status.success() {
        return Err(CaptureError::ToolFailed {
            tool: format!("{tool} {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What [`install`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Installation {
    Installed,
    /// The same rules were there already (a restarted agent, a second `init`).
    AlreadyInstalled,
}

/// Installs the capture in the current network namespace: unchanged when exactly these rules
/// are installed already, an error (changing nothing) when other capture rules are.
pub fn install(cfg: &CaptureConfig, iptables: &Iptables) -> Result<Installation, CaptureError> {
    let input = restore_input(cfg);
    let now = installed(&iptables.save_nat()?);
    if !now.is_empty() {
        if now == installed(&input) {
            return Ok(Installation::AlreadyInstalled);
        }
        let chains: Vec<&str> = now.chains.iter().map(String::as_str).collect();
        return Err(CaptureError::Conflict { chains: chains.join(", ") });
    }
    iptables.restore(&input)?;
    Ok(Installation::Installed)
}

/// Removes the capture from the current network namespace; `false` when there was none.
pub fn clean(iptables: &Iptables) -> Result<bool, CaptureError> {
    match clean_input(&iptables.save_nat()?) {
        None => Ok(false),
        Some(input) => iptables.restore(&input).map(|()| true),
    }
}

/// `meshflow init`: exit 0 when done, 2 on any error (nothing changed then).
pub fn run_init(args: &InitArgs) -> ExitCode {
    match init(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshflow init: {e}");
            ExitCode::from(2)
        }
    }
}

fn init(args: &InitArgs) -> Result<(), CaptureError> {
    // Flags first, even for --clean: a typo is an error before anything runs.
    let cfg = CaptureConfig::from_args(&args.capture)?;
    if args.clean {
        let iptables = Iptables::locate()?;
        if args.dry_run {
            print!("{}", clean_input(&iptables.save_nat()?).unwrap_or_default());
            return Ok(());
        }
        let removed = clean(&iptables)?;
        eprintln!("meshflow init: {}", if removed { "capture rules removed" } else { "no capture rules installed" });
        return Ok(());
    }
    if args.dry_run {
        print!("{}", restore_input(&cfg));
        return Ok(());
    }
    let iptables = Iptables::locate()?;
    match install(&cfg, &iptables)? {
        Installation::Installed => eprintln!("meshflow init: capture rules installed"),
        Installation::AlreadyInstalled => eprintln!("meshflow init: capture rules already installed"),
    }
    Ok(())
}
