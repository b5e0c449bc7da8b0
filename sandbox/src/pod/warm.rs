//! Pod networks made ahead of need. Attaching a pod to a bridge network is most of a pod's
//! start (the Go `bridge` plugin, host-local IPAM, the iptables calls of `ipMasq`), and none of
//! it depends on the pod when the list starts with pod-independent plugins (see
//! `NetworkConfigList::pod_independent_head`). So a few network namespaces are kept pinned at
//! `<state>/netns/<id>` with that head already ADDed under `<id>`, the id the pod that takes
//! one gets; the rest of the chain (portmap, bandwidth... with the pod's arguments) runs when
//! the pod comes. Lists with no such head are never prepared.
//!
//! Each prepared network holds an address and a veth while it waits. A crash leaves them to
//! the restart: their pins belong to no pod and their cache entries to no attachment, so
//! recovery unpins and garbage collection DELs them.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cni::netns::NsKind;
use cni::{Cni, PodArgs, Prepared};

use crate::error::SandboxError;
use crate::id::new_id;
use crate::pod::POD_IFNAME;
use crate::prepared_pool::Ready;
use crate::sys::PodSys;

/// How long a refill waits after a network was taken, so it does not compete for the CPU with
/// the container start that usually follows the pod's.
const REFILL_DELAY: Duration = Duration::from_millis(100);

/// A network namespace with the head of the list ADDed, waiting for a pod with id `id`.
#[derive(Debug)]
pub struct WarmNet {
    pub id: String,
    pub netns: PathBuf,
    pub prepared: Prepared,
}

/// The prepared networks and their refilling.
pub struct WarmPool {
    size: usize,
    state: PathBuf,
    cni: Arc<Cni>,
    sys: Arc<dyn PodSys>,
    ready: Ready<WarmNet>,
    closed: AtomicBool,
}

impl WarmPool {
    pub fn new(size: usize, state: PathBuf, cni: Arc<Cni>, sys: Arc<dyn PodSys>) -> WarmPool {
        WarmPool {
            size,
            state,
            cni,
            sys,
            ready: Ready::new(),
            closed: AtomicBool::new(false),
        }
    }

    /// How many prepared networks are waiting.
    pub fn waiting(&self) -> usize {
        self.ready.waiting()
    }

    /// The oldest prepared network, if any. One prepared with an older configuration is
    /// attached anew by `Cni::add_prepared`; the next refill releases the others.
    pub fn take(&self) -> Option<WarmNet> {
        self.ready.take()
    }

    /// Tops the pool up in a background task (one at a time), after `delay`.
    pub fn refill(self: &Arc<Self>, delay: Duration) {
        if self.size == 0 || self.closed.load(Ordering::SeqCst) {
            return;
        }
        let this = self.clone();
        self.ready.refill(delay, move || {
            let this = this.clone();
            async move { this.fill().await }
        });
    }

    /// [`WarmPool::refill`] after a network was taken.
    pub fn refill_after_take(self: &Arc<Self>) {
        self.refill(REFILL_DELAY);
    }

    async fn fill(&self) {
        let Ok(list) = self.cni.network() else {
            return;
        };
        let stale: Vec<WarmNet> = {
            let mut ready = self.ready.entries();
            let (fit, stale) = std::mem::take(&mut *ready)
                .into_iter()
                .partition(|net| net.prepared.matches(&list));
            *ready = fit;
            stale
        };
        if !stale.is_empty() {
            tracing::info!(
                count = stale.len(),
                "network configuration changed; releasing the pod networks prepared with the old one"
            );
            for net in stale {
                self.release(net).await;
            }
        }
        if list.pod_independent_head() == 0 {
            return;
        }
        while self.waiting() < self.size && !self.closed.load(Ordering::SeqCst) {
            match self.make().await {
                Ok(Some(net)) => {
                    if self.closed.load(Ordering::SeqCst) {
                        self.release(net).await;
                        return;
                    }
                    tracing::debug!(pod_sandbox_id = %net.id, "pod network prepared");
                    self.ready.entries().push(net);
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot prepare a pod network ahead of need");
                    return;
                }
            }
        }
    }

    /// One prepared network, or `None` when the current list (changed since `fill` looked) has
    /// no pod-independent head.
    async fn make(&self) -> Result<Option<WarmNet>, SandboxError> {
        let id = new_id()?;
        let netns = self.state.join("netns").join(&id);
        let pins = vec![(NsKind::Net, netns.clone())];
        let sys = self.sys.clone();
        tokio::task::spawn_blocking(move || sys.create_namespaces(&pins, None))
            .await
            .map_err(|e| SandboxError::FailedPrecondition {
                reason: format!("namespace task failed: {e}"),
            })??;
        match self.cni.prepare(&id, &netns, POD_IFNAME).await {
            Ok(Some(prepared)) => Ok(Some(WarmNet {
                id,
                netns,
                prepared,
            })),
            outcome => {
                // Failed (and undone by CNI) or nothing to prepare: the namespace goes.
                let _ = self.sys.remove_pin(&netns);
                outcome.map(|_| None).map_err(SandboxError::Network)
            }
        }
    }

    /// DEL of a prepared network and its namespace.
    pub async fn release(&self, net: WarmNet) {
        if let Err(e) = self
            .cni
            .del(&net.id, Some(&net.netns), POD_IFNAME, &PodArgs::default())
            .await
        {
            tracing::warn!(pod_sandbox_id = %net.id, error = %e, "cannot release a prepared pod network");
        }
        if let Err(e) = self.sys.remove_pin(&net.netns) {
            tracing::warn!(pod_sandbox_id = %net.id, error = %e, "cannot remove a prepared network namespace");
        }
    }

    /// Stops refilling and releases every prepared network (at shutdown).
    pub async fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        // A fill in progress sees `closed` and releases what it makes.
        for _ in 0..200 {
            if !self.ready.filling() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let nets: Vec<WarmNet> = std::mem::take(&mut *self.ready.entries());
        for net in nets {
            self.release(net).await;
        }
    }
}
