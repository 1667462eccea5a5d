//! Graphs for the maximum independent set (MIS) task: a plain undirected [`Graph`], the RB-model
//! random graphs of the GFlowNet MIS benchmarks ([`rb_graph`], [`rb_graphs`]), a greedy baseline
//! ([`greedy_min_degree`]) and an exact branch-and-bound solver ([`maximum_independent_set`]).
//!
//! # The RB model
//!
//! RB graphs come from the random CSP "model RB" of Xu & Li (2000, "Exact phase transitions in
//! random constraint satisfaction problems"; the BHOSLIB benchmarks). The MIS experiments of
//! Zhang et al. (2023), "Let the flows tell: solving graph combinatorial optimization problems
//! with GFlowNets", and of LED-GFN (Jang et al. 2024), which reuses that code and data, draw them
//! with `data/rbgraph_generator.py` and `data/xu_util.py` of `zdhNarsil/GFlowNet-CombOpt` (code
//! taken from "Erdős goes neural"). [`rb_instance`] follows that code:
//!
//! 1. draw `n_a ~ U{cliques}`, `k ~ U{clique_size}` and `p ~ U(p.0, p.1)`, in that order;
//! 2. `a = ln k / ln n_a`, `r = −a / ln(1 − p)`, `s = int(p · n_a^{2a})` (that is `int(p k²)`)
//!    and `iterations = int(r · n_a · ln n_a − 1)`, `int` truncating towards zero (a negative
//!    count means no iteration);
//! 3. start from `n_a` disjoint cliques of `k` nodes: clique `c` holds nodes `c·k … c·k + k − 1`;
//! 4. each iteration draws an ordered pair `(i, j)` of distinct cliques uniformly and adds
//!    `min(s, m)` cross edges drawn uniformly without replacement among the `m` node pairs
//!    `(u ∈ i, v ∈ j)` not drawn before *in that orientation* (see below);
//! 5. isolated nodes are removed and the others relabelled densely, in increasing order;
//! 6. the whole draw is rejected and repeated until the node count is in the accepted range
//!    (`200 ..= 300` for the "small" graphs of the papers).
//!
//! `r` is the critical constraint density of model RB, which puts the graphs near the threshold
//! where independent sets with one node in every clique (size `n_a`) stop existing: such sets are
//! rare or absent, and the instances are hard for heuristics. The cliques cover every node, so
//! `|MIS| ≤ n_a` ([`RbInstance::cliques`]); on the small setting the optimum is mostly a few
//! below `n_a` (about 20 on average).
//!
//! Details and deviations from the Python code:
//!
//! * Orientation: the Python code stores the drawn pairs as ordered tuples `(u, v)` with `u` from
//!   the first drawn clique, so when the same two cliques are drawn later in the other order the
//!   node pairs already joined are not excluded and may be drawn again (adding nothing). This is
//!   reproduced, so edge counts follow the same distribution.
//! * `p = 1` would make `ln(1 − p)` infinite; `p` is clamped to at most `1 − 1e-9`. NumPy's
//!   `uniform(0.3, 1.0)` never returns 1, so this only matters for `p = (1.0, 1.0)`.
//! * When `k ≥ 2` no node can be isolated (each lies in a clique of `k` nodes), so the node count
//!   is `n_a · k` and a draw outside the accepted range is rejected before its edges are drawn.
//!   This gives the same distribution of graphs with fewer random draws.
//! * The random streams differ (NumPy / Python `random` versus [`GfnRng`]), so the graphs are
//!   distributed alike but not identical to the published data sets. Rejection is capped at
//!   [`MAX_RB_ATTEMPTS`] draws per graph.
//!
//! # Exact solver
//!
//! [`maximum_independent_set`] is the maximum-clique algorithm of Tomita's MCQ / San Segundo's
//! BBMC carried over to independent sets: the candidate nodes are kept as a bitset, greedily
//! partitioned into cliques of the graph (a colouring of the complement), and `|S| + number of
//! cliques` bounds every independent set that extends the current one `S`. Nodes are branched on
//! from the last clique backwards (include the node; the later branches exclude it) and a branch is
//! cut as soon as its bound cannot beat the incumbent, which starts from [`greedy_min_degree`].
//! Each search node first takes every candidate of residual degree 0 or 1, which is always safe.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use gfn_core::{GfnError, GfnRng, Result};
use rand::{Rng, SeedableRng};

// ---------------------------------------------------------------------------------------------
// Graph
// ---------------------------------------------------------------------------------------------

/// A simple undirected graph on the nodes `0 .. n`: no self-loops, no parallel edges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Graph {
    n: usize,
    /// Per node, its neighbours in increasing order without repeats.
    neighbours: Vec<Vec<u32>>,
}

