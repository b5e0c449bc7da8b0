//! `crid-bench --runtime NAME=ENDPOINT,PROCS_REGEX ... --registry HOST:PORT`
//!
//! Measures every runtime in the same run, alternating between them, and prints a Markdown
//! table with the ratio of the first runtime to the second; `--json FILE` keeps the raw data.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use conformance::bench::Samples;
use conformance::bench::memory::{self, Memory};
use conformance::bench::report::Report;
use conformance::bench::workload::{self, Target};
use conformance::client::Cri;
use regex::Regex;

#[derive(Debug, Parser)]
#[command(about = "Benchmarks CRI runtimes side by side")]
struct Args {
    /// NAME=ENDPOINT,PROCS_REGEX — the regex matches the command lines of the daemon and its
    /// per-pod processes (shims, monitors, VMMs). Give crid first, the baseline second.
    #[arg(long = "runtime", required = true)]
    runtimes: Vec<String>,
    /// Registry on loopback holding the test images.
    #[arg(long, env = "CRID_TEST_REGISTRY")]
    registry: String,
    /// Image (in the registry) for the containers.
    #[arg(long, default_value = "busybox:latest")]
    image: String,
    /// Iterations of the sequential measurements.
    #[arg(long, default_value_t = 20)]
    iterations: usize,
    /// Pod counts for the parallel start and memory measurements.
    #[arg(long, value_delimiter = ',', default_value = "10,50")]
    parallel: Vec<usize>,
    /// Duration of the sustained-throughput measurement, per runtime.
    #[arg(long, default_value_t = 10)]
    sustain_secs: u64,
    /// Where to write the JSON report.
    #[arg(long)]
    json: Option<PathBuf>,
    /// A unikernel image (in the registry) that prints and keeps running, e.g. the
    /// freestanding test guest packed with `crid unikernel pack` (repeatable: one per guest
    /// type): its start to first serial byte is measured on the `--unikernel-runtime`s, next
    /// to busybox under runc, in host-network and pod-network pods.
    #[arg(long)]
    unikernel_image: Vec<String>,
    /// A runtime (by NAME) the unikernel images are measured on (repeatable; default: the
    /// first runtime).
    #[arg(long)]
    unikernel_runtime: Vec<String>,
    /// Only the unikernel measurements (no runc cold start, parallel, memory or throughput
    /// sections).
    #[arg(long)]
    unikernel_only: bool,
    /// Guest counts for the parallel-guests measurement: that many guests of each
    /// `--parallel-guest-image` started at once, then as many runc busybox pods, on each
    /// `--unikernel-runtime`: wall time to every first log byte and memory while all run.
    #[arg(long, value_delimiter = ',')]
    parallel_guests: Vec<usize>,
    /// A unikernel image (in the registry) for `--parallel-guests` that prints and keeps
    /// running idle (repeatable: e.g. the freestanding guest packed for crid and for qemu).
    #[arg(long)]
    parallel_guest_image: Vec<String>,
    /// Parent directory for pod log directories.
    #[arg(long, default_value = "/tmp/crid-bench-logs")]
    log_root: PathBuf,
    /// Pods with one PID namespace for all their containers (the CRI default, as critest
    /// sends them) instead of kubelet's one per container.
    #[arg(long)]
    pod_pid_namespace: bool,
}

async fn target(spec: &str, log_root: &std::path::Path, pod_pid: bool) -> anyhow::Result<Target> {
    let (name, rest) = spec
        .split_once('=')
        .context("--runtime wants NAME=ENDPOINT,REGEX")?;
    let (endpoint, procs) = rest
        .split_once(',')
        .context("--runtime wants NAME=ENDPOINT,REGEX")?;
    Ok(Target {
        name: name.into(),
        cri: Cri::connect(endpoint).await?,
        procs: Regex::new(procs)?,
        log_root: log_root.join(name),
        pod_pid,
    })
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default();
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map(|kib| kib / 1024 / 1024)
        .unwrap_or(0);
    format!("{cpus} CPUs ({model}), {mem_gib} GiB RAM")
}

