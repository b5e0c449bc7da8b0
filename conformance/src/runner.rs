//! A tiny test runner: named async tests, focus/skip filters, one line per test and a closing
//! `N passed, N failed, N skipped` line.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use regex::Regex;

use crate::client::Cri;
use crate::gaps;

/// How one test ended.
pub enum Outcome {
    Passed,
    Skipped(String),
}

/// What a test returns: `Ok(Outcome::Skipped(reason))` when the host cannot run it.
pub type TestResult = anyhow::Result<Outcome>;
pub type TestFuture = Pin<Box<dyn Future<Output = TestResult> + Send>>;

/// Per-run settings handed to every test.
#[derive(Clone)]
pub struct Env {
    pub cri: Cri,
    /// A registry on loopback that holds the test images (`host:port`), if any.
    pub registry: Option<String>,
    /// The directory a runtime that confines `Localhost` seccomp profiles takes them from
    /// (crid with `runtime.seccomp_profile_root` set), if given; else any absolute path.
    pub seccomp_profile_root: Option<std::path::PathBuf>,
}

pub struct Test {
    pub name: &'static str,
    pub run: fn(Env) -> TestFuture,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    /// Failures listed in `gaps` for the runtime under test (not counted in `failed`).
    pub known_gaps: usize,
}

/// Runs the selected tests one after another, each bounded by `timeout`. A failure listed in
/// `gaps` for `runtime` (the endpoint's `Version.runtime_name`) counts as a known gap.
pub async fn run(
    tests: &[Test],
    env: &Env,
    runtime: &str,
    focus: Option<&Regex>,
    skip: Option<&Regex>,
    timeout: Duration,
) -> Summary {
    let mut summary = Summary::default();
    for test in tests {
        if focus.is_some_and(|f| !f.is_match(test.name))
            || skip.is_some_and(|s| s.is_match(test.name))
        {
            continue;
        }
        let started = Instant::now();
        let result = tokio::time::timeout(timeout, (test.run)(env.clone())).await;
        let took = started.elapsed().as_millis();
        match &result {
            Ok(Ok(Outcome::Passed)) => {
                summary.passed += 1;
                println!("ok       {} ({took} ms)", test.name);
            }
            Ok(Ok(Outcome::Skipped(reason))) => {
                summary.skipped += 1;
                println!("skipped  {}: {reason}", test.name);
            }
            Ok(Err(e)) => failed(
                &mut summary,
                runtime,
                test.name,
                &format!("({took} ms): {e:#}"),
            ),
            Err(_) => failed(
                &mut summary,
                runtime,
                test.name,
                &format!("(timed out after {timeout:?})"),
            ),
        }
        if let (Ok(Ok(Outcome::Passed)), Some(gap)) = (&result, gaps::lookup(runtime, test.name)) {
            println!(
                "         {} is listed as a {runtime} gap but passed ({}); update gaps.rs",
                test.name, gap.reason
            );
        }
    }
    summary
}

fn failed(summary: &mut Summary, runtime: &str, name: &str, detail: &str) {
    match gaps::lookup(runtime, name) {
        Some(gap) => {
            summary.known_gaps += 1;
            println!("gap      {name}: known {runtime} gap: {}", gap.reason);
            println!("         {name} {detail}");
        }
        None => {
            summary.failed += 1;
            println!("FAILED   {name} {detail}");
        }
    }
}
