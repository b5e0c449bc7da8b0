//! Prometheus metrics: a text endpoint (`GET /metrics`, off unless `metrics.address` is set)
//! over a tiny HTTP/1.1 server, fed by a tower layer around the gRPC services (RPC counts and
//! latency by method and code), by the image pull handler, by a VMM boot-time hook and, at
//! scrape time, by the pod and container managers.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
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

/// A cumulative histogram.
#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative); the last one is `+Inf`.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, d: Duration) {
        let v = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c;
            let le = self
                .bounds
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

#[derive(Default)]
struct Inner {
    /// `(method, code)` → latency histogram (its count is the RPC count).
    rpcs: BTreeMap<(String, String), Histogram>,
    /// `result` ("success"/"failure") → pull duration.
    pulls: BTreeMap<String, Histogram>,
    pull_bytes: u64,
    /// VMM kind → boot time.
    vm_boots: BTreeMap<String, Histogram>,
}

/// The process-wide metrics registry.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

/// The registry every hook writes to.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::default)
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One finished RPC.
    pub fn observe_rpc(&self, method: &str, code: tonic::Code, elapsed: Duration) {
        let code = format!("{code:?}");
        self.lock()
            .rpcs
            .entry((method.to_owned(), code))
            .or_insert_with(|| Histogram::new(RPC_BUCKETS))
            .observe(elapsed);
    }

    /// One finished `PullImage`; `bytes` is the image's size for a success.
    pub fn observe_pull(&self, success: bool, bytes: u64, elapsed: Duration) {
        let mut inner = self.lock();
        let result = if success { "success" } else { "failure" };
        inner
            .pulls
            .entry(result.to_owned())
            .or_insert_with(|| Histogram::new(SLOW_BUCKETS))
            .observe(elapsed);
        inner.pull_bytes = inner.pull_bytes.saturating_add(bytes);
    }

    /// A VMM (`qemu`, `firecracker`, ...) took `elapsed` from StartContainer until it ran
    /// under its monitor with the guest loaded.
    pub fn observe_vm_boot(&self, vmm: &str, elapsed: Duration) {
        self.lock()
            .vm_boots
            .entry(vmm.to_owned())
            .or_insert_with(|| Histogram::new(SLOW_BUCKETS))
            .observe(elapsed);
    }

    /// The Prometheus text exposition of everything recorded, plus the pods and containers
    /// of `state` (when given) counted by state and runtime handler.
    pub fn render(&self, state: Option<&State>) -> String {
        let mut out = String::new();
        {
            let inner = self.lock();
            out.push_str("# HELP crid_grpc_requests_total CRI RPCs handled, by method and gRPC code.\n# TYPE crid_grpc_requests_total counter\n");
            for ((method, code), h) in &inner.rpcs {
                let _ = writeln!(
                    out,
                    "crid_grpc_requests_total{{method=\"{}\",code=\"{}\"}} {}",
                    escape(method),
                    code,
                    h.count
                );
            }
            out.push_str("# HELP crid_grpc_request_duration_seconds CRI RPC latency, by method and gRPC code.\n# TYPE crid_grpc_request_duration_seconds histogram\n");
            for ((method, code), h) in &inner.rpcs {
                let labels = format!("method=\"{}\",code=\"{code}\"", escape(method));
                h.write(&mut out, "crid_grpc_request_duration_seconds", &labels);
            }
            out.push_str("# HELP crid_image_pull_duration_seconds PullImage duration, by result.\n# TYPE crid_image_pull_duration_seconds histogram\n");
            for (result, h) in &inner.pulls {
                let labels = format!("result=\"{result}\"");
                h.write(&mut out, "crid_image_pull_duration_seconds", &labels);
            }
            out.push_str("# HELP crid_image_pull_bytes_total Size of the images pulled successfully.\n# TYPE crid_image_pull_bytes_total counter\n");
            let _ = writeln!(out, "crid_image_pull_bytes_total {}", inner.pull_bytes);
            out.push_str("# HELP crid_vm_boot_duration_seconds Time from StartContainer until the VMM runs the guest, by VMM.\n# TYPE crid_vm_boot_duration_seconds histogram\n");
            for (vmm, h) in &inner.vm_boots {
                let labels = format!("vmm=\"{}\"", escape(vmm));
                h.write(&mut out, "crid_vm_boot_duration_seconds", &labels);
            }
        }
        if let Some(state) = state {
            render_objects(&mut out, state);
        }
        out
    }
}

