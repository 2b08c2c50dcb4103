//! A graph's input sessions, declared once: [`graph_inputs!`] writes the struct of sessions
//! and the [`GraphInputs`] that moves them all on together, so no session can be left out of
//! an advance or a flush (which would hold its graph's frontier back).

/// A graph's input sessions, moved on together.
pub trait GraphInputs {
    fn advance_to(&mut self, t: u64);
    fn flush(&mut self);
}

/// `graph_inputs! { pub struct Inputs { pub pods: Pod, … } }`: a struct whose every field is an
/// `InputSession<u64, T, isize>` of the type given, and its [`GraphInputs`].
macro_rules! graph_inputs {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$field_meta:meta])* pub $field:ident: $data:ty,)* }) => {
        $(#[$meta])*
        pub struct $name {
            $($(#[$field_meta])* pub $field: differential_dataflow::input::InputSession<u64, $data, isize>,)*
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
