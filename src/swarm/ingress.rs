//! The routing mesh's network (`ingress`) is made again once every host has joined. While it
//! exists, each joining node's certificate is signed twice by the leading manager, one signature
//! at a time, each a Raft write: once for the join and once more for the node update that gives
//! the node its ingress address. At 64 simulated hosts that queue made joins of 5-16 s; without
//! the network during the joins they took 2 s, and the seal after them 0.01 s instead of 2-3 s.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::host::engine::{Engine, EngineError};
use crate::sys::deadline::Deadline;

/// The swarm's networks (not the daemon's own: `bridge`, `host`, `none`).
const SWARM_NETWORKS: &str = "/networks?filters=%7B%22scope%22%3A%7B%22swarm%22%3Atrue%7D%7D";

/// How often the network is asked for again while the manager's daemon still holds the one
/// removed (it lets it go within about a second of the removal).
const RETRY_EVERY: Duration = Duration::from_millis(50);

/// The ingress network `swarm init` made, as it was made: removed until `restore`.
pub struct SetAside {
    /// The body of `POST /networks/create` that makes it again.
    create: Value,
}

/// Removes the ingress network `swarm init` just made, keeping what makes it again (none if it
/// made none).
pub fn set_aside(engine: &Engine, deadline: Deadline) -> Result<Option<SetAside>> {
    let networks = engine.get_json(SWARM_NETWORKS, deadline)?;
    let Some(ingress) = find_ingress(&networks) else {
        return Ok(None);
    };
    let id = ingress["Id"].as_str().unwrap_or_default();
    let create = create_body(ingress);
    engine
        .call("DELETE", &format!("/networks/{id}"), None, deadline)
        .context("failed to remove the ingress network until the hosts have joined")?;
    Ok(Some(SetAside { create }))
}

/// Makes the ingress network again, as `swarm init` made it. Each daemon sets it up as it hears
/// of it, in place of the removed one, within about a second (rank 0's lists both until then:
/// measured 0.3-0.6 s after this returns, on 4 simulated hosts); waiting for that would add as
/// much to every bring-up of a few hosts, and a service publishing ports that starts meanwhile
/// is served as soon as its node has the network.
pub fn restore(engine: &Engine, aside: SetAside, deadline: Deadline) -> Result<()> {
    // A name the daemon still holds (409) is asked for again; any other answer is final.
    loop {
        let refusal = match engine.call("POST", "/networks/create", Some(&aside.create), deadline) {
            Ok(_) => return Ok(()),
            Err(e) => match e.downcast::<EngineError>() {
                Ok(refusal) if refusal.status == 409 => refusal,
                Ok(refusal) => return Err(refusal).context(FAILED),
                Err(e) => return Err(e).context(FAILED),
            },
        };
        if deadline.left() <= RETRY_EVERY {
            return Err(refusal).context(format!(
                "{FAILED}: the manager's daemon still held the one removed after the joins at \
                 {}",
                deadline.set_by()
            ));
        }
        std::thread::sleep(RETRY_EVERY);
    }
}

const FAILED: &str = "failed to make the swarm's ingress network again";

/// The swarm network marked `Ingress` in a `GET /networks` answer.
fn find_ingress(networks: &Value) -> Option<&Value> {
    networks
        .as_array()?
        .iter()
        .find(|n| n["Ingress"].as_bool() == Some(true))
}

/// What `POST /networks/create` needs to make `network` (as `GET /networks` shows it) again: its
/// settings, not what the manager allocated to it (its subnet and VXLAN ID, which the removed
/// network may still hold for a moment: the new one takes the next free ones).
fn create_body(network: &Value) -> Value {
    let mut options = network["Options"].clone();
    if let Some(options) = options.as_object_mut() {
        options.remove(VXLAN_IDS);
    }
    json!({
        "Name": network["Name"],
        "Driver": network["Driver"],
        "Ingress": true,
        "Internal": network["Internal"],
        "Attachable": network["Attachable"],
        "EnableIPv6": network["EnableIPv6"],
        "IPAM": {"Driver": network["IPAM"]["Driver"]},
        "Options": options,
        "Labels": network["Labels"],
    })
}

/// The option in which the manager says which VXLAN IDs it allocated to an overlay network.
const VXLAN_IDS: &str = "com.docker.network.driver.overlay.vxlanid_list";

#[cfg(test)]
mod tests {
    use super::*;

    /// As Docker 24 lists a new swarm's networks.
    fn listed() -> Value {
        json!([
            {"Name": "ingress", "Id": "kd3", "Scope": "swarm", "Driver": "overlay",
             "EnableIPv6": false, "Internal": false, "Attachable": false, "Ingress": true,
             "IPAM": {"Driver": "default", "Options": null,
                      "Config": [{"Subnet": "10.128.0.0/24", "Gateway": "10.128.0.1"}]},
             "Options": {"com.docker.network.driver.overlay.vxlanid_list": "4096"},
             "Labels": {}},
            {"Name": "other", "Id": "x1", "Scope": "swarm", "Driver": "overlay", "Ingress": false}
        ])
    }

    #[test]
    fn the_network_is_made_again_with_its_settings_not_its_allocations() {
        let networks = listed();
        let ingress = find_ingress(&networks).unwrap();
        assert_eq!(ingress["Id"], "kd3");
        let body = create_body(ingress);
        assert_eq!(body["Name"], "ingress");
        assert_eq!(body["Ingress"], true);
        assert_eq!(body["IPAM"], json!({"Driver": "default"}));
        assert_eq!(body["Options"], json!({}));
    }

    #[test]
    fn a_swarm_without_ingress_has_none_to_set_aside() {
        let networks = json!([{"Name": "other", "Ingress": false}]);
        assert!(find_ingress(&networks).is_none());
    }
}
