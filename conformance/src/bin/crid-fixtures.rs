//! `crid-fixtures --registry HOST:PORT [--unikernel-binary FILE] [--out DIR]`: builds every
//! test image (see `conformance::fixtures::images`) and pushes it to the registry, checking
//! that the registry serves each tag under the digest we computed.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use conformance::fixtures::images::{self, Push};
use conformance::fixtures::push;

#[derive(Debug, Parser)]
#[command(about = "Build crid's test images and push them to a registry")]
struct Args {
    /// Registry on loopback, host:port (plain HTTP).
    #[arg(long, env = "CRID_TEST_REGISTRY")]
    registry: String,
    /// The static busybox binary for the base layer.
    #[arg(long, default_value = "/bin/busybox")]
    busybox: PathBuf,
    /// The guest kernel placed at /unikernel/kernel in the unikernel images (default: a small
    /// placeholder file).
    #[arg(long)]
    unikernel_binary: Option<PathBuf>,
    /// Also write every image as an OCI layout `DIR/<repo with / as _>_<tag>/` (for import
    /// tests); skopeo's working layouts go there too. Default: a temporary directory, removed.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Push everything with the built-in client instead of skopeo.
    #[arg(long)]
    no_skopeo: bool,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crid-fixtures: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let kernel = match &args.unikernel_binary {
        Some(p) => std::fs::read(p).with_context(|| format!("read {}", p.display()))?,
        None => b"crid placeholder unikernel: replace with --unikernel-binary\n".to_vec(),
    };
    let fixtures = images::all(&args.busybox, &kernel)?;
    let (work, remove) = match &args.out {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("crid-fixtures-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&work)?;
    let skopeo = !args.no_skopeo
        && std::process::Command::new("skopeo")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if args.out.is_some() {
        for f in &fixtures {
            let dir = work.join(format!("{}_{}", f.repo.replace('/', "_"), f.tag));
            conformance::fixtures::build::write_oci_layout(&dir, &[(f.tag, &f.built)])?;
        }
    }
    let result = push_all(&args.registry, &fixtures, &work, skopeo);
    if remove {
        let _ = std::fs::remove_dir_all(&work);
    }
    result
}

fn push_all(
    host: &str,
    fixtures: &[images::Fixture],
    work: &std::path::Path,
    skopeo: bool,
) -> anyhow::Result<()> {
    for f in fixtures {
        let name = format!("{}:{}", f.repo, f.tag);
        let want = &f.built.top().digest;
        let how = match f.push {
            Push::Skopeo if skopeo => {
                match push::push_with_skopeo(host, f.repo, f.tag, &f.built, work) {
                    Ok(()) => "skopeo",
                    Err(e) => {
                        eprintln!("crid-fixtures: {name}: {e:#}; using the built-in client");
                        push::push_with_client(host, f.repo, f.tag, &f.built)?;
                        "client"
                    }
                }
            }
            Push::Skopeo | Push::Client => {
                push::push_with_client(host, f.repo, f.tag, &f.built)
                    .with_context(|| format!("push {name}"))?;
                "client"
            }
            Push::MayBeRefused => match push::push_with_client(host, f.repo, f.tag, &f.built) {
                Ok(()) => "client",
                Err(e) => {
                    println!("{name:36} refused by the registry ({e:#}); not available");
                    continue;
                }
            },
        };
        let got = push::registry_digest(host, f.repo, f.tag)?;
        if got.as_deref() != Some(want.as_str()) {
            // skopeo rewrote it: push our exact bytes instead.
            push::push_with_client(host, f.repo, f.tag, &f.built)?;
            let got = push::registry_digest(host, f.repo, f.tag)?;
            anyhow::ensure!(
                got.as_deref() == Some(want.as_str()),
                "{name}: registry serves {got:?}, expected {want}"
            );
        }
        println!("{name:36} {want} ({how})");
    }
    Ok(())
}
