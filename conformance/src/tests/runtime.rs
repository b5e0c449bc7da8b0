//! Runtime info: Version and Status.

use anyhow::ensure;
use proto::cri;

use crate::runner::{Env, Outcome, Test, TestResult};

pub fn tests() -> Vec<Test> {
    vec![
        Test {
            name: "runtime/version",
            run: |env| Box::pin(version(env)),
        },
        Test {
            name: "runtime/status-conditions",
            run: |env| Box::pin(status_conditions(env)),
        },
    ]
}

async fn version(env: Env) -> TestResult {
    let v = env
        .cri
        .runtime
        .clone()
        .version(cri::VersionRequest {
            version: "v1".into(),
        })
        .await?
        .into_inner();
    ensure!(
        v.runtime_api_version == "v1",
        "runtime_api_version {:?}",
        v.runtime_api_version
    );
    ensure!(!v.runtime_name.is_empty(), "empty runtime_name");
    ensure!(!v.runtime_version.is_empty(), "empty runtime_version");
    Ok(Outcome::Passed)
}

async fn status_conditions(env: Env) -> TestResult {
    let s = env
        .cri
        .runtime
        .clone()
        .status(cri::StatusRequest { verbose: true })
        .await?
        .into_inner();
    let conditions = s.status.map(|s| s.conditions).unwrap_or_default();
    for wanted in ["RuntimeReady", "NetworkReady"] {
        let c = conditions
            .iter()
            .find(|c| c.r#type == wanted)
            .ok_or_else(|| anyhow::anyhow!("no {wanted} condition"))?;
        ensure!(c.status, "{wanted} is false: {} {}", c.reason, c.message);
    }
    Ok(Outcome::Passed)
}
