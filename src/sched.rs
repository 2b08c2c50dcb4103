//! Scheduling of the threads around the engine's.

/// Puts the calling thread in Linux's `SCHED_BATCH` class, for the threads the engine wakes
/// (the xDS server's workers, the engine's dropper): waking one (a cache change, a proxy's
/// request) then never preempts the thread that woke it (the engine, mid-step), and the CPU
/// shares are as before. The engine's wake of the server preempted it at every change: two
/// context switches and a cold cache per event (BENCHMARKS.md, "Session 37"). The cost: with no
/// core idle, a woken thread waits until the engine's step ends (or the scheduler's tick)
/// instead of running at once. A kernel that refuses leaves the thread as it was.
pub fn batch_scheduling() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: sets the calling thread's policy; `param` is read during the call only.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "SCHED_BATCH refused");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The thread that asks is put in the batch class, and only it: the thread that spawned it
    /// keeps its own.
    #[cfg(target_os = "linux")]
    #[test]
    fn batch_scheduling_moves_the_calling_thread_only() {
        // SAFETY: reads the calling thread's policy.
        let policy = || unsafe { libc::sched_getscheduler(0) };
        let before = policy();
        let worker = std::thread::spawn(move || {
            batch_scheduling();
            policy()
        });
        assert_eq!(worker.join().unwrap(), libc::SCHED_BATCH);
        assert_eq!(policy(), before);
    }
}
