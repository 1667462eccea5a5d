//! Independent sets of a fixed graph, built one node at a time: the maximum-independent-set task
//! of the LED-GFN paper at a size small enough to enumerate, and the graph-building task of the
//! graph policies ([`gfn_core::policy::GinPolicy`]).
//!
//! A state is the membership row of the `n` nodes (0 or 1); `s_0` is the empty set. Forward action
//! `i < n` adds node `i`, allowed when it is not in the set and no neighbour is; action `n` exits
//! (the current set is the object). Backward action `i` removes node `i` (allowed when it is in
//! the set). `log R(S) = |S| / T` (the paper's reward `exp(|S|/T)`), so larger sets are likelier.
//! [`IndSetEnv::graphs`] gives the states as graphs: the fixed edges, and per node the features
//! `[in the set, blocked by a neighbour in the set, free]`.

use gfn_core::obs::{GraphBatch, HostGraph};
use gfn_core::{Env, GfnError, Result};

/// Largest graph whose independent sets are enumerated (`2^n` subsets are scanned).
pub const MAX_NODES: usize = 20;

/// Independent sets of a fixed undirected graph.
#[derive(Debug, Clone)]
pub struct IndSetEnv {
    n: usize,
    edges: Vec<(usize, usize)>,
    neighbours: Vec<Vec<usize>>,
    temperature: f64,
}

/// Node features of [`IndSetEnv::graphs`]: in the set, blocked, free.
pub const NODE_FEATURES: usize = 3;

impl IndSetEnv {
    /// The graph on `n` nodes (1 … [`MAX_NODES`]) with the undirected `edges` (no self-loops,
    /// nodes below `n`), reward `exp(|S| / temperature)`.
    pub fn new(n: usize, edges: &[(usize, usize)], temperature: f64) -> Result<Self> {
        if n == 0 || n > MAX_NODES {
            return Err(GfnError::invalid("nodes", n, format!("must be in 1 ..= {MAX_NODES}")));
        }
        if !(temperature.is_finite() && temperature > 0.0) {
            return Err(GfnError::invalid("temperature", temperature, "must be finite and > 0"));
        }
        let mut neighbours = vec![Vec::new(); n];
        for &(a, b) in edges {
            if a >= n || b >= n || a == b {
                return Err(GfnError::invalid(
                    "edges",
                    format!("({a}, {b})"),
                    format!("must join two different nodes below {n}"),
                ));
            }
            if !neighbours[a].contains(&b) {
                neighbours[a].push(b);
                neighbours[b].push(a);
            }
        }
        Ok(Self {
            n,
            edges: edges.to_vec(),
            neighbours,
            temperature,
        })
    }

    /// The cycle on `n` nodes with one chord `(0, n/2)`: a small test graph with several maximum
    /// independent sets of different shapes.
    pub fn cycle_with_chord(n: usize, temperature: f64) -> Result<Self> {
        let mut edges: Vec<(usize, usize)> = (0..n).map(|i| (i, (i + 1) % n)).collect();
        if n >= 4 {
            edges.push((0, n / 2));
        }
        Self::new(n, &edges, temperature)
    }

    /// Number of nodes.
    pub fn nodes(&self) -> usize {
        self.n
    }

    fn blocked(&self, state: &[i32], i: usize) -> bool {
        self.neighbours[i].iter().any(|&j| state[j] == 1)
    }

    /// States as graphs for a graph policy: every state has the same `n` nodes and the fixed edges
    /// (both directions), node features `[in the set, blocked, free]`.
    pub fn graphs(&self, states: &[i32], device: &gfn_core::candle_core::Device) -> Result<GraphBatch> {
        let mut directed = Vec::with_capacity(2 * self.edges.len());
        for (i, nb) in self.neighbours.iter().enumerate() {
            directed.extend(nb.iter().map(|&j| (j as u32, i as u32)));
        }
        let graphs: Vec<HostGraph> = states
            .chunks_exact(self.n)
            .map(|s| HostGraph {
                node_features: (0..self.n)
                    .flat_map(|i| {
                        let (inside, blocked) = (s[i] == 1, self.blocked(s, i));
                        [
                            f32::from(u8::from(inside)),
                            f32::from(u8::from(!inside && blocked)),
                            f32::from(u8::from(!inside && !blocked)),
                        ]
                    })
                    .collect(),
                edges: directed.clone(),
                edge_features: Vec::new(),
            })
            .collect();
        GraphBatch::from_graphs(&graphs, NODE_FEATURES, 0, device)
    }
}

