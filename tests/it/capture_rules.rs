//! `meshflow init`'s rules, flag by flag (istio-iptables' REDIRECT mode, from
//! tools/istio-iptables/pkg/capture/run.go and its golden files), its clean-up, and the agent's
//! interception mode. No root needed: pure functions. tests/capture_e2e.rs installs them.

use clap::Parser;
use meshflow::agent::{AgentArgs, envoy_user, interception};
use meshflow::capture::*;
use serde_json::{Map, Value, json};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: InitArgs,
}

fn config(flags: &[&str]) -> Result<CaptureConfig, FlagError> {
    let cli = Cli::try_parse_from(std::iter::once("init").chain(flags.iter().copied())).expect("flags parse");
    CaptureConfig::from_args(&cli.args.capture)
}

fn lines(flags: &[&str]) -> Vec<String> {
    rules(&config(flags).unwrap()).iter().map(ToString::to_string).collect()
}

fn chain(flags: &[&str], chain: &str) -> Vec<String> {
    let prefix = format!("-A {chain} ");
    lines(flags).into_iter().filter(|l| l.starts_with(&prefix)).collect()
}

/// The defaults are istio-init's as the injector runs it: `-p 15001 -z 15006 -u 1337
/// -i '*' -b '*' -d 15090,15021,15020` (Istio's golden `inbound-ports-wildcard`, plus the
/// injector's excluded ports and `-i '*'`).
#[test]
fn defaults_are_the_injected_istio_init_rules() {
    assert_eq!(
        lines(&[]),
        [
            "-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN",
            "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
            "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
            "-A PREROUTING -p tcp -j ISTIO_INBOUND",
            "-A ISTIO_INBOUND -p tcp -m tcp --dport 15090 -j RETURN",
            "-A ISTIO_INBOUND -p tcp -m tcp --dport 15021 -j RETURN",
            "-A ISTIO_INBOUND -p tcp -m tcp --dport 15020 -j RETURN",
            "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
            "-A OUTPUT -j ISTIO_OUTPUT",
            "-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN",
            "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT",
            "-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN",
            "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
            "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT",
            "-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN",
            "-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN",
            "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
            "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
        ]
    );
    let input = restore_input(&config(&[]).unwrap());
    assert!(input.starts_with("*nat\n-N ISTIO_INBOUND\n-N ISTIO_REDIRECT\n-N ISTIO_IN_REDIRECT\n-N ISTIO_OUTPUT\n"));
    assert!(input.ends_with("-A ISTIO_OUTPUT -j ISTIO_REDIRECT\nCOMMIT\n"));
}

#[test]
fn envoy_ports_and_tunnel_port() {
    let l = lines(&["--envoy-port", "16001", "-z", "16006", "--inbound-tunnel-port", "16008"]);
    assert!(l.contains(&"-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 16001".to_string()));
    assert!(l.contains(&"-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 16006".to_string()));
    assert_eq!(l[0], "-A ISTIO_INBOUND -p tcp -m tcp --dport 16008 -j RETURN");
    assert!(l.iter().any(|r| r.contains("! --dport 16008 -m owner --uid-owner 1337")));
}

#[test]
fn proxy_uid_and_gid_lists() {
    let out = chain(&["--proxy-uid", "1337,1338", "--proxy-gid", "2000"], ISTIO_OUTPUT);
    // Per id, as istio-iptables: the VIP-to-self hop to the inbound side, the app's own
    // traffic over lo returned, the proxy's own traffic returned.
    for id in ["--uid-owner 1337", "--uid-owner 1338", "--gid-owner 2000"] {
        let tail: Vec<&str> = out
            .iter()
            .filter(|r| r.contains(&format!("-m owner {id}")) || r.contains(&format!("-m owner ! {id}")))
            .map(|r| r.split(" -m owner ").nth(1).unwrap())
            .collect();
        let expected = [format!("{id} -j ISTIO_IN_REDIRECT"), format!("! {id} -j RETURN"), format!("{id} -j RETURN")];
        assert_eq!(tail, expected, "{out:#?}");
    }
    assert!(!out.iter().any(|r| r.contains("--gid-owner 1337")));
    // The GID defaults to the UID list.
    assert_eq!(config(&["-u", "42"]).unwrap().proxy_gids, vec![42]);
    assert_eq!(config(&["-u", "42", "-g", "7"]).unwrap().proxy_user(), (42, 7));
}

