//! Several machines: node 0 hosts burn-collective's global orchestrator (the rendezvous where
//! the nodes learn each other's addresses); gradients then travel node to node in a ring.

use std::net::{TcpListener, ToSocketAddrs, UdpSocket};
use std::sync::OnceLock;

use anyhow::Context;

/// Starts the orchestrator on `port` (once per process), on a thread of its own with the
/// tokio runtime it needs. A port already taken is an error here, not a hang later.
pub fn start_orchestrator(port: u16) -> anyhow::Result<()> {
    static STARTED: OnceLock<u16> = OnceLock::new();
    if let Some(&running) = STARTED.get() {
        anyhow::ensure!(
            running == port,
            "this process already coordinates a run on port {running}"
        );
        return Ok(());
    }
    // Bind once to say clearly when the port is taken; the orchestrator binds it again.
    drop(TcpListener::bind(("0.0.0.0", port)).with_context(|| {
        format!(
            "the coordinator cannot listen on port {port} (parallel.coordinator): is it in use?"
        )
    })?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the coordinator's runtime")?;
    std::thread::Builder::new()
        .name("kdlab-coordinator".into())
        .spawn(move || runtime.block_on(burn::collective::start_global_orchestrator(port)))
        .context("cannot start the coordinator's thread")?;
    let _ = STARTED.set(port);
    Ok(())
}

/// The address the other nodes reach this one at: the local address of the route to the
/// coordinator (loopback when the coordinator is on this machine).
pub fn reachable_host(coordinator: &str) -> anyhow::Result<String> {
    let target = coordinator
        .to_socket_addrs()
        .with_context(|| format!("parallel.coordinator: cannot resolve `{coordinator}`"))?
        .next()
        .with_context(|| format!("parallel.coordinator: `{coordinator}` has no address"))?;
    if target.ip().is_loopback() {
        return Ok(target.ip().to_string());
    }
    // Connecting a UDP socket sends nothing; it only picks the route and its source address.
    let socket = UdpSocket::bind(("0.0.0.0", 0)).context("cannot open a socket")?;
    socket
        .connect(target)
        .with_context(|| format!("no route to the coordinator {coordinator}"))?;
    Ok(socket.local_addr()?.ip().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_coordinator_on_this_machine_is_reached_on_loopback() {
        assert_eq!(reachable_host("127.0.0.1:29500").unwrap(), "127.0.0.1");
        let err = reachable_host("no-such-host.invalid:1").unwrap_err();
        assert!(format!("{err:#}").contains("cannot resolve"), "{err:#}");
    }
}
