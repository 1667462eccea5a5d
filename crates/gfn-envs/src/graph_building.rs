//! Labelled graphs built one node or one edge at a time: the graph-building environment of
//! torchgfn (`GraphBuilding`: add a node of a type, add an edge of a type, exit), with a reward
//! the user gives as a function of the finished graph.
//!
//! # Graphs
//! A graph has `n ≤ N` nodes (`N = max_nodes`), labelled `0 … n−1` in the order they were added,
//! each of one of `T` node types; each pair of nodes carries at most one edge, of one of `K` edge
//! types. Undirected graphs have one *pair slot* per unordered pair `i < j`; directed graphs one
//! per ordered pair `i ≠ j` (so `i → j` and `j → i` may both be present unless `acyclic`). There
//! are no self-loops and no parallel edges. Pair slots are ordered by their larger node, so the
//! slots among the first `n` nodes are a prefix of length `P(n)` (`n(n−1)/2` undirected,
//! `n(n−1)` directed):
//!
//! * undirected: slot `j(j−1)/2 + i` is the pair `{i, j}`, `i < j`:
//!   `{0,1}, {0,2}, {1,2}, {0,3}, …`;
//! * directed: slot `j(j−1) + 2i` is `i → j` and slot `j(j−1) + 2i + 1` is `j → i`, `i < j`:
//!   `0→1, 1→0, 0→2, 2→0, 1→2, 2→1, …`.
//!
//! With `acyclic`, a directed graph must stay a DAG and an undirected one a forest.
//!
//! # State layout
//! A state is `1 + N + P(N) + 1` `i32` values, `P = P(N)`:
//!
//! | offset            | width | value                                                      |
//! |-------------------|-------|------------------------------------------------------------|
//! | `0`               | 1     | `n`, the number of nodes                                   |
//! | `1`               | `N`   | node type of node `i` (`0 … T−1`), `−1` for `i ≥ n`         |
//! | `1 + N`           | `P`   | per pair slot: edge type + 1, or `0` for no edge           |
//! | `1 + N + P`       | 1     | the terminal flag (1 once the exit was taken)              |
//!
//! `s_0` is the empty graph: `n = 0`, every type `−1`, every slot `0`, flag `0`.
//!
//! # The DAG of states
//! Forward actions (`T + P·K + 1` of them):
//! * `t < T`: add a node of type `t`; it becomes node `n`. Allowed while `n < N`.
//! * `T + p·K + k`: add an edge of type `k` in pair slot `p`. Allowed when both of its nodes
//!   exist, the slot is empty and, with `acyclic`, the edge closes no cycle (directed `i → j`:
//!   `j` does not reach `i`; undirected: `i` and `j` are in different trees).
//! * `T + P·K`: exit. Allowed when `n ≥ 1`: the empty graph is not an object.
//!
//! Backward actions (`P + 2` of them): `p < P` removes the edge in slot `p` (its type is read
//! from the state); `P` removes the last node `n−1`, allowed only when it has no edge, so that
//! every labelled graph is built in one node order and `step` / `backward_step` are exact
//! inverses; `P + 1` un-exits (clears the flag). From a flagged state no forward action is
//! allowed and the un-exit is the only backward action.
//!
//! **Exit convention.** [`Env::exit_action`] is `None`: the exit is an ordinary forward action
//! that sets the terminal flag, and a trajectory ends on the flagged state, which
//! [`Env::is_terminal`] reports. The object is the flagged twin of the graph the exit was taken
//! from; every non-empty graph (every forest / DAG with `acyclic`) is an object. A trajectory of
//! `m` actions therefore visits `m + 1` states, the last one flagged; `P_B` of a flagged state is
//! 1 (the un-exit is its only parent move).
//!
//! # Reward
//! [`GraphBuildingEnv::new`] takes the user's `log R` as a function of a [`GraphView`] (node
//! types, typed edges); [`GraphBuildingEnv::with_builtin`] takes a [`Builtin`]. [`Env::log_reward`]
//! cannot fail, so a user function returning NaN or ±∞ is not caught there: exact evaluation
//! refuses NaN and +∞ naming the state, and the trainer stops on the non-finite loss such a reward
//! gives; [`GraphBuildingEnv::checked_log_reward`] checks one state and names it.
//!
//! # Features and observations
//! [`Env::featurize`] (for MLPs) concatenates, per node slot, a one-hot of `T + 1` values (empty,
//! then the types), per pair slot a one-hot of `K + 1` values (no edge, then the edge types), and
//! the terminal flag: `N(T+1) + P(K+1) + 1` values. [`Env::observe_graphs`] (for graph policies)
//! gives one graph per state with its `n` nodes; node features are the one-hot node type followed
//! by the state's terminal flag (`T + 1` values; the flag is copied onto every node since a
//! [`GraphBatch`] has no per-graph features), edge features the one-hot edge type (`K` values).
//! An undirected edge is two directed edges, both with its features, as the GIN expects; a
//! directed edge `i → j` is one. The empty graph (`s_0`) is a graph with no nodes, which
//! [`GraphBatch`] and the GIN accept (its pooled embedding is the zero vector).
//!
//! # Enumeration
//! Where the whole space has at most [`MAX_ENUMERATED_STATES`] states, [`Env::enumerate_states`]
//! lists first every unflagged graph by `n`, then by the node types (node 0 most significant),
//! then by the edge slots (slot 0 most significant; adding an edge raises one slot from 0, so the
//! order is topological), and then the flagged twins of the graphs with `n ≥ 1` in the same
//! order. Without `acyclic` there are `Σ_n T^n (K+1)^{P(n)}` unflagged graphs (1,099 for `N = 4`,
//! `T = 2`, `K = 1`, undirected) and [`Env::state_index`] is computed directly; with it, the
//! number of DAGs (Robinson's recurrence, 1, 1, 3, 25, 543 for `K = 1`) or forests (1, 1, 2, 7,
//! 38) on `n` labelled nodes, each edge of `K` types, replaces `(K+1)^{P(n)}`.

use std::fmt;
use std::sync::Arc;

use gfn_core::candle_core::Device;
use gfn_core::obs::{GraphBatch, GraphSpace, HostGraph};
use gfn_core::{Env, GfnError, Result};

/// Largest `max_nodes` (reachability is kept in 16-bit masks; the state row has at most 258
/// values).
pub const MAX_NODES: usize = 16;
/// Largest number of node types and of edge types.
pub const MAX_TYPES: usize = 64;
/// Largest number of states (flagged twins included) that [`Env::enumerate_states`] lists;
/// beyond it the environment is not enumerated (it still trains and samples).
pub const MAX_ENUMERATED_STATES: usize = 1 << 20;

/// The user's reward: `log R` of a finished graph.
pub type RewardFn = Arc<dyn Fn(&GraphView<'_>) -> f64 + Send + Sync>;

/// Settings of the graph-building environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GraphBuildingConfig {
    /// Largest number of nodes `N`, `1 ..= 16` (default 4).
    pub max_nodes: usize,
    /// Number of node types `T`, `1 ..= 64` (default 2).
    pub node_types: usize,
    /// Number of edge types `K`, `1 ..= 64` (default 1).
    pub edge_types: usize,
    /// Ordered pairs `i → j` (true) or unordered pairs `{i, j}` (false, the default).
    pub directed: bool,
    /// Keep the graph acyclic: a DAG when directed, a forest when undirected (default false).
    pub acyclic: bool,
}

impl Default for GraphBuildingConfig {
    fn default() -> Self {
        Self {
            max_nodes: 4,
            node_types: 2,
            edge_types: 1,
            directed: false,
            acyclic: false,
        }
    }
}

