//! A tiny test runner: named async tests, focus/skip filters, one line per test and a closing
//! `N passed, N failed, N skipped` line.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use regex::Regex;

use crate::client::Cri;

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
}

/// Runs the selected tests one after another, each bounded by `timeout`.
pub async fn run(
    tests: &[Test],
    env: &Env,
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
        match result {
            Ok(Ok(Outcome::Passed)) => {
                summary.passed += 1;
                println!("ok       {} ({took} ms)", test.name);
            }
            Ok(Ok(Outcome::Skipped(reason))) => {
                summary.skipped += 1;
                println!("skipped  {}: {reason}", test.name);
            }
            Ok(Err(e)) => {
                summary.failed += 1;
                println!("FAILED   {} ({took} ms): {e:#}", test.name);
            }
            Err(_) => {
                summary.failed += 1;
                println!("FAILED   {}: timed out after {timeout:?}", test.name);
            }
        }
    }
    summary
}