impl Graph {
    /// The graph on `n` nodes (at most `u32::MAX`) with the undirected `edges`; repeated edges, in
    /// either orientation, count once. Errors on a self-loop or an endpoint `≥ n`, naming the edge.
    pub fn new(n: usize, edges: &[(u32, u32)]) -> Result<Graph> {
        if n > u32::MAX as usize {
            return Err(GfnError::invalid("nodes", n, format!("must be at most {}", u32::MAX)));
        }
        let mut neighbours = vec![Vec::new(); n];
        for &(a, b) in edges {
            if a == b {
                return Err(GfnError::invalid(
                    "edge",
                    format!("({a}, {b})"),
                    "self-loops are not allowed",
                ));
            }
            if a as usize >= n || b as usize >= n {
                let allowed = format!("both endpoints must be below the node count {n}");
                return Err(GfnError::invalid("edge", format!("({a}, {b})"), allowed));
            }
            neighbours[a as usize].push(b);
            neighbours[b as usize].push(a);
        }
        for list in &mut neighbours {
            list.sort_unstable();
            list.dedup();
        }
        Ok(Graph { n, neighbours })
    }

    /// The number of nodes.
    pub fn nodes(&self) -> usize {
        self.n
    }

    /// Every edge once as `(a, b)` with `a < b`, in increasing order.
    pub fn edges(&self) -> Vec<(u32, u32)> {
        let mut edges = Vec::with_capacity(self.num_edges());
        for (a, list) in self.neighbours.iter().enumerate() {
            let a = a as u32;
            edges.extend(list.iter().filter(|&&b| b > a).map(|&b| (a, b)));
        }
        edges
    }

    /// The number of edges.
    pub fn num_edges(&self) -> usize {
        self.neighbours.iter().map(Vec::len).sum::<usize>() / 2
    }

    /// The neighbours of node `v` in increasing order; empty when `v` is not a node.
    pub fn neighbours(&self, v: u32) -> &[u32] {
        self.neighbours.get(v as usize).map_or(&[], Vec::as_slice)
    }

    /// The degree of node `v`; 0 when `v` is not a node.
    pub fn degree(&self, v: u32) -> usize {
        self.neighbours(v).len()
    }

    /// Whether the nodes marked `true` are pairwise non-adjacent. `false` when `member` does not
    /// have one entry per node.
    pub fn is_independent(&self, member: &[bool]) -> bool {
        member.len() == self.n
            && (0..self.n).all(|v| !member[v] || self.neighbours[v].iter().all(|&u| !member[u as usize]))
    }

    /// Whether the nodes marked `true` form an independent set to which no node can be added:
    /// every node outside it has a neighbour inside. `false` when `member` has the wrong length.
    pub fn is_maximal_independent(&self, member: &[bool]) -> bool {
        self.is_independent(member)
            && (0..self.n).all(|v| member[v] || self.neighbours[v].iter().any(|&u| member[u as usize]))
    }
}

// ---------------------------------------------------------------------------------------------
// RB-model generator
// ---------------------------------------------------------------------------------------------

/// Draws tried per graph before [`rb_graph`] gives up on the accepted node range.
pub const MAX_RB_ATTEMPTS: usize = 10_000;

/// Largest `cliques.1 · clique_size.1` accepted by [`RbParams::validate`], to keep a typo from
/// asking for a graph that does not fit in memory.
pub const MAX_RB_NODES: usize = 1 << 16;

/// Largest `p` used: `ln(1 − p)` must stay finite.
const P_MAX: f64 = 1.0 - 1e-9;

/// Parameters of the RB-model generator (see the [module documentation](self)). Ranges are
/// inclusive: `(lo, hi)` means `lo ..= hi`, except that `p` is drawn from `[p.0, p.1)` (exactly
/// `p.0` when the two are equal).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RbParams {
    /// The number of cliques `n_a`, uniform on `cliques.0 ..= cliques.1`; at least 2.
    pub cliques: (usize, usize),
    /// The clique size `k`, uniform on `clique_size.0 ..= clique_size.1`; at least 1.
    pub clique_size: (usize, usize),
    /// The tightness `p`, uniform on `[p.0, p.1)`, with `0 < p.0 ≤ p.1 ≤ 1`.
    pub p: (f64, f64),
    /// The accepted node counts (after isolated nodes are removed), `nodes.0 ..= nodes.1`.
    pub nodes: (usize, usize),
}

impl RbParams {
    /// The "small" RB graphs of the GFlowNet MIS papers (`rb200-300`): 20 … 24 cliques of 5 … 11
    /// nodes, `p ~ U(0.3, 1)`, 200 … 300 nodes accepted.
    pub fn small() -> RbParams {
        RbParams {
            cliques: (20, 24),
            clique_size: (5, 11),
            p: (0.3, 1.0),
            nodes: (200, 300),
        }
    }

    /// A reduced setting for quick experiments and exact checks: 4 … 8 cliques of 3 … 8 nodes,
    /// `p ~ U(0.3, 1)` as in [`RbParams::small`], 20 … 60 nodes accepted. The clique counts and
    /// sizes are the small setting scaled down so that `n_a · k` (the node count) covers 20 … 60
    /// with little rejection, cliques stay cliques (`k ≥ 3`) and `|MIS| ≤ n_a ≤ 8` keeps the
    /// exact optimum cheap, while the same `p` range keeps the graphs at the RB threshold.
    pub fn reduced() -> RbParams {
        RbParams {
            cliques: (4, 8),
            clique_size: (3, 8),
            p: (0.3, 1.0),
            nodes: (20, 60),
        }
    }

