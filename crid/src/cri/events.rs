//! `GetContainerEvents`: the container manager's events as CRI events, each carrying the pod's
//! status and those of all the pod's containers.

use std::pin::Pin;

use futures::Stream;
use proto::cri;
use sandbox::container::{ContainerEvent, ContainerFilter, EventKind};
use tonic::Status;

use crate::cri::container::status_to_cri;
use crate::state::State;

pub type EventStream =
    Pin<Box<dyn Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send + 'static>>;

/// An event with the pod's status and the statuses of all the pod's containers, as kubelet's
/// evented PLEG expects.
fn event_to_cri(
    e: &ContainerEvent,
    pods: &sandbox::pod::PodManager,
    containers: &sandbox::container::ContainerManager,
) -> cri::ContainerEventResponse {
    let mut statuses: Vec<cri::ContainerStatus> = containers
        .list(&ContainerFilter {
            pod_id: e.pod_id.clone(),
            ..Default::default()
        })
        .iter()
        .filter(|r| !r.config.pod_infra && r.id != e.container_id)
        .map(status_to_cri)
        .collect();
    statuses.insert(0, status_to_cri(&e.record));
    cri::ContainerEventResponse {
        container_id: e.container_id.clone(),
        container_event_type: (match e.kind {
            EventKind::Created => cri::ContainerEventType::ContainerCreatedEvent,
            EventKind::Started => cri::ContainerEventType::ContainerStartedEvent,
            EventKind::Stopped => cri::ContainerEventType::ContainerStoppedEvent,
            EventKind::Deleted => cri::ContainerEventType::ContainerDeletedEvent,
        }) as i32,
        created_at: e.at,
        pod_sandbox_status: pods
            .get(&e.pod_id)
            .ok()
            .map(|p| crate::cri::pod::status_to_cri(&p)),
        containers_statuses: statuses,
    }
}

pub async fn get_container_events(
    state: &State,
    _r: cri::GetEventsRequest,
) -> Result<EventStream, Status> {
    let rx = state.containers.subscribe();
    let pods = state.pods.clone();
    let containers = state.containers.clone();
    let stream = futures::stream::unfold(rx, move |mut rx| {
        let (pods, containers) = (pods.clone(), containers.clone());
        async move {
            loop {
                match rx.recv().await {
                    Ok(e) if e.record.config.pod_infra => {}
                    Ok(e) => return Some((Ok(event_to_cri(&e, &pods, &containers)), rx)),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "container event subscriber lagged");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    });
    Ok(Box::pin(stream))
}
