//! The Engine API's replies that mpiswarm reads, as types kept to the fields it uses: a reply
//! is parsed once, where it arrives, and a field Docker leaves out (an older release, a node
//! still joining) reads as absent, never as an error. Recorded replies of Docker 20.10 and 26.1
//! (tests/engine-api/) are parsed into them by the tests.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Deserializer};

use crate::host::engine::{Engine, EngineError, Response};
use crate::sys::deadline::Deadline;

/// `GET path`'s JSON reply as `T`.
pub fn get<T: DeserializeOwned>(engine: &Engine, path: &str, deadline: Deadline) -> Result<T> {
    parse(&engine.call("GET", path, None, deadline)?, path)
}

/// A reply's JSON body as `T`.
pub fn parse<T: DeserializeOwned>(response: &Response, path: &str) -> Result<T> {
    serde_json::from_slice(&response.body).with_context(|| unparsed(path))
}

/// A reply to `path` read before as JSON, as `T`.
pub fn from_value<'a, T: Deserialize<'a>>(value: &'a serde_json::Value, path: &str) -> Result<T> {
    T::deserialize(value).with_context(|| unparsed(path))
}

fn unparsed(path: &str) -> String {
    format!("failed to parse the Engine API's JSON reply to {path}")
}

/// A list Go may send as `null` when empty (a nil slice).
#[derive(Debug, Default)]
pub struct List<T>(pub Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for List<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(List(Option::deserialize(d)?.unwrap_or_default()))
    }
}

/// A map or list that Go sends as `null` when it is nil.
fn null_as_default<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::deserialize(d)?.unwrap_or_default())
}

/// Labels, as every object carries them.
pub type Labels = BTreeMap<String, String>;

/// `GET /swarm`: the tokens that let a node join.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Swarm {
    pub join_tokens: JoinTokens,
}

#[derive(Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct JoinTokens {
    pub worker: Option<String>,
    pub manager: Option<String>,
}

/// `GET /info`: its Swarm section, this daemon's part in a swarm.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Info {
    pub swarm: InfoSwarm,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct InfoSwarm {
    #[serde(rename = "NodeID")]
    pub node_id: String,
    /// `inactive`, `pending`, `active`, `error` or `locked`.
    pub local_node_state: Option<String>,
    pub error: String,
}

/// A swarm object that is written back whole at its version (a node, the swarm): its spec is
/// kept as the daemon sent it, so that a write keeps every field, known here or not.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Versioned {
    pub version: Version,
    pub spec: Option<serde_json::Value>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Version {
    pub index: Option<u64>,
}

/// A node of `GET /nodes`; a node still joining may lack any of its fields.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Node {
    #[serde(rename = "ID")]
    pub id: String,
    pub spec: NodeSpec,
    pub description: NodeDescription,
    pub status: NodeStatus,
    pub manager_status: Option<ManagerStatus>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NodeSpec {
    pub role: Option<String>,
    pub availability: Option<String>,
    #[serde(deserialize_with = "null_as_default")]
    pub labels: Labels,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NodeDescription {
    pub hostname: Option<String>,
    pub engine: EngineDescription,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct EngineDescription {
    pub engine_version: Option<String>,
    /// The daemon's own labels (mpiswarm's `mpiswarm.*` among them).
    #[serde(deserialize_with = "null_as_default")]
    pub labels: Labels,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NodeStatus {
    pub state: Option<String>,
    pub addr: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ManagerStatus {
    pub leader: bool,
    /// "reachable" once the manager takes part in Raft.
    pub reachability: Option<String>,
    /// The manager's advertised address.
    pub addr: Option<String>,
}

/// A service of `GET /services` (`status=true` adds `ServiceStatus`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Service {
    #[serde(rename = "ID")]
    pub id: String,
    pub spec: ServiceSpec,
    pub job_status: Option<JobStatus>,
    pub service_status: Option<ServiceStatus>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceSpec {
    pub name: String,
    pub mode: ServiceMode,
    pub task_template: TaskTemplate,
}

/// One of its fields is present: the mode's name.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceMode {
    pub replicated: Option<Replicated>,
    pub global: Option<IgnoredAny>,
    pub replicated_job: Option<ReplicatedJob>,
    pub global_job: Option<IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Replicated {
    pub replicas: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ReplicatedJob {
    pub max_concurrent: Option<u64>,
    pub total_completions: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct TaskTemplate {
    pub restart_policy: RestartPolicy,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RestartPolicy {
    /// `none`, `on-failure` or `any`.
    pub condition: Option<String>,
    pub max_attempts: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct JobStatus {
    pub job_iteration: Version,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceStatus {
    pub completed_tasks: Option<u64>,
}

/// A task of `GET /tasks`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Task {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    /// 0 or absent for a global mode's tasks.
    pub slot: Option<u64>,
    #[serde(rename = "NodeID")]
    pub node_id: Option<String>,
    pub status: TaskStatus,
    pub desired_state: Option<String>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    pub job_iteration: Option<Version>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct TaskStatus {
    pub timestamp: Option<String>,
    pub state: Option<String>,
    pub message: Option<String>,
    pub err: Option<String>,
    pub container_status: Option<ContainerStatus>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ContainerStatus {
    #[serde(rename = "ContainerID")]
    pub container_id: Option<String>,
    pub exit_code: Option<i64>,
}

/// A container of `GET /containers/json`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Container {
    pub id: String,
    #[serde(deserialize_with = "null_as_default")]
    pub labels: Labels,
}

/// The reply to a create (`POST /containers/{id}/exec`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Created {
    pub id: Option<String>,
}

/// One message of the stream `POST /images/load` answers with.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LoadMessage {
    pub stream: Option<String>,
    pub error: Option<String>,
    pub error_detail: Option<ErrorDetail>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ErrorDetail {
    pub message: Option<String>,
}

/// The refusals that Docker tells apart by their message alone: their HTTP status is shared with
/// other errors (and the error reply has no code), so each is one function here, naming the
/// Docker source its words come from, and tested on both releases' recorded replies.
///
/// A join or init on a daemon that is already a swarm node: 503 (`notAvailableError`), which
/// "not part of a swarm", "swarm is locked" and a join's timeout share. moby
/// daemon/cluster/errors.go:8, `errSwarmExists` (v20.10.24 and v26.1.5), returned by
/// `Cluster.Join` at daemon/cluster/swarm.go:153 (v20.10.24) and :154 (v26.1.5).
pub fn already_in_swarm(refusal: &EngineError) -> bool {
    refusal.status == 503 && refusal.message.contains("already part of a swarm")
}

/// A write against a version the object no longer has: swarmkit's store refuses it with
/// `ErrSequenceConflict`, which reaches the API as gRPC's Unknown, a 500 like any other
/// failure (and, from a resource's update, as an InvalidArgument 400 with the same words).
/// swarmkit manager/state/store/memory.go:69 (vendored in moby v20.10.24 under
/// vendor/github.com/docker/swarmkit) and :71 (v26.1.5, vendor/github.com/moby/swarmkit/v2);
/// manager/controlapi/resource.go:218 and :217.
pub fn out_of_sequence(refusal: &EngineError) -> bool {
    refusal.message.contains("out of sequence")
}

/// A task that failed because its image is not on its node (a task's status carries only the
/// daemon's error text). moby image/store.go:186 (v20.10.24) and :194 (v26.1.5), and
/// daemon/images/image.go:33 and :35: "No such image: REF".
pub fn lacks_image(task_err: &str) -> bool {
    task_err.contains("No such image")
}

#[cfg(test)]
pub(crate) mod tests;