    /// Checks the ranges: `lo ≤ hi` everywhere, at least 2 cliques, cliques of at least 1 node,
    /// `0 < p.0 ≤ p.1 ≤ 1`, at most [`MAX_RB_NODES`] nodes before isolated nodes are removed, and an
    /// accepted node range that some draw can reach.
    pub fn validate(&self) -> Result<()> {
        check_range("cliques", self.cliques, 2)?;
        check_range("clique_size", self.clique_size, 1)?;
        check_range("nodes", self.nodes, 0)?;
        let (p_lo, p_hi) = self.p;
        if !(p_lo > 0.0 && p_lo <= p_hi && p_hi <= 1.0) {
            return Err(GfnError::invalid(
                "p",
                format!("({p_lo}, {p_hi})"),
                "need 0 < lo <= hi <= 1",
            ));
        }
        let most = self
            .cliques
            .1
            .checked_mul(self.clique_size.1)
            .filter(|&m| m <= MAX_RB_NODES);
        let Some(most) = most else {
            let value = format!("{} cliques of {} nodes", self.cliques.1, self.clique_size.1);
            return Err(GfnError::invalid(
                "cliques",
                value,
                format!("at most {MAX_RB_NODES} nodes in all"),
            ));
        };
        if self.nodes.0 > most {
            let allowed = format!("the lower bound must not exceed the largest possible graph, {most} nodes");
            return Err(GfnError::invalid(
                "nodes",
                format!("({}, {})", self.nodes.0, self.nodes.1),
                allowed,
            ));
        }
        Ok(())
    }
}

/// Checks `lo ≤ hi` and `lo ≥ min` for the inclusive range `field`.
fn check_range(field: &'static str, (lo, hi): (usize, usize), min: usize) -> Result<()> {
    if lo > hi || lo < min {
        return Err(GfnError::invalid(
            field,
            format!("({lo}, {hi})"),
            format!("need {min} <= lo <= hi"),
        ));
    }
    Ok(())
}

/// An RB graph together with the draw that produced it.
#[derive(Debug, Clone, PartialEq)]
pub struct RbInstance {
    /// The graph, isolated nodes removed.
    pub graph: Graph,
    /// The number of cliques `n_a`: they cover every node, so `|MIS| ≤ n_a`.
    pub cliques: usize,
    /// The clique size `k` (before isolated nodes are removed).
    pub clique_size: usize,
    /// The tightness `p` used (after clamping below 1).
    pub p: f64,
}

/// Draws one RB graph, with its parameters, whose node count is in `params.nodes` (see the
/// [module documentation](self)). Errors on invalid `params`, or when [`MAX_RB_ATTEMPTS`] draws
/// all miss the accepted node range.
pub fn rb_instance(params: &RbParams, rng: &mut GfnRng) -> Result<RbInstance> {
    params.validate()?;
    let (lo, hi) = params.nodes;
    for _ in 0..MAX_RB_ATTEMPTS {
        let cliques = rng.random_range(params.cliques.0..=params.cliques.1);
        let clique_size = rng.random_range(params.clique_size.0..=params.clique_size.1);
        let p = (params.p.0 + (params.p.1 - params.p.0) * rng.random::<f64>()).min(P_MAX);
        let total = cliques * clique_size;
        if clique_size >= 2 && !(lo..=hi).contains(&total) {
            continue; // no isolated node possible: the node count is known before the edges.
        }
        let graph = rb_draw(cliques, clique_size, p, rng)?;
        if (lo..=hi).contains(&graph.nodes()) {
            return Ok(RbInstance {
                graph,
                cliques,
                clique_size,
                p,
            });
        }
    }
    let allowed =
        format!("no graph in this node range after {MAX_RB_ATTEMPTS} draws; widen it or change cliques / clique_size");
    Err(GfnError::invalid("nodes", format!("({lo}, {hi})"), allowed))
}

/// Draws one RB graph whose node count is in `params.nodes`; [`rb_instance`] without the draw.
pub fn rb_graph(params: &RbParams, rng: &mut GfnRng) -> Result<Graph> {
    rb_instance(params, rng).map(|instance| instance.graph)
}

/// `count` RB graphs drawn in turn from a [`GfnRng`] seeded with `seed`: the same seed and
/// parameters give the same graphs.
pub fn rb_graphs(params: &RbParams, count: usize, seed: u64) -> Result<Vec<Graph>> {
    let mut rng = GfnRng::seed_from_u64(seed);
    (0..count).map(|_| rb_graph(params, &mut rng)).collect()
}

/// The RB edge counts for `n_a = cliques`, `k = clique_size` and `p`: `(s, iterations)`.
fn rb_schedule(cliques: usize, clique_size: usize, p: f64) -> (usize, usize) {
    let n = cliques as f64;
    let a = (clique_size as f64).ln() / n.ln();
    let r = -a / (1.0 - p).ln();
    let s = p * n.powf(2.0 * a);
    let iterations = r * n * n.ln() - 1.0;
    // `as` truncates towards zero and saturates negatives (and NaN) at 0, like Python's `int`
    // followed by `range`.
    (s as usize, iterations as usize)
}

/// One unconditioned RB draw: cliques, cross edges, isolated nodes removed.
fn rb_draw(cliques: usize, clique_size: usize, p: f64, rng: &mut GfnRng) -> Result<Graph> {
    let k = clique_size;
    let mut edges = Vec::new();
    for c in 0..cliques {
        for u in c * k..(c + 1) * k {
            edges.extend((u + 1..(c + 1) * k).map(|v| (u as u32, v as u32)));
        }
    }
    add_cross_edges(cliques, k, p, rng, &mut edges);
    without_isolated(cliques * k, &edges)
}

