//! Maximum independent set (MIS) on a family of graphs: the MIS task of LED-GFN (Jang et al. 2024),
//! which runs the GFlowNet-CombOpt code of Zhang et al. (2023), as a conditional GFlowNet whose
//! condition is the problem instance.
//!
//! # Instances
//! [`MisEnv`] holds the training graphs and the held-out test graphs. Instance `k < num_train()` is
//! training graph `k`; instance `k ≥ num_train()` is test graph `k − num_train()`. Training
//! trajectories start on a uniformly drawn *training* instance ([`Env::draw_initial_state`]);
//! evaluation pins any instance ([`Env::conditioned_initial_state`] with `[k]`, or
//! [`gfn_core::conditional::Pinned`]). The condition space has no default evaluation conditions:
//! graphs of 20–300 nodes cannot be enumerated, so callers pin the small ones they want exactly.
//!
//! # State
//! One row of `2 + max_nodes` values, `max_nodes` the largest graph's node count:
//!
//! | slot | value |
//! |---|---|
//! | 0 | the instance index `k` |
//! | 1 | the reward exponent `β` in thousandths (rounded), fixed when the trajectory starts |
//! | `2 + i` | node `i`: 2 undecided, 1 selected, 0 excluded, −1 padding (`i ≥` the instance's node count) |
//!
//! `s_0(k)` has every real node undecided. The excluded nodes are always exactly the neighbours of
//! the selected ones, and the selected nodes are independent.
//!
//! # MDP (the official one)
//! Forward action `i < max_nodes` picks the undecided node `i`: it becomes selected and its
//! undecided neighbours excluded. There is no exit action: a state is terminal when no node is
//! undecided, so the objects are the maximal independent sets and a trajectory has at most
//! `max_nodes` actions. Backward action `i` deselects the selected node `i`; it and each of its
//! excluded neighbours with no other selected neighbour become undecided again, which makes
//! `step` and `backward_step` exact inverses. The backward mask is the selected nodes: the uniform
//! P_B is `log P_B = −log #selected`, as in the official code.
//!
//! # Reward
//! `log R(x) = β · |I|` with `β` read from the state (slot 1), so a trajectory's reward is fixed
//! when it starts even as the schedule moves on. `β` follows the [`Anneal`] schedule in the number
//! of trajectories sampled so far, which the trainer reports with [`Env::set_training_progress`]
//! (the official code: 1 → 500 over the first 40 000 training graphs, [`Anneal::official`]).
//! Partial states carry the FL energy `log R(s) = β · |S|` ([`Env::intermediate_log_reward`]).
//!
//! # Network inputs
//! * [`Env::featurize`] (an MLP): per node slot the one-hot `[selected, excluded, undecided]`, all
//!   zero for padding, `3 · max_nodes` values. An MLP sees neither the graph nor the instance index
//!   nor `β`; it is a baseline only.
//! * [`Env::observe_graphs`] (the GIN): one graph per state with the instance's real nodes (no
//!   padding), both directions of each undirected edge, node features `[selected, excluded,
//!   undecided]` (the order of [`crate::indset::NODE_FEATURES`]), no edge features. As in the
//!   official code the graph does not carry `β`.

use std::sync::atomic::{AtomicU64, Ordering};

use gfn_core::candle_core::{Device, Tensor};
use gfn_core::conditional::ConditionSpace;
use gfn_core::obs::{GraphBatch, GraphSpace};
use gfn_core::{Env, GfnError, GfnRng, Result};
use rand::Rng;

use crate::mis_graphs::{Graph, RbParams, rb_graphs};

/// Largest graph (node count) an instance may have.
pub const MAX_NODES: usize = 1 << 12;

/// Units of `β` in the state: thousandths.
pub const BETA_SCALE: f64 = 1000.0;

/// [`MisEnv::rb`] draws the test graphs from the seed `seed ^ TEST_SEED_SALT`, a stream apart
/// from the training graphs' `seed`.
pub const TEST_SEED_SALT: u64 = 0x9E37_79B9_7F4A_7C15;

/// Node feature width of [`MisEnv`]'s graph observations: selected, excluded, undecided.
pub const NODE_FEATURES: usize = 3;

/// Node states in the state row.
const EXCLUDED: i32 = 0;
const SELECTED: i32 = 1;
const UNDECIDED: i32 = 2;
const PADDING: i32 = -1;
/// Slots before the node states: instance, β.
const HEADER: usize = 2;

/// The linear schedule of the reward exponent: `β(t) = start + (end − start) · min(t / over, 1)`
/// after `t` sampled trajectories; `over = 0` means `β = end` throughout.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Anneal {
    /// `β` at `t = 0`.
    pub start: f64,
    /// `β` from `t = over` on.
    pub end: f64,
    /// Trajectories over which `β` moves from `start` to `end` (0: constant `end`).
    pub over: u64,
}

impl Anneal {
    /// The official setting: `β` from 1 to 500 over the first 40 000 training trajectories
    /// (`anneal=linear, annend=40000, rexp=5e2`).
    pub fn official() -> Self {
        Self {
            start: 1.0,
            end: 500.0,
            over: 40_000,
        }
    }

