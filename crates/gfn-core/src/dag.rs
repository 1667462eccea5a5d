//! A small explicit DAG environment, generated from a seed: the test bed for objectives and
//! samplers, and a reference for environment authors.
//!
//! Nodes `0 … n−1`, node 0 is `s_0`, edges go from lower to higher index. Forward action `j` moves
//! to node `j`; backward action `i` moves to parent `i`. With `with_exit`, an extra forward action
//! `n` exits from any node (every node is a terminal object, like hypergrid); otherwise the sinks
//! (nodes without children) are the terminal objects.

use rand::Rng;

use crate::{Env, GfnError, GfnRng, Result};

/// An explicit DAG with rewards.
#[derive(Debug, Clone)]
pub struct DagEnv {
    n: usize,
    adjacency: Vec<bool>,
    log_rewards: Vec<f64>,
    with_exit: bool,
    depth: usize,
}

impl DagEnv {
    /// A DAG from an adjacency matrix (`adjacency[i * n + j]` for the edge `i → j`, only `i < j`),
    /// per-node log rewards, and whether there is an exit action. Every node must be reachable
    /// from node 0.
    pub fn new(n: usize, adjacency: Vec<bool>, log_rewards: Vec<f64>, with_exit: bool) -> Result<Self> {
        if n < 2 || adjacency.len() != n * n || log_rewards.len() != n {
            return Err(GfnError::invalid("n", n, "need n ≥ 2, an n×n adjacency and n rewards"));
        }
        for i in 0..n {
            for j in 0..=i {
                if adjacency[i * n + j] {
                    return Err(GfnError::invalid(
                        "adjacency",
                        format!("{i}→{j}"),
                        "edges must go from lower to higher index",
                    ));
                }
            }
        }
        // Longest path, and reachability from 0.
        let mut depth = vec![usize::MAX; n];
        depth[0] = 0;
        for i in 0..n {
            if depth[i] == usize::MAX {
                return Err(GfnError::invalid(
                    "adjacency",
                    format!("node {i}"),
                    "every node must be reachable from node 0",
                ));
            }
            for j in i + 1..n {
                if adjacency[i * n + j] {
                    depth[j] = if depth[j] == usize::MAX {
                        depth[i] + 1
                    } else {
                        depth[j].max(depth[i] + 1)
                    };
                }
            }
        }
        let max_depth = depth.into_iter().max().unwrap_or(0);
        Ok(Self {
            n,
            adjacency,
            log_rewards,
            with_exit,
            depth: max_depth,
        })
    }

    /// A random DAG on `n` nodes: each node `j > 0` gets one random parent below it, plus each
    /// other forward edge with probability `p_edge`; log rewards uniform in `[−2, 2]`.
    pub fn random(n: usize, p_edge: f64, with_exit: bool, rng: &mut GfnRng) -> Result<Self> {
        let mut adj = vec![false; n * n];
        for j in 1..n {
            let p = rng.random_range(0..j);
            adj[p * n + j] = true;
            for i in 0..j {
                if rng.random::<f64>() < p_edge {
                    adj[i * n + j] = true;
                }
            }
        }
        let lr = (0..n).map(|_| rng.random_range(-2.0..2.0)).collect();
        Self::new(n, adj, lr, with_exit)
    }

    /// `n` trajectories of a tabular forward policy with logits `pf` (`[nodes, n_actions]`, only
    /// the allowed actions read), as paths of node ids like [`DagEnv::random_path`]'s.
    pub fn sample_paths(&self, pf: &[f64], n: usize, rng: &mut GfnRng) -> Vec<Vec<usize>> {
        let na = self.n_actions();
        let mut mask = vec![false; na];
        let mut w = vec![0.0; na];
        (0..n)
            .map(|_| {
                let mut path = vec![0usize];
                loop {
                    let s = *path.last().unwrap_or(&0);
                    if self.is_terminal(&[s as i32]) {
                        return path;
                    }
                    self.forward_mask(&[s as i32], &mut mask);
                    for a in 0..na {
                        w[a] = if mask[a] { pf[s * na + a].exp() } else { 0.0 };
                    }
                    let a = crate::rng::sample_weighted(rng, &w, w.iter().sum());
                    if Some(a) == self.exit_action() {
                        return path;
                    }
                    path.push(a);
                }
            })
            .collect()
    }

    /// A random path of node ids from node 0 to a terminal object (with an exit action, the node
    /// where it exits; the exit itself is not in the path). `must_move`: never exit at node 0.
    pub fn random_path(&self, rng: &mut GfnRng, must_move: bool) -> Vec<usize> {
        let n = self.n;
        let mut path = vec![0usize];
        let mut mask = vec![false; self.n_actions()];
        loop {
            let s = [*path.last().unwrap_or(&0) as i32];
            if self.is_terminal(&s) {
                return path;
            }
            self.forward_mask(&s, &mut mask);
            if must_move && path.len() == 1 {
                mask[n..].iter_mut().for_each(|m| *m = false);
            }
            let valid: Vec<usize> = (0..mask.len()).filter(|&a| mask[a]).collect();
            let a = valid[rng.random_range(0..valid.len())];
            if a == n {
                return path; // exit
            }
            path.push(a);
        }
    }

