//! Where Services and EndpointSlices come from: a directory of manifests or the API server.
//! Each source publishes whole [`crate::k8s::Snapshot`]s into a watch channel.

pub mod kube;
pub mod manifests;
