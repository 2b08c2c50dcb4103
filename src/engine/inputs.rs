//! A graph's input sessions, declared once: [`graph_inputs!`] writes the struct of sessions
//! and the [`GraphInputs`] that moves them all on together, so no session can be left out of
//! an advance or a flush (which would hold its graph's frontier back).

/// A graph's input sessions, moved on together.
pub trait GraphInputs {
    fn advance_to(&mut self, t: u64);
    fn flush(&mut self);
}

/// `graph_inputs! { pub struct Inputs { pub pods: Pod, … } }`: a struct whose every field is an
/// [`Session`] of the type given, and its [`GraphInputs`].
macro_rules! graph_inputs {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$field_meta:meta])* pub $field:ident: $data:ty,)* }) => {
        $(#[$meta])*
        pub struct $name {
            $($(#[$field_meta])* pub $field: $crate::engine::inputs::Session<$data>,)*
        }

        impl $crate::engine::inputs::GraphInputs for $name {
            fn advance_to(&mut self, t: u64) {
                $(self.$field.advance_to(t);)*
            }

            fn flush(&mut self) {
                $(self.$field.flush();)*
            }
        }
    };
}
pub(crate) use graph_inputs;

/// An input collection's session: differential's `InputSession`, but with a buffer that grows
/// with what is fed. Differential's reserves room for 1,024 updates whenever it is empty, so
/// every engine time allocated, per input it fed, 1,024 times the update's size: ~220 KB for a
/// Pod or an endpoint row. mimalloc serves such sizes from fresh pages (and returns them when
/// freed), so at one event per time the kernel's zeroing of those pages was ~7% of the engine
/// thread (`perf record -g`: `clear_page_erms` under `InputSession::update`).
pub struct Session<D: differential_dataflow::Data> {
    handle: Handle<D>,
    buffer: Updates<D>,
    time: u64,
}

/// An input's updates: (datum, time, diff).
type Updates<D> = Vec<(D, u64, isize)>;
/// Timely's handle of an input of such updates.
type Handle<D> = timely::dataflow::InputHandle<u64, timely::container::CapacityContainerBuilder<Updates<D>>>;

/// Updates held before they are handed to the dataflow even without a flush (so a large load
/// is handed over in pieces, as differential's session does).
const SESSION_BATCH: usize = 1024;

impl<D: differential_dataflow::Data> Session<D> {
    /// Adds `diff` copies of `datum` (removes them if negative) at the session's time.
    pub fn update(&mut self, datum: D, diff: isize) {
        self.buffer.push((datum, self.time, diff));
        if self.buffer.len() >= SESSION_BATCH {
            self.handle.send_batch(&mut self.buffer);
        }
    }

    /// Moves the session's time on; the dataflow learns of it at the next flush.
    pub fn advance_to(&mut self, time: u64) {
        assert!(self.time <= time, "an input session's time never goes back");
        self.time = time;
    }

    /// Hands the buffered updates to the dataflow and advances its input to the session's time.
    pub fn flush(&mut self) {
        self.handle.send_batch(&mut self.buffer);
        if *self.handle.time() < self.time {
            self.handle.advance_to(self.time);
        }
    }
}

/// Updates added to a session: (datum, diff) each.
impl<D: differential_dataflow::Data> Extend<(D, isize)> for Session<D> {
    fn extend<I: IntoIterator<Item = (D, isize)>>(&mut self, updates: I) {
        for (datum, diff) in updates {
            self.update(datum, diff);
        }
    }
}

/// A new input collection of `scope` and its session.
pub fn input<'s, D: differential_dataflow::Data>(
    scope: &timely::dataflow::Scope<'s, u64>,
) -> (Session<D>, differential_dataflow::VecCollection<'s, u64, D>) {
    use differential_dataflow::AsCollection;
    use timely::dataflow::operators::Input;
    let (handle, stream) = scope.new_input();
    let time = *handle.time();
    (Session { handle, buffer: Vec::new(), time }, stream.as_collection())
}
