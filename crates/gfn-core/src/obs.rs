//! Observations beyond a flat feature vector: what an environment's featurizer hands a policy
//! network for a batch of states.
//!
//! * [`Observations::Dense`]: `[B, F]` f32 features (today's MLP input).
//! * [`Observations::Tokens`]: token sequences padded to a common length, [`TokenBatch`].
//! * [`Observations::Graphs`]: a disjoint union of graphs with a different number of nodes and
//!   edges each, [`GraphBatch`] (PyTorch Geometric's batching).
//!
//! Every constructor checks shapes and index ranges and names what is wrong.

use candle_core::{DType, Device, Tensor};

use crate::{Env, GfnError, Result};

/// A batch of token sequences, padded to the longest: `ids` `[B, L]` u32 and `mask` `[B, L]` f32
/// (1 for a real token, 0 for padding; real tokens first in each row). Padding ids are ignored.
#[derive(Debug, Clone)]
pub struct TokenBatch {
    /// Token ids, `[B, L]` u32.
    pub ids: Tensor,
    /// 1 for a real token, 0 for padding, `[B, L]` f32.
    pub mask: Tensor,
}

impl TokenBatch {
    /// A batch from host sequences (each of length ≤ `max_len`, ids < `vocab`), padded to the
    /// longest with id 0.
    pub fn from_sequences(seqs: &[Vec<u32>], vocab: usize, max_len: usize, device: &Device) -> Result<Self> {
        let len = seqs.iter().map(Vec::len).max().unwrap_or(0).max(1);
        if let Some((b, s)) = seqs.iter().enumerate().find(|(_, s)| s.len() > max_len) {
            return Err(GfnError::invalid(
                "tokens",
                format!("sequence {b} of length {}", s.len()),
                format!("must be at most max_len = {max_len}"),
            ));
        }
        let mut ids = vec![0u32; seqs.len() * len];
        let mut mask = vec![0f32; seqs.len() * len];
        for (b, s) in seqs.iter().enumerate() {
            for (i, &t) in s.iter().enumerate() {
                if t as usize >= vocab {
                    return Err(GfnError::invalid(
                        "tokens",
                        format!("id {t} in sequence {b}"),
                        format!("must be below vocab = {vocab}"),
                    ));
                }
                ids[b * len + i] = t;
                mask[b * len + i] = 1.0;
            }
        }
        Ok(Self {
            ids: Tensor::from_vec(ids, (seqs.len(), len), device)?,
            mask: Tensor::from_vec(mask, (seqs.len(), len), device)?,
        })
    }

    /// Batch size and padded length.
    pub fn dims(&self) -> Result<(usize, usize)> {
        Ok(self.ids.dims2()?)
    }
}

/// A batch of graphs as one disjoint union: `node_features` `[N, F]` f32, `edge_index` `[2, E]`
/// u32 (row 0 the source, row 1 the target node of each directed edge; an undirected edge is two),
/// optional `edge_features` `[E, F_e]` f32, `node_graph` `[N]` u32 (the graph of each node, in
/// `0..num_graphs`).
#[derive(Debug, Clone)]
pub struct GraphBatch {
    /// Node features, `[N, F]`.
    pub node_features: Tensor,
    /// Source and target of each edge, `[2, E]` u32.
    pub edge_index: Tensor,
    /// Edge features, `[E, F_e]`, if any.
    pub edge_features: Option<Tensor>,
    /// The graph of each node, `[N]` u32.
    pub node_graph: Tensor,
    /// Number of graphs `G` (a graph may have no node).
    pub num_graphs: usize,
}

/// One graph on the host: node features (row-major, `n × F`), directed edges, edge features
/// (row-major, `E × F_e`, or empty).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostGraph {
    /// Node features, row-major `[n, F]`.
    pub node_features: Vec<f32>,
    /// Directed edges `(source, target)` in `0..n`.
    pub edges: Vec<(u32, u32)>,
    /// Edge features, row-major `[E, F_e]` (empty without edge features).
    pub edge_features: Vec<f32>,
}

