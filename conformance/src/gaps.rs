//! Known gaps of other runtimes: tests that fail there because of the runtime, not because of
//! the test, each with the reason. The runner reports a failing test listed here for the
//! endpoint's runtime (`Version.runtime_name`) as a known gap instead of a failure, and a
//! listed test that passes as a gap that is gone.
//!
//! Measured against Debian 12's containerd 1.6.20 + runc 1.1.5 (scripts/conformance-containerd.sh).

/// One test that fails on one runtime, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// `Version.runtime_name` of the runtime.
    pub runtime: &'static str,
    /// The test's name.
    pub test: &'static str,
    pub reason: &'static str,
}

const fn containerd(test: &'static str, reason: &'static str) -> Gap {
    Gap {
        runtime: "containerd",
        test,
        reason,
    }
}

/// Every known gap.
pub const GAPS: &[Gap] = &[
    containerd(
        "features/image-volume",
        "containerd 1.6 predates image volumes (containerd 2.1) and ignores Mount.image",
    ),
    containerd(
        "images/list-and-idempotent-remove",
        "containerd 1.6 ignores ListImagesRequest.filter and always lists every image",
    ),
    containerd(
        "images/error-codes",
        "containerd answers a malformed image reference with Unknown, not InvalidArgument",
    ),
    containerd(
        "images/security/hostile-layers",
        "containerd pulls layers with ../, absolute or escaping link paths and confines them \
         to the snapshot on unpack instead of refusing the image",
    ),
    containerd(
        "images/security/digest-and-size-lies",
        "containerd 1.6 has no size limit for manifests and indexes and pulls a huge one",
    ),
    containerd(
        "images/unikernel/annotations",
        "unikernel images are a crid extension; containerd treats them as plain images",
    ),
    containerd(
        "images/unikernel/urunc-json",
        "unikernel images are a crid extension; containerd treats them as plain images",
    ),
    containerd(
        "images/unikernel/invalid-refused",
        "unikernel images are a crid extension; containerd pulls invalid ones as plain images",
    ),
    containerd(
        "pods/idempotent-stop-remove",
        "containerd answers StopPodSandbox of an unknown id with NotFound (kubelet tolerates \
         it) where the CRI asks for idempotence",
    ),
    containerd(
        "pods/unknown-runtime-handler",
        "containerd answers an unknown runtime handler with Unknown, not NotFound or \
         InvalidArgument",
    ),
    containerd(
        "pods/sysctl-injection-refused",
        "containerd does not validate sysctl names or values; runc refuses them at container \
         start, so RunPodSandbox fails with Unknown",
    ),
    containerd(
        "containers/exec-sync",
        "containerd 1.6 answers an ExecSync past its timeout with DeadlineExceeded but leaves \
         the timed-out process running in the container",
    ),
    containerd(
        "containers/run-as-group-without-user",
        "containerd refuses a run_as_group without a user with Unknown, not InvalidArgument",
    ),
    containerd(
        "containers/bad-input-refused",
        "containerd accepts a relative mount host path (resolved against its own working \
         directory) instead of refusing it",
    ),
];

/// The gap for `test` on `runtime`, if it is a known one.
pub fn lookup(runtime: &str, test: &str) -> Option<&'static Gap> {
    GAPS.iter().find(|g| g.runtime == runtime && g.test == test)
}

/// The known gaps of `runtime`.
pub fn for_runtime(runtime: &str) -> impl Iterator<Item = &'static Gap> + '_ {
    GAPS.iter().filter(move |g| g.runtime == runtime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_gap_names_an_existing_test_once() {
        let names: Vec<&str> = crate::tests::all().iter().map(|t| t.name).collect();
        for (i, g) in GAPS.iter().enumerate() {
            assert!(names.contains(&g.test), "{} is not a test", g.test);
            assert!(!g.reason.is_empty(), "{} has no reason", g.test);
            assert!(
                !GAPS[..i]
                    .iter()
                    .any(|o| o.runtime == g.runtime && o.test == g.test),
                "{} listed twice",
                g.test
            );
        }
    }

    #[test]
    fn lookup_is_per_runtime() {
        assert!(lookup("containerd", "images/error-codes").is_some());
        assert!(lookup("crid", "images/error-codes").is_none());
        assert!(lookup("containerd", "runtime/version").is_none());
        assert!(for_runtime("cri-o").next().is_none());
        assert!(for_runtime("containerd").all(|g| g.runtime == "containerd"));
    }
}
