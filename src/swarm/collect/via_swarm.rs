//! `--collect`'s other path to the hosts' service logs: when a host's share cannot reach rank 0
//! over MPI (an abandoned collective leaves MPI unusable), rank 0 asks the swarm's manager, whose
//! log API (`GET /services/{id}/logs`) gathers every node's task logs through the swarm itself.
//! The lines come out as the hosts' own shares write them (`ShareLine::Service`, `<time>
//! <task>@<host> <stream> <text>`), so that one file per service holds them all.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;

use crate::host::engine::{Body, Engine, frames};
use crate::swarm::api::{self, List};
use crate::swarm::collect::out::SERVICE_CAP;
use crate::swarm::collect::protocol::ShareLine;
use crate::sys::deadline::{Deadline, time_left};
use crate::sys::frame::Bytes;

/// Who a task is, for its log lines: its name as Docker gives it, and its host.
struct TaskName {
    name: String,
    host: String,
}

/// Writes, as service lines (and missing lines for what could not be read), the logs of every
/// swarm service's tasks that ran on one of `hosts`, until `until`.
pub fn service_logs(
    engine: &Engine,
    hosts: &BTreeSet<String>,
    until: Instant,
    out: &mut impl Write,
) -> Result<()> {
    fn get<T: DeserializeOwned>(engine: &Engine, path: &str, until: Instant) -> Result<List<T>> {
        time_left(until).context("the time budget ran out")?;
        api::get(engine, path, Deadline::phase(until))
    }
    let List(services) = get::<api::Service>(engine, "/services", until)?;
    let List(tasks) = get::<api::Task>(engine, "/tasks", until)?;
    let List(nodes) = get::<api::Node>(engine, "/nodes", until)?;
    let names = task_names(&services, &tasks, &nodes);
    let services: Vec<(&str, &str)> = services
        .iter()
        .filter(|s| !s.id.is_empty() && !s.spec.name.is_empty())
        .map(|s| (s.id.as_str(), s.spec.name.as_str()))
        .collect();
    for (i, (id, service)) in services.iter().enumerate() {
        // Each service gets an equal share of what is left, so that one slow node does not
        // cost every other service's lines.
        let Some(left) = time_left(until) else {
            note(
                out,
                &format!(
                    "services/{service}.log: through the swarm manager: the time budget ran out"
                ),
            )?;
            continue;
        };
        let share = Deadline::phase(until).within(left / (services.len() - i) as u32);
        one_service(engine, id, service, &names, hosts, share, out)?;
    }
    Ok(())
}

/// One service's logs through the manager, in `share` of the time left.
fn one_service(
    engine: &Engine,
    id: &str,
    service: &str,
    names: &HashMap<String, TaskName>,
    hosts: &BTreeSet<String>,
    share: Deadline,
    out: &mut impl Write,
) -> Result<()> {
    let path = format!("/services/{id}/logs?stdout=1&stderr=1&timestamps=1&details=1");
    let cap = SERVICE_CAP.saturating_mul(hosts.len().max(1));
    match engine.get_bounded(&path, cap, share) {
        Ok((r, body)) if r.is_success() => {
            write_lines(&r.body, service, names, hosts, out)?;
            if body != Body::Whole {
                note(
                    out,
                    &format!(
                        "services/{service}.log: through the swarm manager: {}",
                        if body == Body::Capped {
                            "cut at the size limit"
                        } else {
                            "cut by the time budget (a node did not send all its lines)"
                        }
                    ),
                )?;
            }
        }
        Ok((r, _)) => note(
            out,
            &format!(
                "services/{service}.log: through the swarm manager: {}",
                r.message()
            ),
        )?,
        Err(e) => note(
            out,
            &format!("services/{service}.log: through the swarm manager: {e:#}"),
        )?,
    }
    Ok(())
}

fn note(out: &mut impl Write, what: &str) -> Result<()> {
    ShareLine::missing(what).write_to(out)
}

/// Task IDs to their names (`<service>.<slot or node>.<task>`, as Docker names their
/// containers) and hosts.
fn task_names(
    services: &[api::Service],
    tasks: &[api::Task],
    nodes: &[api::Node],
) -> HashMap<String, TaskName> {
    let service_names: HashMap<&str, &str> = services
        .iter()
        .filter(|s| !s.id.is_empty() && !s.spec.name.is_empty())
        .map(|s| (s.id.as_str(), s.spec.name.as_str()))
        .collect();
    let hostnames: HashMap<&str, &str> = nodes
        .iter()
        .filter_map(|n| Some((n.id.as_str(), n.description.hostname.as_deref()?)))
        .collect();
    tasks
        .iter()
        .filter(|t| !t.id.is_empty())
        .filter_map(|t| {
            let service = service_names.get(t.service_id.as_str())?;
            let node = t.node_id.as_deref().unwrap_or("");
            let slot = match t.slot {
                Some(slot) if slot > 0 => slot.to_string(),
                _ => node.to_owned(),
            };
            Some((
                t.id.clone(),
                TaskName {
                    name: format!("{service}.{slot}.{}", t.id),
                    host: (*hostnames.get(node)?).to_owned(),
                },
            ))
        })
        .collect()
}