impl GraphBatch {
    /// The disjoint union of `graphs` (each with `node_dim` features per node and `edge_dim`
    /// per edge; `edge_dim` 0 = no edge features), node indices offset graph by graph.
    pub fn from_graphs(graphs: &[HostGraph], node_dim: usize, edge_dim: usize, device: &Device) -> Result<Self> {
        let (mut x, mut src, mut dst, mut ef, mut owner) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut offset = 0u32;
        for (g, graph) in graphs.iter().enumerate() {
            if node_dim == 0 || graph.node_features.len() % node_dim != 0 {
                return Err(GfnError::invalid(
                    "graph",
                    format!("graph {g} with {} node features", graph.node_features.len()),
                    format!("must hold a multiple of node_dim = {node_dim} (≥ 1)"),
                ));
            }
            let n = (graph.node_features.len() / node_dim) as u32;
            if graph.edge_features.len() != graph.edges.len() * edge_dim {
                return Err(GfnError::invalid(
                    "graph",
                    format!("graph {g} with {} edge features", graph.edge_features.len()),
                    format!("must hold edge_dim = {edge_dim} per edge ({} edges)", graph.edges.len()),
                ));
            }
            for &(s, t) in &graph.edges {
                if s >= n || t >= n {
                    return Err(GfnError::invalid(
                        "graph",
                        format!("edge ({s}, {t}) of graph {g}"),
                        format!("must join nodes below {n}"),
                    ));
                }
                src.push(offset + s);
                dst.push(offset + t);
            }
            x.extend_from_slice(&graph.node_features);
            ef.extend_from_slice(&graph.edge_features);
            owner.extend(std::iter::repeat_n(g as u32, n as usize));
            offset += n;
        }
        let (n, e) = (offset as usize, src.len());
        src.extend(dst);
        Ok(Self {
            node_features: Tensor::from_vec(x, (n, node_dim), device)?,
            edge_index: Tensor::from_vec(src, (2, e), device)?,
            edge_features: if edge_dim > 0 {
                Some(Tensor::from_vec(ef, (e, edge_dim), device)?)
            } else {
                None
            },
            node_graph: Tensor::from_vec(owner, n, device)?,
            num_graphs: graphs.len(),
        })
    }

    /// Number of nodes and edges.
    pub fn sizes(&self) -> Result<(usize, usize)> {
        Ok((self.node_features.dim(0)?, self.edge_index.dim(1)?))
    }

    /// Check the shapes and dtypes against each other.
    pub fn check(&self) -> Result<()> {
        let (n, e) = self.sizes()?;
        let bad =
            |what: &str, got: String, want: String| Err(GfnError::invalid("graph", format!("{what} {got}"), want));
        if self.edge_index.dims() != [2, e] || self.edge_index.dtype() != DType::U32 {
            return bad(
                "edge_index",
                format!("{:?}", self.edge_index.dims()),
                "must be [2, E] u32".into(),
            );
        }
        if self.node_graph.dims() != [n] || self.node_graph.dtype() != DType::U32 {
            return bad(
                "node_graph",
                format!("{:?}", self.node_graph.dims()),
                format!("must be [{n}] u32"),
            );
        }
        if let Some(ef) = &self.edge_features
            && ef.dim(0)? != e
        {
            return bad(
                "edge_features",
                format!("{:?}", ef.dims()),
                format!("must have {e} rows"),
            );
        }
        Ok(())
    }
}

/// What a policy network reads for a batch of states.
#[derive(Debug, Clone)]
pub enum Observations {
    /// `[B, F]` f32 features.
    Dense(Tensor),
    /// Token sequences.
    Tokens(TokenBatch),
    /// Graphs, one per state.
    Graphs(GraphBatch),
}

impl Observations {
    /// Number of states in the batch.
    pub fn batch_size(&self) -> Result<usize> {
        Ok(match self {
            Self::Dense(x) => x.dim(0)?,
            Self::Tokens(t) => t.dims()?.0,
            Self::Graphs(g) => g.num_graphs,
        })
    }
}

crate::choice! {
    /// Which encoding of the states a policy reads.
    pub enum ObservationKind("observations") {
        /// `[B, F]` features ([`Env::featurize_batch`]).
        Dense = "dense",
        /// Token sequences ([`Env::observe_tokens`]).
        Tokens = "tokens",
        /// Graphs ([`Env::observe_graphs`]).
        Graphs = "graphs",
    }
}

/// The token encoding of an environment's states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenSpace {
    /// Token ids are below this.
    pub vocab: usize,
    /// The longest sequence.
    pub max_len: usize,
}