/// Step 4 of the RB model: appends the cross edges of every iteration to `edges`.
fn add_cross_edges(cliques: usize, k: usize, p: f64, rng: &mut GfnRng, edges: &mut Vec<(u32, u32)>) {
    let (s, iterations) = rb_schedule(cliques, k, p);
    if s == 0 {
        return;
    }
    // Ordered pairs (u, v) already drawn, by the ordered clique pair (i, j): bit (u - ik)·k + (v - jk).
    let pair_words = (k * k).div_ceil(64);
    let mut drawn = vec![0u64; cliques * cliques * pair_words];
    let mut pool: Vec<usize> = Vec::with_capacity(k * k);
    for _ in 0..iterations {
        let i = rng.random_range(0..cliques);
        let mut j = rng.random_range(0..cliques - 1);
        if j >= i {
            j += 1;
        }
        let block = &mut drawn[(i * cliques + j) * pair_words..][..pair_words];
        pool.clear();
        pool.extend((0..k * k).filter(|&b| !test_bit(block, b)));
        let take = s.min(pool.len());
        for t in 0..take {
            let pick = rng.random_range(t..pool.len());
            pool.swap(t, pick);
            let b = pool[t];
            set_bit(block, b);
            edges.push(((i * k + b / k) as u32, (j * k + b % k) as u32));
        }
    }
}

/// The graph on `n` nodes with `edges`, isolated nodes removed and the rest renumbered in order.
fn without_isolated(n: usize, edges: &[(u32, u32)]) -> Result<Graph> {
    let mut used = vec![false; n];
    for &(a, b) in edges {
        used[a as usize] = true;
        used[b as usize] = true;
    }
    let mut label = vec![0u32; n];
    let mut next = 0u32;
    for v in 0..n {
        if used[v] {
            label[v] = next;
            next += 1;
        }
    }
    let relabelled: Vec<(u32, u32)> = edges
        .iter()
        .map(|&(a, b)| (label[a as usize], label[b as usize]))
        .collect();
    Graph::new(next as usize, &relabelled)
}

// ---------------------------------------------------------------------------------------------
// Greedy baseline
// ---------------------------------------------------------------------------------------------

/// The minimum-degree greedy independent set: repeatedly take the undecided node with the fewest
/// undecided neighbours (ties to the smallest index), then drop it and its neighbours. The result
/// is a maximal independent set, in increasing order.
pub fn greedy_min_degree(g: &Graph) -> Vec<u32> {
    let n = g.nodes();
    let mut degree: Vec<usize> = g.neighbours.iter().map(Vec::len).collect();
    let mut undecided = vec![true; n];
    let mut queue: BTreeSet<(usize, u32)> = (0..n).map(|v| (degree[v], v as u32)).collect();
    let mut set = Vec::new();
    while let Some((_, v)) = queue.pop_first() {
        set.push(v);
        undecided[v as usize] = false;
        for &u in g.neighbours(v) {
            if undecided[u as usize] {
                undecided[u as usize] = false;
                queue.remove(&(degree[u as usize], u));
                for &w in g.neighbours(u) {
                    let wi = w as usize;
                    if undecided[wi] {
                        queue.remove(&(degree[wi], w));
                        degree[wi] -= 1;
                        queue.insert((degree[wi], w));
                    }
                }
            }
        }
    }
    set.sort_unstable();
    set
}

// ---------------------------------------------------------------------------------------------
// Exact branch and bound
// ---------------------------------------------------------------------------------------------

/// The result of [`maximum_independent_set`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MisSolution {
    /// An independent set, in increasing order: a maximum one when `optimal`.
    pub set: Vec<u32>,
    /// `true` when the search finished, so `set` is a maximum independent set; `false` when the
    /// budget ran out first and `set` is the best found.
    pub optimal: bool,
    /// Search nodes visited.
    pub nodes_explored: u64,
}

/// Search nodes between two looks at the clock.
const CLOCK_EVERY: u64 = 4096;

/// A maximum independent set of `g` by branch and bound (see the
/// [module documentation](self)). With a `budget` the search stops once that much time has
/// passed (the clock is read every 4096 search nodes) and returns the best set found, with
/// `optimal = false`. Memory is about `n² / 8` bytes for the adjacency bitsets.
pub fn maximum_independent_set(g: &Graph, budget: Option<Duration>) -> MisSolution {
    let started = Instant::now();
    let order = search_order(g);
    let mut position = vec![0u32; g.nodes()];
    for (i, &v) in order.iter().enumerate() {
        position[v as usize] = i as u32;
    }
    let incumbent: Vec<u32> = greedy_min_degree(g).iter().map(|&v| position[v as usize]).collect();
    let mut search = Search::new(g, &order, &position, incumbent);
    search.deadline = budget.and_then(|b| started.checked_add(b));
    search.run();
    let mut set: Vec<u32> = search.best.iter().map(|&i| order[i as usize]).collect();
    set.sort_unstable();
    MisSolution {
        set,
        optimal: !search.timed_out,
        nodes_explored: search.nodes,
    }
}

