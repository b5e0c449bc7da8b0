//! The CRI v1 gRPC layer: thin handlers that validate and convert each request into a call on a
//! domain crate and convert the answer back. Errors become `tonic::Status` only in
//! [`error::to_status`]. Handlers are grouped by resource, not by RPC.

pub mod container;
pub mod convert;
pub mod error;
pub mod events;
pub mod image;
pub mod pod;
pub mod runtime;
pub mod streaming;

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use proto::cri;
use proto::cri::image_service_server::ImageService;
use proto::cri::runtime_service_server::RuntimeService;
use tonic::{Request, Response, Status};

use crate::metrics::Metrics;
use crate::state::State;

/// Serves both CRI services over one shared daemon state.
#[derive(Clone)]
pub struct CriService {
    state: Arc<State>,
    metrics: Arc<Metrics>,
}

impl CriService {
    pub fn new(state: Arc<State>, metrics: Arc<Metrics>) -> Self {
        CriService { state, metrics }
    }
}

type Reply<T> = Result<Response<T>, Status>;

/// The answer of a `Stream*` RPC (Kubernetes 1.36, `CRIListStreaming`).
type ListStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Items per response of a `Stream*` RPC. A pod or container may carry 512 KiB of labels and
/// annotations (see [`convert::MAX_METADATA_BYTES`]), so 16 of them stay well under the 16 MiB
/// gRPC message limit that the plain `List*` answers can exceed.
const STREAM_CHUNK: usize = 16;

/// A list answer as the stream CRI asks for: responses of at least one item each, every item
/// once, then the end of the stream (no response at all for an empty list).
fn list_stream<I: Send + 'static, T: Send + 'static>(
    items: Vec<I>,
    wrap: fn(Vec<I>) -> T,
) -> ListStream<T> {
    let mut items = items.into_iter();
    let mut replies = Vec::new();
    loop {
        let chunk: Vec<I> = items.by_ref().take(STREAM_CHUNK).collect();
        if chunk.is_empty() {
            break;
        }
        replies.push(Ok(wrap(chunk)));
    }
    Box::pin(futures::stream::iter(replies))
}

/// Records the ids of a request on the current RPC span.
fn record(field: &str, value: &str) {
    tracing::Span::current().record(field, value);
}

#[tonic::async_trait]
impl RuntimeService for CriService {
    async fn version(&self, r: Request<cri::VersionRequest>) -> Reply<cri::VersionResponse> {
        runtime::version(&self.state, r.into_inner()).map(Response::new)
    }

