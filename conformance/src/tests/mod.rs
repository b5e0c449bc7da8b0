//! The suite, one module per CRI area.

pub mod containers;
pub mod features;
pub mod idempotence;
pub mod images;
pub mod pods;
pub mod runtime;
pub mod security;
pub mod streaming;

use anyhow::Context;
use proto::cri;

use crate::runner::{Env, Test};

/// Pulls `busybox:latest` from the test registry and returns its reference, or `None` when
/// the run has no registry (each caller decides whether that skips or fails).
pub(crate) async fn pull_busybox(env: &Env) -> anyhow::Result<Option<String>> {
    let Some(registry) = env.registry.as_deref() else {
        return Ok(None);
    };
    let image = format!("{registry}/busybox:latest");
    env.cri
        .images
        .clone()
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .context("PullImage")?;
    Ok(Some(image))
}

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
