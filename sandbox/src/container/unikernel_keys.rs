//! urunc's `com.urunc.unikernel.*` keys given as CRI annotations: the pod's
//! (`PodSandboxConfig.annotations`, where kubelet puts a pod's `metadata.annotations`) and the
//! container's (`ContainerConfig.annotations`). Decided here, once, at `CreateContainer`:
//!
//! - **Precedence, key by key:** container annotation, then pod annotation, then the image
//!   (manifest annotations, config labels or `urunc.json`). urunc reads the keys from the OCI
//!   bundle's annotations, where containerd copies the pod's and then the container's
//!   (`pod_annotations`/`container_annotations` of the runtime handler), so a container's value
//!   wins there too; but urunc takes that set as a whole instead of the image's `urunc.json`,
//!   where crid puts each key over the image's.
//! - **Only unikernel images are tuned.** urunc boots any bundle whose annotations name a type
//!   and a binary; in crid an annotation cannot turn an ordinary image into a VM (the image
//!   says what it is, and the RuntimeClass rule stays about images): a pod's keys are ignored
//!   for its ordinary containers (a runc sidecar next to the guest, as Knative builds), and a
//!   container's own keys on an ordinary image are `InvalidArgument` naming the key, rather
//!   than silently running it under runc.
//! - **Every key urunc reads may be given**, validated as the image's are (an annotation is
//!   untrusted input): `binary`, `initrd` and `block` stay paths inside the image's rootfs
//!   (checked again with the image's files at create, no `..`, no symlink escape), so nothing
//!   points the VMM at a host file; `hypervisor` picks among the VMMs the operator installed
//!   (`vm.crid_vmm_for` still applies). A bad value is `InvalidArgument` naming the key and
//!   where it came from; unknown keys under the prefix and empty values are ignored.
//! - **crid's own `io.crid.unikernel.virtio`** (the guest's virtio transport, `pci` or `mmio`;
//!   see `imagestore::unikernel`) follows the same rules: pod, then container, over the image.

use std::collections::BTreeMap;

use imagestore::unikernel::{self, KEY_PREFIX, VIRTIO_KEY};
use imagestore::{ImageError, UnikernelInfo};

use super::config::{ImageInfo, PodContext};
use crate::error::{SandboxError, invalid};

/// Where an annotation that set a key came from, as verbose status shows it.
const POD: &str = "pod annotation";
const CONTAINER: &str = "container annotation";

/// The pod annotations a container may take keys from: those under urunc's prefix and crid's
/// own [`VIRTIO_KEY`].
pub(super) fn pod_keys(annotations: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    annotations
        .iter()
        .filter(|(k, _)| k.starts_with(KEY_PREFIX) || *k == VIRTIO_KEY)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The image a container runs with its pod's and its own annotations applied (see the module
/// rules).
pub(super) fn tune(
    mut image: ImageInfo,
    pod: &PodContext,
    container: &BTreeMap<String, String>,
) -> Result<ImageInfo, SandboxError> {
    let Some(info) = &image.unikernel else {
        let virtio = container
            .get_key_value(VIRTIO_KEY)
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.as_str(), v.as_str()));
        if let Some((key, _)) = unikernel::annotation_keys(container)
            .first()
            .copied()
            .or(virtio)
        {
            return Err(invalid(format!(
                "{CONTAINER} {key}: image {} is not a unikernel image; urunc's keys (and \
                 crid's {VIRTIO_KEY}) tune a unikernel image's guest, they do not make one",
                image.reference
            )));
        }
        return Ok(image);
    };
    let info = unikernel::with_annotations(info, &pod.unikernel_annotations).map_err(named(POD))?;
    let mut info: UnikernelInfo =
        unikernel::with_annotations(&info, container).map_err(named(CONTAINER))?;
    // crid's own key, pod then container over the image's.
    for (level, set) in [(POD, &pod.unikernel_annotations), (CONTAINER, container)] {
        if let Some(v) = set.get(VIRTIO_KEY).filter(|v| !v.is_empty()) {
            info.virtio = unikernel::parse_virtio(v).map_err(named(level))?;
        }
    }
    image.unikernel = Some(info);
    Ok(image)
}

