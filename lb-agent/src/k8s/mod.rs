//! Kubernetes objects in, desired datapath state out.

pub mod cidr;
pub mod endpoints;
pub mod model;
pub mod translate;

pub use k8s_openapi::api::core::v1::Service;
pub use k8s_openapi::api::discovery::v1::EndpointSlice;

/// Label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label with which a Service asks for a different proxy than the default one.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";

/// All Services and EndpointSlices a source currently knows, as one consistent picture.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
}
