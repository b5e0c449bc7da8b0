//! ImageService handlers: pull, list, status, remove and filesystem usage, over the
//! [`imagestore::ImageStore`] in [`State`]. Also opens that store from the configuration and
//! runs the start-up import of image archives.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use imagestore::{Credentials, Image, ImageError, ImageStore};
use proto::cri;
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

use crate::cri::error::Failure;
use crate::metrics::Metrics;
use crate::state::State;

/// Imports the archives waiting in the import directory (blocking work, off the runtime).
pub async fn import_at_startup(store: ImageStore, dir: PathBuf) {
    if !dir.is_dir() {
        return;
    }
    let result = tokio::task::spawn_blocking(move || store.import_directory(&dir)).await;
    if let Err(e) = result {
        tracing::error!(error = %e, "start-up image import failed");
    }
}

fn failure(e: ImageError) -> Status {
    Failure::from(e).into()
}

/// The client's deadline from the `grpc-timeout` header (`<digits><H|M|S|m|u|n>`).
fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let v = metadata.get("grpc-timeout")?.to_str().ok()?;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Registry credentials from a CRI `AuthConfig`: a registry token, username and password, the
/// base64 `auth` field, or an identity token.
fn credentials(auth: Option<cri::AuthConfig>) -> Result<Option<Credentials>, Status> {
    let Some(a) = auth else { return Ok(None) };
    if !a.registry_token.is_empty() {
        return Ok(Some(Credentials::Token(a.registry_token)));
    }
    if !a.username.is_empty() || !a.password.is_empty() {
        return Ok(Some(Credentials::Basic {
            username: a.username,
            password: a.password,
        }));
    }
    if !a.auth.is_empty() {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(a.auth.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| Status::invalid_argument("auth is not base64 of \"user:password\""))?;
        let (username, password) = decoded
            .split_once(':')
            .ok_or_else(|| Status::invalid_argument("auth is not base64 of \"user:password\""))?;
        return Ok(Some(Credentials::Basic {
            username: username.to_owned(),
            password: password.to_owned(),
        }));
    }
    if !a.identity_token.is_empty() {
        return Ok(Some(Credentials::Basic {
            username: "<token>".to_owned(),
            password: a.identity_token,
        }));
    }
    Ok(None)
}

