//! Prometheus metrics through the `prometheus` crate: a text endpoint (`GET /metrics`, off
//! unless `metrics.address` is set) over a tiny HTTP/1.1 server, fed by a tower layer around
//! the gRPC services (RPC counts and latency by method and code), by the image pull handler, by
//! a VMM boot-time hook, at scrape time by the pod and container managers, and by the crate's
//! process collector (`process_*`: CPU, resident and virtual memory, open and maximum
//! descriptors, threads, start time).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use tonic::codegen::http;

use crate::state::State;

/// Upper bounds (seconds) of the RPC latency buckets.
const RPC_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// Upper bounds (seconds) of the image pull and VMM boot buckets.
const SLOW_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// crid's metrics and the registry that exposes them.
pub struct Metrics {
    registry: Registry,
    /// `crid_grpc_request_duration_seconds`; its `_count` is the RPC count.
    rpc_duration: HistogramVec,
    /// `crid_grpc_requests_total`, the same count under the name dashboards expect.
    rpc_total: prometheus::IntCounterVec,
    pull_duration: HistogramVec,
    pull_bytes: IntCounter,
    vm_boot: HistogramVec,
    pods: IntGaugeVec,
    containers: IntGaugeVec,
    prepared_networks: IntGauge,
}

fn histogram(name: &str, help: &str, buckets: &[f64], labels: &[&str]) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .unwrap_or_else(|e| panic!("metric {name}: {e}"))
}

fn gauges(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("metric {name}: {e}"))
}

