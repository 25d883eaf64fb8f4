//! Joining a group of replicas through `burn-collective`.
//!
//! One process runs `local` replicas, one per thread (`--devices cpu:0,cpu:1` or
//! `cuda:0,cuda:1`); with `nodes > 1`, every node runs such a process and the processes meet
//! at the coordinator, `burn-collective`'s global orchestrator, which node 0 starts. Sums are
//! first reduced between the threads of a node, then between nodes (ring all-reduce over
//! WebSockets), then handed back to every thread.
//!
//! Global rank = `node_rank · local + local_index`; the data shard of a replica follows it.

use std::net::{TcpListener, ToSocketAddrs, UdpSocket};
use std::sync::Arc;

use burn::backend::flex::FlexDevice;
use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use burn_collective::{CollectiveConfig, PeerId, ReduceOperation};

use crate::{Comm, Replica};

/// Layout of the replicas of a run, as seen by one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSpec {
    /// Replicas (threads, one per device) in this process.
    pub local: usize,
    /// Processes taking part, one per node.
    pub nodes: usize,
    /// This process's index among them.
    pub node_rank: usize,
    /// `HOST:PORT` of the coordinator; node 0 listens on PORT. Required when `nodes > 1`.
    pub coordinator: Option<String>,
    /// The address the other nodes reach this one at; by default the local address of the
    /// route to the coordinator.
    pub node_host: Option<String>,
    /// Port of this node's tensor service; by default coordinator port + 1 + node rank.
    pub data_port: Option<u16>,
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("bad distributed setting: {0}")]
    Spec(String),
    #[error("cannot reach the coordinator {addr}: {why}")]
    Coordinator { addr: String, why: String },
    #[error("joining the group failed for rank {rank}: {why}")]
    Register { rank: usize, why: String },
}

impl GroupSpec {
    /// `n` replicas in this process, no other nodes.
    pub fn local(n: usize) -> Self {
        Self { local: n, nodes: 1, node_rank: 0, coordinator: None, node_host: None, data_port: None }
    }

    pub fn world(&self) -> usize {
        self.local * self.nodes
    }

    /// Global rank of local replica `local_index`.
    pub fn rank(&self, local_index: usize) -> usize {
        self.node_rank * self.local + local_index
    }

    pub fn validate(&self) -> Result<(), JoinError> {
        let bad = |m: String| Err(JoinError::Spec(m));
        if self.local == 0 || self.nodes == 0 {
            return bad("at least one device and one node are needed".into());
        }
        if self.node_rank >= self.nodes {
            return bad(format!("--node-rank {} is outside --nodes {}", self.node_rank, self.nodes));
        }
        if self.nodes > 1 {
            let Some(c) = &self.coordinator else {
                return bad("--nodes > 1 needs --coordinator HOST:PORT".into());
            };
            coordinator_port(c)?;
        }
        Ok(())
    }

    fn collective_config(&self) -> Result<CollectiveConfig, JoinError> {
        let config = CollectiveConfig::default().with_num_devices(self.local);
        if self.nodes == 1 {
            return Ok(config);
        }
        let coordinator = self.coordinator.as_deref().expect("validated");
        let port = coordinator_port(coordinator)?;
        let data_port = match self.data_port {
            Some(p) => p,
            None => port
                .checked_add(1 + self.node_rank as u16)
                .ok_or_else(|| JoinError::Spec(format!("no default data port above {port}; pass --data-port")))?,
        };
        let host = match &self.node_host {
            Some(h) => h.clone(),
            None => route_address(coordinator)?,
        };
        let url = |s: String| s.parse().expect("any string is an address");
        Ok(config
            .with_num_nodes(self.nodes as u32)
            .with_global_address(url(format!("ws://{coordinator}")))
            .with_node_address(url(format!("ws://{host}:{data_port}")))
            .with_data_service_port(data_port))
    }
}

fn coordinator_port(c: &str) -> Result<u16, JoinError> {
    c.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .ok_or_else(|| JoinError::Spec(format!("--coordinator '{c}' is not HOST:PORT")))
}

/// The local IP address of the route to `addr` (a UDP "connect" sends nothing).
fn route_address(addr: &str) -> Result<String, JoinError> {
    let err = |why: String| JoinError::Coordinator { addr: addr.to_string(), why };
    let target = addr.to_socket_addrs().map_err(|e| err(e.to_string()))?.next().ok_or_else(|| err("no address".into()))?;
    let socket = UdpSocket::bind(if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).map_err(|e| err(e.to_string()))?;
    socket.connect(target).map_err(|e| err(e.to_string()))?;
    Ok(socket.local_addr().map_err(|e| err(e.to_string()))?.ip().to_string())
}

