//! The NRI plugin's integration tests as one test binary (one compile and link of the
//! workspace): the plugin against a runtime played by the test over the real NRI protocol,
//! and its Pod annotations in a real kube-apiserver.

mod support;

mod nri_annotation;
mod nri_plugin;