/// The order of the nodes in the search bitsets: a degeneracy-like order that repeatedly puts the
/// node of largest remaining degree last. Cliques are formed first from the early (low-degree)
/// nodes, and the search branches first on the late (high-degree) ones.
fn search_order(g: &Graph) -> Vec<u32> {
    let n = g.nodes();
    let mut degree: Vec<usize> = g.neighbours.iter().map(Vec::len).collect();
    let mut queue: BTreeSet<(usize, u32)> = (0..n).map(|v| (degree[v], v as u32)).collect();
    let mut removed = vec![false; n];
    let mut order = Vec::with_capacity(n);
    while let Some((_, v)) = queue.pop_last() {
        removed[v as usize] = true;
        order.push(v);
        for &u in g.neighbours(v) {
            let ui = u as usize;
            if !removed[ui] {
                queue.remove(&(degree[ui], u));
                degree[ui] -= 1;
                queue.insert((degree[ui], u));
            }
        }
    }
    order.reverse();
    order
}

/// One level of the search stack: a candidate set and its clique-partition branching list.
#[derive(Debug, Clone, Default)]
struct Level {
    /// Candidate nodes (bitset).
    cand: Vec<u64>,
    /// Nodes to branch on, by increasing clique number.
    order: Vec<u32>,
    /// The clique number of each node of `order`: a bound on the MIS of `order[..=i]`.
    bound: Vec<u32>,
    /// Entries of `order` not yet branched on.
    pos: usize,
    /// The size of the current set at this level (after its reductions).
    base: usize,
}

/// The state of one branch-and-bound run, nodes renumbered by [`search_order`].
struct Search {
    words: usize,
    /// Row `v` (`words` words from `v · words`) is the neighbourhood of `v`.
    adj: Vec<u64>,
    best: Vec<u32>,
    current: Vec<u32>,
    levels: Vec<Level>,
    /// Scratch bitsets for the clique partition.
    uncovered: Vec<u64>,
    clique: Vec<u64>,
    nodes: u64,
    deadline: Option<Instant>,
    timed_out: bool,
}

impl Search {
    fn new(g: &Graph, order: &[u32], position: &[u32], best: Vec<u32>) -> Search {
        let n = g.nodes();
        let words = n.div_ceil(64).max(1);
        let mut adj = vec![0u64; n * words];
        for (i, &v) in order.iter().enumerate() {
            let row = &mut adj[i * words..(i + 1) * words];
            for &u in g.neighbours(v) {
                set_bit(row, position[u as usize] as usize);
            }
        }
        let mut root = Level {
            cand: vec![0u64; words],
            ..Level::default()
        };
        for i in 0..n {
            set_bit(&mut root.cand, i);
        }
        Search {
            words,
            adj,
            best,
            current: Vec::with_capacity(n),
            levels: vec![root],
            uncovered: vec![0u64; words],
            clique: vec![0u64; words],
            nodes: 0,
            deadline: None,
            timed_out: false,
        }
    }

    /// Depth-first search over the explicit stack `levels`.
    fn run(&mut self) {
        self.enter(0);
        let mut depth = 1;
        while depth > 0 && !self.timed_out {
            let d = depth - 1;
            let Some(v) = self.next_branch(d) else {
                depth -= 1;
                continue;
            };
            if self.levels.len() == depth {
                self.levels.push(Level {
                    cand: vec![0u64; self.words],
                    ..Level::default()
                });
            }
            let (parents, children) = self.levels.split_at_mut(depth);
            let (parent, child) = (&mut parents[d], &mut children[0]);
            let row = &self.adj[v * self.words..(v + 1) * self.words];
            for ((c, &p), &a) in child.cand.iter_mut().zip(&parent.cand).zip(row) {
                *c = p & !a;
            }
            clear_bit(&mut child.cand, v);
            clear_bit(&mut parent.cand, v);
            self.current.truncate(parent.base);
            self.current.push(v as u32);
            self.enter(depth);
            depth += 1;
        }
    }

    /// The next node to include at level `d`, removing it from the level's branching list; `None`
    /// when the level is exhausted or its bound cannot beat the incumbent.
    fn next_branch(&mut self, d: usize) -> Option<usize> {
        let level = &mut self.levels[d];
        if level.pos == 0 {
            return None;
        }
        level.pos -= 1;
        if level.base + level.bound[level.pos] as usize <= self.best.len() {
            level.pos = 0;
            return None;
        }
        Some(level.order[level.pos] as usize)
    }

    /// Sets up level `d` from its candidate set: reductions, then the incumbent update (no
    /// candidates left) or the clique partition.
    fn enter(&mut self, d: usize) {
        self.nodes += 1;
        if self.nodes.is_multiple_of(CLOCK_EVERY) && self.deadline.is_some_and(|t| Instant::now() >= t) {
            self.timed_out = true;
        }
        let level = &mut self.levels[d];
        reduce(&self.adj, self.words, &mut level.cand, &mut self.current);
        level.base = self.current.len();
        level.order.clear();
        level.bound.clear();
        let remaining: usize = level.cand.iter().map(|w| w.count_ones() as usize).sum();
        if remaining == 0 && level.base > self.best.len() {
            self.best.clone_from(&self.current);
        }
        if level.base + remaining > self.best.len() {
            let need = self.best.len() + 1 - level.base;
            let scratch = (&mut self.uncovered[..], &mut self.clique[..]);
            clique_partition(
                &self.adj,
                self.words,
                &level.cand,
                need,
                &mut level.order,
                &mut level.bound,
                scratch,
            );
        }
        level.pos = level.order.len();
    }
}

