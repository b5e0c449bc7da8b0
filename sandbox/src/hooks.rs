//! Lifecycle hooks: what [`crate::Runtime`] tells an observer at each step of a pod's and a
//! container's life, and where that observer may adjust a container being created or its
//! new resources (NRI plugins, through `crid`). Domain types only; the observer's protocol is
//! its own business. An `Err` from a hook that may refuse fails the CRI call, its text and
//! sources ending the call's message.

use std::future::Future;
use std::pin::Pin;

use crate::container::{ContainerConfig, ContainerRecord, Resources};
pub use crate::error::HookError;
use crate::pod::PodRecord;

pub type HookFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Container events that only inform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerHook {
    PostCreate,
    /// Before the container's process starts.
    Start,
    PostStart,
    /// Once per container: stopped by request or exited by itself.
    Stop,
    Remove,
    PostUpdate,
}

pub trait Hooks: Send + Sync + 'static {
    /// The pod is set up and not yet visible; an error removes it again.
    fn run_pod<'a>(&'a self, pod: &'a PodRecord) -> HookFuture<'a, Result<(), HookError>>;
    /// The pod's containers are stopped; its network is still there.
    fn stop_pod<'a>(&'a self, pod: &'a PodRecord) -> HookFuture<'a, ()>;
    fn remove_pod<'a>(&'a self, pod: &'a PodRecord) -> HookFuture<'a, ()>;
    /// The pod's resources change (CRI `UpdatePodSandboxResources`); an error fails it.
    fn update_pod<'a>(
        &'a self,
        pod: &'a PodRecord,
        overhead: Option<&'a Resources>,
        resources: Option<&'a Resources>,
    ) -> HookFuture<'a, Result<(), HookError>>;
    /// The pod's resources changed.
    fn post_update_pod<'a>(&'a self, pod: &'a PodRecord) -> HookFuture<'a, ()>;
    /// The container `id` is about to be created from `config`, which the hook may change;
    /// an error stops the creation.
    fn create_container<'a>(
        &'a self,
        pod: &'a PodRecord,
        id: &'a str,
        config: &'a mut ContainerConfig,
    ) -> HookFuture<'a, Result<(), HookError>>;
    /// New resources for a container, which the hook may change; an error stops the update.
    fn update_container<'a>(
        &'a self,
        pod: &'a PodRecord,
        container: &'a ContainerRecord,
        resources: &'a mut Resources,
    ) -> HookFuture<'a, Result<(), HookError>>;
    fn container_event<'a>(
        &'a self,
        event: ContainerHook,
        pod: &'a PodRecord,
        container: &'a ContainerRecord,
    ) -> HookFuture<'a, ()>;
}
