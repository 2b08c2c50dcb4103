//! Process and thread measurements from /proc and getrusage.

use std::collections::BTreeMap;

/// Peak resident set size of this process (VmHWM), in bytes.
pub fn peak_rss_bytes() -> u64 {
    status_kib("VmHWM:") * 1024
}

/// Current resident set size (VmRSS), in bytes.
pub fn rss_bytes() -> u64 {
    status_kib("VmRSS:") * 1024
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn timeval_seconds(tv: libc::timeval) -> f64 {
    tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6
}

fn rusage(who: libc::c_int) -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(who, &mut usage) } != 0 {
        return 0.0;
    }
    timeval_seconds(usage.ru_utime) + timeval_seconds(usage.ru_stime)
}

/// User + system CPU seconds of the whole process.
pub fn process_cpu_seconds() -> f64 {
    rusage(libc::RUSAGE_SELF)
}

/// User + system CPU seconds of the calling thread.
pub fn thread_cpu_seconds() -> f64 {
    rusage(libc::RUSAGE_THREAD)
}

/// CPU seconds of this process's threads, summed by thread name (`comm`, which Linux cuts to
/// 15 bytes), from each thread's scheduler statistics (nanoseconds on the CPU).
pub fn cpu_by_thread_name() -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return out };
    for task in tasks.flatten() {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default().trim().to_string();
        let ns: f64 = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
            .unwrap_or(0.0);
        *out.entry(comm).or_insert(0.0) += ns / 1e9;
    }
    out
}

/// Seconds of the threads whose name starts with `prefix`, between two readings.
pub fn cpu_delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, prefix: &str) -> f64 {
    let sum = |m: &BTreeMap<String, f64>| m.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(_, v)| v).sum::<f64>();
    (sum(after) - sum(before)).max(0.0)
}