    /// A constant `β`.
    pub fn constant(beta: f64) -> Self {
        Self {
            start: beta,
            end: beta,
            over: 0,
        }
    }

    /// `β` after `t` sampled trajectories (not rounded).
    pub fn beta_at(&self, t: u64) -> f64 {
        if self.over == 0 {
            return self.end;
        }
        let frac = (t as f64 / self.over as f64).min(1.0);
        self.start + (self.end - self.start) * frac
    }

    /// Checks `start` and `end`: finite, and at least 0.001 (`β` is kept in thousandths) and at
    /// most `i32::MAX / 1000`. Every `β(t)` lies between them.
    pub fn validate(&self) -> Result<()> {
        milli("anneal.start", self.start)?;
        milli("anneal.end", self.end)?;
        Ok(())
    }
}

/// `β` in thousandths, rounded; an error naming `field` outside `[0.001, i32::MAX / 1000]`.
fn milli(field: &'static str, beta: f64) -> Result<i32> {
    let m = (beta * BETA_SCALE).round();
    if !(beta.is_finite() && beta > 0.0 && m >= 1.0 && m <= f64::from(i32::MAX)) {
        return Err(GfnError::invalid(
            field,
            beta,
            "must be a finite β ≥ 0.001 and ≤ 2147483.647 (β is kept in thousandths)",
        ));
    }
    Ok(m as i32)
}

/// The directed edges of one instance (both directions of each undirected edge, grouped by
/// target node), precomputed for the graph observations.
#[derive(Debug, Clone)]
struct DirectedEdges {
    src: Vec<u32>,
    dst: Vec<u32>,
}

impl DirectedEdges {
    fn new(graph: &Graph) -> Self {
        let m = 2 * graph.num_edges();
        let (mut src, mut dst) = (Vec::with_capacity(m), Vec::with_capacity(m));
        for v in 0..graph.nodes() as u32 {
            for &u in graph.neighbours(v) {
                src.push(u);
                dst.push(v);
            }
        }
        Self { src, dst }
    }
}

/// Maximum independent sets of a family of graphs, conditioned on the instance (see the
/// [module documentation](self)).
pub struct MisEnv {
    train: Vec<Graph>,
    test: Vec<Graph>,
    /// Per instance (training first, then test), its directed edges.
    edges: Vec<DirectedEdges>,
    max_nodes: usize,
    anneal: Anneal,
    /// Trajectories sampled so far ([`Env::set_training_progress`]).
    progress: AtomicU64,
    /// `mis` or `mis-rb`: the prefix of [`Env::name`].
    prefix: &'static str,
}

impl std::fmt::Debug for MisEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MisEnv")
            .field("train", &self.train.len())
            .field("test", &self.test.len())
            .field("max_nodes", &self.max_nodes)
            .field("anneal", &self.anneal)
            .field("progress", &self.progress.load(Ordering::Relaxed))
            .finish()
    }
}

impl MisEnv {
    /// The environment over the `train` graphs (at least one) and the held-out `test` graphs
    /// (possibly none), each with 1 … [`MAX_NODES`] nodes, `β` following `anneal`.
    pub fn new(train: Vec<Graph>, test: Vec<Graph>, anneal: Anneal) -> Result<Self> {
        Self::build(train, test, anneal, "mis")
    }

    /// `train` and `test` RB graphs drawn with `params` ([`rb_graphs`]): the training graphs from
    /// `seed`, the test graphs from `seed ^` [`TEST_SEED_SALT`], so the two sets are independent
    /// and each is the same whatever the other's size.
    pub fn rb(params: &RbParams, train: usize, test: usize, seed: u64, anneal: Anneal) -> Result<Self> {
        anneal.validate()?;
        if train == 0 {
            return Err(GfnError::invalid("train", train, "needs at least one training graph"));
        }
        let train = rb_graphs(params, train, seed)?;
        let test = rb_graphs(params, test, seed ^ TEST_SEED_SALT)?;
        Self::build(train, test, anneal, "mis-rb")
    }

    fn build(train: Vec<Graph>, test: Vec<Graph>, anneal: Anneal, prefix: &'static str) -> Result<Self> {
        anneal.validate()?;
        if train.is_empty() {
            return Err(GfnError::invalid(
                "train",
                "0 graphs",
                "needs at least one training graph",
            ));
        }
        for (field, graphs) in [("train", &train), ("test", &test)] {
            if let Some((k, g)) = graphs
                .iter()
                .enumerate()
                .find(|(_, g)| g.nodes() == 0 || g.nodes() > MAX_NODES)
            {
                return Err(GfnError::invalid(
                    field,
                    format!("graph {k} with {} nodes", g.nodes()),
                    format!("every graph must have 1 ..= {MAX_NODES} nodes"),
                ));
            }
        }
        let edges = train.iter().chain(&test).map(DirectedEdges::new).collect();
        let max_nodes = train.iter().chain(&test).map(Graph::nodes).max().unwrap_or(0);
        Ok(Self {
            train,
            test,
            edges,
            max_nodes,
            anneal,
            progress: AtomicU64::new(0),
            prefix,
        })
    }

