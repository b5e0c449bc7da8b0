//! The suite, one module per CRI area.

pub mod containers;
pub mod features;
pub mod idempotence;
pub mod images;
pub mod pods;
pub mod runtime;
pub mod security;
pub mod streaming;

use crate::runner::Test;

/// Every test, in the order they run.
pub fn all() -> Vec<Test> {
    let mut tests = Vec::new();
    tests.extend(runtime::tests());
    tests.extend(images::tests());
    tests.extend(pods::tests());
    tests.extend(containers::tests());
    tests.extend(streaming::tests());
    tests.extend(security::tests());
    tests.extend(features::tests());
    tests.extend(idempotence::tests());
    tests
}