fn mib(m: Memory, pss: bool) -> f64 {
    (if pss { m.pss_kib } else { m.rss_kib }) as f64 / 1024.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut targets = Vec::new();
    for spec in &args.runtimes {
        targets.push(target(spec, &args.log_root, args.pod_pid_namespace).await?);
    }
    if targets.is_empty() {
        bail!("no runtime given");
    }
    let image = format!("{}/{}", args.registry, args.image);
    let cmd = ["sleep", "3600"];
    let mut report = Report {
        runtimes: targets.iter().map(|t| t.name.clone()).collect(),
        machine: machine(),
        ..Default::default()
    };
    for t in &targets {
        workload::sweep(t).await?;
        workload::ensure_image(t, &image).await?;
    }

    if !args.unikernel_only {
        // Idle memory, before any pod exists.
        let idle: Vec<Memory> = targets.iter().map(|t| memory::measure(&t.procs)).collect();

        // Sequential latencies, alternating runtimes so drift hits both alike.
        let n = targets.len();
        let (mut run_pod, mut create, mut start, mut total, mut down) = (
            vec![Samples::default(); n],
            vec![Samples::default(); n],
            vec![Samples::default(); n],
            vec![Samples::default(); n],
            vec![Samples::default(); n],
        );
        for i in 0..args.iterations {
            for (k, t) in targets.iter().enumerate() {
                match workload::cold_start(t, &image, &cmd, "seq").await {
                    Ok(s) => {
                        run_pod[k].push(s.run_pod);
                        create[k].push(s.create);
                        start[k].push(s.start);
                        total[k].push(s.run_pod + s.create + s.start);
                        match workload::teardown(t, &s).await {
                            Ok(d) => down[k].push(d),
                            Err(e) => report
                                .errors
                                .push(format!("{} teardown #{i}: {e:#}", t.name)),
                        }
                    }
                    Err(e) => report
                        .errors
                        .push(format!("{} cold start #{i}: {e:#}", t.name)),
                }
            }
        }
        for (label, samples) in [
            ("pod sandbox start", &run_pod),
            ("container create", &create),
            ("container start", &start),
            ("pod+container cold start", &total),
            ("stop and remove", &down),
        ] {
            report.add(
                format!("{label} median"),
                "ms",
                samples.iter().map(|s| s.median()).collect(),
            );
            report.add(
                format!("{label} p90"),
                "ms",
                samples.iter().map(|s| s.p90()).collect(),
            );
            report.add(
                format!("{label} max"),
                "ms",
                samples.iter().map(|s| s.max()).collect(),
            );
        }

        // Image pull of the same image from the local registry.
        let mut pulls = vec![Samples::default(); n];
        for _ in 0..args.iterations.clamp(1, 5) {
            for (k, t) in targets.iter().enumerate() {
                match workload::pull(t, &image).await {
                    Ok(d) => pulls[k].push(d),
                    Err(e) => report.errors.push(format!("{} pull: {e:#}", t.name)),
                }
            }
        }
        report.add(
            "image pull median",
            "ms",
            pulls.iter().map(|s| s.median()).collect(),
        );

        report.add(
            "idle memory RSS",
            "MiB",
            idle.iter().map(|m| Some(mib(*m, false))).collect(),
        );
        report.add(
            "idle memory PSS",
            "MiB",
            idle.iter().map(|m| Some(mib(*m, true))).collect(),
        );

        // Parallel starts, memory with that many pods, per-pod overhead.
        for &count in &args.parallel {
            let mut wall = Vec::new();
            let mut rss = Vec::new();
            let mut pss = Vec::new();
            let mut per_pod = Vec::new();
            let mut peak_rss = Vec::new();
            let mut peak_pss = Vec::new();
            for (k, t) in targets.iter().enumerate() {
                // Peak memory while the pods start, sampled every 100 ms.
                let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
                let procs = t.procs.clone();
                let sampler = tokio::spawn(async move {
                    let mut peak = Memory::default();
                    loop {
                        let m = tokio::task::spawn_blocking({
                            let procs = procs.clone();
                            move || memory::measure(&procs)
                        })
                        .await
                        .unwrap_or_default();
                        peak.rss_kib = peak.rss_kib.max(m.rss_kib);
                        peak.pss_kib = peak.pss_kib.max(m.pss_kib);
                        tokio::select! {
                            _ = &mut stop_rx => break peak,
                            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        }
                    }
                });
                let t0 = Instant::now();
                let tasks: Vec<_> = (0..count)
                    .map(|_| {
                        let t = t.clone();
                        let image = image.clone();
                        tokio::spawn(
                            async move { workload::cold_start(&t, &image, &cmd, "par").await },
                        )
                    })
                    .collect();
                let mut started = Vec::new();
                let mut failed = 0;
                for task in tasks {
                    match task.await {
                        Ok(Ok(s)) => started.push(s),
                        Ok(Err(e)) => {
                            failed += 1;
                            report
                                .errors
                                .push(format!("{} parallel {count}: {e:#}", t.name));
                        }
                        Err(e) => {
                            failed += 1;
                            report
                                .errors
                                .push(format!("{} parallel {count}: {e}", t.name));
                        }
                    }
                }
                let elapsed = t0.elapsed();
                let _ = stop_tx.send(());
                let peak = sampler.await.unwrap_or_default();
                peak_rss.push(Some(mib(peak, false)));
                peak_pss.push(Some(mib(peak, true)));
                wall.push((failed == 0).then_some(elapsed.as_secs_f64() * 1000.0));
                // Let start-up transients settle before reading memory.
                tokio::time::sleep(Duration::from_secs(1)).await;
                let m = memory::measure(&t.procs);
                rss.push(Some(mib(m, false)));
                pss.push(Some(mib(m, true)));
                per_pod.push((!started.is_empty()).then(|| {
                    (m.pss_kib.saturating_sub(idle[k].pss_kib)) as f64
                        / 1024.0
                        / started.len() as f64
                }));
                let downs: Vec<_> = started
                    .into_iter()
                    .map(|s| {
                        let t = t.clone();
                        tokio::spawn(async move { workload::teardown(&t, &s).await })
                    })
                    .collect();
                for d in downs {
                    if let Ok(Err(e)) = d.await {
                        report
                            .errors
                            .push(format!("{} parallel teardown: {e:#}", t.name));
                    }
                }
                let _ = workload::sweep(t).await;
            }
            report.add(format!("{count} pods in parallel, wall time"), "ms", wall);
            report.add(
                format!("peak memory starting {count} pods, RSS"),
                "MiB",
                peak_rss,
            );
            report.add(
                format!("peak memory starting {count} pods, PSS"),
                "MiB",
                peak_pss,
            );
            report.add(format!("memory with {count} pods, RSS"), "MiB", rss);
            report.add(format!("memory with {count} pods, PSS"), "MiB", pss);
            report.add(
                format!("per-pod overhead at {count} pods, PSS"),
                "MiB",
                per_pod,
            );
        }

        // Sustained throughput: 4 workers cycling start/teardown for a fixed time.
        let mut rates = Vec::new();
        for t in &targets {
            let deadline = Instant::now() + Duration::from_secs(args.sustain_secs);
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    let t = t.clone();
                    let image = image.clone();
                    tokio::spawn(async move {
                        let mut done = 0u64;
                        while Instant::now() < deadline {
                            let Ok(s) = workload::cold_start(&t, &image, &cmd, "sus").await else {
                                break;
                            };
                            if workload::teardown(&t, &s).await.is_err() {
                                break;
                            }
                            done += 1;
                        }
                        done
                    })
                })
                .collect();
            let t0 = Instant::now();
            let mut done = 0;
            for w in workers {
                done += w.await.unwrap_or(0);
            }
            rates.push(Some(done as f64 / t0.elapsed().as_secs_f64()));
            let _ = workload::sweep(t).await;
        }
        report.add("sustained pods per second (4 workers)", "pods/s", rates);
    }

    let uk_targets: Vec<usize> = if args.unikernel_runtime.is_empty() {
        vec![0]
    } else {
        args.unikernel_runtime
            .iter()
            .map(|name| {
                targets
                    .iter()
                    .position(|t| &t.name == name)
                    .with_context(|| format!("--unikernel-runtime {name}: no such --runtime"))
            })
            .collect::<anyhow::Result<_>>()?
    };
    for uk in &args.unikernel_image {
        let uk = format!("{}/{uk}", args.registry);
        if let Err(e) = conformance::bench::unikernel::run(
            &targets,
            &uk_targets,
            &uk,
            &image,
            args.iterations,
            &mut report,
        )
        .await
        {
            report.errors.push(format!("{uk}: {e:#}"));
        }
        for i in &uk_targets {
            let _ = workload::sweep(&targets[*i]).await;
        }
    }

    let guest_images: Vec<String> = args
        .parallel_guest_image
        .iter()
        .map(|i| format!("{}/{i}", args.registry))
        .collect();
    for &count in &args.parallel_guests {
        for i in &uk_targets {
            if let Err(e) = conformance::bench::parallel_guests::run(
                &targets,
                *i,
                &guest_images,
                &image,
                count,
                &mut report,
            )
            .await
            {
                report.errors.push(format!("{count} guests: {e:#}"));
            }
            let _ = workload::sweep(&targets[*i]).await;
        }
    }

    println!("Machine: {}\n", report.machine);
    println!("{}", report.table());
    for e in &report.errors {
        eprintln!("error: {e}");
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