/// Pods and containers by state and runtime handler, read from the managers.
fn render_objects(out: &mut String, state: &State) {
    let pods = state.pods.list(&Default::default());
    let handlers: BTreeMap<&str, &str> = pods
        .iter()
        .map(|p| (p.id.as_str(), p.config.runtime_handler.as_str()))
        .collect();
    let mut by_pod: BTreeMap<(String, String), u64> = BTreeMap::new();
    for p in &pods {
        *by_pod
            .entry((
                format!("{:?}", p.state).to_ascii_lowercase(),
                p.config.runtime_handler.clone(),
            ))
            .or_default() += 1;
    }
    let mut by_container: BTreeMap<(String, String), u64> = BTreeMap::new();
    for c in state.containers.list(&Default::default()) {
        let handler = handlers.get(c.pod_id.as_str()).copied().unwrap_or_default();
        *by_container
            .entry((
                format!("{:?}", c.state).to_ascii_lowercase(),
                handler.to_owned(),
            ))
            .or_default() += 1;
    }
    out.push_str(
        "# HELP crid_pods Pod sandboxes, by state and runtime handler.\n# TYPE crid_pods gauge\n",
    );
    for ((s, h), n) in &by_pod {
        let _ = writeln!(
            out,
            "crid_pods{{state=\"{s}\",handler=\"{}\"}} {n}",
            escape(h)
        );
    }
    let _ = writeln!(
        out,
        "# HELP crid_prepared_pod_networks Pod networks prepared ahead of need and waiting for a pod.\n# TYPE crid_prepared_pod_networks gauge\ncrid_prepared_pod_networks {}",
        state.pods.prepared_networks()
    );
    out.push_str("# HELP crid_containers Containers, by state and runtime handler of their pod.\n# TYPE crid_containers gauge\n");
    for ((s, h), n) in &by_container {
        let _ = writeln!(
            out,
            "crid_containers{{state=\"{s}\",handler=\"{}\"}} {n}",
            escape(h)
        );
    }
}

/// Escapes a label value (backslash, quote, newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
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

/// The tower layer that times every RPC.
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcLayer;

impl<S> tower::Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> RpcService<S> {
        RpcService { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RpcService<S> {
    inner: S,
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
            global().observe_rpc(&method, code, start.elapsed());
            result
        })
    }
}

/// Starts the `/metrics` endpoint on `address` when it is not empty; returns the bound
/// address.
pub async fn serve(
    address: &str,
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
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let state = weak.upgrade();
                    async move { Ok::<_, Infallible>(respond(&req, state.as_deref())) }
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

fn respond(req: &Request<Incoming>, state: Option<&State>) -> Response<Full<Bytes>> {
    let (status, body, ct) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            global().render(state),
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

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.observe_rpc("Version", tonic::Code::Ok, Duration::from_millis(3));
        m.observe_rpc("Version", tonic::Code::Ok, Duration::from_millis(300));
        m.observe_rpc("Version", tonic::Code::NotFound, Duration::from_secs(1000));
        let text = m.render(None);
        assert!(text.contains("crid_grpc_requests_total{method=\"Version\",code=\"Ok\"} 2"));
        assert!(text.contains("crid_grpc_requests_total{method=\"Version\",code=\"NotFound\"} 1"));
        assert!(text.contains(
            "crid_grpc_request_duration_seconds_bucket{method=\"Version\",code=\"Ok\",le=\"0.005\"} 1"
        ));
        assert!(text.contains(
            "crid_grpc_request_duration_seconds_bucket{method=\"Version\",code=\"Ok\",le=\"0.5\"} 2"
        ));
        assert!(text.contains(
            "crid_grpc_request_duration_seconds_bucket{method=\"Version\",code=\"NotFound\",le=\"120\"} 0"
        ));
        assert!(text.contains(
            "crid_grpc_request_duration_seconds_bucket{method=\"Version\",code=\"NotFound\",le=\"+Inf\"} 1"
        ));
        assert!(text.contains(
            "crid_grpc_request_duration_seconds_count{method=\"Version\",code=\"Ok\"} 2"
        ));
    }

    #[test]
    fn pulls_and_vm_boots() {
        let m = Metrics::default();
        m.observe_pull(true, 1000, Duration::from_secs(2));
        m.observe_pull(false, 0, Duration::from_secs(1));
        m.observe_vm_boot("qemu", Duration::from_millis(700));
        let text = m.render(None);
        assert!(text.contains("crid_image_pull_bytes_total 1000"));
        assert!(text.contains("crid_image_pull_duration_seconds_count{result=\"success\"} 1"));
        assert!(text.contains("crid_image_pull_duration_seconds_count{result=\"failure\"} 1"));
        assert!(text.contains("crid_vm_boot_duration_seconds_bucket{vmm=\"qemu\",le=\"1\"} 1"));
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
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