/// Shows warnings and errors of the network layer only (set `RUST_LOG` for more): Burn's
/// WebSocket servers otherwise install an INFO logger that prints every tensor transfer.
fn quiet_network_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// Forgets any earlier group of this process; call before starting the threads of a new one.
pub fn reset() {
    burn_collective::reset_collective::<Flex>();
}

/// Starts the coordinator (the global orchestrator) on the port of `spec.coordinator`, in a
/// background thread of this process; node 0 does this before joining. Returns the port.
pub fn start_coordinator(spec: &GroupSpec) -> Result<u16, JoinError> {
    spec.validate()?;
    let coordinator = spec.coordinator.as_deref().ok_or_else(|| JoinError::Spec("no --coordinator to start".into()))?;
    let port = coordinator_port(coordinator)?;
    quiet_network_logs();
    // Bind once here so a taken port is reported instead of failing inside the thread.
    TcpListener::bind(("0.0.0.0", port))
        .map_err(|e| JoinError::Spec(format!("coordinator port {port}: {e}")))?;
    std::thread::Builder::new()
        .name("sca-coordinator".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("a Tokio runtime for the coordinator");
            runtime.block_on(burn_collective::start_global_orchestrator(port));
        })
        .map_err(|e| JoinError::Spec(format!("starting the coordinator thread: {e}")))?;
    Ok(port)
}

/// Joins as local replica `local_index`; returns when every replica of the group has joined.
/// Call it from the thread that will use the replica.
pub fn join(spec: &GroupSpec, local_index: usize) -> Result<Replica, JoinError> {
    spec.validate()?;
    if spec.world() == 1 {
        return Ok(Replica::single());
    }
    if spec.nodes > 1 {
        quiet_network_logs();
    }
    let rank = spec.rank(local_index);
    let peer = PeerId::from(rank as u32);
    burn_collective::register::<Flex>(peer, FlexDevice, spec.collective_config()?)
        .map_err(|e| JoinError::Register { rank, why: format!("{e:?}") })?;
    Ok(Replica::new(rank, spec.world(), Arc::new(Collective { peer, rank, world: spec.world() })))
}

/// Sums through `burn-collective` on the CPU backend.
struct Collective {
    peer: PeerId,
    rank: usize,
    world: usize,
}

impl Comm for Collective {
    fn sum(&self, mut values: Vec<f32>) -> Vec<f32> {
        let n = values.len();
        // The ring between nodes cuts the vector into one slice per node: pad short ones.
        values.resize(n.max(self.world), 0.0);
        let n_padded = values.len();
        let t = Tensor::<Flex, 1>::from_data(TensorData::new(values, [n_padded]), &FlexDevice);
        let out = burn_collective::all_reduce::<Flex>(self.peer, t.into_primitive().tensor(), ReduceOperation::Sum)
            // A failed collective leaves the replicas out of step: nothing sensible can follow.
            .unwrap_or_else(|e| panic!("all-reduce failed on rank {}: {e:?}", self.rank));
        let mut out = crate::to_vec(Tensor::<Flex, 1>::from_primitive(TensorPrimitive::Float(out)));
        out.truncate(n);
        out
    }
}

impl Drop for Collective {
    fn drop(&mut self) {
        // Closes this peer's connections; errors only mean the group is already gone.
        let _ = burn_collective::finish_collective::<Flex>(self.peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_checked() {
        let ok = GroupSpec { nodes: 2, node_rank: 1, coordinator: Some("127.0.0.1:7000".into()), ..GroupSpec::local(2) };
        ok.validate().unwrap();
        assert_eq!((ok.world(), ok.rank(0), ok.rank(1)), (4, 2, 3));
        let cfg = ok.collective_config().unwrap();
        let text = format!("{cfg}");
        assert!(text.contains("ws://127.0.0.1:7002"), "{text}");
        assert!(GroupSpec { node_rank: 2, ..ok.clone() }.validate().is_err());
        assert!(GroupSpec { coordinator: None, ..ok.clone() }.validate().is_err());
        assert!(GroupSpec { coordinator: Some("nohost".into()), ..ok }.validate().is_err());
        assert!(GroupSpec::local(0).validate().is_err());
    }
}
