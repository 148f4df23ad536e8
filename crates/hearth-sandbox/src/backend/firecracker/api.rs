//! Typed request bodies of Firecracker's REST API, as hearth sends them.
//!
//! Each type names one definition of Firecracker's swagger spec (`firecracker.yaml`) and
//! carries only the fields hearth sets; optional fields are omitted rather than sent as `null`,
//! because Firecracker's parser refuses `null` for most of them. Every request hearth sends is an
//! [`ApiCall`] built from one of these types, so the tests can check the exact bytes against the
//! spec (see `tests/firecracker_api.rs`).

use std::path::PathBuf;

use http::Method;
use serde::{Deserialize, Serialize};

/// One request to the API socket: method, path and the JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiCall {
    pub method: Method,
    pub path: String,
    pub body: serde_json::Value,
}

/// A request body that knows its endpoint.
pub trait ApiRequest: Serialize {
    fn method(&self) -> Method {
        Method::PUT
    }
    fn path(&self) -> String;

    /// The call that sends this body.
    fn call(&self) -> Result<ApiCall, serde_json::Error> {
        Ok(ApiCall {
            method: self.method(),
            path: self.path(),
            body: serde_json::to_value(self)?,
        })
    }
}

/// `PUT /machine-config` (spec: `MachineConfiguration`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineConfig {
    pub vcpu_count: u8,
    pub mem_size_mib: u64,
    pub smt: bool,
    /// Needed for diff snapshots only; hearth takes full ones.
    pub track_dirty_pages: bool,
}

impl ApiRequest for MachineConfig {
    fn path(&self) -> String {
        "/machine-config".to_owned()
    }
}

/// `PUT /boot-source` (spec: `BootSource`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootSource {
    pub kernel_image_path: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<PathBuf>,
    pub boot_args: String,
}

impl ApiRequest for BootSource {
    fn path(&self) -> String {
        "/boot-source".to_owned()
    }
}

/// `PUT /drives/{drive_id}` (spec: `Drive`, the virtio-block flavour).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drive {
    pub drive_id: String,
    pub path_on_host: PathBuf,
    /// Always false: the guest's initramfs mounts the root itself (`hearth.root=`), so
    /// Firecracker must not add `root=` to the command line.
    pub is_root_device: bool,
    pub is_read_only: bool,
}

impl ApiRequest for Drive {
    fn path(&self) -> String {
        format!("/drives/{}", self.drive_id)
    }
}

/// `PUT /network-interfaces/{iface_id}` (spec: `NetworkInterface`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInterface {
    pub iface_id: String,
    /// The tap device, looked up in the VMM's network namespace.
    pub host_dev_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
}

impl ApiRequest for NetworkInterface {
    fn path(&self) -> String {
        format!("/network-interfaces/{}", self.iface_id)
    }
}

/// `PUT /vsock` (spec: `Vsock`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vsock {
    pub guest_cid: u32,
    /// Where Firecracker binds its host-side socket (host-initiated connections).
    pub uds_path: PathBuf,
}

impl ApiRequest for Vsock {
    fn path(&self) -> String {
        "/vsock".to_owned()
    }
}

/// Firecracker's log levels (spec: `Logger.level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogLevel {
    Error,
    Warning,
    Info,
    Debug,
    Trace,
    Off,
}

/// `PUT /logger` (spec: `Logger`). The file must exist: Firecracker opens, never creates it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logger {
    pub log_path: PathBuf,
    pub level: LogLevel,
    pub show_level: bool,
    pub show_log_origin: bool,
}

impl ApiRequest for Logger {
    fn path(&self) -> String {
        "/logger".to_owned()
    }
}

/// `PUT /metrics` (spec: `Metrics`). The file must exist, like the logger's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metrics {
    pub metrics_path: PathBuf,
}

impl ApiRequest for Metrics {
    fn path(&self) -> String {
        "/metrics".to_owned()
    }
}

/// The synchronous actions (spec: `InstanceActionInfo.action_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    InstanceStart,
    FlushMetrics,
    SendCtrlAltDel,
}

/// `PUT /actions` (spec: `InstanceActionInfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceAction {
    pub action_type: ActionType,
}

impl ApiRequest for InstanceAction {
    fn path(&self) -> String {
        "/actions".to_owned()
    }
}

/// The states `PATCH /vm` can ask for (spec: `Vm.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    Paused,
    Resumed,
}

/// `PATCH /vm` (spec: `Vm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vm {
    pub state: VmState,
}

impl ApiRequest for Vm {
    fn method(&self) -> Method {
        Method::PATCH
    }
    fn path(&self) -> String {
        "/vm".to_owned()
    }
}

/// Full or diff snapshot (spec: `SnapshotCreateParams.snapshot_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotType {
    Full,
    Diff,
}

/// `PUT /snapshot/create` (spec: `SnapshotCreateParams`); the VM must be paused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotCreate {
    pub snapshot_path: PathBuf,
    pub mem_file_path: PathBuf,
    pub snapshot_type: SnapshotType,
}

impl ApiRequest for SnapshotCreate {
    fn path(&self) -> String {
        "/snapshot/create".to_owned()
    }
}

/// Where a restored VM's memory comes from (spec: `MemoryBackend.backend_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemoryBackendType {
    File,
    Uffd,
}

/// Spec: `MemoryBackend`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryBackend {
    pub backend_type: MemoryBackendType,
    pub backend_path: PathBuf,
}

/// Spec: `VsockOverride`: the restored VM's vsock socket, which lives in the new sandbox's dir.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockOverride {
    pub uds_path: PathBuf,
}

/// `PUT /snapshot/load` (spec: `SnapshotLoadParams`); only on a fresh VMM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotLoad {
    pub snapshot_path: PathBuf,
    /// `mem_backend` rather than the deprecated `mem_file_path`.
    pub mem_backend: MemoryBackend,
    pub resume_vm: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_override: Option<VsockOverride>,
}

impl ApiRequest for SnapshotLoad {
    fn path(&self) -> String {
        "/snapshot/load".to_owned()
    }
}

/// `GET /` (spec: `InstanceInfo`), the answer hearth reads to see the VMM is up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    pub app_name: String,
    pub id: String,
    pub state: String,
    pub vmm_version: String,
}

/// Firecracker's error body (spec: `Error`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultBody {
    pub fault_message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_carry_method_path_and_body_without_nulls() {
        let drive = Drive {
            drive_id: "rootfs".to_owned(),
            path_on_host: "/img/rootfs.ext4".into(),
            is_root_device: false,
            is_read_only: true,
        };
        let call = drive.call().unwrap();
        assert_eq!(call.method, Method::PUT);
        assert_eq!(call.path, "/drives/rootfs");
        assert_eq!(call.body["path_on_host"], "/img/rootfs.ext4");

        let boot = BootSource {
            kernel_image_path: "/k".into(),
            initrd_path: None,
            boot_args: "quiet".to_owned(),
        };
        let body = boot.call().unwrap().body;
        assert!(body.get("initrd_path").is_none(), "{body}");

        let pause = Vm {
            state: VmState::Paused,
        }
        .call()
        .unwrap();
        assert_eq!(pause.method, Method::PATCH);
        assert_eq!(pause.body, serde_json::json!({"state": "Paused"}));
        let start = InstanceAction {
            action_type: ActionType::InstanceStart,
        };
        assert_eq!(
            start.call().unwrap().body,
            serde_json::json!({"action_type": "InstanceStart"})
        );
    }
}