#[test]
fn include_outbound_ip_ranges() {
    let out = chain(&["--include-outbound-ip-ranges", "10.96.0.0/12, 10.0.0.1/8"], ISTIO_OUTPUT);
    let tail: Vec<&str> = out.iter().rev().take(2).rev().map(String::as_str).collect();
    // Host bits cleared, as the kernel stores (and iptables-save prints) them.
    assert_eq!(
        tail,
        ["-A ISTIO_OUTPUT -d 10.96.0.0/12 -j ISTIO_REDIRECT", "-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT"]
    );
    assert!(!out.contains(&"-A ISTIO_OUTPUT -j ISTIO_REDIRECT".to_string()));
    // Empty: no outbound capture at all, the rest stays.
    let none = chain(&["-i", ""], ISTIO_OUTPUT);
    assert!(!none.iter().any(|r| r.ends_with("-j ISTIO_REDIRECT")), "{none:#?}");
    assert!(none.iter().any(|r| r.ends_with("-m owner --uid-owner 1337 -j RETURN")));
    // The istio-iptables long name is accepted.
    assert_eq!(
        config(&["--istio-service-cidr", "10.1.0.0/16"]).unwrap().include_outbound_ip_ranges,
        Selection::Only(vec![Ipv4Cidr::parse("10.1.0.0/16").unwrap()])
    );
}

/// Istio keeps the app→self-over-lo shortcut out when loopback is an included range
/// (golden `loopback-outbound-iprange`).
#[test]
fn an_included_loopback_range_drops_the_lo_return() {
    let out = chain(&["-i", "127.1.2.3/32"], ISTIO_OUTPUT);
    assert!(!out.iter().any(|r| r.contains("-o lo -m owner ! --uid-owner")), "{out:#?}");
    assert!(out.contains(&"-A ISTIO_OUTPUT -d 127.1.2.3/32 -j ISTIO_REDIRECT".to_string()));
}

#[test]
fn exclude_outbound_ip_ranges_come_before_inclusions() {
    let out = chain(&["-x", "10.0.0.0/8,192.168.1.1"], ISTIO_OUTPUT);
    let at = |s: &str| out.iter().position(|r| r == s).unwrap_or_else(|| panic!("{s}: {out:#?}"));
    let loopback = at("-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN");
    let ten = at("-A ISTIO_OUTPUT -d 10.0.0.0/8 -j RETURN");
    let host = at("-A ISTIO_OUTPUT -d 192.168.1.1/32 -j RETURN");
    let redirect = at("-A ISTIO_OUTPUT -j ISTIO_REDIRECT");
    assert!(loopback < ten && ten < host && host < redirect);
}

#[test]
fn include_inbound_ports_lists_only_those() {
    let out = chain(&["--include-inbound-ports", "9080,8080", "-d", "7777"], ISTIO_INBOUND);
    assert_eq!(
        out,
        [
            "-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN",
            "-A ISTIO_INBOUND -p tcp -m tcp --dport 9080 -j ISTIO_IN_REDIRECT",
            "-A ISTIO_INBOUND -p tcp -m tcp --dport 8080 -j ISTIO_IN_REDIRECT",
        ]
    );
    // Empty: no inbound capture, and no jump from PREROUTING.
    let l = lines(&["-b", ""]);
    assert!(!l.iter().any(|r| r.starts_with("-A PREROUTING")), "{l:#?}");
    assert_eq!(chain(&["-b", ""], ISTIO_INBOUND).len(), 1);
}

#[test]
fn exclude_inbound_ports_add_to_the_always_excluded() {
    let out = chain(&["--exclude-inbound-ports", "7777, 15021,8443"], ISTIO_INBOUND);
    let returns: Vec<&str> = out
        .iter()
        .filter(|r| r.ends_with("-j RETURN"))
        .map(|r| r.trim_start_matches("-A ISTIO_INBOUND -p tcp -m tcp --dport ").trim_end_matches(" -j RETURN"))
        .collect();
    assert_eq!(returns, ["15008", "15090", "15021", "15020", "7777", "8443"]);
    assert_eq!(out.last().unwrap(), "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT");
}

