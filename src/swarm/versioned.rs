//! Read-modify-write of a swarm object (a node, the swarm's spec). Swarm refuses a write whose
//! version moved on since the read ("update out of sequence"): a node's version moves whenever
//! its status or description changes, which at dozens of nodes happens between any read and
//! write. Every such update goes through here: a refused write starts again from a fresh read.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::Value;

use crate::host::engine::{Engine, EngineError};
use crate::swarm::api::{Versioned, out_of_sequence};
use crate::sys::deadline::Deadline;

/// What an update needs of the Engine API; a test stands in for it to move versions.
pub trait ObjectStore {
    fn read(&self, path: &str, deadline: Deadline) -> Result<Value>;
    /// A refusal is an `EngineError`.
    fn write(&self, path: &str, body: &Value, deadline: Deadline) -> Result<()>;
}

impl ObjectStore for Engine {
    fn read(&self, path: &str, deadline: Deadline) -> Result<Value> {
        self.get_json(path, deadline)
    }

    fn write(&self, path: &str, body: &Value, deadline: Deadline) -> Result<()> {
        self.call("POST", path, Some(body), deadline).map(drop)
    }
}

/// One versioned object: where it is read, and where a spec is written for a version.
pub struct Object<'a> {
    /// Named in errors: "the node of msh3", "the swarm".
    pub what: &'a str,
    pub read_path: String,
    pub write_path: &'a dyn Fn(u64) -> String,
}

/// Reads `object`, lets `change` edit its spec (the whole spec goes back), and writes it; a write
/// refused as out of sequence is tried again from a fresh read until `deadline`. Returns the
/// object as read before the write that succeeded.
pub fn update(
    store: &impl ObjectStore,
    object: &Object,
    change: impl Fn(&mut Value),
    deadline: Deadline,
) -> Result<Value> {
    update_from(store, object, None, change, deadline)
}