impl Metrics {
    /// All of crid's metrics, registered; with `process`, the process collector too.
    /// Panics only on a malformed metric definition here (caught by the unit tests).
    pub fn new(process: bool) -> Metrics {
        let m = Metrics {
            registry: Registry::new(),
            rpc_duration: histogram(
                "crid_grpc_request_duration_seconds",
                "CRI RPC latency, by method and gRPC code.",
                RPC_BUCKETS,
                &["method", "code"],
            ),
            rpc_total: prometheus::IntCounterVec::new(
                Opts::new(
                    "crid_grpc_requests_total",
                    "CRI RPCs handled, by method and gRPC code.",
                ),
                &["method", "code"],
            )
            .unwrap_or_else(|e| panic!("metric crid_grpc_requests_total: {e}")),
            pull_duration: histogram(
                "crid_image_pull_duration_seconds",
                "PullImage duration, by result.",
                SLOW_BUCKETS,
                &["result"],
            ),
            pull_bytes: IntCounter::new(
                "crid_image_pull_bytes_total",
                "Size of the images pulled successfully.",
            )
            .unwrap_or_else(|e| panic!("metric crid_image_pull_bytes_total: {e}")),
            vm_boot: histogram(
                "crid_vm_boot_duration_seconds",
                "Time from StartContainer until the VMM runs the guest, by VMM.",
                SLOW_BUCKETS,
                &["vmm"],
            ),
            pods: gauges(
                "crid_pods",
                "Pod sandboxes, by state and runtime handler.",
                &["state", "handler"],
            ),
            containers: gauges(
                "crid_containers",
                "Containers, by state and runtime handler of their pod.",
                &["state", "handler"],
            ),
            prepared_networks: IntGauge::new(
                "crid_prepared_pod_networks",
                "Pod networks prepared ahead of need and waiting for a pod.",
            )
            .unwrap_or_else(|e| panic!("metric crid_prepared_pod_networks: {e}")),
        };
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.rpc_duration.clone()),
            Box::new(m.rpc_total.clone()),
            Box::new(m.pull_duration.clone()),
            Box::new(m.pull_bytes.clone()),
            Box::new(m.vm_boot.clone()),
            Box::new(m.pods.clone()),
            Box::new(m.containers.clone()),
            Box::new(m.prepared_networks.clone()),
        ];
        for c in collectors {
            m.registry
                .register(c)
                .unwrap_or_else(|e| panic!("registering a metric: {e}"));
        }
        if process {
            m.registry
                .register(Box::new(
                    prometheus::process_collector::ProcessCollector::for_self(),
                ))
                .unwrap_or_else(|e| panic!("registering the process collector: {e}"));
        }
        m
    }

    /// One finished RPC.
    pub fn observe_rpc(&self, method: &str, code: tonic::Code, elapsed: Duration) {
        let code = format!("{code:?}");
        let labels = [method, code.as_str()];
        self.rpc_duration
            .with_label_values(&labels)
            .observe(elapsed.as_secs_f64());
        self.rpc_total.with_label_values(&labels).inc();
    }

    /// One finished `PullImage`; `bytes` is the image's size for a success.
    pub fn observe_pull(&self, success: bool, bytes: u64, elapsed: Duration) {
        let result = if success { "success" } else { "failure" };
        self.pull_duration
            .with_label_values(&[result])
            .observe(elapsed.as_secs_f64());
        self.pull_bytes.inc_by(bytes);
    }

    /// A VMM (`qemu`, `firecracker`, ...) took `elapsed` from StartContainer until it ran
    /// under its monitor with the guest loaded.
    pub fn observe_vm_boot(&self, vmm: &str, elapsed: Duration) {
        self.vm_boot
            .with_label_values(&[vmm])
            .observe(elapsed.as_secs_f64());
    }

    /// The Prometheus text exposition of everything recorded, with the pods and containers of
    /// `state` (when given) counted by state and runtime handler.
    pub fn render(&self, state: Option<&State>) -> String {
        if let Some(state) = state {
            self.count_objects(state);
        }
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Sets the pod and container gauges from the managers (series of states that no longer
    /// occur are dropped).
    fn count_objects(&self, state: &State) {
        let pods = state.pods.list(&Default::default());
        let handlers: std::collections::BTreeMap<&str, &str> = pods
            .iter()
            .map(|p| (p.id.as_str(), p.config.runtime_handler.as_str()))
            .collect();
        self.pods.reset();
        for p in &pods {
            let s = format!("{:?}", p.state).to_ascii_lowercase();
            self.pods
                .with_label_values(&[s.as_str(), p.config.runtime_handler.as_str()])
                .inc();
        }
        self.containers.reset();
        for c in state.containers.list(&Default::default()) {
            let handler = handlers.get(c.pod_id.as_str()).copied().unwrap_or_default();
            let s = format!("{:?}", c.state).to_ascii_lowercase();
            self.containers
                .with_label_values(&[s.as_str(), handler])
                .inc();
        }
        self.prepared_networks
            .set(i64::try_from(state.pods.prepared_networks()).unwrap_or(i64::MAX));
    }
}

/// The gRPC method label of a request path: the method name for CRI services, `other`
/// for anything else (so clients cannot grow the label set).
fn method_label(path: &str) -> String {
    match path.strip_prefix('/').and_then(|p| p.split_once('/')) {
        Some((service, method))
            if service.starts_with("runtime.v1.")
                && !method.is_empty()
                && method.len() <= 64
                && method.chars().all(|c| c.is_ascii_alphanumeric()) =>
        {
            method.to_owned()
        }
        _ => "other".to_owned(),
    }
}

/// The tower layer that times every RPC into `Metrics`.
#[derive(Clone)]
pub struct RpcLayer(pub Arc<Metrics>);

impl<S> tower::Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> RpcService<S> {
        RpcService {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RpcService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for RpcService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let method = method_label(req.uri().path());
        let start = Instant::now();
        let fut = self.inner.call(req);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let result = fut.await;
            // Failed unary calls are "trailers-only": the status is in the headers. A
            // success carries it in the trailers, after the body.
            let code = match &result {
                Ok(resp) => resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or(tonic::Code::Ok, tonic::Code::from),
                Err(_) => tonic::Code::Unknown,
            };
            metrics.observe_rpc(&method, code, start.elapsed());
            result
        })
    }
}

/// Starts the `/metrics` endpoint on `address` when it is not empty; returns the bound
/// address.
pub async fn serve(
    address: &str,
    metrics: Arc<Metrics>,
    state: Arc<State>,
) -> anyhow::Result<Option<std::net::SocketAddr>> {
    if address.is_empty() {
        return Ok(None);
    }
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot bind the metrics endpoint {address}"))?;
    let bound = listener.local_addr()?;
    tracing::info!(address = %bound, "serving Prometheus metrics on /metrics");
    let weak = Arc::downgrade(&state);
    drop(state);
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let weak = weak.clone();
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let state = weak.upgrade();
                    let metrics = metrics.clone();
                    async move { Ok::<_, Infallible>(respond(&req, &metrics, state.as_deref())) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc);
                // A scraper that stalls is dropped.
                let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
            });
        }
    });
    Ok(Some(bound))
}

