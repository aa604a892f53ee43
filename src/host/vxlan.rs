//! Remedy (b) for cross-host overlay traffic under rootlesskit's builtin port driver: that driver
//! rewrites the outer source address of incoming VXLAN packets, and the kernel drops packets whose
//! source does not match libnetwork's permanent forwarding entries while learning is on. Turning
//! learning off on every vxlan device in the daemon's network sandboxes lets them through.
//! (The default, the slirp4netns port driver, keeps source addresses and needs none of this.)

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Run inside the daemon's user and mount namespaces: every sandbox's vxlan devices, learning off.
const SCRIPT: &str = r#"for ns in /run/docker/netns/* "$1"/run/netns/*; do
  [ -e "$ns" ] || continue
  nsenter --net="$ns" sh -c 'for d in $(ip -o link show type vxlan 2>/dev/null | cut -d: -f2 | cut -d@ -f1); do
    ip -d link show dev "$d" | grep -q nolearning || ip link set dev "$d" type vxlan nolearning; done'
done"#;

/// Sweeps the sandboxes of the daemon under `rootlesskit` until `stop` is set: new overlay
/// sandboxes appear whenever a task joins a network. The sweep enters rootlesskit's child, found
/// again whenever the one found is gone.
pub fn keep_learning_off(rootlesskit: i32, state_dir: String, stop: Arc<AtomicBool>) {
    let mut child = None;
    while !stop.load(Ordering::SeqCst) {
        if !child.is_some_and(|(pid, start)| crate::sys::procfs::still_running(pid, start)) {
            child = crate::host::daemon::rootlesskit::rootlesskit_child(rootlesskit);
        }
        match child {
            Some((pid, _)) => {
                sweep(pid as u32, &state_dir);
                std::thread::sleep(Duration::from_millis(300));
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn sweep(ns_pid: u32, state_dir: &str) {
    let child = Command::new("nsenter")
        .args([
            "-t",
            &ns_pid.to_string(),
            "-U",
            "-m",
            "--preserve-credentials",
            "sh",
            "-c",
            SCRIPT,
            "sweep",
        ])
        .arg(state_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    if let Ok(mut child) = child {
        let _ = crate::sys::deadline::wait_or_kill(&mut child, Duration::from_secs(5));
    }
}