/// An error about one key, with the annotations it came from.
fn named(level: &'static str) -> impl Fn(ImageError) -> SandboxError {
    move |e| match e {
        ImageError::InvalidUnikernel { key, reason } => invalid(format!("{level} {key}: {reason}")),
        other => SandboxError::Image(other),
    }
}

/// Each key an annotation set for this container, with where it came from (the container's
/// own wins), for the VM state.
pub(super) fn applied(
    pod: &PodContext,
    container: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (level, set) in [(POD, &pod.unikernel_annotations), (CONTAINER, container)] {
        for (key, value) in unikernel::annotation_keys(set) {
            out.insert(key.to_owned(), format!("{value} ({level})"));
        }
        if let Some(v) = set.get(VIRTIO_KEY).filter(|v| !v.is_empty()) {
            out.insert(VIRTIO_KEY.to_owned(), format!("{v} ({level})"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use imagestore::{HypervisorKind, UnikernelSource, UnikernelType, VirtioTransport};
    use std::path::PathBuf;

    fn image(unikernel: bool) -> ImageInfo {
        ImageInfo {
            reference: "example.test/app:1".into(),
            unikernel: unikernel.then(|| UnikernelInfo {
                cmdline: "from-image".into(),
                version: Some("0.17.0".into()),
                ..UnikernelInfo::new(
                    UnikernelType::Unikraft,
                    HypervisorKind::Qemu,
                    "unikernel/kernel",
                    UnikernelSource::ConfigLabels,
                )
            }),
            ..Default::default()
        }
    }

    fn keys(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (format!("{KEY_PREFIX}{k}"), (*v).to_owned()))
            .collect()
    }

    fn pod(pairs: &[(&str, &str)]) -> PodContext {
        let mut all = keys(pairs);
        all.insert("kubernetes.io/config.source".into(), "api".into());
        PodContext {
            unikernel_annotations: pod_keys(&all),
            ..Default::default()
        }
    }

    fn tuned(pod_pairs: &[(&str, &str)], container: &[(&str, &str)]) -> UnikernelInfo {
        tune(image(true), &pod(pod_pairs), &keys(container))
            .unwrap()
            .unikernel
            .unwrap()
    }

    #[test]
    fn container_wins_over_pod_which_wins_over_the_image_key_by_key() {
        let info = tuned(
            &[("unikernelVersion", "0.15.0"), ("cmdline", "from-pod")],
            &[("unikernelVersion", "0.16.1"), ("mountRootfs", "false")],
        );
        assert_eq!(info.version.as_deref(), Some("0.16.1"));
        assert_eq!(info.cmdline, "from-pod");
        assert_eq!(info.mount_rootfs, Some(false));
        // What no annotation set stays the image's.
        assert_eq!(info.binary, PathBuf::from("unikernel/kernel"));
        assert_eq!(info.source, UnikernelSource::ConfigLabels);
        let applied = applied(
            &pod(&[("unikernelVersion", "0.15.0"), ("cmdline", "from-pod")]),
            &keys(&[("unikernelVersion", "0.16.1"), ("bogus", "x")]),
        );
        assert_eq!(
            applied,
            BTreeMap::from([
                (
                    format!("{KEY_PREFIX}cmdline"),
                    "from-pod (pod annotation)".to_owned()
                ),
                (
                    format!("{KEY_PREFIX}unikernelVersion"),
                    "0.16.1 (container annotation)".to_owned()
                ),
            ])
        );
    }

    #[test]
    fn crids_virtio_key_from_pod_and_container_annotations() {
        let with = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let pod_mmio = PodContext {
            unikernel_annotations: pod_keys(&with(&[(VIRTIO_KEY, "mmio")])),
            ..Default::default()
        };
        let got = |pod: &PodContext, c: &[(&str, &str)]| {
            tune(image(true), pod, &with(c)).map(|i| i.unikernel.unwrap().virtio)
        };
        assert_eq!(got(&pod_mmio, &[]).unwrap(), VirtioTransport::Mmio);
        // The container's wins; an empty value is not set.
        assert_eq!(
            got(&pod_mmio, &[(VIRTIO_KEY, "pci")]).unwrap(),
            VirtioTransport::Pci
        );
        assert_eq!(
            got(&pod_mmio, &[(VIRTIO_KEY, "")]).unwrap(),
            VirtioTransport::Mmio
        );
        assert_eq!(
            applied(&pod_mmio, &with(&[(VIRTIO_KEY, "pci")])),
            BTreeMap::from([(
                VIRTIO_KEY.to_owned(),
                "pci (container annotation)".to_owned()
            )])
        );
        // A bad value names the key and where it came from.
        let err = got(&PodContext::default(), &[(VIRTIO_KEY, "ccw")]).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("container annotation {VIRTIO_KEY}")),
            "{err}"
        );
        // On an ordinary image: refused for the container, ignored for the pod.
        let err = tune(
            image(false),
            &PodContext::default(),
            &with(&[(VIRTIO_KEY, "mmio")]),
        )
        .unwrap_err();
        assert_eq!(err.kind(), imagestore::ErrorKind::InvalidArgument);
        assert!(tune(image(false), &pod_mmio, &with(&[])).is_ok());
    }

    #[test]
    fn base64_sets_as_urunc_writes_them_are_decoded() {
        // base64 of "firecracker" and "app --port 80".
        let info = tuned(
            &[],
            &[
                ("hypervisor", "ZmlyZWNyYWNrZXI="),
                ("cmdline", "YXBwIC0tcG9ydCA4MA=="),
            ],
        );
        assert_eq!(info.hypervisor, HypervisorKind::Firecracker);
        assert_eq!(info.cmdline, "app --port 80");
        // Without an enumerated key to tell, a value is plain text.
        assert_eq!(tuned(&[], &[("cmdline", "aGk=")]).cmdline, "aGk=");
    }

    #[test]
    fn unknown_keys_and_empty_values_are_ignored() {
        let info = tuned(
            &[("someFutureKey", "x\ny")],
            &[("cmdline", ""), ("another", "anything")],
        );
        assert_eq!(info, image(true).unikernel.unwrap());
    }

    #[test]
    fn bad_values_are_refused_naming_the_key_and_its_source() {
        for (pod_pairs, container, want) in [
            (
                &[("mountRootfs", "maybe")][..],
                &[][..],
                "pod annotation com.urunc.unikernel.mountRootfs",
            ),
            (
                &[],
                &[("binary", "/../../etc/passwd")],
                "container annotation com.urunc.unikernel.binary",
            ),
            (
                &[],
                &[("initrd", "a/../../i")],
                "container annotation com.urunc.unikernel.initrd",
            ),
            (
                &[],
                &[("hypervisor", "vbox")],
                "container annotation com.urunc.unikernel.hypervisor",
            ),
            (
                &[("cmdline", "a\ninit=/bin/sh")],
                &[],
                "pod annotation com.urunc.unikernel.cmdline",
            ),
            (
                &[],
                &[("blkMntPoint", "data")],
                "container annotation com.urunc.unikernel.blkMntPoint",
            ),
        ] {
            let err = tune(image(true), &pod(pod_pairs), &keys(container)).unwrap_err();
            assert_eq!(err.kind(), imagestore::ErrorKind::InvalidArgument, "{err}");
            assert!(err.to_string().contains(want), "{err} lacks {want}");
        }
    }

    #[test]
    fn annotations_do_not_make_an_ordinary_image_a_vm() {
        // A pod's keys are for its guest, not its sidecars.
        let plain = tune(
            image(false),
            &pod(&[("unikernelType", "linux")]),
            &keys(&[]),
        )
        .unwrap();
        assert!(plain.unikernel.is_none());
        // A container's own keys on an ordinary image are refused.
        let err = tune(
            image(false),
            &PodContext::default(),
            &keys(&[("unikernelType", "linux"), ("binary", "boot/vmlinuz")]),
        )
        .unwrap_err();
        assert_eq!(err.kind(), imagestore::ErrorKind::InvalidArgument);
        assert!(
            err.to_string()
                .contains("com.urunc.unikernel.binary: image example.test/app:1 is not"),
            "{err}"
        );
        // Unknown keys never count.
        tune(
            image(false),
            &PodContext::default(),
            &keys(&[("other", "x")]),
        )
        .unwrap();
    }
}