#[test]
fn outbound_ports_included_and_excluded() {
    let out = chain(&["--include-outbound-ports", "3306", "--exclude-outbound-ports", "22,53"], ISTIO_OUTPUT);
    assert_eq!(
        &out[..4],
        [
            "-A ISTIO_OUTPUT -p tcp -m tcp --dport 22 -j RETURN",
            "-A ISTIO_OUTPUT -p udp -m udp --dport 22 -j RETURN",
            "-A ISTIO_OUTPUT -p tcp -m tcp --dport 53 -j RETURN",
            "-A ISTIO_OUTPUT -p udp -m udp --dport 53 -j RETURN",
        ]
    );
    let include = out.iter().position(|r| r == "-A ISTIO_OUTPUT -p tcp -m tcp --dport 3306 -j ISTIO_REDIRECT");
    let all = out.iter().position(|r| r == "-A ISTIO_OUTPUT -j ISTIO_REDIRECT");
    assert!(include.is_some() && include < all, "{out:#?}");
}

#[test]
fn bad_flags_name_the_flag_value_and_reason() {
    let cases: &[(&[&str], &str, &str)] = &[
        (&["-i", "10.0.0.0/33"], "include-outbound-ip-ranges", "prefix length"),
        (&["-i", "10.0.0/8"], "include-outbound-ip-ranges", "not an IPv4 address"),
        (&["-i", "fd00::/8"], "include-outbound-ip-ranges", "IPv6"),
        (&["-x", "*"], "exclude-outbound-ip-ranges", "every destination"),
        (&["-x", "banana"], "exclude-outbound-ip-ranges", "not an IPv4 address"),
        (&["-b", "80,x"], "include-inbound-ports", "\"x\" is not a port"),
        (&["-d", "70000"], "exclude-inbound-ports", "\"70000\" is not a port"),
        (&["-q", "0"], "include-outbound-ports", "\"0\" is not a port"),
        (&["-o", "22,65536"], "exclude-outbound-ports", "\"65536\" is not a port"),
        (&["-u", "istio-proxy"], "proxy-uid", "not a numeric id"),
        (&["-u", "0"], "proxy-uid", "root"),
        (&["-u", ""], "proxy-uid", "at least one"),
        (&["-g", "1,x"], "proxy-gid", "not a numeric id"),
        (&["-p", "0"], "envoy-port", "not a port"),
    ];
    for (flags, flag, reason) in cases {
        let err = config(flags).expect_err(&format!("{flags:?} must be refused"));
        assert_eq!(err.flag, *flag, "{flags:?}");
        let text = err.to_string();
        assert!(text.starts_with(&format!("--{flag} ")) && text.contains(reason), "{flags:?}: {text}");
    }
    // Out of u16 range never reaches the config: clap refuses it.
    assert!(Cli::try_parse_from(["init", "--envoy-port", "65536"]).is_err());
}

const SAVE: &str = "# Generated by iptables-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [0:0]
-A INPUT -j ISTIO_OUTPUT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:FOREIGN - [0:0]
:ISTIO_INBOUND - [0:0]
:ISTIO_OUTPUT - [0:0]
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A PREROUTING -p tcp -m tcp --dport 9999 -j FOREIGN
-A OUTPUT -j ISTIO_OUTPUT
-A OUTPUT -d 10.0.0.0/8 -j RETURN
-A FOREIGN -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
COMMIT
";

#[test]
fn clean_removes_the_jumps_and_chains_and_nothing_else() {
    assert_eq!(
        clean_input(SAVE).unwrap(),
        "*nat\n-D OUTPUT -j ISTIO_OUTPUT\n-D PREROUTING -p tcp -j ISTIO_INBOUND\n\
         -F ISTIO_INBOUND\n-F ISTIO_OUTPUT\n-X ISTIO_INBOUND\n-X ISTIO_OUTPUT\nCOMMIT\n"
    );
    let none = "*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -j FOREIGN\nCOMMIT\n*filter\n-A INPUT -j ISTIO_OUTPUT\n";
    assert_eq!(clean_input(none), None);
}

#[test]
fn a_restore_input_parses_as_what_iptables_save_shows_once_installed() {
    let cfg = config(&["-x", "10.0.0.0/8"]).unwrap();
    let state = installed(&restore_input(&cfg));
    assert_eq!(state.chains.len(), 4);
    assert_eq!(state.rules["OUTPUT"], ["-A OUTPUT -j ISTIO_OUTPUT"]);
    assert_eq!(state.rules["PREROUTING"], ["-A PREROUTING -p tcp -j ISTIO_INBOUND"]);
    assert_eq!(state.rules.values().map(Vec::len).sum::<usize>(), rules(&cfg).len());
}