    /// The training graphs.
    pub fn train_graphs(&self) -> &[Graph] {
        &self.train
    }

    /// The held-out test graphs.
    pub fn test_graphs(&self) -> &[Graph] {
        &self.test
    }

    /// The graph of instance `k` (training graphs first, then test graphs); `None` out of range.
    pub fn graph(&self, k: usize) -> Option<&Graph> {
        match k.checked_sub(self.train.len()) {
            None => self.train.get(k),
            Some(t) => self.test.get(t),
        }
    }

    /// Number of training graphs (instances `0 .. num_train()`).
    pub fn num_train(&self) -> usize {
        self.train.len()
    }

    /// Number of test graphs (instances `num_train() .. num_instances()`).
    pub fn num_test(&self) -> usize {
        self.test.len()
    }

    /// Number of instances, training and test.
    pub fn num_instances(&self) -> usize {
        self.train.len() + self.test.len()
    }

    /// The largest node count: the width of the node part of a state and of the action space.
    pub fn max_nodes(&self) -> usize {
        self.max_nodes
    }

    /// The `β` schedule.
    pub fn anneal(&self) -> Anneal {
        self.anneal
    }

    /// `β` of the schedule after `t` sampled trajectories (before rounding to thousandths).
    pub fn beta_at(&self, t: u64) -> f64 {
        self.anneal.beta_at(t)
    }

    /// The training progress last told ([`Env::set_training_progress`]).
    pub fn progress(&self) -> u64 {
        self.progress.load(Ordering::Relaxed)
    }

    /// The instance index of a state.
    pub fn instance(&self, state: &[i32]) -> usize {
        state[0] as usize
    }

    /// `β` of a state (the value its reward uses).
    pub fn beta(&self, state: &[i32]) -> f64 {
        f64::from(state[1]) / BETA_SCALE
    }

    /// The number of selected nodes of a state.
    pub fn set_size(&self, state: &[i32]) -> usize {
        state[HEADER..].iter().filter(|&&x| x == SELECTED).count()
    }

    /// The selected nodes of a state, in increasing order.
    pub fn selected_nodes(&self, state: &[i32]) -> Vec<u32> {
        state[HEADER..]
            .iter()
            .enumerate()
            .filter(|(_, x)| **x == SELECTED)
            .map(|(i, _)| i as u32)
            .collect()
    }

    /// The current `β` in thousandths (validated at construction, so always in range).
    fn current_beta_milli(&self) -> i32 {
        let beta = self.anneal.beta_at(self.progress());
        (beta * BETA_SCALE).round().clamp(1.0, f64::from(i32::MAX)) as i32
    }

    /// `s_0` of instance `k` at `β` thousandths.
    fn write_s0(&self, k: usize, beta_milli: i32, out: &mut [i32]) {
        let n = self.graph_of_instance(k).nodes();
        out[0] = k as i32;
        out[1] = beta_milli;
        out[HEADER..HEADER + n].fill(UNDECIDED);
        out[HEADER + n..].fill(PADDING);
    }

    /// The graph of instance `k < num_instances()`.
    fn graph_of_instance(&self, k: usize) -> &Graph {
        if k < self.train.len() {
            &self.train[k]
        } else {
            &self.test[k - self.train.len()]
        }
    }

    fn graph_of(&self, state: &[i32]) -> &Graph {
        self.graph_of_instance(state[0] as usize)
    }
}

