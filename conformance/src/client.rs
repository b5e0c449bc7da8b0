//! Connecting to a CRI endpoint (`unix:///path` or a bare path) over gRPC.

use std::time::Duration;

use anyhow::Context;
use hyper_util::rt::TokioIo;
use proto::cri;
use proto::cri::image_service_client::ImageServiceClient;
use proto::cri::runtime_service_client::RuntimeServiceClient;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// Both CRI clients over one channel.
#[derive(Clone)]
pub struct Cri {
    pub runtime: RuntimeServiceClient<Channel>,
    pub images: ImageServiceClient<Channel>,
    pub endpoint: String,
}

const MAX_MESSAGE: usize = 16 * 1024 * 1024;

impl Cri {
    pub async fn connect(endpoint: &str) -> anyhow::Result<Cri> {
        let path = endpoint
            .strip_prefix("unix://")
            .unwrap_or(endpoint)
            .to_owned();
        let channel =
            Endpoint::try_from("http://[::]:50051")?
                .connect_timeout(Duration::from_secs(5))
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?))
                    }
                }))
                .await
                .with_context(|| format!("cannot connect to {endpoint}"))?;
        Ok(Cri {
            runtime: RuntimeServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            images: ImageServiceClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            endpoint: endpoint.to_owned(),
        })
    }

    /// Stops and removes a pod, ignoring errors: cleanup after the checks are made, when the pod
    /// may be gone already.
    pub async fn discard_pod(&self, id: &str) {
        let mut rt = self.runtime.clone();
        let _ = rt
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await;
        let _ = rt
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await;
    }
}