#[test]
fn iptables_restore_is_looked_up_on_path_and_a_missing_one_is_named() {
    let empty = tempfile::tempdir().unwrap();
    let err = Iptables::locate_in(Some(empty.path().as_os_str())).unwrap_err();
    assert!(err.to_string().starts_with("iptables-restore not found on PATH"), "{err}");
    assert!(err.to_string().contains("`iptables`"));
    assert!(matches!(Iptables::locate_in(None), Err(CaptureError::ToolMissing { tool: "iptables-restore" })));
}

// === The agent ===

fn meta(mode: Option<&str>) -> Map<String, Value> {
    let mut m = Map::new();
    if let Some(mode) = mode {
        m.insert("INTERCEPTION_MODE".into(), json!(mode));
    }
    m
}

#[test]
fn capture_sends_interception_mode_redirect_and_honours_the_environment() {
    let mut m = meta(None);
    assert_eq!(interception(true, false, &mut m), Ok(true));
    assert_eq!(m["INTERCEPTION_MODE"], "REDIRECT");
    // Rules installed by `meshflow init` (an init container): the environment says so.
    let mut m = meta(Some("REDIRECT"));
    assert_eq!(interception(false, false, &mut m), Ok(true));
    assert_eq!(m["INTERCEPTION_MODE"], "REDIRECT");
    // No capture: nothing added, the metadata as the environment gave it.
    let mut m = meta(None);
    assert_eq!(interception(false, true, &mut m), Ok(false));
    assert!(m.is_empty());
    assert_eq!(interception(false, false, &mut meta(Some("NONE"))), Ok(false));
}

#[test]
fn contradicting_or_unknown_interception_modes_are_refused() {
    let err = interception(true, false, &mut meta(Some("NONE"))).unwrap_err();
    assert!(err.contains("ISTIO_META_INTERCEPTION_MODE=\"NONE\" contradicts --capture"), "{err}");
    let err = interception(false, true, &mut meta(Some("REDIRECT"))).unwrap_err();
    assert!(err.contains("contradicts --bind-address"), "{err}");
    let err = interception(false, false, &mut meta(Some("TPROXY"))).unwrap_err();
    assert!(err.contains("REDIRECT only"), "{err}");
    let err = interception(false, false, &mut meta(Some("redirect"))).unwrap_err();
    assert!(err.contains("not an interception mode"), "{err}");
}

#[test]
fn envoy_runs_as_the_proxy_user_whom_the_rules_exempt() {
    assert_eq!(envoy_user(true, (1337, 1337), (0, 0)), Ok(Some((1337, 1337))));
    assert_eq!(envoy_user(false, (1337, 1400), (0, 0)), Ok(Some((1337, 1400))));
    // Already the proxy user (by uid or gid): nothing to switch.
    assert_eq!(envoy_user(false, (1337, 1337), (1337, 1337)), Ok(None));
    assert_eq!(envoy_user(false, (1337, 1337), (1000, 1337)), Ok(None));
    let err = envoy_user(true, (1337, 1337), (1000, 1000)).unwrap_err();
    assert!(err.starts_with("--capture needs root"), "{err}");
    let err = envoy_user(false, (1337, 1337), (1000, 1000)).unwrap_err();
    assert!(err.contains("captured again"), "{err}");
}

#[test]
fn agent_capture_flags_are_checked_and_conflict_with_a_bind_address() {
    #[derive(Parser)]
    struct AgentCli {
        #[command(flatten)]
        agent: AgentArgs,
    }
    let cli = AgentCli::try_parse_from(["agent", "--xds-addr", "x:1", "--capture", "--proxy-uid", "1400"]).unwrap();
    assert!(cli.agent.capture);
    assert_eq!(CaptureConfig::from_args(&cli.agent.capture_flags).unwrap().proxy_user(), (1400, 1400));
    assert!(
        AgentCli::try_parse_from(["agent", "--xds-addr", "x:1", "--capture", "--bind-address", "127.0.0.2"]).is_err()
    );
}