fn respond(
    req: &Request<Incoming>,
    metrics: &Metrics,
    state: Option<&State>,
) -> Response<Full<Bytes>> {
    let (status, body, ct) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            metrics.render(state),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        (&Method::GET, _) => (
            StatusCode::NOT_FOUND,
            "not found\n".to_owned(),
            "text/plain",
        ),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".to_owned(),
            "text/plain",
        ),
    };
    Response::builder()
        .status(status)
        .header("Content-Type", ct)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the series `name{labels}` in `text`, labels in any order.
    fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        text.lines().find_map(|l| {
            let (series, v) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
            let found: Vec<&str> = rest
                .trim_end_matches('}')
                .split(',')
                .filter(|p| !p.is_empty())
                .collect();
            let want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            (n == name
                && found.len() == want.len()
                && want.iter().all(|w| found.contains(&w.as_str())))
            .then(|| v.parse().ok())?
        })
    }

    #[test]
    fn rpc_counts_and_histogram_buckets() {
        let m = Metrics::new(false);
        m.observe_rpc("Version", tonic::Code::Ok, Duration::from_millis(3));
        m.observe_rpc("Version", tonic::Code::Ok, Duration::from_millis(300));
        m.observe_rpc("Version", tonic::Code::NotFound, Duration::from_secs(1000));
        let text = m.render(None);
        let ok = [("method", "Version"), ("code", "Ok")];
        let nf = [("method", "Version"), ("code", "NotFound")];
        assert_eq!(
            value(&text, "crid_grpc_requests_total", &ok),
            Some(2.0),
            "{text}"
        );
        assert_eq!(value(&text, "crid_grpc_requests_total", &nf), Some(1.0));
        let bucket = |labels: &[(&'static str, &'static str)], le| {
            let mut l = labels.to_vec();
            l.push(("le", le));
            value(&text, "crid_grpc_request_duration_seconds_bucket", &l)
        };
        assert_eq!(bucket(&ok, "0.005"), Some(1.0));
        assert_eq!(bucket(&ok, "0.5"), Some(2.0));
        assert_eq!(bucket(&nf, "120"), Some(0.0));
        assert_eq!(bucket(&nf, "+Inf"), Some(1.0));
        assert_eq!(
            value(&text, "crid_grpc_request_duration_seconds_count", &ok),
            Some(2.0)
        );
    }

    #[test]
    fn pulls_and_vm_boots() {
        let m = Metrics::new(false);
        m.observe_pull(true, 1000, Duration::from_secs(2));
        m.observe_pull(false, 0, Duration::from_secs(1));
        m.observe_vm_boot("qemu", Duration::from_millis(700));
        let text = m.render(None);
        assert_eq!(
            value(&text, "crid_image_pull_bytes_total", &[]),
            Some(1000.0)
        );
        let count = |r| {
            value(
                &text,
                "crid_image_pull_duration_seconds_count",
                &[("result", r)],
            )
        };
        assert_eq!(count("success"), Some(1.0));
        assert_eq!(count("failure"), Some(1.0));
        assert_eq!(
            value(
                &text,
                "crid_vm_boot_duration_seconds_bucket",
                &[("vmm", "qemu"), ("le", "1")]
            ),
            Some(1.0)
        );
    }

    #[test]
    fn process_metrics_are_exposed() {
        let text = Metrics::new(true).render(None);
        for name in [
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            assert!(
                value(&text, name, &[]).is_some_and(|v| v > 0.0),
                "{name}: {text}"
            );
        }
        // A fresh test process may not have used a whole clock tick yet.
        assert!(
            value(&text, "process_cpu_seconds_total", &[]).is_some(),
            "{text}"
        );
    }

    #[test]
    fn method_labels_are_bounded() {
        assert_eq!(
            method_label("/runtime.v1.RuntimeService/RunPodSandbox"),
            "RunPodSandbox"
        );
        assert_eq!(
            method_label("/runtime.v1.ImageService/PullImage"),
            "PullImage"
        );
        assert_eq!(method_label("/evil.Service/X"), "other");
        assert_eq!(method_label("/runtime.v1.RuntimeService/a\"b"), "other");
        assert_eq!(method_label("/"), "other");
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new(false);
        m.observe_vm_boot("a\"b\\c\nd", Duration::from_millis(1));
        let text = m.render(None);
        assert!(text.contains("vmm=\"a\\\"b\\\\c\\nd\""), "{text}");
    }
}
