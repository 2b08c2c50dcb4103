//! Sources turn the outside world into [`crate::model::InputEvent`]s for the engine.

pub mod file;
pub mod interest;
pub mod kube;
