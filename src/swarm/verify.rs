//! `verify`: proves the overlay works between every pair of hosts. One probe task per host on an
//! attachable overlay network; from each host's probe, every other probe is resolved by name and
//! connected to; rank 0 prints the N×N result and names the failing pairs.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::host::engine::Engine;
use crate::mpi::collective::{Interrupt, Leaders};
use crate::swarm::api::{self, List};
use crate::sys::deadline::Deadline;

const NETWORK: &str = "mpiswarm-probe";
const PORT: u16 = 7777;
/// Connect timeout per pair, in seconds (busybox nc's -w).
const PAIR_TIMEOUT: u32 = 2;
/// Attempts per pair before it counts as failing.
const ATTEMPTS: u32 = 5;

fn service_name(host: &str) -> String {
    format!("mpiswarm-probe-{host}")
}

/// One host's view: which probes it reached, in host order.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Row {
    host: String,
    reached: Vec<bool>,
    error: Option<String>,
}

/// Runs the probe; Ok only if every pair connects. The hosts agree by `deadline`; each host's
/// own steps end by `own`, a little before it, so that the agreement hears why one failed.
pub fn run(
    leaders: &mut Leaders,
    engine: &Engine,
    hosts: &[String],
    image: &str,
    overlay_mtu: u32,
    deadline: Instant,
    own: Deadline,
) -> Result<()> {
    let root = leaders.is_root();
    let local = if root {
        deploy_probes(engine, hosts, image, overlay_mtu, own)
    } else {
        Ok(())
    };
    let agreed = leaders.agree("start the overlay probes", local, deadline);
    if agreed.is_err() && root {
        remove_probes(engine, hosts, own);
    }
    agreed?;

    let host = leaders.host.clone();
    let row = match probe_from_here(engine, &host, hosts, own) {
        Ok(reached) => Row {
            host,
            reached,
            error: None,
        },
        Err(err) => Row {
            host,
            reached: vec![false; hosts.len()],
            error: Some(format!("{err:#}")),
        },
    };
    let rows = leaders.gather_to_root(
        &row,
        "gather the overlay probe results",
        deadline,
        Interrupt::BySignal,
    )?;
    let verdict = match rows {
        Some(rows) => {
            remove_probes(engine, hosts, own);
            judge(rows, hosts)
        }
        None => Ok(()),
    };
    leaders.agree("verify the overlay network", verdict, deadline)
}

/// Rank 0's verdict over every host's row.
fn judge(rows: Vec<Row>, hosts: &[String]) -> Result<()> {
    print_matrix(&rows, hosts);
    let failing = failing_pairs(&rows, hosts);
    if failing.is_empty() {
        tracing::info!(
            "overlay verified: all {0}x{0} pairs connected by name",
            hosts.len()
        );
        Ok(())
    } else {
        bail!(
            "the overlay network does not connect {} of {} pairs: {}; VXLAN (UDP 4789) and \
             gossip (TCP and UDP 7946) must pass between these hosts (see docs/networking.md), \
             and a lower --overlay-mtu helps where a network drops IP fragments",
            failing.len(),
            hosts.len() * hosts.len(),
            failing.join(", ")
        )
    }
}

/// Every pair that did not connect (`from -> to`), and every host whose probe failed as a whole.
fn failing_pairs(rows: &[Row], hosts: &[String]) -> Vec<String> {
    let mut failing = Vec::new();
    for r in rows {
        if let Some(e) = &r.error {
            failing.push(format!("{}: {e}", r.host));
            continue;
        }
        for (to, ok) in hosts.iter().zip(&r.reached) {
            if !ok {
                failing.push(format!("{} -> {to}", r.host));
            }
        }
    }
    failing
}

fn deploy_probes(
    engine: &Engine,
    hosts: &[String],
    image: &str,
    mtu: u32,
    deadline: Deadline,
) -> Result<()> {
    let net = json!({"Name": NETWORK, "Driver": "overlay", "Attachable": true,
        "CheckDuplicate": true, "Options": crate::plan::mtu::options(mtu)});
    let r = engine.request("POST", "/networks/create", Some(&net), deadline)?;
    if !r.is_success() && r.status != 409 {
        bail!("failed to create the probe network: {}", r.message());
    }
    for host in hosts {
        let reply = format!("probe-reply-{host}");
        let spec = json!({
            "Name": service_name(host),
            "Labels": {"com.docker.stack.namespace": NETWORK},
            "TaskTemplate": {
                "ContainerSpec": {
                    "Image": image,
                    "Command": ["sh", "-c", format!("while true; do echo {reply} | nc -l -p {PORT}; done")],
                },
                "Placement": {"Constraints": [format!("node.hostname=={host}")]},
                "Networks": [{"Target": NETWORK}],
            },
            "Mode": {"Replicated": {"Replicas": 1}},
            "EndpointSpec": {"Mode": "dnsrr"},
        });
        engine
            .call("POST", "/services/create", Some(&spec), deadline)
            .with_context(|| format!("failed to create the probe service for {host}"))?;
    }
    crate::swarm::stack::wait_for(
        engine,
        NETWORK,
        crate::swarm::stack_state::verdict::Goal::Up,
        deadline.instant(),
        |_| {},
    )
    .with_context(|| format!("failed to start the probes (does the image {image} have sh and nc?)"))
}

