//! Attachments made before their pod exists. The leading plugins of a list that depend on
//! nothing of the pod (see [`NetworkConfigList::pod_independent_head`]) can be ADDed ahead of
//! need under the id the pod will get; when the pod comes, only the rest of the chain runs,
//! with that head's result as `prevResult`, exactly as one ADD through the whole list would.

use std::path::Path;

use serde_json::Value;

use crate::{Attachment, Cni, CniError, CniResult, NetworkConfigList, PodArgs};

/// The head of a list already ADDed for a future pod: its result and the list it came from.
#[derive(Debug, Clone)]
pub struct Prepared {
    list: NetworkConfigList,
    head: usize,
    result: Value,
}

impl Prepared {
    /// Whether `list` is the list this attachment was prepared with.
    pub fn matches(&self, list: &NetworkConfigList) -> bool {
        self.list.name == list.name && self.list.to_json() == list.to_json()
    }
}

impl Cni {
    /// ADDs the pod-independent head of the current list for `container_id` in `netns`.
    /// `Ok(None)` when the list has no such head (then nothing was done). As with
    /// [`Cni::add`], the cache entry is written first (a crash leaves garbage collection what
    /// it needs for DEL) and a failure is undone.
    pub async fn prepare(
        &self,
        container_id: &str,
        netns: &Path,
        ifname: &str,
    ) -> Result<Option<Prepared>, CniError> {
        let list = self.network()?;
        let head = list.pod_independent_head();
        if head == 0 {
            return Ok(None);
        }
        // The pod is not known yet: only the id it will have. Until it comes, the attachment
        // is the head alone (DEL of a prepared network runs only the head's plugins).
        let mut head_list = list.clone();
        head_list.plugins.truncate(head);
        let att = Attachment {
            container_id: container_id.to_owned(),
            netns: netns.to_owned(),
            ifname: ifname.to_owned(),
            pod: PodArgs {
                infra_container_id: container_id.to_owned(),
                ..Default::default()
            },
            capabilities: Default::default(),
        };
        let (result, _) = self.add_from(&head_list, 0, None, &att).await?;
        Ok(Some(Prepared { list, head, result }))
    }

    /// Finishes a prepared attachment for its pod: the rest of the chain with the pod's
    /// arguments and capabilities. When the network configuration changed since, the prepared
    /// head is DELeted and the whole current list ADDed instead. On failure everything is
    /// undone, as with [`Cni::add`].
    pub async fn add_prepared(
        &self,
        att: &Attachment,
        prepared: Prepared,
    ) -> Result<CniResult, CniError> {
        let list = self.network()?;
        if !prepared.matches(&list) {
            tracing::info!(container_id = %att.container_id, "network configuration changed since the attachment was prepared; attaching anew");
            self.del(&att.container_id, Some(&att.netns), &att.ifname, &att.pod)
                .await?;
            return self.add(att).await;
        }
        match self
            .add_from(&list, prepared.head, Some(prepared.result), att)
            .await
        {
            Ok((_, parsed)) => Ok(parsed),
            Err(e) => {
                // A failure before the rest of the chain ran (a plugin missing, bad pod
                // arguments) left the prepared head attached: DEL it too.
                if self.cache.find(&att.container_id, &att.ifname).is_some() {
                    if let Err(del) = self
                        .del(&att.container_id, Some(&att.netns), &att.ifname, &att.pod)
                        .await
                    {
                        tracing::warn!(container_id = %att.container_id, error = %del, "DEL of a prepared attachment failed");
                    }
                }
                Err(e)
            }
        }
    }
}
