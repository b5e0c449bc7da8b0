//! ImageService handlers: pull, list, status, remove and filesystem usage.

use proto::cri;
use tonic::{Request, Status};

use crate::daemon::State;

const NOT_YET: &str = "the image service is not implemented yet";

pub async fn list_images(
    _state: &State,
    _r: cri::ListImagesRequest,
) -> Result<cri::ListImagesResponse, Status> {
    Err(Status::unimplemented(NOT_YET))
}

pub async fn image_status(
    _state: &State,
    _r: cri::ImageStatusRequest,
) -> Result<cri::ImageStatusResponse, Status> {
    Err(Status::unimplemented(NOT_YET))
}

pub async fn pull_image(
    _state: &State,
    _r: Request<cri::PullImageRequest>,
) -> Result<cri::PullImageResponse, Status> {
    Err(Status::unimplemented(NOT_YET))
}

pub async fn remove_image(
    _state: &State,
    _r: cri::RemoveImageRequest,
) -> Result<cri::RemoveImageResponse, Status> {
    Err(Status::unimplemented(NOT_YET))
}

pub async fn image_fs_info(
    _state: &State,
    _r: cri::ImageFsInfoRequest,
) -> Result<cri::ImageFsInfoResponse, Status> {
    Err(Status::unimplemented(NOT_YET))
}
