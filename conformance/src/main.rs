//! `conformance --endpoint unix:///path.sock [--focus REGEX] [--skip REGEX]`

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use conformance::client::Cri;
use conformance::runner::{self, Env};
use regex::Regex;

#[derive(Debug, Parser)]
#[command(about = "CRI conformance suite for any CRI v1 endpoint")]
struct Args {
    /// CRI endpoint, e.g. unix:///run/crid/crid.sock
    #[arg(long, default_value = "unix:///run/crid/crid.sock")]
    endpoint: String,
    /// Run only tests whose name matches.
    #[arg(long)]
    focus: Option<Regex>,
    /// Skip tests whose name matches.
    #[arg(long)]
    skip: Option<Regex>,
    /// Registry with the test images (host:port on loopback).
    #[arg(long, env = "CRID_TEST_REGISTRY")]
    registry: Option<String>,
    /// Directory a runtime that confines `Localhost` seccomp profiles takes them from; the
    /// suite writes its profile there (without it, at an absolute path of its own under the
    /// temp directory, as kubelet sends them).
    #[arg(long, env = "CRID_SECCOMP_PROFILE_ROOT")]
    seccomp_profile_root: Option<std::path::PathBuf>,
    /// Upper bound for one test, in seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let cri = match Cri::connect(&args.endpoint).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("conformance: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    // Known gaps are per runtime; ask the endpoint which one it is.
    let runtime = match cri
        .runtime
        .clone()
        .version(proto::cri::VersionRequest {
            version: "v1".into(),
        })
        .await
    {
        Ok(v) => v.into_inner().runtime_name,
        Err(e) => {
            eprintln!("conformance: Version: {e}");
            String::new()
        }
    };
    let env = Env {
        cri,
        registry: args.registry,
        seccomp_profile_root: args.seccomp_profile_root,
    };
    let tests = conformance::tests::all();
    let s = runner::run(
        &tests,
        &env,
        &runtime,
        args.focus.as_ref(),
        args.skip.as_ref(),
        Duration::from_secs(args.timeout),
    )
    .await;
    println!(
        "{} passed, {} failed, {} skipped",
        s.passed, s.failed, s.skipped
    );
    if s.known_gaps > 0 {
        println!(
            "{} known {runtime} gaps (conformance/src/gaps.rs), not counted as failures",
            s.known_gaps
        );
    }
    if s.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