/// `config.User` of the image config: a numeric uid, or a user name.
fn user_of(image: &Image) -> (Option<i64>, String) {
    let user = serde_json::from_str::<serde_json::Value>(&image.config_json)
        .ok()
        .and_then(|v| {
            v.get("config")
                .and_then(|c| c.get("User"))
                .and_then(|u| u.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let name = user.split(':').next().unwrap_or_default();
    match name.parse::<i64>() {
        Ok(uid) => (Some(uid), String::new()),
        Err(_) => (None, name.to_owned()),
    }
}

fn to_cri(image: &Image) -> cri::Image {
    let (uid, username) = user_of(image);
    cri::Image {
        id: image.id.clone(),
        repo_tags: image.repo_tags.clone(),
        repo_digests: image.repo_digests.clone(),
        size: image.size,
        uid: uid.map(|value| cri::Int64Value { value }),
        username,
        spec: Some(cri::ImageSpec {
            image: image.id.clone(),
            annotations: image.annotations.clone(),
            ..Default::default()
        }),
        pinned: image.pinned,
    }
}

fn image_name(spec: Option<&cri::ImageSpec>) -> Result<String, Status> {
    match spec {
        Some(s) if !s.image.is_empty() => Ok(s.image.clone()),
        _ => Err(Status::invalid_argument(
            "image spec with an image is required",
        )),
    }
}

pub async fn list_images(
    state: &State,
    r: cri::ListImagesRequest,
) -> Result<cri::ListImagesResponse, Status> {
    let wanted = r
        .filter
        .and_then(|f| f.image)
        .map(|s| s.image)
        .filter(|s| !s.is_empty());
    let images = match wanted {
        None => state.images.list(),
        // A filter that names nothing valid matches nothing.
        Some(w) => state.images.get(&w).ok().flatten().into_iter().collect(),
    };
    Ok(cri::ListImagesResponse {
        images: images.iter().map(to_cri).collect(),
    })
}

pub async fn image_status(
    state: &State,
    r: cri::ImageStatusRequest,
) -> Result<cri::ImageStatusResponse, Status> {
    let name = image_name(r.image.as_ref())?;
    tracing::Span::current().record("image", name.as_str());
    let Some(image) = state.images.get(&name).map_err(failure)? else {
        return Ok(cri::ImageStatusResponse::default());
    };
    let mut info = std::collections::HashMap::new();
    if r.verbose {
        let config: serde_json::Value =
            serde_json::from_str(&image.config_json).unwrap_or(serde_json::Value::Null);
        let verbose = serde_json::json!({
            "id": image.id,
            "repoTags": image.repo_tags,
            "repoDigests": image.repo_digests,
            "size": image.size,
            "platform": {
                "os": image.os,
                "architecture": image.architecture,
                "variant": image.variant,
            },
            "diffIds": image.diff_ids,
            "annotations": image.annotations,
            "pinned": image.pinned,
            "unikernel": image.unikernel,
            "imageSpec": config,
        });
        info.insert("info".to_owned(), verbose.to_string());
    }
    Ok(cri::ImageStatusResponse {
        image: Some(to_cri(&image)),
        info,
    })
}

pub async fn pull_image(
    state: &State,
    metrics: &Metrics,
    r: Request<cri::PullImageRequest>,
) -> Result<cri::PullImageResponse, Status> {
    let deadline = grpc_timeout(r.metadata());
    let r = r.into_inner();
    let name = image_name(r.image.as_ref())?;
    tracing::Span::current().record("image", name.as_str());
    let creds = credentials(r.auth)?;
    let store = state.images.clone();
    let reference = name.clone();
    let pull = async move { store.pull(&reference, creds).await };
    let started = std::time::Instant::now();
    let result = match deadline {
        Some(d) => match tokio::time::timeout(d, pull).await {
            Ok(r) => r,
            // Dropping the pull future removed its partial downloads.
            Err(_) => Err(ImageError::DeadlineExceeded {
                reference: name.clone(),
            }),
        },
        None => pull.await,
    };
    // A pull's buffers (TLS, HTTP, decompression, JSON) are freed by now: give the pages
    // back to the kernel so an idle daemon's RSS is what it keeps.
    tokio::task::spawn_blocking(crate::sys::trim_heap);
    metrics.observe_pull(
        result.is_ok(),
        result.as_ref().map_or(0, |i| i.size),
        started.elapsed(),
    );
    match result {
        Ok(image) => {
            tracing::info!(image = %name, id = %image.id, "image pulled");
            Ok(cri::PullImageResponse {
                image_ref: image.id,
            })
        }
        Err(e) => {
            tracing::error!(image = %name, error = %e, "pull failed");
            Err(failure(e))
        }
    }
}

pub async fn remove_image(
    state: &State,
    r: cri::RemoveImageRequest,
) -> Result<cri::RemoveImageResponse, Status> {
    let name = image_name(r.image.as_ref())?;
    tracing::Span::current().record("image", name.as_str());
    let store = state.images.clone();
    tokio::task::spawn_blocking(move || store.remove(&name))
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(failure)?;
    Ok(cri::RemoveImageResponse {})
}

pub async fn image_fs_info(
    state: &State,
    _r: cri::ImageFsInfoRequest,
) -> Result<cri::ImageFsInfoResponse, Status> {
    let store = state.images.clone();
    let usage = tokio::task::spawn_blocking(move || store.fs_info())
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(failure)?;
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    Ok(cri::ImageFsInfoResponse {
        image_filesystems: vec![cri::FilesystemUsage {
            timestamp,
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: usage.mountpoint.display().to_string(),
            }),
            used_bytes: Some(cri::UInt64Value {
                value: usage.used_bytes,
            }),
            inodes_used: Some(cri::UInt64Value {
                value: usage.inodes_used,
            }),
        }],
        container_filesystems: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        let mut m = MetadataMap::new();
        assert_eq!(grpc_timeout(&m), None);
        for (v, d) in [
            ("5S", Duration::from_secs(5)),
            ("100m", Duration::from_millis(100)),
            ("2M", Duration::from_secs(120)),
            ("7u", Duration::from_micros(7)),
        ] {
            m.insert("grpc-timeout", v.parse().unwrap());
            assert_eq!(grpc_timeout(&m), Some(d), "{v}");
        }
        m.insert("grpc-timeout", "5x".parse().unwrap());
        assert_eq!(grpc_timeout(&m), None);
    }

    #[test]
    fn credentials_from_auth_config() {
        assert_eq!(credentials(None).unwrap(), None);
        let basic = credentials(Some(cri::AuthConfig {
            auth: base64::engine::general_purpose::STANDARD.encode("me:secret"),
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(
            basic,
            Some(Credentials::Basic {
                username: "me".into(),
                password: "secret".into()
            })
        );
        let token = credentials(Some(cri::AuthConfig {
            registry_token: "t".into(),
            username: "ignored".into(),
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(token, Some(Credentials::Token("t".into())));
        let bad = credentials(Some(cri::AuthConfig {
            auth: "!!!".into(),
            ..Default::default()
        }))
        .unwrap_err();
        assert_eq!(bad.code(), tonic::Code::InvalidArgument);
        // Credentials never show up in logs.
        let dbg = format!(
            "{:?}",
            Credentials::Basic {
                username: "u".into(),
                password: "hunter2".into()
            }
        );
        assert!(!dbg.contains("hunter2"));
    }
}