/// The graph encoding of an environment's states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphSpace {
    /// Node feature width.
    pub node_features: usize,
    /// Edge feature width (0: none).
    pub edge_features: usize,
    /// What the forward actions act on.
    pub actions: GraphActions,
}

/// The forward actions of a graph environment, in its action order, as a graph policy's heads
/// produce them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum GraphActions {
    /// One action per node (node `i` of a graph is action `i`), then the exit action where the
    /// environment has one: a node head (and a graph head for the exit).
    #[default]
    PerNode,
    /// Graph building: `node_types` "add a node of this type" actions, then for each node pair
    /// of `pairs` (in order; `(i, j)` is `i → j` when directed) `edge_types` "add an edge of this
    /// type" actions, then one "stop" action: a graph head, a pair head, a graph head.
    Build {
        /// Node types.
        node_types: usize,
        /// Edge types.
        edge_types: usize,
        /// The node pair of each slot.
        pairs: Vec<(u32, u32)>,
        /// Whether `(i, j)` and `(j, i)` are different slots.
        directed: bool,
        /// Whether node 0 of every observed graph is a virtual node joined to every real node
        /// (real node `i` is then node `i + 1`): it gives the empty graph a node to compute with
        /// and every graph a global state.
        virtual_node: bool,
    },
}

/// A batch of `env`'s states (row-major, `state_dim` values each) as `kind` observations on
/// `device`.
pub fn observe<E: Env + ?Sized>(
    env: &E,
    kind: ObservationKind,
    states: &[i32],
    device: &Device,
) -> Result<Observations> {
    Ok(match kind {
        ObservationKind::Dense => {
            let (rows, f) = (states.len() / env.state_dim().max(1), env.feature_dim());
            let mut x = vec![0f32; rows * f];
            env.featurize_batch(states, &mut x);
            Observations::Dense(Tensor::from_vec(x, (rows, f), device)?)
        }
        ObservationKind::Tokens => Observations::Tokens(env.observe_tokens(states, device)?),
        ObservationKind::Graphs => Observations::Graphs(env.observe_graphs(states, device)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graphs_are_batched_with_offsets_and_bad_graphs_named() {
        let dev = Device::Cpu;
        let a = HostGraph {
            node_features: vec![1.0, 2.0],
            edges: vec![(0, 1), (1, 0)],
            edge_features: vec![],
        };
        let b = HostGraph {
            node_features: vec![3.0, 4.0, 5.0],
            edges: vec![(2, 0)],
            edge_features: vec![],
        };
        let g = GraphBatch::from_graphs(&[a.clone(), HostGraph::default(), b], 1, 0, &dev).unwrap();
        g.check().unwrap();
        assert_eq!(g.num_graphs, 3);
        assert_eq!(
            g.edge_index.to_vec2::<u32>().unwrap(),
            vec![vec![0, 1, 4], vec![1, 0, 2]]
        );
        assert_eq!(g.node_graph.to_vec1::<u32>().unwrap(), vec![0, 0, 2, 2, 2]);
        let bad = HostGraph {
            node_features: vec![1.0],
            edges: vec![(0, 3)],
            edge_features: vec![],
        };
        let e = GraphBatch::from_graphs(&[bad], 1, 0, &dev).unwrap_err().to_string();
        assert!(e.contains("(0, 3)") && e.contains("below 1"), "{e}");
        let e = GraphBatch::from_graphs(&[a], 1, 2, &dev).unwrap_err().to_string();
        assert!(e.contains("edge_dim = 2"), "{e}");
    }

    #[test]
    fn tokens_are_padded_and_checked() {
        let dev = Device::Cpu;
        let t = TokenBatch::from_sequences(&[vec![3, 1], vec![], vec![2]], 4, 5, &dev).unwrap();
        assert_eq!(t.dims().unwrap(), (3, 2));
        assert_eq!(
            t.mask.to_vec2::<f32>().unwrap(),
            vec![vec![1.0, 1.0], vec![0.0, 0.0], vec![1.0, 0.0]]
        );
        let e = TokenBatch::from_sequences(&[vec![4]], 4, 5, &dev)
            .unwrap_err()
            .to_string();
        assert!(e.contains("id 4") && e.contains("vocab = 4"), "{e}");
        let e = TokenBatch::from_sequences(&[vec![0; 6]], 4, 5, &dev)
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_len = 5"), "{e}");
    }
}