/// Takes (pushes onto `current` and removes from `cand`) every candidate with no candidate
/// neighbour, and every candidate with exactly one (removing that neighbour too), until none is
/// left: some maximum independent set of the candidates contains all of them.
fn reduce(adj: &[u64], words: usize, cand: &mut [u64], current: &mut Vec<u32>) {
    let mut changed = true;
    while changed {
        changed = false;
        for w in 0..words {
            let mut bits = cand[w];
            while bits != 0 {
                let v = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                if !test_bit(cand, v) {
                    continue;
                }
                match sole_neighbour(&adj[v * words..(v + 1) * words], cand) {
                    Degree::Zero => {}
                    Degree::One(u) => clear_bit(cand, u),
                    Degree::More => continue,
                }
                clear_bit(cand, v);
                current.push(v as u32);
                changed = true;
            }
        }
    }
}

/// The degree of a node within the candidates, up to "more than one".
enum Degree {
    Zero,
    One(usize),
    More,
}

/// The degree of the node with neighbourhood `row` among `cand`.
fn sole_neighbour(row: &[u64], cand: &[u64]) -> Degree {
    let mut found = None;
    for (w, (&a, &c)) in row.iter().zip(cand).enumerate() {
        let both = a & c;
        if both == 0 {
            continue;
        }
        if found.is_some() || both.count_ones() > 1 {
            return Degree::More;
        }
        found = Some(w * 64 + both.trailing_zeros() as usize);
    }
    found.map_or(Degree::Zero, Degree::One)
}

/// Greedy clique partition of `cand` (nodes taken in index order, each clique grown as far as it
/// goes). Appends to `order` the nodes of clique `need` and later, with their clique number
/// (1-based) in `bound`: the nodes of earlier cliques can never be worth branching on.
fn clique_partition(
    adj: &[u64],
    words: usize,
    cand: &[u64],
    need: usize,
    order: &mut Vec<u32>,
    bound: &mut Vec<u32>,
    (uncovered, clique): (&mut [u64], &mut [u64]),
) {
    uncovered.copy_from_slice(cand);
    let mut number = 0u32;
    while let Some(first) = first_bit(uncovered) {
        number += 1;
        clique.copy_from_slice(uncovered);
        let mut v = first;
        loop {
            clear_bit(uncovered, v);
            if number as usize >= need {
                order.push(v as u32);
                bound.push(number);
            }
            let row = &adj[v * words..(v + 1) * words];
            for (c, &a) in clique.iter_mut().zip(row) {
                *c &= a;
            }
            match first_bit(clique) {
                Some(next) => v = next,
                None => break,
            }
        }
    }
}

fn set_bit(bits: &mut [u64], i: usize) {
    bits[i / 64] |= 1 << (i % 64);
}

fn clear_bit(bits: &mut [u64], i: usize) {
    bits[i / 64] &= !(1 << (i % 64));
}

fn test_bit(bits: &[u64], i: usize) -> bool {
    (bits[i / 64] >> (i % 64)) & 1 == 1
}