impl Env for MisEnv {
    fn name(&self) -> String {
        let lo = self.train.iter().chain(&self.test).map(Graph::nodes).min().unwrap_or(0);
        let a = self.anneal;
        let beta = if a.over == 0 || a.start == a.end {
            format!("beta{}", a.end)
        } else {
            format!("beta{}..{}over{}", a.start, a.end, a.over)
        };
        format!(
            "{}-{}x{}-n{lo}..{}-{beta}",
            self.prefix,
            self.train.len(),
            self.test.len(),
            self.max_nodes
        )
    }
    fn state_dim(&self) -> usize {
        HEADER + self.max_nodes
    }
    fn n_actions(&self) -> usize {
        self.max_nodes
    }
    fn n_backward_actions(&self) -> usize {
        self.max_nodes
    }
    fn exit_action(&self) -> Option<usize> {
        None
    }
    fn feature_dim(&self) -> usize {
        3 * self.max_nodes
    }
    fn max_actions(&self) -> usize {
        self.max_nodes
    }
    /// Instance 0 at the current `β`.
    fn initial_state(&self, out: &mut [i32]) {
        self.write_s0(0, self.current_beta_milli(), out);
    }
    fn forward_mask(&self, state: &[i32], mask: &mut [bool]) {
        for (m, &x) in mask.iter_mut().zip(&state[HEADER..]) {
            *m = x == UNDECIDED;
        }
    }
    fn backward_mask(&self, state: &[i32], mask: &mut [bool]) {
        for (m, &x) in mask.iter_mut().zip(&state[HEADER..]) {
            *m = x == SELECTED;
        }
    }
    fn step(&self, state: &mut [i32], action: usize) -> usize {
        let g = self.graph_of(state);
        let nodes = &mut state[HEADER..];
        debug_assert_eq!(nodes[action], UNDECIDED, "node {action} is not undecided");
        nodes[action] = SELECTED;
        for &u in g.neighbours(action as u32) {
            if nodes[u as usize] == UNDECIDED {
                nodes[u as usize] = EXCLUDED;
            }
        }
        action
    }
    fn backward_step(&self, state: &mut [i32], action: usize) -> usize {
        let g = self.graph_of(state);
        let nodes = &mut state[HEADER..];
        debug_assert_eq!(nodes[action], SELECTED, "node {action} is not selected");
        nodes[action] = UNDECIDED;
        for &u in g.neighbours(action as u32) {
            if nodes[u as usize] == EXCLUDED && g.neighbours(u).iter().all(|&w| nodes[w as usize] != SELECTED) {
                nodes[u as usize] = UNDECIDED;
            }
        }
        action
    }
    fn log_reward(&self, state: &[i32]) -> f64 {
        self.beta(state) * self.set_size(state) as f64
    }
    fn featurize(&self, state: &[i32], out: &mut [f32]) {
        for (o, &x) in out.chunks_exact_mut(3).zip(&state[HEADER..]) {
            o[0] = f32::from(u8::from(x == SELECTED));
            o[1] = f32::from(u8::from(x == EXCLUDED));
            o[2] = f32::from(u8::from(x == UNDECIDED));
        }
    }
    fn intermediate_log_reward(&self, state: &[i32]) -> Option<f64> {
        Some(self.log_reward(state))
    }
    fn is_terminal(&self, state: &[i32]) -> bool {
        !state[HEADER..].contains(&UNDECIDED)
    }
    /// Every real node undecided, whatever the instance and `β`.
    fn is_initial(&self, state: &[i32]) -> bool {
        state[HEADER..].iter().all(|&x| x == UNDECIDED || x == PADDING)
    }
    /// The Hamming distance between the node states of two objects of the same instance; objects
    /// of different instances are `max_nodes` apart.
    fn object_distance(&self, a: &[i32], b: &[i32]) -> f64 {
        if a[0] != b[0] {
            return self.max_nodes as f64;
        }
        a[HEADER..].iter().zip(&b[HEADER..]).filter(|(x, y)| x != y).count() as f64
    }
    fn graph_space(&self) -> Option<GraphSpace> {
        Some(GraphSpace {
            node_features: NODE_FEATURES,
            edge_features: 0,
            actions: gfn_core::obs::GraphActions::PerNode,
        })
    }
    /// The flat arrays are built in one pass each, sized up front.
    fn observe_graphs(&self, states: &[i32], device: &Device) -> Result<GraphBatch> {
        let sd = self.state_dim();
        let rows = states.len() / sd;
        let (mut n_total, mut e_total) = (0usize, 0usize);
        for s in states.chunks_exact(sd) {
            let k = s[0] as usize;
            if k >= self.num_instances() {
                return Err(GfnError::invalid(
                    "instance",
                    s[0],
                    format!("must be below {} in a state row", self.num_instances()),
                ));
            }
            n_total += self.graph_of_instance(k).nodes();
            e_total += self.edges[k].src.len();
        }
        let mut x = vec![0f32; n_total * NODE_FEATURES];
        let mut edge_index = vec![0u32; 2 * e_total];
        let mut owner = vec![0u32; n_total];
        let (mut n_off, mut e_off) = (0usize, 0usize);
        for (g, s) in states.chunks_exact(sd).enumerate() {
            let k = s[0] as usize;
            let (n, edges) = (self.graph_of_instance(k).nodes(), &self.edges[k]);
            for (o, &v) in x[n_off * NODE_FEATURES..(n_off + n) * NODE_FEATURES]
                .chunks_exact_mut(NODE_FEATURES)
                .zip(&s[HEADER..HEADER + n])
            {
                let k = match v {
                    SELECTED => 0,
                    EXCLUDED => 1,
                    _ => 2,
                };
                o[k] = 1.0;
            }
            owner[n_off..n_off + n].fill(g as u32);
            let e = edges.src.len();
            let off = n_off as u32;
            for (d, &v) in edge_index[e_off..e_off + e].iter_mut().zip(&edges.src) {
                *d = v + off;
            }
            for (d, &v) in edge_index[e_total + e_off..e_total + e_off + e]
                .iter_mut()
                .zip(&edges.dst)
            {
                *d = v + off;
            }
            n_off += n;
            e_off += e;
        }
        Ok(GraphBatch {
            node_features: Tensor::from_vec(x, (n_total, NODE_FEATURES), device)?,
            edge_index: Tensor::from_vec(edge_index, (2, e_total), device)?,
            edge_features: None,
            node_graph: Tensor::from_vec(owner, n_total, device)?,
            num_graphs: rows,
        })
    }
    fn condition_space(&self) -> Option<ConditionSpace> {
        Some(ConditionSpace {
            names: vec!["instance".into()],
            evaluation: vec![],
        })
    }
    /// A uniformly drawn training instance at the current `β`.
    fn draw_initial_state(&self, rng: &mut GfnRng, out: &mut [i32]) {
        let k = rng.random_range(0..self.train.len());
        self.write_s0(k, self.current_beta_milli(), out);
    }
    /// Instance `k` (training or test) at the current `β`.
    fn conditioned_initial_state(&self, condition: &[f64], out: &mut [i32]) -> Result<()> {
        let &[k] = condition else {
            return Err(GfnError::invalid(
                "condition",
                format!("{condition:?}"),
                "must be one value, instance",
            ));
        };
        let total = self.num_instances();
        if !(k.is_finite() && k >= 0.0 && k.fract() == 0.0 && k < total as f64) {
            return Err(GfnError::invalid(
                "instance",
                k,
                format!(
                    "must be an integer in 0 .. {total} ({} training graphs, then {} test graphs)",
                    self.train.len(),
                    self.test.len()
                ),
            ));
        }
        self.write_s0(k as usize, self.current_beta_milli(), out);
        Ok(())
    }
    fn set_training_progress(&self, trajectories: u64) {
        self.progress.store(trajectories, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mis_graphs::rb_graph;
    use gfn_core::conditional::Pinned;
    use gfn_core::dag::check_env;
    use gfn_core::exact::{ExactEvaluator, logsumexp};
    use gfn_core::obs::HostGraph;
    use gfn_core::rng_from_seed;

    fn path(n: usize) -> Graph {
        let edges: Vec<(u32, u32)> = (0..n as u32 - 1).map(|i| (i, i + 1)).collect();
        Graph::new(n, &edges).unwrap()
    }

    fn cycle_with_chord(n: usize) -> Graph {
        let mut edges: Vec<(u32, u32)> = (0..n as u32).map(|i| (i, (i + 1) % n as u32)).collect();
        edges.push((0, n as u32 / 2));
        Graph::new(n, &edges).unwrap()
    }

    /// A tiny RB graph: 2 or 3 cliques of 2 or 3 nodes with cross edges.
    fn tiny_rb(seed: u64) -> Graph {
        let params = RbParams {
            cliques: (2, 3),
            clique_size: (2, 3),
            p: (0.3, 1.0),
            nodes: (4, 8),
        };
        rb_graph(&params, &mut rng_from_seed(seed)).unwrap()
    }

    /// Training: a path, a cycle with chord, a tiny RB graph; test: a triangle with a pendant
    /// node and a star.
    fn small_env(anneal: Anneal) -> MisEnv {
        let train = vec![path(5), cycle_with_chord(6), tiny_rb(3)];
        let test = vec![
            Graph::new(4, &[(0, 1), (1, 2), (0, 2), (2, 3)]).unwrap(),
            Graph::new(7, &[(0, 1), (0, 2), (0, 3), (0, 4), (0, 5), (0, 6)]).unwrap(),
        ];
        MisEnv::new(train, test, anneal).unwrap()
    }

    /// The number of independent and of maximal independent sets, and `Σ_{maximal I} e^{β|I|}`
    /// in log space, by brute force over subsets.
    fn brute_force(g: &Graph, beta: f64) -> (usize, usize, f64) {
        let n = g.nodes();
        let (mut independent, mut maximal, mut log_rewards) = (0, 0, Vec::new());
        for mask in 0u32..1 << n {
            let member: Vec<bool> = (0..n).map(|i| mask >> i & 1 == 1).collect();
            if g.is_independent(&member) {
                independent += 1;
            }
            if g.is_maximal_independent(&member) {
                maximal += 1;
                log_rewards.push(beta * f64::from(mask.count_ones()));
            }
        }
        (independent, maximal, logsumexp(log_rewards))
    }

    /// Checks the invariants of a state of `env`: instance in range, real nodes in {0, 1, 2},
    /// padding −1, selected independent, excluded = N(selected).
    fn check_state(env: &MisEnv, s: &[i32]) {
        let g = env.graph(env.instance(s)).unwrap();
        let n = g.nodes();
        let nodes = &s[HEADER..];
        assert!(nodes[n..].iter().all(|&x| x == PADDING), "{s:?}");
        assert!(nodes[..n].iter().all(|&x| (0..=2).contains(&x)), "{s:?}");
        let member: Vec<bool> = nodes[..n].iter().map(|&x| x == SELECTED).collect();
        assert!(g.is_independent(&member), "{s:?}");
        for v in 0..n {
            let near = g.neighbours(v as u32).iter().any(|&u| member[u as usize]);
            let want = if member[v] {
                SELECTED
            } else if near {
                EXCLUDED
            } else {
                UNDECIDED
            };
            assert_eq!(nodes[v], want, "node {v} of {s:?}");
        }
        assert_eq!(env.selected_nodes(s).len(), env.set_size(s));
        assert_eq!(env.is_terminal(s), g.is_maximal_independent(&member));
    }

    #[test]
    fn every_pinned_instance_is_a_valid_dag_with_the_brute_force_counts() {
        let env = small_env(Anneal::constant(0.75));
        assert_eq!(env.num_instances(), 5);
        for k in 0..env.num_instances() {
            let pinned = Pinned::new(&env, &[k as f64]).unwrap();
            check_env(&pinned).unwrap();
            let ev = ExactEvaluator::new(&pinned).unwrap();
            let (independent, maximal, log_z) = brute_force(env.graph(k).unwrap(), 0.75);
            assert_eq!(ev.num_states(), independent, "instance {k}");
            assert_eq!(ev.num_terminal(), maximal, "instance {k}");
            approx::assert_abs_diff_eq!(ev.log_z(), log_z, epsilon = 1e-9);
            let sd = env.state_dim();
            for s in ev.states().chunks_exact(sd) {
                assert_eq!(env.instance(s), k);
                check_state(&env, s);
                approx::assert_abs_diff_eq!(env.intermediate_log_reward(s).unwrap(), 0.75 * env.set_size(s) as f64);
            }
        }
        // The path P5 has 13 independent sets (Fibonacci) and 4 maximal ones: {0,2,4}, {0,3},
        // {1,3}, {1,4}.
        let ev = ExactEvaluator::new(&Pinned::new(&env, &[0.0]).unwrap()).unwrap();
        assert_eq!((ev.num_states(), ev.num_terminal()), (13, 4));
    }

    #[test]
    fn random_walks_keep_the_invariants_and_steps_invert() {
        let train = rb_graphs(&RbParams::reduced(), 3, 5).unwrap();
        let test = vec![path(9)];
        let env = MisEnv::new(train, test, Anneal::official()).unwrap();
        let (sd, na) = (env.state_dim(), env.n_actions());
        let mut rng = rng_from_seed(1);
        let (mut s, mut mask, mut bmask) = (vec![0; sd], vec![false; na], vec![false; na]);
        for walk in 0..60 {
            if walk % 4 == 3 {
                env.conditioned_initial_state(&[3.0], &mut s).unwrap();
            } else {
                env.draw_initial_state(&mut rng, &mut s);
            }
            assert!(env.is_initial(&s));
            check_state(&env, &s);
            let mut steps = 0;
            while !env.is_terminal(&s) {
                env.forward_mask(&s, &mut mask);
                let allowed: Vec<usize> = (0..na).filter(|&a| mask[a]).collect();
                let a = allowed[rng.random_range(0..allowed.len())];
                let before = s.clone();
                let b = env.step(&mut s, a);
                check_state(&env, &s);
                env.backward_mask(&s, &mut bmask);
                assert!(bmask[b]);
                let mut back = s.clone();
                assert_eq!(env.backward_step(&mut back, b), a);
                assert_eq!(back, before);
                // A random backward step from here is undone by its forward step.
                let selected = env.selected_nodes(&s);
                let c = selected[rng.random_range(0..selected.len())] as usize;
                let mut parent = s.clone();
                let f = env.backward_step(&mut parent, c);
                check_state(&env, &parent);
                env.forward_mask(&parent, &mut mask);
                assert!(mask[f]);
                env.step(&mut parent, f);
                assert_eq!(parent, s);
                assert!(!env.is_initial(&s));
                steps += 1;
            }
            assert!(steps <= env.max_actions());
            assert_eq!(env.set_size(&s), steps);
            approx::assert_abs_diff_eq!(env.log_reward(&s), env.beta(&s) * steps as f64);
        }
    }

    #[test]
    fn draws_pick_training_instances_and_cover_them() {
        let env = small_env(Anneal::constant(2.0));
        let mut rng = rng_from_seed(7);
        let mut s = vec![0; env.state_dim()];
        let mut counts = vec![0; env.num_instances()];
        for _ in 0..3000 {
            env.draw_initial_state(&mut rng, &mut s);
            counts[env.instance(&s)] += 1;
            assert!(env.is_initial(&s));
            assert_eq!(s[1], 2000);
            check_state(&env, &s);
        }
        assert_eq!(&counts[3..], &[0, 0], "{counts:?}");
        assert!(counts[..3].iter().all(|&c| (850..1150).contains(&c)), "{counts:?}");
        // initial_state is instance 0.
        env.initial_state(&mut s);
        assert_eq!(env.instance(&s), 0);
        assert!(env.is_initial(&s));
    }

    #[test]
    fn beta_follows_the_schedule_and_is_frozen_in_a_drawn_state() {
        let env = small_env(Anneal::official());
        assert_eq!(env.beta_at(0), 1.0);
        assert_eq!(env.beta_at(20_000), 250.5);
        assert_eq!(env.beta_at(40_000), 500.0);
        assert_eq!(env.beta_at(1 << 40), 500.0);
        let mut rng = rng_from_seed(0);
        let (mut a, mut b) = (vec![0; env.state_dim()], vec![0; env.state_dim()]);
        env.draw_initial_state(&mut rng, &mut a);
        assert_eq!(a[1], 1000);
        env.set_training_progress(10_000);
        assert_eq!(env.progress(), 10_000);
        env.draw_initial_state(&mut rng, &mut a);
        assert_eq!(a[1], 125_750); // 1 + 499 / 4 = 125.75
        env.step(&mut a, 0);
        env.set_training_progress(40_000);
        // The earlier trajectory keeps its β, in its states and its reward.
        assert_eq!(a[1], 125_750);
        approx::assert_abs_diff_eq!(env.log_reward(&a), 125.75);
        approx::assert_abs_diff_eq!(env.intermediate_log_reward(&a).unwrap(), 125.75);
        env.conditioned_initial_state(&[4.0], &mut b).unwrap();
        assert_eq!((b[0], b[1]), (4, 500_000));
        env.initial_state(&mut b);
        assert_eq!((b[0], b[1]), (0, 500_000));
        // Rounded to thousandths; over = 0 is the constant end.
        let env = small_env(Anneal {
            start: 1.0,
            end: 1.0001,
            over: 0,
        });
        env.initial_state(&mut b);
        assert_eq!(b[1], 1000);
        assert_eq!(env.beta_at(0), 1.0001);
        // A decreasing schedule also interpolates.
        let down = Anneal {
            start: 4.0,
            end: 2.0,
            over: 10,
        };
        assert_eq!(down.beta_at(5), 3.0);
    }

    #[test]
    fn observations_lay_out_graphs_of_different_sizes_with_offsets() {
        let env = small_env(Anneal::constant(1.0));
        let dev = Device::Cpu;
        assert_eq!(
            env.graph_space(),
            Some(GraphSpace {
                node_features: 3,
                edge_features: 0,
                actions: gfn_core::obs::GraphActions::PerNode,
            })
        );
        // Path 0-1-2-3-4 with node 1 selected: 0 and 2 excluded, 3 and 4 undecided.
        let mut p = vec![0; env.state_dim()];
        env.conditioned_initial_state(&[0.0], &mut p).unwrap();
        env.step(&mut p, 1);
        assert_eq!(&p[HEADER..HEADER + 5], &[0, 1, 0, 2, 2]);
        let g = env.observe_graphs(&p, &dev).unwrap();
        g.check().unwrap();
        assert_eq!(g.sizes().unwrap(), (5, 8));
        assert_eq!(g.num_graphs, 1);
        let x = g.node_features.to_vec2::<f32>().unwrap();
        let onehot = |k: usize| (0..3).map(|j| f32::from(u8::from(j == k))).collect::<Vec<_>>();
        assert_eq!(x, vec![onehot(1), onehot(0), onehot(1), onehot(2), onehot(2)]);
        let mut f = vec![9.0; env.feature_dim()];
        env.featurize(&p, &mut f);
        assert_eq!(&f[..15], x.concat().as_slice());
        assert!(f[15..].iter().all(|&v| v == 0.0), "padding must featurize to zero");
        // The star (instance 4, 7 nodes, 6 edges) with its centre selected, between two paths.
        let mut star = vec![0; env.state_dim()];
        env.conditioned_initial_state(&[4.0], &mut star).unwrap();
        env.step(&mut star, 0);
        let mut q = vec![0; env.state_dim()];
        env.conditioned_initial_state(&[0.0], &mut q).unwrap();
        let batch = [p.clone(), star.clone(), q.clone()].concat();
        let g = env.observe_graphs(&batch, &dev).unwrap();
        g.check().unwrap();
        assert_eq!(g.num_graphs, 3);
        assert_eq!(g.sizes().unwrap(), (5 + 7 + 5, 8 + 12 + 8));
        let owner = g.node_graph.to_vec1::<u32>().unwrap();
        assert_eq!(owner, [vec![0; 5], vec![1; 7], vec![2; 5]].concat());
        let ei = g.edge_index.to_vec2::<u32>().unwrap();
        // The star's edges join node 5 (its centre, offset 5) to 6 … 11 both ways.
        let star_edges: Vec<(u32, u32)> = (8..20).map(|e| (ei[0][e], ei[1][e])).collect();
        for leaf in 6..12 {
            assert!(star_edges.contains(&(5, leaf)) && star_edges.contains(&(leaf, 5)));
        }
        assert!((20..28).all(|e| ei[0][e] >= 12 && ei[1][e] >= 12));
        // The same batch through the reference builder.
        let host: Vec<HostGraph> = [&p, &star, &q]
            .iter()
            .map(|s| {
                let graph = env.graph(env.instance(s)).unwrap();
                let n = graph.nodes();
                let mut f = vec![0.0; env.feature_dim()];
                env.featurize(s, &mut f);
                HostGraph {
                    node_features: f[..3 * n].to_vec(),
                    edges: (0..n as u32)
                        .flat_map(|v| graph.neighbours(v).iter().map(move |&u| (u, v)))
                        .collect(),
                    edge_features: vec![],
                }
            })
            .collect();
        let want = GraphBatch::from_graphs(&host, 3, 0, &dev).unwrap();
        assert_eq!(
            g.node_features.to_vec2::<f32>().unwrap(),
            want.node_features.to_vec2::<f32>().unwrap()
        );
        assert_eq!(ei, want.edge_index.to_vec2::<u32>().unwrap());
        assert_eq!(owner, want.node_graph.to_vec1::<u32>().unwrap());
        assert!(g.edge_features.is_none());
        // An empty batch is an empty union.
        let g = env.observe_graphs(&[], &dev).unwrap();
        assert_eq!((g.num_graphs, g.sizes().unwrap()), (0, (0, 0)));
    }

    #[test]
    fn state_layout_distances_and_name() {
        let env = small_env(Anneal::constant(1.5));
        assert_eq!(env.max_nodes(), 7);
        assert_eq!((env.state_dim(), env.n_actions(), env.feature_dim()), (9, 7, 21));
        assert_eq!(env.exit_action(), None);
        let mut s = vec![0; env.state_dim()];
        env.conditioned_initial_state(&[3.0], &mut s).unwrap();
        assert_eq!(s, vec![3, 1500, 2, 2, 2, 2, -1, -1, -1]);
        assert_eq!(env.condition_space().unwrap().names, vec!["instance".to_string()]);
        assert!(env.condition_space().unwrap().evaluation.is_empty());
        // Triangle 0-1-2 with pendant 3 on 2: objects {0,3}, {1,3}, {2}.
        let mut a = s.clone();
        env.step(&mut a, 0);
        env.step(&mut a, 3);
        let mut b = s.clone();
        env.step(&mut b, 2);
        assert!(env.is_terminal(&a) && env.is_terminal(&b));
        assert_eq!(env.selected_nodes(&a), vec![0, 3]);
        assert_eq!(env.object_distance(&a, &b), 3.0);
        assert_eq!(env.object_distance(&a, &a), 0.0);
        let mut c = vec![0; env.state_dim()];
        env.conditioned_initial_state(&[0.0], &mut c).unwrap();
        assert_eq!(env.object_distance(&a, &c), 7.0);
        assert!(!env.is_mode(&a));
        assert_eq!(env.name(), "mis-3x2-n4..7-beta1.5");
        assert_eq!(
            small_env(Anneal::official()).name(),
            "mis-3x2-n4..7-beta1..500over40000"
        );
    }

    #[test]
    fn rb_draws_train_and_test_from_separate_streams() {
        let params = RbParams::reduced();
        let env = MisEnv::rb(&params, 3, 2, 11, Anneal::official()).unwrap();
        assert_eq!((env.num_train(), env.num_test()), (3, 2));
        let train = rb_graphs(&params, 3, 11).unwrap();
        let test = rb_graphs(&params, 2, 11 ^ TEST_SEED_SALT).unwrap();
        assert_eq!(env.train_graphs(), &train[..]);
        assert_eq!(env.test_graphs(), &test[..]);
        assert_ne!(train[..2], test[..]);
        let most = train.iter().chain(&test).map(Graph::nodes).max().unwrap();
        assert_eq!(env.max_nodes(), most);
        assert!(env.name().starts_with("mis-rb-3x2-n"), "{}", env.name());
        // The training graphs do not depend on how many test graphs are drawn.
        let other = MisEnv::rb(&params, 3, 0, 11, Anneal::official()).unwrap();
        assert_eq!(other.train_graphs(), env.train_graphs());
    }

    #[test]
    fn bad_inputs_are_named() {
        let err = |r: Result<MisEnv>| r.unwrap_err().to_string();
        let e = err(MisEnv::new(vec![], vec![path(3)], Anneal::official()));
        assert!(e.contains("invalid train") && e.contains("at least one"), "{e}");
        let big = Graph::new(MAX_NODES + 1, &[]).unwrap();
        let e = err(MisEnv::new(vec![path(3)], vec![path(2), big], Anneal::official()));
        assert!(
            e.contains("invalid test") && e.contains("graph 1 with 4097 nodes"),
            "{e}"
        );
        let e = err(MisEnv::new(
            vec![Graph::new(0, &[]).unwrap()],
            vec![],
            Anneal::official(),
        ));
        assert!(e.contains("invalid train") && e.contains("0 nodes"), "{e}");
        for (anneal, field) in [
            (Anneal::constant(0.0), "anneal.start"),
            (Anneal::constant(-1.0), "anneal.start"),
            (Anneal::constant(0.0001), "anneal.start"),
            (
                Anneal {
                    start: 1.0,
                    end: f64::NAN,
                    over: 5,
                },
                "anneal.end",
            ),
            (
                Anneal {
                    start: 1.0,
                    end: f64::INFINITY,
                    over: 5,
                },
                "anneal.end",
            ),
            (
                Anneal {
                    start: 1.0,
                    end: 1e7,
                    over: 5,
                },
                "anneal.end",
            ),
        ] {
            let e = err(MisEnv::new(vec![path(3)], vec![], anneal));
            assert!(e.contains(&format!("invalid {field}")), "{e}");
        }
        let e = err(MisEnv::rb(&RbParams::reduced(), 0, 1, 0, Anneal::official()));
        assert!(e.contains("invalid train"), "{e}");
        let env = small_env(Anneal::official());
        let mut s = vec![0; env.state_dim()];
        for k in [5.0, -1.0, 1.5, f64::NAN, f64::INFINITY] {
            let e = env.conditioned_initial_state(&[k], &mut s).unwrap_err().to_string();
            assert!(e.contains("invalid instance") && e.contains("0 .. 5"), "{k}: {e}");
        }
        let e = env
            .conditioned_initial_state(&[0.0, 1.0], &mut s)
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid condition") && e.contains("one value"), "{e}");
        let e = Pinned::new(&env, &[9.0]).unwrap_err().to_string();
        assert!(e.contains("invalid instance"), "{e}");
    }
}