/// As `update`, starting from `known` (the object as read earlier, if it was) instead of a read:
/// one call less on a busy manager when nothing moved it since; when something did, the refused
/// write starts again from a fresh read.
pub fn update_from(
    store: &impl ObjectStore,
    object: &Object,
    known: Option<Value>,
    change: impl Fn(&mut Value),
    deadline: Deadline,
) -> Result<Value> {
    let mut attempts = 0;
    let mut pause = Duration::from_millis(10);
    let mut known = known;
    loop {
        attempts += 1;
        let current = match known.take() {
            Some(earlier) => earlier,
            None => store.read(&object.read_path, deadline)?,
        };
        let read = Versioned::deserialize(&current)
            .with_context(|| format!("failed to update {}: unexpected reply", object.what))?;
        let version = read
            .version
            .index
            .with_context(|| format!("failed to update {}: it has no version", object.what))?;
        let mut spec = read
            .spec
            .with_context(|| format!("failed to update {}: it has no spec", object.what))?;
        change(&mut spec);
        let refusal = match store.write(&(object.write_path)(version), &spec, deadline) {
            Ok(()) => return Ok(current),
            Err(e) => e.downcast::<EngineError>()?,
        };
        let message = &refusal.message;
        if !out_of_sequence(&refusal) {
            bail!(
                "failed to update {}: the Docker daemon answered {}: {message}",
                object.what,
                refusal.status
            );
        }
        if Instant::now() + pause >= deadline.instant() {
            bail!(
                "failed to update {} before the deadline: {attempts} write(s) refused as out of \
                 sequence (its version kept moving), the last: {message}",
                object.what
            );
        }
        tracing::debug!(
            "{} moved on (version {version}); reading it again",
            object.what
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use serde_json::json;

    use super::*;

    /// A store whose object's version moves on after each of the first `moves` reads, before
    /// the write (as a node's heartbeat moves it), answering as dockerd 20.10 does.
    struct MovingStore {
        version: RefCell<u64>,
        moves: RefCell<usize>,
        labels: RefCell<Value>,
        reads: RefCell<usize>,
        writes: RefCell<usize>,
    }

    impl MovingStore {
        fn new(moves: usize) -> Self {
            MovingStore {
                version: RefCell::new(131),
                moves: RefCell::new(moves),
                labels: RefCell::new(json!({"user": "kept"})),
                reads: RefCell::new(0),
                writes: RefCell::new(0),
            }
        }
    }

    impl ObjectStore for MovingStore {
        fn read(&self, _path: &str, _: Deadline) -> Result<Value> {
            *self.reads.borrow_mut() += 1;
            let version = *self.version.borrow();
            let mut moves = self.moves.borrow_mut();
            if *moves > 0 {
                *moves -= 1;
                *self.version.borrow_mut() += 1;
            }
            Ok(json!({"ID": "n1", "Version": {"Index": version},
                      "Spec": {"Role": "worker", "Labels": self.labels.borrow().clone()}}))
        }

        fn write(&self, path: &str, body: &Value, _: Deadline) -> Result<()> {
            *self.writes.borrow_mut() += 1;
            let wanted = format!("version={}", self.version.borrow());
            if !path.ends_with(&wanted) {
                return Err(refusal(
                    500,
                    "rpc error: code = Unknown desc = update out of sequence",
                ));
            }
            *self.labels.borrow_mut() = body["Labels"].clone();
            *self.version.borrow_mut() += 1;
            Ok(())
        }
    }

    fn refusal(status: u32, message: &str) -> anyhow::Error {
        EngineError {
            host: "msh1".into(),
            call: "POST /nodes/n1/update".into(),
            status,
            message: message.into(),
        }
        .into()
    }

    fn node_object(write: &dyn Fn(u64) -> String) -> Object<'_> {
        Object {
            what: "the node of sim29",
            read_path: "/nodes/n1".into(),
            write_path: write,
        }
    }

    #[test]
    fn a_write_refused_out_of_sequence_is_retried_from_a_fresh_read() {
        let store = MovingStore::new(2);
        let write = |v: u64| format!("/nodes/n1/update?version={v}");
        let add = |spec: &mut Value| spec["Labels"]["mpiswarm.index"] = json!("29");
        let deadline = Deadline::after(Duration::from_secs(5));
        update(&store, &node_object(&write), add, deadline).unwrap();
        assert_eq!(*store.writes.borrow(), 3);
        assert_eq!(
            *store.labels.borrow(),
            json!({"user": "kept", "mpiswarm.index": "29"})
        );
    }

    /// The node as read now, for `update_from`.
    fn read_now(store: &MovingStore) -> Value {
        store
            .read("/nodes/n1", Deadline::after(Duration::from_secs(1)))
            .unwrap()
    }

    /// Adds a label to the node, starting from `known`; returns the node as read before the
    /// write that succeeded.
    fn label_from(store: &MovingStore, known: Value) -> Value {
        let write = |v: u64| format!("/nodes/n1/update?version={v}");
        let add = |spec: &mut Value| spec["Labels"]["mpiswarm.index"] = json!("29");
        let deadline = Deadline::after(Duration::from_secs(5));
        update_from(store, &node_object(&write), Some(known), add, deadline).unwrap()
    }

    #[test]
    fn an_object_known_and_unmoved_is_written_without_a_read() {
        let store = MovingStore::new(0);
        let known = read_now(&store);
        label_from(&store, known);
        assert_eq!((*store.reads.borrow(), *store.writes.borrow()), (1, 1));
        assert_eq!(store.labels.borrow()["mpiswarm.index"], json!("29"));
    }

    #[test]
    fn an_object_known_but_moved_since_is_read_again_after_the_refusal() {
        let store = MovingStore::new(0);
        let known = read_now(&store);
        // Something else wrote it since (a node's status, another update).
        *store.version.borrow_mut() += 3;
        let before = label_from(&store, known);
        assert_eq!((*store.reads.borrow(), *store.writes.borrow()), (2, 2));
        assert_eq!(before["Version"]["Index"], json!(134));
        assert_eq!(store.labels.borrow()["mpiswarm.index"], json!("29"));
    }

    #[test]
    fn a_version_that_never_settles_fails_at_the_deadline_naming_the_object() {
        let store = MovingStore::new(usize::MAX);
        let write = |v: u64| format!("/nodes/n1/update?version={v}");
        let deadline = Deadline::after(Duration::from_millis(100));
        let e = update(&store, &node_object(&write), |_| {}, deadline).unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("the node of sim29") && e.contains("out of sequence"),
            "{e}"
        );
    }

    #[test]
    fn other_refusals_fail_at_once() {
        struct Refusing;
        impl ObjectStore for Refusing {
            fn read(&self, _: &str, _: Deadline) -> Result<Value> {
                Ok(json!({"Version": {"Index": 1}, "Spec": {}}))
            }
            fn write(&self, _: &str, _: &Value, _: Deadline) -> Result<()> {
                Err(refusal(400, "invalid spec"))
            }
        }
        let write = |v: u64| format!("/swarm/update?version={v}");
        let deadline = Deadline::after(Duration::from_secs(60));
        let t = Instant::now();
        let e = update(&Refusing, &node_object(&write), |_| {}, deadline).unwrap_err();
        assert!(format!("{e:#}").contains("invalid spec"));
        assert!(t.elapsed() < Duration::from_secs(1));
    }
}