impl Env for IndSetEnv {
    fn name(&self) -> String {
        format!("indset-{}n-{}e", self.n, self.edges.len())
    }
    fn state_dim(&self) -> usize {
        self.n
    }
    fn n_actions(&self) -> usize {
        self.n + 1
    }
    fn n_backward_actions(&self) -> usize {
        self.n
    }
    fn exit_action(&self) -> Option<usize> {
        Some(self.n)
    }
    fn feature_dim(&self) -> usize {
        3 * self.n
    }
    fn max_actions(&self) -> usize {
        self.n + 1
    }
    fn initial_state(&self, out: &mut [i32]) {
        out.fill(0);
    }
    fn forward_mask(&self, state: &[i32], mask: &mut [bool]) {
        for i in 0..self.n {
            mask[i] = state[i] == 0 && !self.blocked(state, i);
        }
        mask[self.n] = true;
    }
    fn backward_mask(&self, state: &[i32], mask: &mut [bool]) {
        for (m, &x) in mask.iter_mut().zip(state) {
            *m = x == 1;
        }
    }
    fn step(&self, state: &mut [i32], action: usize) -> usize {
        state[action] = 1;
        action
    }
    fn backward_step(&self, state: &mut [i32], action: usize) -> usize {
        state[action] = 0;
        action
    }
    fn log_reward(&self, state: &[i32]) -> f64 {
        f64::from(state.iter().sum::<i32>()) / self.temperature
    }
    fn featurize(&self, state: &[i32], out: &mut [f32]) {
        for i in 0..self.n {
            let (inside, blocked) = (state[i] == 1, self.blocked(state, i));
            out[3 * i] = f32::from(u8::from(inside));
            out[3 * i + 1] = f32::from(u8::from(!inside && blocked));
            out[3 * i + 2] = f32::from(u8::from(!inside && !blocked));
        }
    }
    fn graph_space(&self) -> Option<gfn_core::obs::GraphSpace> {
        Some(gfn_core::obs::GraphSpace {
            node_features: NODE_FEATURES,
            edge_features: 0,
            actions: gfn_core::obs::GraphActions::PerNode,
        })
    }
    fn observe_graphs(&self, states: &[i32], device: &gfn_core::candle_core::Device) -> Result<GraphBatch> {
        self.graphs(states, device)
    }
    fn is_initial(&self, state: &[i32]) -> bool {
        state.iter().all(|&x| x == 0)
    }
    fn enumeration_size(&self) -> Option<f64> {
        Some(2f64.powi(self.n as i32))
    }
    /// Every independent set, by size then by bit pattern: adding a node raises the size, so the
    /// order is topological.
    fn enumerate_states(&self) -> Option<Vec<i32>> {
        let mut sets: Vec<u32> = (0u32..1 << self.n)
            .filter(|&m| (0..self.n).all(|i| m >> i & 1 == 0 || self.neighbours[i].iter().all(|&j| m >> j & 1 == 0)))
            .collect();
        sets.sort_by_key(|m| (m.count_ones(), *m));
        Some(
            sets.iter()
                .flat_map(|m| (0..self.n).map(move |i| (m >> i & 1) as i32))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gfn_core::exact::ExactEvaluator;

    #[test]
    fn independent_sets_are_enumerated_and_moves_keep_independence() {
        let env = IndSetEnv::cycle_with_chord(6, 1.0).unwrap();
        let states = env.enumerate_states().unwrap();
        // C6 has 18 independent sets (the Lucas number L6); the chord (0, 3) removes {0, 3}.
        assert_eq!(states.len() / 6, 17);
        let eval = ExactEvaluator::new(&env).unwrap();
        assert_eq!(eval.num_states(), 17);
        // Every independent set is an object (exit anywhere): p*(S) ∝ e^{|S|}.
        assert_eq!(eval.num_terminal(), 17);
        let mut mask = vec![false; 7];
        env.forward_mask(&[0, 1, 0, 0, 0, 0], &mut mask);
        assert_eq!(mask, [false, false, false, true, true, true, true]);
        let e = IndSetEnv::new(3, &[(0, 3)], 1.0).unwrap_err().to_string();
        assert!(e.contains("(0, 3)"), "{e}");
        let g = env
            .graphs(&[0, 1, 0, 0, 0, 0], &gfn_core::candle_core::Device::Cpu)
            .unwrap();
        assert_eq!(g.sizes().unwrap(), (6, 14));
        let x = g.node_features.to_vec2::<f32>().unwrap();
        assert_eq!(
            (x[1].clone(), x[0].clone(), x[3].clone()),
            (vec![1.0, 0.0, 0.0], vec![0.0, 1.0, 0.0], vec![0.0, 0.0, 1.0])
        );
    }

    /// Through the policy seam, a GIN with node-level actions trained with trajectory balance on
    /// the independent sets of an 8-node graph matches the exact target (TV ≤ 0.05, log Z within
    /// 0.05), and the untrained one does not.
    #[test]
    fn a_gin_policy_trains_to_the_exact_target() {
        use gfn_core::candle_core::Device;
        use gfn_core::nets::gin::GinConfig;
        use gfn_core::obs::Observations;
        use gfn_core::optim::{Adam, AdamParams};
        use gfn_core::policy::{GinPolicy, Policy, exact_log_pf, tb_loss_on_policy};
        const EPSILON: f64 = 0.1;
        let env = IndSetEnv::cycle_with_chord(8, 1.0).unwrap();
        let dev = Device::Cpu;
        let eval = ExactEvaluator::new(&env).unwrap();
        let mut rng = gfn_core::rng_from_seed(4);
        let config = GinConfig {
            node_features: 3,
            edge_features: 0,
            hidden: 32,
            layers: 3,
            mlp_layers: 2,
            node_outputs: 0,
            graph_outputs: 0,
            learn_eps: true,
            graph_norm: false,
        };
        let policy = GinPolicy::new(config, env.nodes(), true, false, &dev, &mut rng).unwrap();
        let observe = |s: &[i32]| Ok(Observations::Graphs(env.graphs(s, &dev)?));
        let tv = |p: &GinPolicy| {
            let log_pf = exact_log_pf(&eval, &env, p, &observe).unwrap();
            eval.metrics_for(&log_pf, 0.0).dist.tv
        };
        let untrained = tv(&policy);
        let mut params: Vec<(String, gfn_core::candle_core::Var, usize)> =
            policy.named_params().into_iter().map(|(n, v)| (n, v, 0)).collect();
        params.push(("log_z".into(), policy.log_z().unwrap().clone(), 1));
        let mut adam = Adam::new(params, vec![AdamParams::adam(3e-3), AdamParams::adam(0.1)]);
        for i in 0..1000 {
            // The network's rate decays tenfold over the last 400 iterations.
            adam.groups[0].lr = 3e-3 * (1.0 - 0.9 * (i.max(600) - 600) as f64 / 400.0);
            let (loss, _) = tb_loss_on_policy(&env, &policy, &observe, 32, EPSILON, &mut rng).unwrap();
            adam.step(&loss.backward().unwrap()).unwrap();
        }
        let trained = tv(&policy);
        assert!(untrained > 0.2, "the untrained policy is already at TV {untrained}");
        assert!(trained <= 0.05, "TV {trained} after training (untrained {untrained})");
        let log_z = f64::from(policy.log_z().unwrap().as_tensor().to_vec1::<f32>().unwrap()[0]);
        assert!((log_z - eval.log_z()).abs() < 0.05, "log Z {log_z} vs {}", eval.log_z());
    }
}