impl GraphBuildingConfig {
    /// Check the ranges; the error names the field.
    pub fn validate(&self) -> Result<()> {
        if !(1..=MAX_NODES).contains(&self.max_nodes) {
            return Err(GfnError::invalid(
                "max_nodes",
                self.max_nodes,
                format!("must be in 1 ..= {MAX_NODES}"),
            ));
        }
        if !(1..=MAX_TYPES).contains(&self.node_types) {
            return Err(GfnError::invalid(
                "node_types",
                self.node_types,
                format!("must be in 1 ..= {MAX_TYPES}"),
            ));
        }
        if !(1..=MAX_TYPES).contains(&self.edge_types) {
            return Err(GfnError::invalid(
                "edge_types",
                self.edge_types,
                format!("must be in 1 ..= {MAX_TYPES}"),
            ));
        }
        Ok(())
    }

    /// Number of pair slots among the first `n` nodes: `n(n−1)/2` undirected, `n(n−1)` directed.
    pub fn pairs_among(&self, n: usize) -> usize {
        let ordered = n * n.saturating_sub(1);
        if self.directed { ordered } else { ordered / 2 }
    }

    /// Number of pair slots `P = P(max_nodes)`.
    pub fn num_pairs(&self) -> usize {
        self.pairs_among(self.max_nodes)
    }

    /// The most edges a graph can have: `P`, or `N − 1` for a forest, `N(N−1)/2` for a DAG.
    pub fn max_edges(&self) -> usize {
        match (self.acyclic, self.directed) {
            (false, _) => self.num_pairs(),
            (true, false) => self.max_nodes - 1,
            (true, true) => self.max_nodes * (self.max_nodes - 1) / 2,
        }
    }

    /// The pair slot of the edge `i → j` (directed) or `{i, j}` (undirected); `None` for `i = j`
    /// or a node `≥ max_nodes`.
    pub fn pair_slot(&self, i: usize, j: usize) -> Option<usize> {
        (i < self.max_nodes && j < self.max_nodes)
            .then(|| slot_of(self.directed, i, j))
            .flatten()
    }
}

/// The pair slot of `(i, j)` in the layout of the module documentation, without a range check.
fn slot_of(directed: bool, i: usize, j: usize) -> Option<usize> {
    if i == j {
        return None;
    }
    let (lo, hi) = (i.min(j), i.max(j));
    Some(if directed {
        hi * (hi - 1) + 2 * lo + usize::from(i > j)
    } else {
        hi * (hi - 1) / 2 + lo
    })
}

/// A borrowed view of the graph in a state, for reward functions: node types and typed edges.
#[derive(Debug, Clone, Copy)]
pub struct GraphView<'a> {
    types: &'a [i32],
    slots: &'a [i32],
    pairs: &'a [(usize, usize)],
    directed: bool,
    terminal: bool,
}

impl<'a> GraphView<'a> {
    /// Number of nodes `n`.
    pub fn num_nodes(&self) -> usize {
        self.types.len()
    }
    /// The type of node `i < n`.
    ///
    /// # Panics
    /// If `i ≥ n`.
    pub fn node_type(&self, i: usize) -> usize {
        self.types[i] as usize
    }
    /// The node types in node order.
    pub fn node_types(&self) -> impl Iterator<Item = usize> + 'a {
        self.types.iter().map(|&t| t as usize)
    }
    /// The edges as `(i, j, edge type)`, in pair-slot order; `i < j` for undirected graphs,
    /// `i → j` for directed ones.
    pub fn edges(&self) -> impl Iterator<Item = (usize, usize, usize)> + 'a {
        self.slots
            .iter()
            .zip(self.pairs)
            .filter(|(v, _)| **v > 0)
            .map(|(&v, &(i, j))| (i, j, (v - 1) as usize))
    }
    /// Number of edges.
    pub fn num_edges(&self) -> usize {
        self.slots.iter().filter(|&&v| v > 0).count()
    }
    /// The type of the edge `i → j` (directed) or `{i, j}` (undirected), if present.
    pub fn edge(&self, i: usize, j: usize) -> Option<usize> {
        let n = self.num_nodes();
        if i >= n || j >= n {
            return None;
        }
        let v = self.slots[slot_of(self.directed, i, j)?];
        (v > 0).then(|| (v - 1) as usize)
    }
    /// Whether edges are directed.
    pub fn is_directed(&self) -> bool {
        self.directed
    }
    /// Whether the state is flagged terminal.
    pub fn is_terminal(&self) -> bool {
        self.terminal
    }
}

/// Built-in rewards, for tests and the command line.
#[derive(Debug, Clone, PartialEq)]
pub enum Builtin {
    /// `log R = per_edge · #edges − size_penalty · |n − target_nodes|`: denser graphs of about
    /// `target_nodes` nodes are likelier (with `per_edge = 0.5`, `size_penalty = 1`, a triangle
    /// on 3 nodes is `e^{3.5}` times likelier than a single node).
    EdgesAndSize {
        /// Log-reward per edge (finite).
        per_edge: f64,
        /// The preferred number of nodes, `1 ..= max_nodes`.
        target_nodes: usize,
        /// Log-reward lost per node above or below `target_nodes` (finite).
        size_penalty: f64,
    },
    /// `log R = −per_unit · Σ_t |#nodes of type t − counts[t]|`: graphs whose node-type
    /// histogram is near `counts` are likelier, whatever their edges.
    Composition {
        /// The preferred number of nodes of each type (`node_types` entries, summing to
        /// `1 ..= max_nodes`).
        counts: Vec<usize>,
        /// Log-reward lost per node of distance to `counts` (finite).
        per_unit: f64,
    },
}