    async fn run_pod_sandbox(
        &self,
        r: Request<cri::RunPodSandboxRequest>,
    ) -> Reply<cri::RunPodSandboxResponse> {
        pod::run_pod_sandbox(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }

    async fn stop_pod_sandbox(
        &self,
        r: Request<cri::StopPodSandboxRequest>,
    ) -> Reply<cri::StopPodSandboxResponse> {
        let r = r.into_inner();
        record("pod_sandbox_id", &r.pod_sandbox_id);
        pod::stop_pod_sandbox(&self.state, r)
            .await
            .map(Response::new)
    }

    async fn remove_pod_sandbox(
        &self,
        r: Request<cri::RemovePodSandboxRequest>,
    ) -> Reply<cri::RemovePodSandboxResponse> {
        let r = r.into_inner();
        record("pod_sandbox_id", &r.pod_sandbox_id);
        pod::remove_pod_sandbox(&self.state, r)
            .await
            .map(Response::new)
    }

    async fn pod_sandbox_status(
        &self,
        r: Request<cri::PodSandboxStatusRequest>,
    ) -> Reply<cri::PodSandboxStatusResponse> {
        let r = r.into_inner();
        record("pod_sandbox_id", &r.pod_sandbox_id);
        pod::pod_sandbox_status(&self.state, r)
            .await
            .map(Response::new)
    }

    async fn list_pod_sandbox(
        &self,
        r: Request<cri::ListPodSandboxRequest>,
    ) -> Reply<cri::ListPodSandboxResponse> {
        pod::list_pod_sandbox(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }

    async fn create_container(
        &self,
        r: Request<cri::CreateContainerRequest>,
    ) -> Reply<cri::CreateContainerResponse> {
        let r = r.into_inner();
        record("pod_sandbox_id", &r.pod_sandbox_id);
        container::create_container(&self.state, r)
            .await
            .map(Response::new)
    }

    async fn start_container(
        &self,
        r: Request<cri::StartContainerRequest>,
    ) -> Reply<cri::StartContainerResponse> {
        let r = r.into_inner();
        record("container_id", &r.container_id);
        container::start_container(&self.state, &self.metrics, r)
            .await
            .map(Response::new)
    }

    async fn stop_container(
        &self,
        r: Request<cri::StopContainerRequest>,
    ) -> Reply<cri::StopContainerResponse> {
        let r = r.into_inner();
        record("container_id", &r.container_id);
        container::stop_container(&self.state, r)
            .await
            .map(Response::new)
    }

    async fn remove_container(
        &self,
        r: Request<cri::RemoveContainerRequest>,
    ) -> Reply<cri::RemoveContainerResponse> {
        let r = r.into_inner();
        record("container_id", &r.container_id);
        container::remove_container(&self.state, r)
            .await
            .map(Response::new)
    }

    async fn list_containers(
        &self,
        r: Request<cri::ListContainersRequest>,
    ) -> Reply<cri::ListContainersResponse> {
        container::list_containers(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }

    async fn container_status(
        &self,
        r: Request<cri::ContainerStatusRequest>,
    ) -> Reply<cri::ContainerStatusResponse> {
        let r = r.into_inner();
        record("container_id", &r.container_id);
        container::container_status(&self.state, r)
            .await
            .map(Response::new)
    }

    async fn update_container_resources(
        &self,
        r: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Reply<cri::UpdateContainerResourcesResponse> {
        let r = r.into_inner();
        record("container_id", &r.container_id);
        container::update_container_resources(&self.state, r)
            .await
            .map(Response::new)
    }

    async fn reopen_container_log(
        &self,
        r: Request<cri::ReopenContainerLogRequest>,
    ) -> Reply<cri::ReopenContainerLogResponse> {
        let r = r.into_inner();
        record("container_id", &r.container_id);
        container::reopen_container_log(&self.state, r)
            .await
            .map(Response::new)
    }

    async fn exec_sync(&self, r: Request<cri::ExecSyncRequest>) -> Reply<cri::ExecSyncResponse> {
        let r = r.into_inner();
        record("container_id", &r.container_id);
        container::exec_sync(&self.state, r)
            .await
            .map(Response::new)
    }

    async fn exec(&self, r: Request<cri::ExecRequest>) -> Reply<cri::ExecResponse> {
        let r = r.into_inner();
        record("container_id", &r.container_id);
        streaming::exec(&self.state, r).await.map(Response::new)
    }

    async fn attach(&self, r: Request<cri::AttachRequest>) -> Reply<cri::AttachResponse> {
        let r = r.into_inner();
        record("container_id", &r.container_id);
        streaming::attach(&self.state, r).await.map(Response::new)
    }

    async fn port_forward(
        &self,
        r: Request<cri::PortForwardRequest>,
    ) -> Reply<cri::PortForwardResponse> {
        let r = r.into_inner();
        record("pod_sandbox_id", &r.pod_sandbox_id);
        streaming::port_forward(&self.state, r)
            .await
            .map(Response::new)
    }

    async fn container_stats(
        &self,
        r: Request<cri::ContainerStatsRequest>,
    ) -> Reply<cri::ContainerStatsResponse> {
        let r = r.into_inner();
        record("container_id", &r.container_id);
        container::container_stats(&self.state, r)
            .await
            .map(Response::new)
    }

    async fn list_container_stats(
        &self,
        r: Request<cri::ListContainerStatsRequest>,
    ) -> Reply<cri::ListContainerStatsResponse> {
        container::list_container_stats(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }

    async fn pod_sandbox_stats(
        &self,
        r: Request<cri::PodSandboxStatsRequest>,
    ) -> Reply<cri::PodSandboxStatsResponse> {
        let r = r.into_inner();
        record("pod_sandbox_id", &r.pod_sandbox_id);
        pod::pod_sandbox_stats(&self.state, r)
            .await
            .map(Response::new)
    }

    async fn list_pod_sandbox_stats(
        &self,
        r: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Reply<cri::ListPodSandboxStatsResponse> {
        pod::list_pod_sandbox_stats(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }

    async fn update_runtime_config(
        &self,
        r: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Reply<cri::UpdateRuntimeConfigResponse> {
        runtime::update_runtime_config(r.into_inner()).map(Response::new)
    }

    async fn status(&self, r: Request<cri::StatusRequest>) -> Reply<cri::StatusResponse> {
        runtime::status(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }

    async fn checkpoint_container(
        &self,
        r: Request<cri::CheckpointContainerRequest>,
    ) -> Reply<cri::CheckpointContainerResponse> {
        record("container_id", &r.get_ref().container_id);
        Err(Status::unimplemented(
            "crid does not support container checkpoints",
        ))
    }

    type GetContainerEventsStream = ListStream<cri::ContainerEventResponse>;

    async fn get_container_events(
        &self,
        r: Request<cri::GetEventsRequest>,
    ) -> Reply<Self::GetContainerEventsStream> {
        events::get_container_events(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_metric_descriptors(
        &self,
        _r: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Reply<cri::ListMetricDescriptorsResponse> {
        Ok(Response::new(pod::list_metric_descriptors()))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _r: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Reply<cri::ListPodSandboxMetricsResponse> {
        pod::list_pod_sandbox_metrics(&self.state)
            .await
            .map(Response::new)
    }

    async fn runtime_config(
        &self,
        r: Request<cri::RuntimeConfigRequest>,
    ) -> Reply<cri::RuntimeConfigResponse> {
        runtime::runtime_config(&self.state, r.into_inner()).map(Response::new)
    }

    async fn update_pod_sandbox_resources(
        &self,
        r: Request<cri::UpdatePodSandboxResourcesRequest>,
    ) -> Reply<cri::UpdatePodSandboxResourcesResponse> {
        let r = r.into_inner();
        record("pod_sandbox_id", &r.pod_sandbox_id);
        pod::update_pod_sandbox_resources(&self.state, r)
            .await
            .map(Response::new)
    }

    type StreamPodSandboxesStream = ListStream<cri::StreamPodSandboxesResponse>;

    async fn stream_pod_sandboxes(
        &self,
        r: Request<cri::StreamPodSandboxesRequest>,
    ) -> Reply<Self::StreamPodSandboxesStream> {
        let filter = r.into_inner().filter;
        let list =
            pod::list_pod_sandbox(&self.state, cri::ListPodSandboxRequest { filter }).await?;
        Ok(Response::new(list_stream(list.items, |pod_sandboxes| {
            cri::StreamPodSandboxesResponse { pod_sandboxes }
        })))
    }

    type StreamContainersStream = ListStream<cri::StreamContainersResponse>;

    async fn stream_containers(
        &self,
        r: Request<cri::StreamContainersRequest>,
    ) -> Reply<Self::StreamContainersStream> {
        let filter = r.into_inner().filter;
        let list =
            container::list_containers(&self.state, cri::ListContainersRequest { filter }).await?;
        Ok(Response::new(list_stream(list.containers, |containers| {
            cri::StreamContainersResponse { containers }
        })))
    }

    type StreamContainerStatsStream = ListStream<cri::StreamContainerStatsResponse>;

    async fn stream_container_stats(
        &self,
        r: Request<cri::StreamContainerStatsRequest>,
    ) -> Reply<Self::StreamContainerStatsStream> {
        let filter = r.into_inner().filter;
        let list =
            container::list_container_stats(&self.state, cri::ListContainerStatsRequest { filter })
                .await?;
        Ok(Response::new(list_stream(list.stats, |container_stats| {
            cri::StreamContainerStatsResponse { container_stats }
        })))
    }

    type StreamPodSandboxStatsStream = ListStream<cri::StreamPodSandboxStatsResponse>;

    async fn stream_pod_sandbox_stats(
        &self,
        r: Request<cri::StreamPodSandboxStatsRequest>,
    ) -> Reply<Self::StreamPodSandboxStatsStream> {
        let filter = r.into_inner().filter;
        let list =
            pod::list_pod_sandbox_stats(&self.state, cri::ListPodSandboxStatsRequest { filter })
                .await?;
        Ok(Response::new(list_stream(
            list.stats,
            |pod_sandbox_stats| cri::StreamPodSandboxStatsResponse { pod_sandbox_stats },
        )))
    }

    type StreamPodSandboxMetricsStream = ListStream<cri::StreamPodSandboxMetricsResponse>;

    async fn stream_pod_sandbox_metrics(
        &self,
        _r: Request<cri::StreamPodSandboxMetricsRequest>,
    ) -> Reply<Self::StreamPodSandboxMetricsStream> {
        let list = pod::list_pod_sandbox_metrics(&self.state).await?;
        Ok(Response::new(list_stream(
            list.pod_metrics,
            |pod_sandbox_metrics| cri::StreamPodSandboxMetricsResponse {
                pod_sandbox_metrics,
            },
        )))
    }
}

#[tonic::async_trait]
impl ImageService for CriService {
    async fn list_images(
        &self,
        r: Request<cri::ListImagesRequest>,
    ) -> Reply<cri::ListImagesResponse> {
        image::list_images(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }

    async fn image_status(
        &self,
        r: Request<cri::ImageStatusRequest>,
    ) -> Reply<cri::ImageStatusResponse> {
        image::image_status(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }

    async fn pull_image(&self, r: Request<cri::PullImageRequest>) -> Reply<cri::PullImageResponse> {
        image::pull_image(&self.state, &self.metrics, r)
            .await
            .map(Response::new)
    }

    async fn remove_image(
        &self,
        r: Request<cri::RemoveImageRequest>,
    ) -> Reply<cri::RemoveImageResponse> {
        image::remove_image(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }

    async fn image_fs_info(
        &self,
        r: Request<cri::ImageFsInfoRequest>,
    ) -> Reply<cri::ImageFsInfoResponse> {
        image::image_fs_info(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }

    type StreamImagesStream = ListStream<cri::StreamImagesResponse>;

    async fn stream_images(
        &self,
        r: Request<cri::StreamImagesRequest>,
    ) -> Reply<Self::StreamImagesStream> {
        let filter = r.into_inner().filter;
        let list = image::list_images(&self.state, cri::ListImagesRequest { filter }).await?;
        Ok(Response::new(list_stream(list.images, |images| {
            cri::StreamImagesResponse { images }
        })))
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::{STREAM_CHUNK, list_stream};

    #[tokio::test]
    async fn list_streams_send_every_item_once_in_non_empty_chunks() {
        for n in [0, 1, STREAM_CHUNK, STREAM_CHUNK + 1, 3 * STREAM_CHUNK + 5] {
            let replies: Vec<Vec<usize>> = list_stream((0..n).collect(), |v| v)
                .map(Result::unwrap)
                .collect()
                .await;
            assert!(
                replies
                    .iter()
                    .all(|r| !r.is_empty() && r.len() <= STREAM_CHUNK)
            );
            assert_eq!(replies.concat(), (0..n).collect::<Vec<_>>(), "{n} items");
        }
    }
}