/// One line of a swarm log stream asked for with `timestamps` and `details`.
struct Line<'a> {
    time: &'a [u8],
    /// `k=v,...`, URL-encoded (no spaces): the node, service and task among them.
    attrs: HashMap<String, String>,
    text: &'a [u8],
}

fn split_line(line: &[u8]) -> Option<Line<'_>> {
    let mut parts = line.splitn(3, |b| *b == b' ');
    let time = parts.next()?;
    let attrs = String::from_utf8_lossy(parts.next()?)
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let text = parts.next().unwrap_or_default();
    Some(Line { time, attrs, text })
}

/// The stream's lines of tasks on `hosts`, as service lines of `service`.
fn write_lines(
    body: &[u8],
    service: &str,
    names: &HashMap<String, TaskName>,
    hosts: &BTreeSet<String>,
    out: &mut impl Write,
) -> Result<()> {
    for (stream, payload) in frames(body) {
        for line in payload.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let Some(Line { time, attrs, text }) = split_line(line) else {
                continue;
            };
            let Some(task) = attrs
                .get("com.docker.swarm.task.id")
                .and_then(|id| names.get(id))
            else {
                continue;
            };
            if !hosts.contains(&task.host) {
                continue;
            }
            let who = format!(" {}@{} {stream} ", task.name, task.host);
            ShareLine::Service {
                service: service.to_owned(),
                line: Bytes::new([time, who.as_bytes(), text].concat()),
            }
            .write_to(out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::host::engine::tests::frame;
    use crate::swarm::collect::protocol::tests::{lines, service};

    #[test]
    fn manager_lines_read_like_the_hosts_own_and_only_the_wanted_hosts_are_kept() {
        let services = json!([{"ID": "s1", "Spec": {"Name": "col_talker"}}]);
        let nodes = json!([
            {"ID": "n1", "Description": {"Hostname": "msh1"}},
            {"ID": "n2", "Description": {"Hostname": "msh2"}},
        ]);
        let tasks = json!([
            {"ID": "t1", "ServiceID": "s1", "NodeID": "n1"},
            {"ID": "t2", "ServiceID": "s1", "NodeID": "n2"},
            {"ID": "t3", "ServiceID": "s1", "NodeID": "n2", "Slot": 2},
        ]);
        fn typed<T: DeserializeOwned>(v: serde_json::Value) -> Vec<T> {
            serde_json::from_value::<List<T>>(v).unwrap().0
        }
        let services: Vec<api::Service> = typed(services);
        let (tasks, nodes): (Vec<api::Task>, Vec<api::Node>) = (typed(tasks), typed(nodes));
        let names = task_names(&services, &tasks, &nodes);
        // As dockerd writes a swarm log stream with timestamps and details (attributes sorted).
        let attrs = |task: &str, node: &str| {
            format!(
                "com.docker.swarm.node.id={node},com.docker.swarm.service.id=s1,com.docker.swarm.task.id={task}"
            )
        };
        let mut body = frame(
            1,
            &format!(
                "2026-01-10T10:00:01.000000000Z {} known line 1\n",
                attrs("t1", "n1")
            ),
        );
        body.extend(frame(
            1,
            &format!(
                "2026-01-10T10:00:01.100000000Z {} known line 1\n",
                attrs("t2", "n2")
            ),
        ));
        body.extend(frame(
            2,
            &format!(
                "2026-01-10T10:00:01.200000000Z {} an error\n",
                attrs("t3", "n2")
            ),
        ));
        let hosts: BTreeSet<String> = ["msh2".to_owned()].into();
        let mut out = Vec::new();
        write_lines(&body, "col_talker", &names, &hosts, &mut out).unwrap();
        assert_eq!(
            lines(&out),
            [
                Ok(service(
                    "col_talker",
                    "2026-01-10T10:00:01.100000000Z col_talker.n2.t2@msh2 stdout known line 1"
                )),
                Ok(service(
                    "col_talker",
                    "2026-01-10T10:00:01.200000000Z col_talker.2.t3@msh2 stderr an error"
                )),
            ]
        );
    }

    #[test]
    fn a_line_without_text_or_attributes_is_handled() {
        let line = split_line(b"T k=v,a=b").unwrap();
        assert_eq!(line.time, b"T");
        assert_eq!(line.attrs.get("a").map(String::as_str), Some("b"));
        assert!(line.text.is_empty());
        assert!(split_line(b"T").is_none());
    }
}
