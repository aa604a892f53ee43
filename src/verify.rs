//! `verify`: proves the overlay works between every pair of hosts. One probe task per host on an
//! attachable overlay network; from each host's probe, every other probe is resolved by name and
//! connected to; rank 0 prints the N×N result and names the failing pairs.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::cluster::Cluster;
use crate::engine::Engine;

const NETWORK: &str = "mpiswarm-probe";
const PORT: u16 = 7777;
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
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

/// Runs the probe; Ok only if every pair connects.
pub fn run(
    c: &mut Cluster,
    engine: Option<&Engine>,
    hosts: &[String],
    image: &str,
    overlay_mtu: u32,
    deadline: Instant,
) -> Result<()> {
    let local = if c.is_root() {
        let e = engine.expect("rank 0 leads its host");
        deploy_probes(e, hosts, image, overlay_mtu, deadline).map(|()| 0.0)
    } else {
        Ok(0.0)
    };
    let agreed = c.agree("start the overlay probes", local, deadline);
    if agreed.is_err() && c.is_root() {
        remove_probes(engine.expect("rank 0 leads its host"), hosts);
    }
    agreed?;

    let row = match engine.filter(|_| c.is_leader) {
        Some(e) => match probe_from_here(e, &c.host, hosts) {
            Ok(reached) => Row {
                host: c.host.clone(),
                reached,
                error: None,
            },
            Err(err) => Row {
                host: c.host.clone(),
                reached: vec![false; hosts.len()],
                error: Some(format!("{err:#}")),
            },
        },
        None => Row {
            host: String::new(),
            reached: Vec::new(),
            error: None,
        },
    };
    let rows = c.all_gather(&row, "gather the overlay probe results", deadline)?;
    let verdict = if c.is_root() {
        remove_probes(engine.expect("rank 0 leads its host"), hosts);
        judge(rows, hosts).map(|()| 0.0)
    } else {
        Ok(0.0)
    };
    c.agree("verify the overlay network", verdict, deadline)
        .map(|_| ())
}

/// Rank 0's verdict over every host's row.
fn judge(rows: Vec<Row>, hosts: &[String]) -> Result<()> {
    let rows: Vec<Row> = rows.into_iter().filter(|r| !r.host.is_empty()).collect();
    print_matrix(&rows, hosts);
    let mut failing = Vec::new();
    for r in &rows {
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
    if failing.is_empty() {
        tracing::info!(
            "overlay verified: all {0}x{0} pairs connected by name",
            hosts.len()
        );
        Ok(())
    } else {
        bail!(
            "the overlay network does not connect {} of {} pairs: {}",
            failing.len(),
            hosts.len() * hosts.len(),
            failing.join(", ")
        )
    }
}

fn deploy_probes(
    engine: &Engine,
    hosts: &[String],
    image: &str,
    mtu: u32,
    deadline: Instant,
) -> Result<()> {
    let net = json!({"Name": NETWORK, "Driver": "overlay", "Attachable": true,
        "CheckDuplicate": true, "Options": crate::mtu::options(mtu)});
    let r = engine.request("POST", "/networks/create", Some(&net), CALL_TIMEOUT)?;
    if !(200..300).contains(&r.status) && r.status != 409 {
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
            .call("POST", "/services/create", Some(&spec), CALL_TIMEOUT)
            .with_context(|| format!("failed to create the probe service for {host}"))?;
    }
    crate::stack::wait_converged(engine, NETWORK, deadline, |_| {}).with_context(|| {
        format!("failed to start the probes (does the image {image} have sh and nc?)")
    })
}

/// From this host's probe container, connects to every probe by service name, all at once.
fn probe_from_here(engine: &Engine, host: &str, hosts: &[String]) -> Result<Vec<bool>> {
    let filter =
        json!({"label": [format!("com.docker.swarm.service.name={}", service_name(host))]})
            .to_string();
    let containers = engine.get_json(
        &format!("/containers/json?filters={}", crate::stack::encode(&filter)),
        CALL_TIMEOUT,
    )?;
    let id = containers
        .as_array()
        .and_then(|a| a.first())
        .and_then(|c| c.get("Id"))
        .and_then(Value::as_str)
        .with_context(|| format!("no probe container runs on {host}"))?
        .to_owned();
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
    let created = engine
        .call(
            "POST",
            &format!("/containers/{id}/exec"),
            Some(&exec),
            CALL_TIMEOUT,
        )?
        .json()?;
    let exec_id = created
        .get("Id")
        .and_then(Value::as_str)
        .context("the daemon returned no exec id")?;
    let output = engine.call(
        "POST",
        &format!("/exec/{exec_id}/start"),
        Some(&json!({"Detach": false, "Tty": true})),
        Duration::from_secs(u64::from((PAIR_TIMEOUT + 1) * ATTEMPTS) + 20),
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

fn remove_probes(engine: &Engine, hosts: &[String]) {
    for host in hosts {
        let _ = engine.request(
            "DELETE",
            &format!("/services/{}", service_name(host)),
            None,
            CALL_TIMEOUT,
        );
    }
    // The network goes once its last task has released it; the swarm itself is discarded at
    // teardown anyway, so a failure here is not worth waiting for.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match engine.request(
            "DELETE",
            &format!("/networks/{NETWORK}"),
            None,
            CALL_TIMEOUT,
        ) {
            Ok(r) if (200..300).contains(&r.status) || r.status == 404 => return,
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
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