/// From this host's probe container, connects to every probe by service name, all at once.
fn probe_from_here(
    engine: &Engine,
    host: &str,
    hosts: &[String],
    deadline: Deadline,
) -> Result<Vec<bool>> {
    let filter =
        json!({"label": [format!("com.docker.swarm.service.name={}", service_name(host))]})
            .to_string();
    let path = format!(
        "/containers/json?filters={}",
        crate::swarm::stack::encode(&filter)
    );
    let containers: List<api::Container> = api::get(engine, &path, deadline)?;
    let id = containers
        .0
        .into_iter()
        .next()
        .map(|c| c.id)
        .with_context(|| format!("no probe container runs on {host}"))?;
    let script: String = hosts
        .iter()
        .map(|h| {
            // Retried for a few seconds: a probe that just started may not be in the others'
            // name service and forwarding tables yet.
            format!(
                "(for i in $(seq {ATTEMPTS}); do r=$(nc -w {PAIR_TIMEOUT} {svc} {PORT} </dev/null 2>/dev/null); \
                 [ \"$r\" = probe-reply-{h} ] && break; sleep 1; done; echo \"{h}=$r\") & ",
                svc = service_name(h)
            )
        })
        .collect::<String>()
        + "wait";
    let exec = json!({"Cmd": ["sh", "-c", script], "AttachStdout": true, "AttachStderr": true, "Tty": true});
    let path = format!("/containers/{id}/exec");
    let created: api::Created =
        api::parse(&engine.call("POST", &path, Some(&exec), deadline)?, &path)?;
    let exec_id = created.id.context("the daemon returned no exec id")?;
    let output = engine.call_long(
        "POST",
        &format!("/exec/{exec_id}/start"),
        Some(&json!({"Detach": false, "Tty": true})),
        deadline.within(Duration::from_secs(
            u64::from((PAIR_TIMEOUT + 1) * ATTEMPTS) + 20,
        )),
    )?;
    let text = String::from_utf8_lossy(&output.body);
    Ok(hosts
        .iter()
        .map(|h| {
            text.lines()
                .any(|l| l.trim() == format!("{h}=probe-reply-{h}"))
        })
        .collect())
}

/// Removes the probes by `deadline` at the latest (the hosts then agree on the verdict).
fn remove_probes(engine: &Engine, hosts: &[String], deadline: Deadline) {
    for host in hosts {
        let _ = engine.request(
            "DELETE",
            &format!("/services/{}", service_name(host)),
            None,
            deadline,
        );
    }
    // The network goes once its last task has released it; the swarm itself is discarded at
    // teardown anyway, so a failure here is not worth waiting for.
    let deadline = deadline.within(Duration::from_secs(10));
    let _ =
        crate::sys::deadline::poll_until(deadline.instant(), Duration::from_millis(200), || {
            let deleted = engine.request("DELETE", &format!("/networks/{NETWORK}"), None, deadline);
            deleted
                .is_ok_and(|r| r.is_success() || r.status == 404)
                .then_some(())
        });
}

fn print_matrix(rows: &[Row], hosts: &[String]) {
    let width = hosts.iter().map(String::len).max().unwrap_or(4).max(4);
    let mut out = format!("overlay probe (row: from, column: to)\n{:width$}", "");
    for h in hosts {
        out.push_str(&format!("  {h:width$}"));
    }
    for r in rows {
        out.push_str(&format!("\n{:width$}", r.host));
        for ok in &r.reached {
            out.push_str(&format!("  {:width$}", if *ok { "ok" } else { "FAIL" }));
        }
    }
    println!("{out}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(host: &str, reached: &[bool], error: Option<&str>) -> Row {
        Row {
            host: host.into(),
            reached: reached.to_vec(),
            error: error.map(Into::into),
        }
    }

    #[test]
    fn judgement_names_each_failing_pair_and_each_failed_host() {
        let hosts: Vec<String> = vec!["a".into(), "b".into(), "c".into()];
        let rows = [
            row("a", &[true, true, false], None),
            row("b", &[true, true, true], None),
            row(
                "c",
                &[false, false, false],
                Some("no probe container runs on c"),
            ),
        ];
        assert_eq!(
            failing_pairs(&rows, &hosts),
            ["a -> c", "c: no probe container runs on c"]
        );
        let all_ok = [row("a", &[true, true, true], None)];
        assert!(failing_pairs(&all_ok, &hosts).is_empty());
    }
}