impl Builtin {
    /// Check the parameters against `config`; the error names the field.
    pub fn validate(&self, config: &GraphBuildingConfig) -> Result<()> {
        let finite = |field: &'static str, v: f64| {
            if v.is_finite() {
                Ok(())
            } else {
                Err(GfnError::invalid(field, v, "must be finite"))
            }
        };
        match self {
            Self::EdgesAndSize {
                per_edge,
                target_nodes,
                size_penalty,
            } => {
                finite("per_edge", *per_edge)?;
                finite("size_penalty", *size_penalty)?;
                if !(1..=config.max_nodes).contains(target_nodes) {
                    return Err(GfnError::invalid(
                        "target_nodes",
                        target_nodes,
                        format!("must be in 1 ..= max_nodes = {}", config.max_nodes),
                    ));
                }
            }
            Self::Composition { counts, per_unit } => {
                finite("per_unit", *per_unit)?;
                let total: usize = counts.iter().sum();
                if counts.len() != config.node_types || !(1..=config.max_nodes).contains(&total) {
                    return Err(GfnError::invalid(
                        "counts",
                        format!("{counts:?}"),
                        format!(
                            "must have node_types = {} entries summing to 1 ..= max_nodes = {}",
                            config.node_types, config.max_nodes
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// `log R` of `graph`.
    pub fn log_reward(&self, graph: &GraphView<'_>) -> f64 {
        match self {
            Self::EdgesAndSize {
                per_edge,
                target_nodes,
                size_penalty,
            } => {
                per_edge * graph.num_edges() as f64
                    - size_penalty * (graph.num_nodes() as f64 - *target_nodes as f64).abs()
            }
            Self::Composition { counts, per_unit } => {
                let mut have = [0usize; MAX_TYPES];
                for t in graph.node_types() {
                    have[t] += 1;
                }
                let distance: usize = counts.iter().zip(have).map(|(&c, h)| c.abs_diff(h)).sum();
                0.0 - per_unit * distance as f64
            }
        }
    }
}

/// A forward action, decoded ([`GraphBuildingEnv::action`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphAction {
    /// Add node `n` of this type.
    AddNode {
        /// Node type, `< T`.
        node_type: usize,
    },
    /// Add the edge `source → target` (directed) or `{source, target}` (undirected; decoded
    /// with `source < target`) of this type.
    AddEdge {
        /// One end (the tail of a directed edge).
        source: usize,
        /// The other end (the head of a directed edge).
        target: usize,
        /// Edge type, `< K`.
        edge_type: usize,
    },
    /// Set the terminal flag.
    Exit,
}

/// A backward action, decoded ([`GraphBuildingEnv::backward_action`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphBackwardAction {
    /// Remove the edge `source → target` (or `{source, target}`, decoded with `source < target`).
    RemoveEdge {
        /// One end (the tail of a directed edge).
        source: usize,
        /// The other end (the head of a directed edge).
        target: usize,
    },
    /// Remove the last node `n − 1` (which has no edge).
    RemoveLastNode,
    /// Clear the terminal flag.
    Unexit,
}

/// Labelled graphs built node by node and edge by edge, with a user-given reward (module
/// documentation).
#[derive(Clone)]
pub struct GraphBuildingEnv {
    config: GraphBuildingConfig,
    /// The pair of each slot, `(i, j)` with `i → j` for directed graphs.
    pairs: Vec<(usize, usize)>,
    reward: RewardFn,
    reward_name: String,
}

impl fmt::Debug for GraphBuildingEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GraphBuildingEnv")
            .field("config", &self.config)
            .field("reward", &self.reward_name)
            .finish()
    }
}

impl GraphBuildingEnv {
    /// The environment of `config` with the user's `reward`, which returns `log R` of a graph
    /// (called on flagged terminal states; it should be finite, see
    /// [`GraphBuildingEnv::checked_log_reward`]).
    pub fn new(config: GraphBuildingConfig, reward: RewardFn) -> Result<Self> {
        Self::build(config, reward, "user".into())
    }

    /// The environment of `config` with a built-in reward.
    pub fn with_builtin(config: GraphBuildingConfig, builtin: Builtin) -> Result<Self> {
        config.validate()?;
        builtin.validate(&config)?;
        let name = format!("{builtin:?}");
        Self::build(config, Arc::new(move |g: &GraphView<'_>| builtin.log_reward(g)), name)
    }

    fn build(config: GraphBuildingConfig, reward: RewardFn, reward_name: String) -> Result<Self> {
        config.validate()?;
        let mut pairs = Vec::with_capacity(config.num_pairs());
        for j in 1..config.max_nodes {
            for i in 0..j {
                pairs.push((i, j));
                if config.directed {
                    pairs.push((j, i));
                }
            }
        }
        debug_assert!(
            pairs
                .iter()
                .enumerate()
                .all(|(p, &(i, j))| config.pair_slot(i, j) == Some(p))
        );
        Ok(Self {
            config,
            pairs,
            reward,
            reward_name,
        })
    }

    /// The settings.
    pub fn config(&self) -> &GraphBuildingConfig {
        &self.config
    }

    /// The pair `(i, j)` of each slot (`i → j` for directed graphs).
    pub fn pairs(&self) -> &[(usize, usize)] {
        &self.pairs
    }

    fn slots_at(&self) -> usize {
        1 + self.config.max_nodes
    }

    fn flag_at(&self) -> usize {
        1 + self.config.max_nodes + self.pairs.len()
    }

    fn nodes(&self, state: &[i32]) -> usize {
        state[0] as usize
    }

    fn exit_index(&self) -> usize {
        self.config.node_types + self.pairs.len() * self.config.edge_types
    }

    /// The graph in `state`.
    pub fn view<'a>(&'a self, state: &'a [i32]) -> GraphView<'a> {
        let n = self.nodes(state);
        let p = self.config.pairs_among(n);
        GraphView {
            types: &state[1..1 + n],
            slots: &state[self.slots_at()..self.slots_at() + p],
            pairs: &self.pairs[..p],
            directed: self.config.directed,
            terminal: state[self.flag_at()] != 0,
        }
    }

    /// `log R` of `state`, or an error naming the state where it is NaN or infinite (the reward
    /// should give an unwanted graph a very negative finite `log R` rather than `−∞`: a sampled
    /// object of `log R = −∞` makes the trajectory-balance loss infinite).
    pub fn checked_log_reward(&self, state: &[i32]) -> Result<f64> {
        let lr = self.log_reward(state);
        if lr.is_finite() {
            return Ok(lr);
        }
        let g = self.view(state);
        Err(GfnError::invalid(
            "log_reward",
            lr,
            format!(
                "must be finite; the {} reward gave it for the state {state:?} (node types {:?}, edges {:?})",
                self.reward_name,
                g.node_types().collect::<Vec<_>>(),
                g.edges().collect::<Vec<_>>()
            ),
        ))
    }

    /// The state of the graph with these node types and edges `(i, j, edge type)` (`i → j` when
    /// directed), flagged when `terminal`; an error names what is out of range, a duplicate
    /// edge, a cycle where `acyclic` forbids one, or a flagged empty graph.
    pub fn state_from_graph(
        &self,
        node_types: &[usize],
        edges: &[(usize, usize, usize)],
        terminal: bool,
    ) -> Result<Vec<i32>> {
        let c = &self.config;
        let n = node_types.len();
        if n > c.max_nodes {
            return Err(GfnError::invalid(
                "node_types",
                format!("{n} nodes"),
                format!("at most max_nodes = {}", c.max_nodes),
            ));
        }
        if let Some(t) = node_types.iter().find(|&&t| t >= c.node_types) {
            return Err(GfnError::invalid(
                "node_types",
                t,
                format!("must be below {}", c.node_types),
            ));
        }
        let mut state = vec![0; self.state_dim()];
        self.initial_state(&mut state);
        for (i, &t) in node_types.iter().enumerate() {
            self.step(&mut state, t);
            debug_assert_eq!(self.nodes(&state), i + 1);
        }
        let mut mask = vec![false; self.n_actions()];
        for &(i, j, k) in edges {
            let a = self.action_index(GraphAction::AddEdge {
                source: i,
                target: j,
                edge_type: k,
            });
            self.forward_mask(&state, &mut mask);
            match a {
                Some(a) if i < n && j < n && mask[a] => {
                    self.step(&mut state, a);
                }
                _ => {
                    return Err(GfnError::invalid(
                        "edges",
                        format!("({i}, {j}, {k})"),
                        format!(
                            "must join two different nodes below {n} with a type below {}, once{}",
                            c.edge_types,
                            if c.acyclic { ", closing no cycle" } else { "" }
                        ),
                    ));
                }
            }
        }
        if terminal {
            if n == 0 {
                return Err(GfnError::invalid("terminal", true, "the empty graph is not an object"));
            }
            let flag = self.flag_at();
            state[flag] = 1;
        }
        Ok(state)
    }

    /// The index of a forward action, `None` where it names no action of this environment.
    pub fn action_index(&self, action: GraphAction) -> Option<usize> {
        let c = &self.config;
        match action {
            GraphAction::AddNode { node_type } => (node_type < c.node_types).then_some(node_type),
            GraphAction::AddEdge {
                source,
                target,
                edge_type,
            } => {
                let p = c.pair_slot(source, target)?;
                (edge_type < c.edge_types).then(|| c.node_types + p * c.edge_types + edge_type)
            }
            GraphAction::Exit => Some(self.exit_index()),
        }
    }

    /// The forward action of an index, `None` beyond `n_actions`.
    pub fn action(&self, a: usize) -> Option<GraphAction> {
        let (t, k) = (self.config.node_types, self.config.edge_types);
        if a < t {
            Some(GraphAction::AddNode { node_type: a })
        } else if a < self.exit_index() {
            let (source, target) = self.pairs[(a - t) / k];
            Some(GraphAction::AddEdge {
                source,
                target,
                edge_type: (a - t) % k,
            })
        } else {
            (a == self.exit_index()).then_some(GraphAction::Exit)
        }
    }

    /// The index of a backward action, `None` where it names no action of this environment.
    pub fn backward_action_index(&self, action: GraphBackwardAction) -> Option<usize> {
        let p = self.pairs.len();
        match action {
            GraphBackwardAction::RemoveEdge { source, target } => self.config.pair_slot(source, target),
            GraphBackwardAction::RemoveLastNode => Some(p),
            GraphBackwardAction::Unexit => Some(p + 1),
        }
    }

    /// The backward action of an index, `None` beyond `n_backward_actions`.
    pub fn backward_action(&self, b: usize) -> Option<GraphBackwardAction> {
        let p = self.pairs.len();
        if b < p {
            let (source, target) = self.pairs[b];
            Some(GraphBackwardAction::RemoveEdge { source, target })
        } else if b == p {
            Some(GraphBackwardAction::RemoveLastNode)
        } else {
            (b == p + 1).then_some(GraphBackwardAction::Unexit)
        }
    }

    /// Out-neighbour masks of the first `n` nodes (both directions when undirected), from the
    /// first `P(n)` slots of `slots`.
    fn adjacency(&self, slots: &[i32]) -> [u32; MAX_NODES] {
        let mut adj = [0u32; MAX_NODES];
        for (&v, &(i, j)) in slots.iter().zip(&self.pairs) {
            if v > 0 {
                adj[i] |= 1 << j;
                if !self.config.directed {
                    adj[j] |= 1 << i;
                }
            }
        }
        adj
    }

    /// Whether adding the edge `(i, j)` to `adj` would close a cycle: `j` reaches `i` (directed),
    /// `i` and `j` are connected (undirected).
    fn closes_cycle(&self, adj: &[u32; MAX_NODES], i: usize, j: usize) -> bool {
        let (from, to) = if self.config.directed { (j, i) } else { (i, j) };
        let mut seen = 1u32 << from;
        let mut frontier = seen;
        while frontier != 0 {
            let u = frontier.trailing_zeros() as usize;
            frontier &= frontier - 1;
            let new = adj[u] & !seen;
            seen |= new;
            frontier |= new;
        }
        seen >> to & 1 == 1
    }

    /// Every allowed edge configuration on `n` nodes (`P(n)` slot values each, flattened), in
    /// lexicographic order with slot 0 most significant, and their number.
    fn edge_configs(&self, n: usize) -> (Vec<i32>, usize) {
        let p = self.config.pairs_among(n);
        let mut out = (Vec::new(), 0);
        let mut current = vec![0; p];
        let mut adj = [0u32; MAX_NODES];
        self.extend_configs(0, &mut current, &mut adj, &mut out);
        out
    }

    fn extend_configs(
        &self,
        slot: usize,
        current: &mut [i32],
        adj: &mut [u32; MAX_NODES],
        out: &mut (Vec<i32>, usize),
    ) {
        if slot == current.len() {
            out.0.extend_from_slice(current);
            out.1 += 1;
            return;
        }
        self.extend_configs(slot + 1, current, adj, out);
        let (i, j) = self.pairs[slot];
        if self.config.acyclic && self.closes_cycle(adj, i, j) {
            return;
        }
        let saved = *adj;
        adj[i] |= 1 << j;
        if !self.config.directed {
            adj[j] |= 1 << i;
        }
        for k in 1..=self.config.edge_types {
            current[slot] = k as i32;
            self.extend_configs(slot + 1, current, adj, out);
        }
        current[slot] = 0;
        *adj = saved;
    }

    /// Number of allowed edge configurations on `n` labelled nodes (f64, exact while below
    /// `2^53`): `(K+1)^{P(n)}`; with `acyclic`, the DAGs by Robinson's recurrence
    /// `a(m) = Σ_{k=1}^{m} (−1)^{k+1} C(m,k) (K+1)^{k(m−k)} a(m−k)`, or the forests by the tree
    /// holding node 0: `f(m) = Σ_{s=1}^{m} C(m−1, s−1) s^{s−2} K^{s−1} f(m−s)`.
    fn edge_config_count(&self, n: usize) -> f64 {
        let c = &self.config;
        let k1 = (c.edge_types + 1) as f64;
        if !c.acyclic {
            return k1.powi(c.pairs_among(n) as i32);
        }
        let binom = |m: usize, k: usize| (0..k).fold(1.0, |acc, i| acc * (m - i) as f64 / (i + 1) as f64);
        let mut a = vec![1.0f64; n + 1];
        for m in 1..=n {
            a[m] = if c.directed {
                (1..=m)
                    .map(|k| {
                        let sign = if k % 2 == 1 { 1.0 } else { -1.0 };
                        sign * binom(m, k) * k1.powi((k * (m - k)) as i32) * a[m - k]
                    })
                    .sum()
            } else {
                (1..=m)
                    .map(|s| {
                        let trees = if s == 1 { 1.0 } else { (s as f64).powi(s as i32 - 2) };
                        binom(m - 1, s - 1) * trees * (c.edge_types as f64).powi(s as i32 - 1) * a[m - s]
                    })
                    .sum()
            };
        }
        a[n]
    }

    /// Number of unflagged graphs with exactly `n` nodes: `T^n` times the edge configurations.
    fn block_size(&self, n: usize) -> f64 {
        (self.config.node_types as f64).powi(n as i32) * self.edge_config_count(n)
    }

    /// Number of unflagged graphs (every `n ≤ N`).
    fn unflagged_count(&self) -> f64 {
        (0..=self.config.max_nodes).map(|n| self.block_size(n)).sum()
    }

    fn enumerable(&self) -> bool {
        self.enumeration_size()
            .is_some_and(|s| s.is_finite() && s <= MAX_ENUMERATED_STATES as f64)
    }
}

impl Env for GraphBuildingEnv {
    fn name(&self) -> String {
        let c = &self.config;
        format!(
            "graph-building-{}n-{}t-{}e{}{}",
            c.max_nodes,
            c.node_types,
            c.edge_types,
            if c.directed { "-directed" } else { "" },
            if c.acyclic { "-acyclic" } else { "" }
        )
    }
    /// `1 + N + P + 1`: node count, node types, pair slots, terminal flag.
    fn state_dim(&self) -> usize {
        self.flag_at() + 1
    }
    /// `T` add-node actions, `P·K` add-edge actions, the exit.
    fn n_actions(&self) -> usize {
        self.exit_index() + 1
    }
    /// `P` remove-edge actions, remove the last node, un-exit.
    fn n_backward_actions(&self) -> usize {
        self.pairs.len() + 2
    }
    /// `None`: the exit is an ordinary forward action that sets the terminal flag.
    fn exit_action(&self) -> Option<usize> {
        None
    }
    /// `N(T+1) + P(K+1) + 1`.
    fn feature_dim(&self) -> usize {
        let c = &self.config;
        c.max_nodes * (c.node_types + 1) + self.pairs.len() * (c.edge_types + 1) + 1
    }
    /// Every node, the most edges ([`GraphBuildingConfig::max_edges`]), then the exit.
    fn max_actions(&self) -> usize {
        self.config.max_nodes + self.config.max_edges() + 1
    }
    fn initial_state(&self, out: &mut [i32]) {
        out.fill(0);
        out[1..self.slots_at()].fill(-1);
    }
    fn forward_mask(&self, state: &[i32], mask: &mut [bool]) {
        mask.fill(false);
        if state[self.flag_at()] != 0 {
            return;
        }
        let c = &self.config;
        let n = self.nodes(state);
        if n < c.max_nodes {
            mask[..c.node_types].fill(true);
        }
        let slots = &state[self.slots_at()..self.slots_at() + c.pairs_among(n)];
        let adj = if c.acyclic {
            self.adjacency(slots)
        } else {
            [0; MAX_NODES]
        };
        for (p, (&v, &(i, j))) in slots.iter().zip(&self.pairs).enumerate() {
            if v == 0 && !(c.acyclic && self.closes_cycle(&adj, i, j)) {
                let at = c.node_types + p * c.edge_types;
                mask[at..at + c.edge_types].fill(true);
            }
        }
        mask[self.exit_index()] = n >= 1;
    }
    fn backward_mask(&self, state: &[i32], mask: &mut [bool]) {
        mask.fill(false);
        let p_all = self.pairs.len();
        if state[self.flag_at()] != 0 {
            mask[p_all + 1] = true;
            return;
        }
        let n = self.nodes(state);
        let (lo, hi) = (self.config.pairs_among(n.saturating_sub(1)), self.config.pairs_among(n));
        let slots = &state[self.slots_at()..self.slots_at() + hi];
        for (m, &v) in mask.iter_mut().zip(slots) {
            *m = v != 0;
        }
        // The slots in P(n−1) .. P(n) are exactly the pairs of node n − 1.
        mask[p_all] = n >= 1 && slots[lo..].iter().all(|&v| v == 0);
    }
    fn step(&self, state: &mut [i32], action: usize) -> usize {
        let (t, k) = (self.config.node_types, self.config.edge_types);
        if action < t {
            let n = self.nodes(state);
            state[1 + n] = action as i32;
            state[0] = n as i32 + 1;
            self.pairs.len()
        } else if action < self.exit_index() {
            let p = (action - t) / k;
            state[self.slots_at() + p] = ((action - t) % k + 1) as i32;
            p
        } else {
            let flag = self.flag_at();
            state[flag] = 1;
            self.pairs.len() + 1
        }
    }
    fn backward_step(&self, state: &mut [i32], action: usize) -> usize {
        let (t, k) = (self.config.node_types, self.config.edge_types);
        let p_all = self.pairs.len();
        if action < p_all {
            let at = self.slots_at() + action;
            let edge_type = (state[at] - 1) as usize;
            state[at] = 0;
            t + action * k + edge_type
        } else if action == p_all {
            let n = self.nodes(state) - 1;
            let node_type = state[1 + n] as usize;
            state[1 + n] = -1;
            state[0] = n as i32;
            node_type
        } else {
            let flag = self.flag_at();
            state[flag] = 0;
            self.exit_index()
        }
    }
    /// The user's or the built-in `log R` of the graph (the flag is not read).
    fn log_reward(&self, state: &[i32]) -> f64 {
        (self.reward)(&self.view(state))
    }
    fn featurize(&self, state: &[i32], out: &mut [f32]) {
        let c = &self.config;
        out.fill(0.0);
        let (t1, k1) = (c.node_types + 1, c.edge_types + 1);
        for (i, &ty) in state[1..self.slots_at()].iter().enumerate() {
            out[i * t1 + (ty + 1) as usize] = 1.0;
        }
        let base = c.max_nodes * t1;
        for (p, &v) in state[self.slots_at()..self.flag_at()].iter().enumerate() {
            out[base + p * k1 + v as usize] = 1.0;
        }
        out[base + self.pairs.len() * k1] = f32::from(u8::from(state[self.flag_at()] != 0));
    }
    fn is_terminal(&self, state: &[i32]) -> bool {
        state[self.flag_at()] != 0
    }
    fn is_initial(&self, state: &[i32]) -> bool {
        state[0] == 0 && state[self.flag_at()] == 0
    }
    /// Hamming distance over the node-type slots and the pair slots (a node of another type, an
    /// extra node, a missing, extra or retyped edge count 1 each; a reversed directed edge 2).
    fn object_distance(&self, a: &[i32], b: &[i32]) -> f64 {
        let range = 1..self.flag_at();
        a[range.clone()].iter().zip(&b[range]).filter(|(x, y)| x != y).count() as f64
    }
    /// Node 0 of every observed graph is a virtual node joined both ways to every real node (real
    /// node `i` is node `i + 1`): the empty graph has a node to compute with. Node features:
    /// one-hot node type, the terminal flag, the one-hot node index (states are labelled graphs,
    /// and their flows are not invariant under relabelling — only the last node may be removed —
    /// so a graph network must see the labels) and the virtual flag (`T + 2 + max_nodes`); edge
    /// features: one-hot edge type (`K`; zeros on the virtual node's edges).
    fn graph_space(&self) -> Option<GraphSpace> {
        Some(GraphSpace {
            node_features: self.config.node_types + 2 + self.config.max_nodes,
            edge_features: self.config.edge_types,
            actions: gfn_core::obs::GraphActions::Build {
                node_types: self.config.node_types,
                edge_types: self.config.edge_types,
                pairs: self.pairs.iter().map(|&(i, j)| (i as u32, j as u32)).collect(),
                directed: self.config.directed,
                virtual_node: true,
            },
        })
    }
    fn observe_graphs(&self, states: &[i32], device: &Device) -> Result<GraphBatch> {
        let (t, k, m) = (self.config.node_types, self.config.edge_types, self.config.max_nodes);
        let graphs: Vec<HostGraph> = states
            .chunks_exact(self.state_dim())
            .map(|s| {
                let g = self.view(s);
                let flag = f32::from(u8::from(g.is_terminal()));
                let width = t + 2 + m;
                let mut node_features = vec![0.0; (g.num_nodes() + 1) * width];
                node_features[t] = flag;
                node_features[width - 1] = 1.0;
                for (i, ty) in g.node_types().enumerate() {
                    let row = (i + 1) * width;
                    node_features[row + ty] = 1.0;
                    node_features[row + t] = flag;
                    node_features[row + t + 1 + i] = 1.0;
                }
                let mut edges = Vec::new();
                let mut edge_features = Vec::new();
                let one_hot = |e: usize| (0..k).map(move |x| f32::from(u8::from(x == e)));
                for i in 1..=g.num_nodes() as u32 {
                    edges.extend([(0, i), (i, 0)]);
                    edge_features.extend(std::iter::repeat_n(0.0, 2 * k));
                }
                for (i, j, e) in g.edges() {
                    let (i, j) = (i as u32 + 1, j as u32 + 1);
                    edges.push((i, j));
                    edge_features.extend(one_hot(e));
                    if !g.is_directed() {
                        edges.push((j, i));
                        edge_features.extend(one_hot(e));
                    }
                }
                HostGraph {
                    node_features,
                    edges,
                    edge_features,
                }
            })
            .collect();
        GraphBatch::from_graphs(&graphs, t + 2 + m, k, device)
    }
    /// `2U − 1` for `U` unflagged graphs (every graph but the empty one has a flagged twin);
    /// infinite where it overflows f64.
    fn enumeration_size(&self) -> Option<f64> {
        let u = self.unflagged_count();
        Some(if u.is_finite() { 2.0 * u - 1.0 } else { f64::INFINITY })
    }
    /// The unflagged graphs by `n`, node types, edge slots, then their flagged twins (module
    /// documentation); `None` beyond [`MAX_ENUMERATED_STATES`] states.
    fn enumerate_states(&self) -> Option<Vec<i32>> {
        if !self.enumerable() {
            return None;
        }
        let (c, sd) = (&self.config, self.state_dim());
        let mut out = Vec::with_capacity(self.enumeration_size()? as usize * sd);
        let mut row = vec![0; sd];
        for n in 0..=c.max_nodes {
            let p = c.pairs_among(n);
            let (configs, count) = self.edge_configs(n);
            let mut types = vec![0usize; n];
            loop {
                self.initial_state(&mut row);
                row[0] = n as i32;
                for (r, &t) in row[1..].iter_mut().zip(&types) {
                    *r = t as i32;
                }
                for r in 0..count {
                    row[self.slots_at()..self.slots_at() + p].copy_from_slice(&configs[r * p..(r + 1) * p]);
                    out.extend_from_slice(&row);
                }
                // The next type labelling, node 0 most significant.
                match types.iter().rposition(|&t| t + 1 < c.node_types) {
                    Some(i) => {
                        types[i] += 1;
                        types[i + 1..].fill(0);
                    }
                    None => break,
                }
            }
        }
        let unflagged = out.len() / sd;
        let flag = self.flag_at();
        for r in 1..unflagged {
            row.copy_from_slice(&out[r * sd..(r + 1) * sd]);
            row[flag] = 1;
            out.extend_from_slice(&row);
        }
        Some(out)
    }
    /// Computed directly without `acyclic` (block offset, type rank, slot rank); `None` with it.
    fn state_index(&self, state: &[i32]) -> Option<usize> {
        let c = &self.config;
        if c.acyclic || state.len() != self.state_dim() || !self.enumerable() {
            return None;
        }
        let n = usize::try_from(state[0]).ok().filter(|&n| n <= c.max_nodes)?;
        let p = c.pairs_among(n);
        let offset: f64 = (0..n).map(|m| self.block_size(m)).sum();
        let mut rank = 0usize;
        for &t in &state[1..1 + n] {
            rank = rank * c.node_types + usize::try_from(t).ok().filter(|&t| t < c.node_types)?;
        }
        for &v in &state[self.slots_at()..self.slots_at() + p] {
            rank = rank * (c.edge_types + 1) + usize::try_from(v).ok().filter(|&v| v <= c.edge_types)?;
        }
        let index = offset as usize + rank;
        match state[self.flag_at()] {
            0 => Some(index),
            1 if n >= 1 => Some(self.unflagged_count() as usize + index - 1),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use rand::Rng;

    use super::*;
    use gfn_core::dag::check_env;
    use gfn_core::exact::ExactEvaluator;

    fn config(
        max_nodes: usize,
        node_types: usize,
        edge_types: usize,
        directed: bool,
        acyclic: bool,
    ) -> GraphBuildingConfig {
        GraphBuildingConfig {
            max_nodes,
            node_types,
            edge_types,
            directed,
            acyclic,
        }
    }

    fn env(c: GraphBuildingConfig) -> GraphBuildingEnv {
        GraphBuildingEnv::with_builtin(
            c,
            Builtin::EdgesAndSize {
                per_edge: 0.5,
                target_nodes: c.max_nodes.min(3),
                size_penalty: 1.0,
            },
        )
        .unwrap()
    }

    /// Unflagged states per number of nodes, from the enumeration.
    fn blocks(e: &GraphBuildingEnv) -> Vec<usize> {
        let states = e.enumerate_states().unwrap();
        let mut count = vec![0; e.config().max_nodes + 1];
        for s in states.chunks_exact(e.state_dim()).filter(|s| !e.is_terminal(s)) {
            count[s[0] as usize] += 1;
        }
        count
    }

    #[test]
    fn check_env_passes_on_several_configurations() {
        for c in [
            config(1, 2, 1, false, false),
            config(3, 1, 1, false, false),
            config(3, 2, 2, false, false),
            config(4, 2, 1, false, false),
            config(2, 1, 1, true, false),
            config(3, 2, 1, true, false),
            config(4, 1, 1, true, false),
            config(3, 1, 2, true, true),
            config(4, 1, 1, true, true),
            config(4, 2, 2, false, true),
            config(4, 2, 1, true, true),
        ] {
            let e = env(c);
            check_env(&e).unwrap_or_else(|err| panic!("{c:?}: {err}"));
            let ev = ExactEvaluator::new(&e).unwrap();
            let size = e.enumeration_size().unwrap();
            assert_eq!(ev.num_states() as f64, size, "{c:?}");
            // Every non-empty graph is an object, once.
            assert_eq!(2 * ev.num_terminal() + 1, ev.num_states(), "{c:?}");
            let states = ev.states();
            for (i, s) in states.chunks_exact(e.state_dim()).enumerate() {
                if !c.acyclic {
                    assert_eq!(e.state_index(s), Some(i), "{c:?} {s:?}");
                }
                // One-hot blocks: one 1 per node slot and per pair slot, plus the flag.
                let mut f = vec![0.0; e.feature_dim()];
                e.featurize(s, &mut f);
                let ones = (c.max_nodes + e.pairs().len()) as f32 + f32::from(u8::from(e.is_terminal(s)));
                assert_eq!(f.iter().sum::<f32>(), ones, "{s:?}");
            }
        }
    }

    #[test]
    fn enumeration_counts_match_the_closed_forms() {
        // Undirected, no acyclicity: T^n 2^{n(n−1)/2}.
        let e = env(config(4, 2, 1, false, false));
        assert_eq!(blocks(&e), [1, 2, 8, 64, 1024]);
        assert_eq!(e.enumerate_states().unwrap().len() / e.state_dim(), 1099 + 1098);
        // Directed, two edge types: T^n 3^{n(n−1)}.
        let e = env(config(3, 2, 2, true, false));
        assert_eq!(blocks(&e), [1, 2, 4 * 9, 8 * 729]);
        assert_eq!(e.enumeration_size(), Some(2.0 * 5871.0 - 1.0));
        // Labelled DAGs (OEIS A003024: 1, 1, 3, 25, 543) times the type labellings.
        let e = env(config(3, 2, 1, true, true));
        assert_eq!(blocks(&e), [1, 2, 4 * 3, 8 * 25]);
        let e = env(config(4, 1, 1, true, true));
        assert_eq!(blocks(&e), [1, 1, 3, 25, 543]);
        assert_eq!(e.enumeration_size(), Some(2.0 * 573.0 - 1.0));
        // Labelled forests (A001858: 1, 1, 2, 7, 38); with two edge types, 19 on 3 nodes.
        let e = env(config(4, 1, 1, false, true));
        assert_eq!(blocks(&e), [1, 1, 2, 7, 38]);
        let e = env(config(3, 1, 2, false, true));
        assert_eq!(blocks(&e), [1, 1, 3, 19]);
        // DAGs with two edge types on 3 nodes: 1 + 6·2 (one edge) + 12·4 (two) + 6·8 (three)
        // = 109, and the recurrence agrees with the enumeration.
        let e = env(config(3, 1, 2, true, true));
        assert_eq!(blocks(&e), [1, 1, 5, 109]);
        // Beyond the limit: counted, not listed.
        let e = env(config(4, 2, 2, true, false));
        let size = e.enumeration_size().unwrap();
        assert_eq!(
            size,
            2.0 * (1.0 + 2.0 + 4.0 * 9.0 + 8.0 * 729.0 + 16.0 * 531_441.0) - 1.0
        );
        assert!(size > MAX_ENUMERATED_STATES as f64);
        assert!(e.enumerate_states().is_none() && e.state_index(&[0; 18]).is_none());
        let big = env(config(16, 64, 64, true, false));
        assert_eq!(big.enumeration_size(), Some(f64::INFINITY));
        assert!(big.enumerate_states().is_none());
    }

    #[test]
    fn the_exact_target_is_proportional_to_the_reward() {
        let c = config(4, 2, 1, false, false);
        let e = env(c);
        let ev = ExactEvaluator::new(&e).unwrap();
        assert_eq!((ev.num_states(), ev.num_terminal()), (2197, 1098));
        // Z = Σ_{n ≥ 1} 2^n (1 + e^{1/2})^{n(n−1)/2} e^{−|n−3|}.
        let z: f64 = (1..=4)
            .map(|n: i32| 2f64.powi(n) * (1.0 + 0.5f64.exp()).powi(n * (n - 1) / 2) * (-f64::from((n - 3).abs())).exp())
            .sum();
        assert!((ev.log_z() - z.ln()).abs() < 1e-9, "{} vs {}", ev.log_z(), z.ln());
        // A triangle of type-0 nodes (log R = 1.5) against one type-1 node (log R = −2).
        let triangle = e
            .state_from_graph(&[0, 0, 0], &[(0, 1, 0), (1, 2, 0), (0, 2, 0)], true)
            .unwrap();
        let single = e.state_from_graph(&[1], &[], true).unwrap();
        let p = |s: &[i32]| ev.target()[ev.terminal_index(s).unwrap()];
        assert!((p(&triangle) / p(&single) - 3.5f64.exp()).abs() < 1e-9);
        assert!((p(&single) - (-2.0 - z.ln()).exp()).abs() < 1e-12);
        // Unflagged graphs are not objects.
        let open = e.state_from_graph(&[1], &[], false).unwrap();
        assert!(ev.terminal_index(&open).is_none());
        // The composition reward: two nodes of type 1 and one of type 0 are the mode.
        let comp = GraphBuildingEnv::with_builtin(
            c,
            Builtin::Composition {
                counts: vec![1, 2],
                per_unit: 1.0,
            },
        )
        .unwrap();
        let best = comp.state_from_graph(&[1, 0, 1], &[(0, 2, 0)], true).unwrap();
        let off = comp.state_from_graph(&[0, 0, 1, 0], &[], true).unwrap();
        assert_eq!((comp.log_reward(&best), comp.log_reward(&off)), (0.0, -3.0));
    }

    /// Random forward walks to an object and back, checking each move against its inverse and the
    /// graphs against an independent acyclicity check.
    #[test]
    fn random_walks_are_inverted_step_by_step() {
        let mut rng = gfn_core::rng_from_seed(7);
        for c in [
            config(6, 3, 2, true, true),
            config(6, 2, 2, false, true),
            config(5, 2, 1, true, false),
            config(7, 1, 3, false, false),
        ] {
            let e = env(c);
            let (sd, na, nb) = (e.state_dim(), e.n_actions(), e.n_backward_actions());
            let (mut fm, mut bm) = (vec![false; na], vec![false; nb]);
            for _ in 0..100 {
                let mut s = vec![0; sd];
                e.initial_state(&mut s);
                let mut steps = 0;
                while !e.is_terminal(&s) {
                    e.forward_mask(&s, &mut fm);
                    let allowed: Vec<usize> = (0..na).filter(|&a| fm[a]).collect();
                    assert!(!allowed.is_empty(), "{c:?}: dead end at {s:?}");
                    let a = allowed[rng.random_range(0..allowed.len())];
                    let parent = s.clone();
                    let b = e.step(&mut s, a);
                    e.backward_mask(&s, &mut bm);
                    assert!(bm[b], "{c:?}: step {a} from {parent:?} undone by masked {b}");
                    let mut back = s.clone();
                    assert_eq!(e.backward_step(&mut back, b), a);
                    assert_eq!(back, parent);
                    assert_valid(&e, &s);
                    steps += 1;
                }
                assert!(steps <= e.max_actions(), "{c:?}: {steps} steps");
                // And back to s_0 by random backward moves.
                while !e.is_initial(&s) {
                    e.backward_mask(&s, &mut bm);
                    let allowed: Vec<usize> = (0..nb).filter(|&b| bm[b]).collect();
                    assert!(!allowed.is_empty(), "{c:?}: no parent of {s:?}");
                    let b = allowed[rng.random_range(0..allowed.len())];
                    let child = s.clone();
                    let a = e.backward_step(&mut s, b);
                    e.forward_mask(&s, &mut fm);
                    assert!(fm[a], "{c:?}: backward {b} from {child:?} redone by masked {a}");
                    let mut again = s.clone();
                    assert_eq!(e.step(&mut again, a), b);
                    assert_eq!(again, child);
                    assert_valid(&e, &s);
                }
            }
        }
    }

    /// Layout and acyclicity, checked without the environment's own helpers (Kahn's algorithm,
    /// union–find).
    fn assert_valid(e: &GraphBuildingEnv, s: &[i32]) {
        let c = e.config();
        let g = e.view(s);
        let n = g.num_nodes();
        assert!(s[1 + n..1 + c.max_nodes].iter().all(|&t| t == -1), "{s:?}");
        assert!(
            s[1 + c.max_nodes + c.pairs_among(n)..1 + c.max_nodes + c.num_pairs()]
                .iter()
                .all(|&v| v == 0)
        );
        let edges: Vec<_> = g.edges().collect();
        assert!(
            edges
                .iter()
                .all(|&(i, j, k)| i != j && i < n && j < n && k < c.edge_types)
        );
        if !c.acyclic {
            return;
        }
        if c.directed {
            let mut indegree = vec![0; n];
            for &(_, j, _) in &edges {
                indegree[j] += 1;
            }
            let mut ready: Vec<usize> = (0..n).filter(|&v| indegree[v] == 0).collect();
            let mut seen = 0;
            while let Some(v) = ready.pop() {
                seen += 1;
                for &(i, j, _) in &edges {
                    if i == v {
                        indegree[j] -= 1;
                        if indegree[j] == 0 {
                            ready.push(j);
                        }
                    }
                }
            }
            assert_eq!(seen, n, "directed cycle in {edges:?}");
        } else {
            let mut root: Vec<usize> = (0..n).collect();
            fn find(r: &mut [usize], v: usize) -> usize {
                if r[v] == v { v } else { find(r, r[v]) }
            }
            for &(i, j, _) in &edges {
                let (a, b) = (find(&mut root, i), find(&mut root, j));
                assert_ne!(a, b, "cycle in {edges:?}");
                root[a] = b;
            }
        }
    }

    #[test]
    fn masks_forbid_duplicates_self_loops_cycles_and_removing_a_joined_node() {
        let fwd = |e: &GraphBuildingEnv, s: &[i32], a: GraphAction| {
            let mut m = vec![false; e.n_actions()];
            e.forward_mask(s, &mut m);
            m[e.action_index(a).unwrap()]
        };
        let bwd = |e: &GraphBuildingEnv, s: &[i32], b: GraphBackwardAction| {
            let mut m = vec![false; e.n_backward_actions()];
            e.backward_mask(s, &mut m);
            m[e.backward_action_index(b).unwrap()]
        };
        let edge = |source, target| GraphAction::AddEdge {
            source,
            target,
            edge_type: 0,
        };
        let remove_last = GraphBackwardAction::RemoveLastNode;
        // No self-loop exists as an action, and actions round-trip through their index.
        for c in [config(4, 2, 2, false, false), config(4, 2, 2, true, true)] {
            let e = env(c);
            assert_eq!(e.action_index(edge(2, 2)), None);
            for a in 0..e.n_actions() {
                let act = e.action(a).unwrap();
                assert_eq!(e.action_index(act), Some(a));
                if let GraphAction::AddEdge { source, target, .. } = act {
                    assert_ne!(source, target);
                }
            }
            assert_eq!(e.action(e.n_actions()), None);
            for b in 0..e.n_backward_actions() {
                assert_eq!(e.backward_action_index(e.backward_action(b).unwrap()), Some(b));
            }
        }

        // Undirected forest: the path 0 − 1 − 2.
        let e = env(config(4, 1, 1, false, true));
        let path = e.state_from_graph(&[0, 0, 0], &[(0, 1, 0), (1, 2, 0)], false).unwrap();
        assert!(!fwd(&e, &path, edge(0, 2)), "closes a cycle");
        assert!(!fwd(&e, &path, edge(1, 0)), "duplicate edge");
        assert!(!fwd(&e, &path, edge(0, 3)), "node 3 does not exist");
        assert!(fwd(&e, &path, GraphAction::AddNode { node_type: 0 }) && fwd(&e, &path, GraphAction::Exit));
        assert!(!bwd(&e, &path, remove_last), "node 2 has an edge");
        assert!(bwd(&e, &path, GraphBackwardAction::RemoveEdge { source: 2, target: 1 }));
        let mut four = path.clone();
        e.step(&mut four, 0);
        assert!(bwd(&e, &four, remove_last) && fwd(&e, &four, edge(3, 0)));
        assert!(!fwd(&e, &four, GraphAction::AddNode { node_type: 0 }), "full");
        // Without acyclicity the triangle may close.
        let cyclic = env(config(4, 1, 1, false, false));
        assert!(fwd(&cyclic, &path, edge(0, 2)));

        // Directed: 0 → 1 → 2.
        let e = env(config(4, 1, 2, true, true));
        let chain = e.state_from_graph(&[0, 0, 0], &[(0, 1, 1), (1, 2, 0)], false).unwrap();
        assert!(!fwd(&e, &chain, edge(2, 0)) && !fwd(&e, &chain, edge(1, 0)) && !fwd(&e, &chain, edge(2, 1)));
        assert!(fwd(&e, &chain, edge(0, 2)));
        assert!(!fwd(&e, &chain, edge(0, 1)), "duplicate edge of another type");
        let err = e
            .state_from_graph(&[0, 0, 0], &[(0, 1, 0), (1, 2, 0), (2, 0, 0)], false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("edges") && err.contains("(2, 0, 0)") && err.contains("cycle"),
            "{err}"
        );
        let cyclic = env(config(4, 1, 2, true, false));
        let chain = cyclic
            .state_from_graph(&[0, 0, 0], &[(0, 1, 1), (1, 2, 0)], false)
            .unwrap();
        assert!(fwd(&cyclic, &chain, edge(2, 0)) && fwd(&cyclic, &chain, edge(1, 0)));
        assert!(!fwd(&cyclic, &chain, edge(0, 1)));
        // Removing the edge restores its type on the way back.
        let mut s = chain.clone();
        let b = cyclic
            .backward_action_index(GraphBackwardAction::RemoveEdge { source: 0, target: 1 })
            .unwrap();
        let a = cyclic.backward_step(&mut s, b);
        assert_eq!(
            cyclic.action(a),
            Some(GraphAction::AddEdge {
                source: 0,
                target: 1,
                edge_type: 1
            })
        );

        // Flagged states: nothing forward, only the un-exit backward; the empty graph cannot exit.
        let done = cyclic.state_from_graph(&[0], &[], true).unwrap();
        let mut m = vec![false; cyclic.n_actions()];
        cyclic.forward_mask(&done, &mut m);
        assert!(m.iter().all(|&x| !x));
        let mut m = vec![false; cyclic.n_backward_actions()];
        cyclic.backward_mask(&done, &mut m);
        assert_eq!(m.iter().filter(|&&x| x).count(), 1);
        assert!(bwd(&cyclic, &done, GraphBackwardAction::Unexit));
        let mut s0 = vec![0; cyclic.state_dim()];
        cyclic.initial_state(&mut s0);
        assert!(!fwd(&cyclic, &s0, GraphAction::Exit) && cyclic.is_initial(&s0));
        assert!(
            cyclic
                .state_from_graph(&[], &[], true)
                .unwrap_err()
                .to_string()
                .contains("terminal")
        );
    }

    #[test]
    fn bad_configurations_name_the_field() {
        let cases = [
            (config(0, 1, 1, false, false), "max_nodes"),
            (config(17, 1, 1, false, false), "max_nodes"),
            (config(3, 0, 1, false, false), "node_types"),
            (config(3, 65, 1, false, false), "node_types"),
            (config(3, 1, 0, true, false), "edge_types"),
        ];
        for (c, field) in cases {
            let err = GraphBuildingEnv::new(c, Arc::new(|_: &GraphView<'_>| 0.0))
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("invalid {field} = ")), "{err}");
        }
        let c = config(4, 2, 1, false, false);
        let bad = |b: Builtin, field: &str| {
            let err = GraphBuildingEnv::with_builtin(c, b).unwrap_err().to_string();
            assert!(err.contains(&format!("invalid {field} = ")), "{err}");
        };
        bad(
            Builtin::EdgesAndSize {
                per_edge: 1.0,
                target_nodes: 5,
                size_penalty: 1.0,
            },
            "target_nodes",
        );
        bad(
            Builtin::EdgesAndSize {
                per_edge: f64::NAN,
                target_nodes: 2,
                size_penalty: 1.0,
            },
            "per_edge",
        );
        bad(
            Builtin::Composition {
                counts: vec![1, 1, 1],
                per_unit: 1.0,
            },
            "counts",
        );
        bad(
            Builtin::Composition {
                counts: vec![3, 2],
                per_unit: 1.0,
            },
            "counts",
        );
        let e = env(c);
        let err = e.state_from_graph(&[0, 2], &[], false).unwrap_err().to_string();
        assert!(err.contains("invalid node_types = 2"), "{err}");
        let err = e
            .state_from_graph(&[0, 1], &[(0, 1, 0), (1, 0, 0)], false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid edges = (1, 0, 0)"), "{err}");
    }

    #[test]
    fn graph_observations_have_the_graphs_nodes_and_edges() {
        let dev = Device::Cpu;
        let c = config(4, 2, 2, false, false);
        let e = env(c);
        let space = e.graph_space().unwrap();
        assert_eq!((space.node_features, space.edge_features), (2 + 2 + 4, 2));
        let gfn_core::obs::GraphActions::Build {
            node_types,
            edge_types,
            pairs,
            directed,
            virtual_node,
        } = space.actions
        else {
            panic!("graph building acts on pairs: {:?}", space.actions);
        };
        assert_eq!(
            (node_types, edge_types, pairs.len(), directed, virtual_node),
            (2, 2, 6, false, true)
        );
        assert_eq!(pairs[..3], [(0, 1), (0, 2), (1, 2)]);
        let s = e.state_from_graph(&[0, 1, 1], &[(0, 1, 1), (1, 2, 0)], true).unwrap();
        let mut s0 = vec![0; e.state_dim()];
        e.initial_state(&mut s0);
        let both: Vec<i32> = s0.iter().chain(&s).copied().collect();
        let g = e.observe_graphs(&both, &dev).unwrap();
        g.check().unwrap();
        // Node 0 of each graph is the virtual node: s_0 has only it; s has it and 3 nodes.
        assert_eq!((g.num_graphs, g.sizes().unwrap()), (2, (5, 10)));
        assert_eq!(g.node_graph.to_vec1::<u32>().unwrap(), [0, 1, 1, 1, 1]);
        assert_eq!(
            g.node_features.to_vec2::<f32>().unwrap(),
            [
                [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
                [0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0],
                [1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0],
                [0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0],
                [0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0]
            ]
        );
        assert_eq!(
            g.edge_index.to_vec2::<u32>().unwrap(),
            [[1, 2, 1, 3, 1, 4, 2, 3, 3, 4], [2, 1, 3, 1, 4, 1, 3, 2, 4, 3]]
        );
        let ef = g.edge_features.unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(ef[..6], vec![vec![0.0, 0.0]; 6]);
        assert_eq!(ef[6..], [[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]);
        // The empty graph alone (its virtual node), and a directed graph (one edge per edge).
        let empty = e.observe_graphs(&s0, &dev).unwrap();
        assert_eq!((empty.num_graphs, empty.sizes().unwrap()), (1, (1, 0)));
        let d = env(config(4, 2, 2, true, false));
        let s = d.state_from_graph(&[0, 1, 1], &[(1, 0, 1), (1, 2, 0)], false).unwrap();
        let g = d.observe_graphs(&s, &dev).unwrap();
        assert_eq!(g.sizes().unwrap(), (4, 8));
        let edges = g.edge_index.to_vec2::<u32>().unwrap();
        assert_eq!(
            (edges[0][6..].to_vec(), edges[1][6..].to_vec()),
            (vec![2, 2], vec![1, 3])
        );
        assert_eq!(
            g.node_features.to_vec2::<f32>().unwrap()[1],
            [1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0],
            "unflagged"
        );
        // Distances: a retyped node and a removed edge.
        let t = d.state_from_graph(&[0, 0, 1], &[(1, 0, 1)], false).unwrap();
        assert_eq!(d.object_distance(&s, &t), 2.0);
    }

    #[test]
    fn the_user_reward_is_called_and_checked() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let reward: RewardFn = Arc::new(move |g: &GraphView<'_>| {
            counter.fetch_add(1, Ordering::Relaxed);
            let typed: usize = g.edges().map(|(_, _, k)| k).sum();
            let ones = g.node_types().filter(|&t| t == 1).count();
            if g.num_nodes() == 4 && g.num_edges() == 0 {
                return f64::NAN;
            }
            0.25 * typed as f64 + ones as f64 - if g.edge(1, 0) == Some(1) { 10.0 } else { 0.0 }
        });
        let e = GraphBuildingEnv::new(config(4, 2, 2, false, false), reward).unwrap();
        let s = e.state_from_graph(&[1, 0, 1], &[(0, 1, 1), (0, 2, 1)], true).unwrap();
        assert_eq!(e.log_reward(&s), 0.5 + 2.0 - 10.0);
        assert_eq!(e.checked_log_reward(&s).unwrap(), -7.5);
        assert_eq!(calls.load(Ordering::Relaxed), 2);
        let nan = e.state_from_graph(&[0, 0, 0, 0], &[], true).unwrap();
        let err = e.checked_log_reward(&nan).unwrap_err().to_string();
        assert!(
            err.contains("log_reward = NaN") && err.contains(&format!("{nan:?}")),
            "{err}"
        );
        // Exact evaluation reads every object through the closure and refuses the NaN.
        let before = calls.load(Ordering::Relaxed);
        assert!(ExactEvaluator::new(&e).is_err());
        assert!(calls.load(Ordering::Relaxed) > before);
        assert!(format!("{e:?}").contains("user"));
    }
}
