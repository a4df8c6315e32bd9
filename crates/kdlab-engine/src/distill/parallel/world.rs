//! Who takes part in a data-parallel run: the nodes, the devices of each, and which shard of a
//! batch every device (peer) takes.

use std::time::Duration;

use anyhow::{bail, ensure};
use burn::collective::{AllReduceStrategy, CollectiveConfig, PeerId};
use burn::tensor::backend::{Backend, Device as _, DeviceId, DeviceOps};

use crate::backend::Selected;
use crate::config::{ConfigError, ConfigProblem, ParallelConfig, coordinator_port};
use crate::data::loader::Part;

/// The devices and machines of a run, as this node sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct World {
    pub nodes: usize,
    pub node_rank: usize,
    /// This node's device ordinals (on the CPU: `0..workers`, all the one CPU device).
    pub ordinals: Vec<usize>,
    /// Node 0's `HOST:PORT` (multi-node runs).
    pub coordinator: Option<String>,
    /// How long a peer may wait in one exchange before the run is declared hung.
    pub timeout: Duration,
}

impl World {
    pub fn of(config: &ParallelConfig) -> Self {
        Self {
            nodes: config.nodes.max(1),
            node_rank: config.node_rank,
            ordinals: config.devices.ordinals(),
            coordinator: config.coordinator.clone(),
            timeout: Duration::from_secs(config.timeout_s),
        }
    }

    /// Devices on this node.
    pub fn local_devices(&self) -> usize {
        self.ordinals.len().max(1)
    }

    /// Devices over all nodes.
    pub fn size(&self) -> usize {
        self.nodes * self.local_devices()
    }

    /// Whether more than one device takes part (else the plain one-device loop runs:
    /// `OneDevice`, no `Peers`).
    pub fn is_parallel(&self) -> bool {
        self.size() > 1
    }

    pub fn is_multi_node(&self) -> bool {
        self.nodes > 1
    }

    /// Node 0 writes the run directory (metrics, checkpoints, heatmaps, the log); the others
    /// compute and write nothing, as rank 0 alone does in PyTorch DDP.
    pub fn writes_run(&self) -> bool {
        self.node_rank == 0
    }

    /// The global id of this node's device `local` (NCCL's rank).
    pub fn peer(&self, local: usize) -> PeerId {
        PeerId((self.node_rank * self.local_devices() + local) as u32)
    }

    /// The part of every batch this node loads.
    pub fn node_part(&self) -> Part {
        Part {
            index: self.node_rank,
            count: self.nodes,
        }
    }

    /// The part of the node's batch its device `local` takes.
    pub fn device_part(&self, local: usize) -> Part {
        Part {
            index: local,
            count: self.local_devices(),
        }
    }

    /// The part of a whole set (the validation images) device `local` takes.
    pub fn global_part(&self, local: usize) -> Part {
        Part {
            index: self.peer(local).0 as usize,
            count: self.size(),
        }
    }

    /// "device 1 (cuda:1) on node 0", for messages about one peer.
    pub fn describe(&self, local: usize, selected: &Selected) -> String {
        let ordinal = self.ordinals.get(local).copied().unwrap_or(local);
        let device = match selected {
            Selected::Cuda { .. } => format!("cuda:{ordinal}"),
            Selected::Wgpu { .. } => format!("wgpu:{ordinal}"),
            Selected::Cpu => format!("cpu worker {ordinal}"),
        };
        if self.is_multi_node() {
            format!("{device} on node {} of {}", self.node_rank, self.nodes)
        } else {
            device
        }
    }