    /// A batch holding exactly these node paths (from [`DagEnv::random_path`]), with zero
    /// behaviour log-probabilities: the fixture of the objectives' property tests.
    pub fn batch_of_paths(&self, paths: &[Vec<usize>]) -> crate::TrajectoryBatch {
        let mut batch = crate::TrajectoryBatch::default();
        batch.reset(self, paths.len());
        let longest = paths.iter().map(Vec::len).max().unwrap_or(0);
        for t in 0..longest {
            for (b, p) in paths.iter().enumerate() {
                if t < p.len() {
                    batch.push_row(self, b, t, &[p[t] as i32]);
                    if t + 1 < p.len() {
                        batch.set_step(b, t, p[t + 1] as u32, p[t] as u32, 0.0, 0.0);
                    }
                }
            }
        }
        for (b, p) in paths.iter().enumerate() {
            let x = [*p.last().unwrap_or(&0) as i32];
            match self.exit_action() {
                Some(e) => {
                    batch.set_step(b, p.len() - 1, e as u32, crate::batch::NONE, 0.0, 0.0);
                    batch.finish(self, b, p.len(), &x);
                }
                None => batch.finish(self, b, p.len() - 1, &x),
            }
        }
        batch
    }

    /// Number of nodes.
    pub fn num_nodes(&self) -> usize {
        self.n
    }

    fn edge(&self, i: usize, j: usize) -> bool {
        self.adjacency[i * self.n + j]
    }

    fn has_children(&self, i: usize) -> bool {
        (i + 1..self.n).any(|j| self.edge(i, j))
    }
}

impl Env for DagEnv {
    fn name(&self) -> String {
        format!("dag-{}{}", self.n, if self.with_exit { "-exit" } else { "" })
    }
    fn state_dim(&self) -> usize {
        1
    }
    fn n_actions(&self) -> usize {
        self.n + usize::from(self.with_exit)
    }
    fn n_backward_actions(&self) -> usize {
        self.n
    }
    fn exit_action(&self) -> Option<usize> {
        self.with_exit.then_some(self.n)
    }
    fn feature_dim(&self) -> usize {
        self.n
    }
    fn max_actions(&self) -> usize {
        self.depth + usize::from(self.with_exit)
    }
    fn initial_state(&self, out: &mut [i32]) {
        out[0] = 0;
    }
    fn forward_mask(&self, state: &[i32], mask: &mut [bool]) {
        let i = state[0] as usize;
        for j in 0..self.n {
            mask[j] = self.edge(i, j);
        }
        if self.with_exit {
            mask[self.n] = true;
        }
    }
    fn backward_mask(&self, state: &[i32], mask: &mut [bool]) {
        let j = state[0] as usize;
        for i in 0..self.n {
            mask[i] = self.edge(i, j);
        }
    }
    fn step(&self, state: &mut [i32], action: usize) -> usize {
        let from = state[0] as usize;
        state[0] = action as i32;
        from
    }
    fn backward_step(&self, state: &mut [i32], action: usize) -> usize {
        let from = state[0] as usize;
        state[0] = action as i32;
        from
    }
    fn log_reward(&self, state: &[i32]) -> f64 {
        self.log_rewards[state[0] as usize]
    }
    fn featurize(&self, state: &[i32], out: &mut [f32]) {
        out.fill(0.0);
        out[state[0] as usize] = 1.0;
    }
    fn intermediate_log_reward(&self, state: &[i32]) -> Option<f64> {
        Some(self.log_rewards[state[0] as usize])
    }
    fn is_terminal(&self, state: &[i32]) -> bool {
        !self.with_exit && !self.has_children(state[0] as usize)
    }
    fn is_initial(&self, state: &[i32]) -> bool {
        state[0] == 0
    }
    fn enumerate_states(&self) -> Option<Vec<i32>> {
        Some((0..self.n as i32).collect())
    }
    fn state_index(&self, state: &[i32]) -> Option<usize> {
        Some(state[0] as usize)
    }
}

/// Check the invariants of [`Env`] on an enumerable environment: `step` and `backward_step` invert
/// each other, masks agree between parents and children, and the enumeration is topological.
pub fn check_env<E: Env + ?Sized>(env: &E) -> Result<()> {
    let ev = crate::exact::ExactEvaluator::new(env)?; // checks enumeration and topological order
    let states = ev.states();
    let (sd, na, nb) = (env.state_dim(), env.n_actions(), env.n_backward_actions());
    let mut buf = vec![0; sd];
    for s in 0..ev.num_states() {
        let state = &states[s * sd..(s + 1) * sd];
        for a in 0..na {
            if let Some((c, b)) = ev.child(s, a) {
                if !ev.backward_mask()[c * nb + b] {
                    return Err(GfnError::Other(format!(
                        "{state:?}: step {a} undone by masked backward action {b}"
                    )));
                }
                buf.copy_from_slice(&states[c * sd..(c + 1) * sd]);
                let back = env.backward_step(&mut buf, b);
                if buf != state || back != a {
                    return Err(GfnError::Other(format!(
                        "{state:?}: backward_step does not invert step {a}"
                    )));
                }
            }
        }
        let parents = (0..nb).filter(|&b| ev.parent(s, b).is_some()).count();
        if env.is_initial(state) != (parents == 0) {
            return Err(GfnError::Other(format!("{state:?}: only s_0 may have no parent")));
        }
    }
    Ok(())
}
