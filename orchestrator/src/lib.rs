//! u7s: rootless Kubernetes, kubeadm nodes in rootless container engines.
//!
//! - [`config`]: the original's variables, flags and file, resolved;
//! - [`node`]: the node container, engine-neutral ([`node::NodeSpec`]);
//! - [`engine`]: Docker/Podman (Docker API) and nerdctl (CLI) drivers;
//! - [`image`]: the node image's build context;
//! - [`kubeadm`]: the cluster steps run inside the node;
//! - [`hostnet`]: host IP, host subnets, free ports;
//! - [`accel`]: the netaccel daemon and wrapper runtime for `--accel`;
//! - [`doctor`]: host prerequisites;
//! - [`preflight`]: what `up` checks before creating the node (and `doctor` reports).

pub mod accel;
pub mod config;
pub mod doctor;
pub mod engine;
pub mod hostnet;
pub mod image;
pub mod kubeadm;
pub mod node;
pub mod preflight;