    /// burn-collective's settings: a tree between this node's devices and, with several
    /// nodes, a ring between the nodes (burn-collective's recommendation) through node 0's
    /// orchestrator; node R serves its tensors on the coordinator's port + 1 + R.
    pub fn collective_config(&self) -> anyhow::Result<CollectiveConfig> {
        let config = CollectiveConfig::default()
            .with_num_devices(self.local_devices())
            .with_local_all_reduce_strategy(AllReduceStrategy::Tree(2));
        if !self.is_multi_node() {
            return Ok(config);
        }
        let Some(coordinator) = &self.coordinator else {
            bail!("{} nodes need --coordinator HOST:PORT", self.nodes);
        };
        let port = coordinator_port(coordinator).map_err(anyhow::Error::msg)?;
        let data_port = self.data_service_port(port)?;
        let host = super::cluster::reachable_host(coordinator)?;
        Ok(config
            .with_num_nodes(self.nodes as u32)
            .with_global_address(
                format!("ws://{coordinator}")
                    .parse()
                    .map_err(anyhow::Error::msg)?,
            )
            .with_node_address(
                format!("ws://{host}:{data_port}")
                    .parse()
                    .map_err(anyhow::Error::msg)?,
            )
            .with_data_service_port(data_port)
            .with_global_all_reduce_strategy(AllReduceStrategy::Ring))
    }

    fn data_service_port(&self, coordinator_port: u16) -> anyhow::Result<u16> {
        let port = coordinator_port as usize + 1 + self.node_rank;
        ensure!(
            port <= u16::MAX as usize,
            "node {}'s tensor service would need port {port} (coordinator port + 1 + node rank); \
             pick a lower coordinator port",
            self.node_rank
        );
        Ok(port as u16)
    }
}

/// The devices of this node's peers on backend `B`, whose first device is `first`. The CPU
/// backend has one device: every worker computes on it.
pub fn peer_devices<B: Backend>(
    selected: &Selected,
    first: &B::Device,
    world: &World,
) -> anyhow::Result<Vec<B::Device>> {
    if *selected == Selected::Cpu {
        return Ok(vec![first.clone(); world.local_devices()]);
    }
    let type_id = first.id().type_id;
    let available = B::device_count(type_id);
    let mut devices = Vec::new();
    for &ordinal in &world.ordinals {
        if ordinal >= available {
            let problem = ConfigProblem::new(
                "parallel.devices",
                format!(
                    "device {ordinal} asked for, but {selected} sees {available} device(s) \
                     (ordinals 0..{available})"
                ),
            );
            return Err(ConfigError::Invalid {
                path: None,
                problems: vec![problem],
            }
            .into());
        }
        devices.push(B::Device::from_id(DeviceId::new(type_id, ordinal as u16)));
    }
    Ok(devices)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Devices;

    fn world(nodes: usize, node_rank: usize, devices: usize) -> World {
        World::of(&ParallelConfig {
            devices: Devices::Count(devices),
            nodes,
            node_rank,
            coordinator: Some("127.0.0.1:29500".into()),
            timeout_s: 5,
        })
    }

    /// Node r's part of a batch, split over its devices, is exactly the global shard of each
    /// of its peers: the shards are disjoint and cover the batch.
    #[test]
    fn nested_parts_are_the_global_shards_and_cover_the_batch() {
        for (nodes, devices) in [(1, 2), (2, 1), (2, 2), (3, 4)] {
            let batch = 24;
            let mut covered = vec![0; batch];
            for node in 0..nodes {
                let w = world(nodes, node, devices);
                let node_range = w.node_part().of(0..batch);
                for local in 0..devices {
                    let shard = w.device_part(local).of(node_range.clone());
                    assert_eq!(shard, w.global_part(local).of(0..batch));
                    assert_eq!(shard.len(), batch / w.size());
                    shard.for_each(|i| covered[i] += 1);
                }
            }
            assert!(
                covered.iter().all(|&c| c == 1),
                "{nodes}×{devices}: {covered:?}"
            );
        }
    }

    #[test]
    fn peers_are_numbered_node_major() {
        let w = world(2, 1, 4);
        assert_eq!(w.peer(0), PeerId(4));
        assert_eq!(w.peer(3), PeerId(7));
        assert!(!w.writes_run());
        assert!(world(2, 0, 1).writes_run());
    }
}
