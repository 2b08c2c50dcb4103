//! Where the engine's time goes, operator by operator (the `engine-profile` feature).
//!
//! Registers a logger for timely's events on the engine's worker and prints to stderr, every
//! ten seconds, each operator's schedules and time in that interval, with its address (the
//! first number is the graph: 0 proxies, 1 config, 2 unsliced, 3 endpoints, 4 located),
//! largest first.
//! The graph's own line (`Dataflow`) counts its passes: each step of the worker that scheduled
//! it; its `Input` operator counts the graph's runs. The log costs time of its own, so read
//! the shares, not the absolute figures. Not built by default.
//!
//! `cargo build --profile profiling --features engine-profile --bin meshflow`, then any
//! command that runs the engine (`meshflow bench …`, `meshflow serve …`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use timely::logging::{StartStop, TimelyEvent, TimelyEventBuilder};

const INTERVAL: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Operators {
    names: HashMap<usize, (Vec<usize>, String)>,
    started: HashMap<usize, Duration>,
    /// Schedules and time per operator id, in this interval.
    spent: HashMap<usize, (u64, Duration)>,
    since: Duration,
}

impl Operators {
    fn print(&mut self, now: Duration) {
        let mut rows: Vec<_> = self.spent.drain().collect();
        rows.sort_by_key(|(_, (_, time))| std::cmp::Reverse(*time));
        eprintln!("engine profile, {:?} to {:?} of the worker's time:", self.since, now);
        eprintln!("{:>12} {:>9}  operator", "µs", "schedules");
        for (id, (calls, time)) in rows {
            let (addr, name) = self.names.get(&id).cloned().unwrap_or_default();
            eprintln!("{:>12.0} {:>9}  {addr:?} {name}", time.as_secs_f64() * 1e6, calls);
        }
        self.since = now;
    }
}

/// Starts logging `worker`'s operators; call before the graphs are built.
pub fn register(worker: &mut timely::worker::Worker) {
    let operators = Rc::new(RefCell::new(Operators::default()));
    let Some(mut registry) = worker.log_register() else { return };
    registry.insert::<TimelyEventBuilder, _>("timely", move |_, events| {
        let Some(events) = events else { return };
        let mut ops = operators.borrow_mut();
        for (at, event) in events.iter() {
            match event {
                TimelyEvent::Operates(op) => {
                    ops.names.insert(op.id, (op.addr.clone(), op.name.clone()));
                }
                TimelyEvent::Schedule(s) if s.start_stop == StartStop::Start => {
                    ops.started.insert(s.id, *at);
                }
                TimelyEvent::Schedule(s) => {
                    if let Some(start) = ops.started.remove(&s.id) {
                        let spent = ops.spent.entry(s.id).or_default();
                        spent.0 += 1;
                        spent.1 += at.saturating_sub(start);
                    }
                }
                _ => {}
            }
            if at.saturating_sub(ops.since) >= INTERVAL {
                ops.print(*at);
            }
        }
    });
}