fn first_bit(bits: &[u64]) -> Option<usize> {
    bits.iter()
        .enumerate()
        .find(|&(_, &w)| w != 0)
        .map(|(i, &w)| i * 64 + w.trailing_zeros() as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(g: &Graph, set: &[u32]) -> Vec<bool> {
        let mut member = vec![false; g.nodes()];
        for &v in set {
            member[v as usize] = true;
        }
        member
    }

    /// A graph on `n` nodes with each pair joined with probability `density`.
    fn random_graph(n: usize, density: f64, rng: &mut GfnRng) -> Graph {
        let mut edges = Vec::new();
        for a in 0..n as u32 {
            for b in a + 1..n as u32 {
                if rng.random::<f64>() < density {
                    edges.push((a, b));
                }
            }
        }
        Graph::new(n, &edges).expect("valid edges")
    }

    /// The MIS size by scanning all subsets (`n ≤ 20`).
    fn brute_force(g: &Graph) -> usize {
        let n = g.nodes();
        let adj: Vec<u32> = (0..n as u32)
            .map(|v| g.neighbours(v).iter().fold(0, |m, &u| m | 1 << u))
            .collect();
        let mut independent = vec![true; 1 << n];
        let mut best = 0;
        for mask in 1usize..1 << n {
            let v = mask.trailing_zeros() as usize;
            let rest = mask & (mask - 1);
            independent[mask] = independent[rest] && adj[v] as usize & rest == 0;
            if independent[mask] {
                best = best.max(mask.count_ones() as usize);
            }
        }
        best
    }

    #[test]
    fn graph_basics() {
        let g = Graph::new(4, &[(1, 0), (0, 1), (2, 1), (1, 2)]).unwrap();
        assert_eq!(g.nodes(), 4);
        assert_eq!(g.edges(), vec![(0, 1), (1, 2)]);
        assert_eq!(g.num_edges(), 2);
        assert_eq!(g.neighbours(1), &[0, 2]);
        assert_eq!(g.degree(1), 2);
        assert_eq!(g.degree(3), 0);
        assert_eq!(g.neighbours(9), &[] as &[u32]);
        assert!(g.is_independent(&[true, false, true, true]));
        assert!(g.is_maximal_independent(&[true, false, true, true]));
        assert!(!g.is_maximal_independent(&[true, false, false, true]));
        assert!(g.is_independent(&[true, false, false, true]));
        assert!(!g.is_independent(&[true, true, false, false]));
        assert!(!g.is_independent(&[true]));
        assert!(!g.is_maximal_independent(&[true, false, true]));
    }

    #[test]
    fn graph_rejects_bad_edges() {
        let err = Graph::new(3, &[(0, 1), (2, 2)]).unwrap_err().to_string();
        assert!(
            err.contains("edge") && err.contains("(2, 2)") && err.contains("self-loop"),
            "{err}"
        );
        let err = Graph::new(3, &[(0, 3)]).unwrap_err().to_string();
        assert!(
            err.contains("edge") && err.contains("(0, 3)") && err.contains("below the node count 3"),
            "{err}"
        );
        assert!(Graph::new(0, &[]).is_ok());
    }

    #[test]
    fn branch_and_bound_matches_brute_force() {
        let mut rng = GfnRng::seed_from_u64(7);
        for case in 0..200 {
            let n = rng.random_range(0..=16);
            let density = rng.random::<f64>();
            let g = random_graph(n, density, &mut rng);
            let solution = maximum_independent_set(&g, None);
            assert!(solution.optimal);
            assert!(solution.set.windows(2).all(|w| w[0] < w[1]), "case {case}: not sorted");
            assert!(
                g.is_independent(&members(&g, &solution.set)),
                "case {case}: not independent"
            );
            assert_eq!(
                solution.set.len(),
                brute_force(&g),
                "case {case}: n = {n}, density = {density}"
            );
        }
    }

    #[test]
    fn branch_and_bound_on_special_graphs() {
        let empty = Graph::new(100, &[]).unwrap();
        assert_eq!(maximum_independent_set(&empty, None).set.len(), 100);
        let complete: Vec<(u32, u32)> = (0..70).flat_map(|a| (a + 1..70).map(move |b| (a, b))).collect();
        let complete = Graph::new(70, &complete).unwrap();
        assert_eq!(maximum_independent_set(&complete, None).set.len(), 1);
        let cycle: Vec<(u32, u32)> = (0..129).map(|a| (a, (a + 1) % 129)).collect();
        let cycle = Graph::new(129, &cycle).unwrap();
        assert_eq!(maximum_independent_set(&cycle, None).set.len(), 64);
        let none = Graph::new(0, &[]).unwrap();
        let solution = maximum_independent_set(&none, None);
        assert!(solution.set.is_empty() && solution.optimal);
    }

    #[test]
    fn greedy_is_maximal_and_at_most_optimal() {
        let mut rng = GfnRng::seed_from_u64(11);
        for _ in 0..200 {
            let n = rng.random_range(0..=16);
            let density = rng.random::<f64>();
            let g = random_graph(n, density, &mut rng);
            let greedy = greedy_min_degree(&g);
            assert!(greedy.windows(2).all(|w| w[0] < w[1]));
            assert!(g.is_maximal_independent(&members(&g, &greedy)));
            assert!(greedy.len() <= brute_force(&g));
        }
    }

    #[test]
    fn greedy_takes_min_degree_first() {
        // A star 0 - {1, 2, 3} plus the edge 3 - 4. Node 1 (degree 1, the smallest such index) goes
        // first and removes 0; then 2 (degree 0); then 3 and 4 tie at degree 1 and 3 wins.
        let g = Graph::new(5, &[(0, 1), (0, 2), (0, 3), (3, 4)]).unwrap();
        assert_eq!(greedy_min_degree(&g), vec![1, 2, 3]);
        // A path 0 - 1 - 2 - 3 - 4 with a pendant 5 on 2. Taking 0 (drops 1) and then 4 (drops 3)
        // leaves 2 at residual degree 1, tied with 5: the smaller index 2 wins.
        let g = Graph::new(6, &[(0, 1), (1, 2), (2, 3), (3, 4), (2, 5)]).unwrap();
        assert_eq!(greedy_min_degree(&g), vec![0, 2, 4]);
    }

    #[test]
    fn rb_reduced_graphs_are_well_formed() {
        let params = RbParams::reduced();
        let mut rng = GfnRng::seed_from_u64(3);
        for _ in 0..50 {
            let instance = rb_instance(&params, &mut rng).unwrap();
            let g = &instance.graph;
            assert!((20..=60).contains(&g.nodes()));
            assert!((4..=8).contains(&instance.cliques) && (3..=8).contains(&instance.clique_size));
            assert!((0.3..1.0).contains(&instance.p));
            assert_eq!(g.nodes(), instance.cliques * instance.clique_size);
            assert!((0..g.nodes() as u32).all(|v| g.degree(v) > 0), "isolated node");
            let k = instance.clique_size as u32;
            for c in 0..instance.cliques as u32 {
                for u in c * k..(c + 1) * k {
                    assert!(
                        (u + 1..(c + 1) * k).all(|v| g.neighbours(u).contains(&v)),
                        "clique {c} broken"
                    );
                }
            }
            let solution = maximum_independent_set(g, None);
            assert!(solution.optimal);
            assert!(g.is_independent(&members(g, &solution.set)));
            assert!(solution.set.len() <= instance.cliques);
            assert!(greedy_min_degree(g).len() <= solution.set.len());
        }
    }

    #[test]
    fn rb_small_graphs_are_in_range() {
        let graphs = rb_graphs(&RbParams::small(), 5, 1).unwrap();
        for g in &graphs {
            assert!((200..=300).contains(&g.nodes()));
            assert!((0..g.nodes() as u32).all(|v| g.degree(v) > 0));
            let greedy = greedy_min_degree(g);
            assert!(g.is_maximal_independent(&members(g, &greedy)));
            assert!(greedy.len() <= 24);
        }
    }

    #[test]
    fn rb_cross_edge_count_follows_the_schedule() {
        // p = 0.5, n_a = 4, k = 4: s = int(0.5 · 16) = 8 new ordered pairs per iteration at most.
        let params = RbParams {
            cliques: (4, 4),
            clique_size: (4, 4),
            p: (0.5, 0.5),
            nodes: (0, 100),
        };
        let (s, iterations) = rb_schedule(4, 4, 0.5);
        assert_eq!(s, 8);
        assert_eq!(iterations, (-1.0 / 0.5f64.ln() * 4.0 * 4f64.ln() - 1.0) as usize);
        let g = rb_graph(&params, &mut GfnRng::seed_from_u64(5)).unwrap();
        let intra = 4 * 6;
        assert!(g.num_edges() > intra && g.num_edges() <= intra + s * iterations);
    }

    #[test]
    fn rb_isolated_nodes_are_removed() {
        // k = 1: no clique edges; with p near 1, s = 0 and nothing is joined, so every node is isolated.
        let params = RbParams {
            cliques: (5, 5),
            clique_size: (1, 1),
            p: (1.0, 1.0),
            nodes: (0, 5),
        };
        let g = rb_graph(&params, &mut GfnRng::seed_from_u64(0)).unwrap();
        assert_eq!(g.nodes(), 0);
        let params = RbParams {
            nodes: (1, 5),
            ..params
        };
        let err = rb_graph(&params, &mut GfnRng::seed_from_u64(0))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("nodes") && err.contains("(1, 5)") && err.contains("10000 draws"),
            "{err}"
        );
    }

    #[test]
    fn rb_graphs_are_deterministic_in_the_seed() {
        let params = RbParams::reduced();
        let a = rb_graphs(&params, 10, 42).unwrap();
        assert_eq!(a, rb_graphs(&params, 10, 42).unwrap());
        assert_ne!(a, rb_graphs(&params, 10, 43).unwrap());
        let small = rb_graphs(&RbParams::small(), 2, 9).unwrap();
        assert_eq!(small, rb_graphs(&RbParams::small(), 2, 9).unwrap());
    }

    #[test]
    fn rb_params_are_validated() {
        assert!(RbParams::small().validate().is_ok());
        assert!(RbParams::reduced().validate().is_ok());
        let base = RbParams::reduced();
        let cases = [
            (
                RbParams {
                    cliques: (1, 5),
                    ..base
                },
                "cliques",
            ),
            (
                RbParams {
                    cliques: (6, 5),
                    ..base
                },
                "cliques",
            ),
            (
                RbParams {
                    clique_size: (0, 3),
                    ..base
                },
                "clique_size",
            ),
            (
                RbParams {
                    clique_size: (4, 3),
                    ..base
                },
                "clique_size",
            ),
            (RbParams { p: (0.0, 0.5), ..base }, "p"),
            (RbParams { p: (0.6, 0.5), ..base }, "p"),
            (RbParams { p: (0.5, 1.5), ..base }, "p"),
            (
                RbParams {
                    p: (f64::NAN, 0.5),
                    ..base
                },
                "p",
            ),
            (
                RbParams {
                    nodes: (60, 20),
                    ..base
                },
                "nodes",
            ),
            (
                RbParams {
                    nodes: (65, 100),
                    ..base
                },
                "nodes",
            ),
            (
                RbParams {
                    cliques: (2, 1 << 20),
                    ..base
                },
                "cliques",
            ),
            (
                RbParams {
                    cliques: (2, usize::MAX),
                    clique_size: (2, usize::MAX),
                    ..base
                },
                "cliques",
            ),
        ];
        for (params, field) in cases {
            let err = params.validate().unwrap_err().to_string();
            assert!(err.starts_with(&format!("invalid {field} =")), "{err}");
            let mut rng = GfnRng::seed_from_u64(0);
            assert!(rb_graph(&params, &mut rng).is_err());
        }
    }

    #[test]
    fn budget_returns_an_independent_set() {
        let g = rb_graph(&RbParams::small(), &mut GfnRng::seed_from_u64(2)).unwrap();
        let solution = maximum_independent_set(&g, Some(Duration::ZERO));
        assert!(g.is_independent(&members(&g, &solution.set)));
        assert!(solution.set.len() >= greedy_min_degree(&g).len());
        assert!(solution.optimal || solution.nodes_explored >= CLOCK_EVERY);
    }
}
