//! Attachments made before their pod exists. The leading plugins of a list that depend on
//! nothing of the pod (see [`NetworkConfigList::pod_independent_head`]) can be ADDed ahead of
//! need under the id the pod will get; when the pod comes, only the rest of the chain runs,
//! with that head's result as `prevResult`, exactly as one ADD through the whole list would.

use std::path::Path;

use serde_json::{Map, Value};

use crate::cache::{self, CacheEntry};
use crate::{Attachment, Cni, CniError, CniResult, NetworkConfigList};

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
    /// `Ok(None)` when the list has no such head (then nothing was done). The cache entry is
    /// written first, so a crash leaves garbage collection what it needs for DEL.
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
        for ty in list.plugin_types() {
            self.exec.find(&ty)?;
        }
        // The pod is not known yet: only the id it will have.
        let args = format!("IgnoreUnknown=1;K8S_POD_INFRA_CONTAINER_ID={container_id}");
        let mut head_list = list.clone();
        head_list.plugins.truncate(head);
        let att = Attachment {
            container_id: container_id.to_owned(),
            netns: netns.to_owned(),
            ifname: ifname.to_owned(),
            pod: Default::default(),
            capabilities: Default::default(),
        };
        let mut entry = CacheEntry {
            kind: cache::KIND.into(),
            container_id: container_id.to_owned(),
            if_name: ifname.to_owned(),
            network_name: list.name.clone(),
            config: list.to_json(),
            cni_args: args.clone(),
            capability_args: Map::new(),
            result: Value::Null,
        };
        self.cache.write(&entry)?;
        match self
            .add_chain(&head_list, 0, None, &att, &args, &Map::new())
            .await
        {
            Ok(result) => {
                entry.result = result.clone();
                self.cache.write(&entry)?;
                Ok(Some(Prepared { list, head, result }))
            }
            Err(e) => {
                self.undo(&entry, netns).await;
                Err(e)
            }
        }
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
        for ty in list.plugin_types() {
            self.exec.find(&ty)?;
        }
        let args = att.pod.to_cni_args()?;
        let caps = att.capabilities.to_map();
        let mut entry = CacheEntry {
            kind: cache::KIND.into(),
            container_id: att.container_id.clone(),
            if_name: att.ifname.clone(),
            network_name: list.name.clone(),
            config: list.to_json(),
            cni_args: args.clone(),
            capability_args: caps.clone(),
            result: prepared.result.clone(),
        };
        self.cache.write(&entry)?;
        let outcome = self
            .add_chain(
                &list,
                prepared.head,
                Some(prepared.result),
                att,
                &args,
                &caps,
            )
            .await
            .and_then(|result| {
                CniResult::parse(&result)
                    .map(|parsed| (result, parsed))
                    .map_err(|reason| CniError::BadResult {
                        plugin: list.plugin_types().last().cloned().unwrap_or_default(),
                        reason,
                    })
            });
        match outcome {
            Ok((result, parsed)) => {
                entry.result = result;
                self.cache.write(&entry)?;
                Ok(parsed)
            }
            Err(e) => {
                self.undo(&entry, &att.netns).await;
                Err(e)
            }
        }
    }
}
