//! A Graph Isomorphism Network (GIN, Xu et al. 2019), with edge features as GINE (Hu et al. 2020),
//! usable as a GFlowNet policy on graph states: per-node outputs (node-level actions, e.g. "add
//! node i to the independent set") and per-graph outputs (the exit action, log F), as in the
//! LED-GFN maximum-independent-set task.
//!
//! # Batching
//!
//! A [`GraphBatch`] is the disjoint union of its graphs (PyTorch Geometric's batching): the nodes
//! of all graphs are stacked into one `[N, F]` matrix, edge indices are offset so they point into
//! that stack, and `node_graph` records each node's graph. No edge joins two graphs, so message
//! passing over the union is message passing over each graph independently, and sum pooling by
//! `node_graph` gives one embedding per graph (a graph with no nodes reads the zero vector). Every
//! step is a candle op that autograd differentiates: sources are gathered with `index_select`
//! and messages summed into their targets with `index_add` over a zeros tensor.
//!
//! # Why sum aggregation
//!
//! GIN is as discriminative as the 1-WL test because its neighbourhood aggregation is injective
//! on multisets: a sum (followed by an MLP) distinguishes `{a}` from `{a, a}`, which mean and max
//! aggregation cannot. The same holds for the sum readout over a graph's nodes.
//!
//! # Layers
//!
//! With `h⁰_i = x_i·W_in + b_in`, layer `k = 0..L` computes
//!
//! ```text
//! m_{j→i} = h^k_j                                   (no edge features: GIN)
//! m_{j→i} = ReLU(h^k_j + e_{ji}·W_e^k + b_e^k)      (edge features: GINE, as in PyG's GINEConv)
//! a_i     = Σ_{(j→i) ∈ E} m_{j→i}
//! h^{k+1}_i = MLP_k((1 + ε_k)·h^k_i + a_i)
//! ```
//!
//! then, with `graph_norm`, for every layer but the last a GraphNorm (each feature standardised
//! over the nodes of its graph, then a learned gain and shift), and a ReLU for every layer but the
//! last. `MLP_k` has `mlp_layers` linear layers
//! `hidden → hidden` with ReLU between them; `ε_k` is a learnable scalar (initialised to 0) when
//! `learn_eps`, else the constant 0. The heads are `nodes = h^L·W_n + b_n` and
//! `graphs = (Σ_{i ∈ g} h^L_i)·W_g + b_g`.

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::nn::{LayerNorm, Linear, Mlp};
use crate::obs::GraphBatch;
use crate::{GfnError, GfnRng, Result};

/// Sizes of a [`Gin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GinConfig {
    /// Input features per node `F` (≥ 1).
    pub node_features: usize,
    /// Input features per edge `F_e`; 0 = no edge features (plain GIN), else GINE.
    pub edge_features: usize,
    /// Width of the node states (≥ 1).
    pub hidden: usize,
    /// Number of GIN layers (≥ 1).
    pub layers: usize,
    /// Linear layers in each GIN MLP (≥ 1).
    pub mlp_layers: usize,
    /// Outputs per node; 0 = no node head.
    pub node_outputs: usize,
    /// Outputs per graph; 0 = no graph head (not both 0).
    pub graph_outputs: usize,
    /// A learnable `ε_k` per layer (else `ε_k = 0`, not a parameter).
    pub learn_eps: bool,
    /// GraphNorm (Cai et al. 2021) after every layer's MLP but the last (before its ReLU): each
    /// feature standardised over the nodes of its own graph, then a learned gain and shift. It
    /// keeps the states of dense graphs, whose sums grow with the degree at every layer, on one
    /// scale while keeping what tells the nodes apart (a per-node LayerNorm does not: at `s_0`
    /// every node's sum is its degree times one vector); per graph, so a graph's outputs do not
    /// depend on its batch.
    #[serde(default)]
    pub graph_norm: bool,
}

impl GinConfig {
    /// Check every size, naming the first bad field.
    pub fn validate(&self) -> Result<()> {
        for (field, value) in [
            ("node_features", self.node_features),
            ("hidden", self.hidden),
            ("layers", self.layers),
            ("mlp_layers", self.mlp_layers),
        ] {
            if value == 0 {
                return Err(GfnError::invalid(field, value, "must be at least 1"));
            }
        }
        if self.node_outputs == 0 && self.graph_outputs == 0 {
            return Err(GfnError::invalid(
                "node_outputs",
                0,
                "node_outputs and graph_outputs may not both be 0 (at least one head)",
            ));
        }
        Ok(())
    }
}

/// What a [`Gin`] returns for a batch of `G` graphs with `N` nodes in all.
#[derive(Debug, Clone)]
pub struct GinOutput {
    /// Per-node outputs `[N, node_outputs]`, if there is a node head.
    pub nodes: Option<Tensor>,
    /// Per-graph outputs `[G, graph_outputs]`, if there is a graph head.
    pub graphs: Option<Tensor>,
    /// Final node states `h^L`, `[N, hidden]`.
    pub hidden: Tensor,
}

#[derive(Debug, Clone)]
struct GinLayer {
    mlp: Mlp,
    edge: Option<Linear>,
    eps: Option<Var>,
    norm: Option<GraphNorm>,
}

/// GraphNorm's variance floor.
const GN_EPS: f64 = 1e-5;

/// Per-graph standardisation of every feature: `y = (h − μ_g) / √(σ²_g + ε) · γ + β`, with `μ_g`,
/// `σ²_g` the mean and (biased) variance of the feature over the nodes of the node's graph.
#[derive(Debug, Clone)]
struct GraphNorm {
    gain: Var,
    bias: Var,
}

impl GraphNorm {
    fn new(d: usize, dtype: DType, device: &Device) -> Result<Self> {
        let ln = LayerNorm::new(d, dtype, device)?;
        Ok(Self {
            gain: ln.gain,
            bias: ln.bias,
        })
    }

    /// `h` `[N, d]`; `owner` `[N]` the graph of each node; `inv_count` `[G, 1]` one over each
    /// graph's node count (1 for an empty graph).
    fn forward(&self, h: &Tensor, owner: &Tensor, inv_count: &Tensor, graphs: usize) -> Result<Tensor> {
        let d = h.dim(1)?;
        let zeros = Tensor::zeros((graphs, d), h.dtype(), h.device())?;
        let mean = zeros.index_add(owner, h, 0)?.broadcast_mul(inv_count)?;
        let centred = (h - mean.index_select(owner, 0)?)?;
        let var = zeros.index_add(owner, &centred.sqr()?, 0)?.broadcast_mul(inv_count)?;
        let std = (var + GN_EPS)?.sqrt()?.index_select(owner, 0)?;
        Ok(centred
            .broadcast_div(&std)?
            .broadcast_mul(self.gain.as_tensor())?
            .broadcast_add(self.bias.as_tensor())?)
    }
}

/// A graph isomorphism network; see the [module documentation](self) for the formulas.
#[derive(Debug, Clone)]
pub struct Gin {
    config: GinConfig,
    dtype: DType,
    input: Linear,
    layers: Vec<GinLayer>,
    node_head: Option<Linear>,
    graph_head: Option<Linear>,
}

/// A linear layer drawn as [`Linear::new`] does, stored in `dtype`.
fn linear(input: usize, output: usize, dtype: DType, device: &Device, rng: &mut GfnRng) -> Result<Linear> {
    cast(Linear::new(input, output, device, rng)?, dtype)
}

fn cast(l: Linear, dtype: DType) -> Result<Linear> {
    if dtype == DType::F32 {
        return Ok(l);
    }
    Ok(Linear {
        weight: Var::from_tensor(&l.weight.as_tensor().to_dtype(dtype)?)?,
        bias: Var::from_tensor(&l.bias.as_tensor().to_dtype(dtype)?)?,
    })
}

impl Gin {
    /// A network with weights drawn from `rng` (PyTorch's `U(−1/√in, 1/√in)`) in a fixed order:
    /// the input layer, then for each GIN layer its MLP (first to last) and its edge layer (with
    /// edge features), then the node head, then the graph head. `ε_k` starts at 0 and draws
    /// nothing, so `learn_eps` does not change the other weights. `dtype` is F32 or F64.
    pub fn new(config: GinConfig, dtype: DType, device: &Device, rng: &mut GfnRng) -> Result<Self> {
        config.validate()?;
        if !matches!(dtype, DType::F32 | DType::F64) {
            return Err(GfnError::invalid("dtype", format!("{dtype:?}"), "must be F32 or F64"));
        }
        let h = config.hidden;
        let input = linear(config.node_features, h, dtype, device, rng)?;
        let mut layers = Vec::with_capacity(config.layers);
        for _ in 0..config.layers {
            let mlp = Mlp::new(h, h, config.mlp_layers - 1, h, device, rng)?;
            let mlp = Mlp {
                layers: mlp.layers.into_iter().map(|l| cast(l, dtype)).collect::<Result<_>>()?,
            };
            let edge = match config.edge_features {
                0 => None,
                fe => Some(linear(fe, h, dtype, device, rng)?),
            };
            let eps = match config.learn_eps {
                true => Some(Var::from_tensor(&Tensor::zeros(1, dtype, device)?)?),
                false => None,
            };
            let last = layers.len() + 1 == config.layers;
            let norm = (config.graph_norm && !last)
                .then(|| GraphNorm::new(h, dtype, device))
                .transpose()?;
            layers.push(GinLayer { mlp, edge, eps, norm });
        }
        let mut head = |n: usize| (n > 0).then(|| linear(h, n, dtype, device, rng)).transpose();
        let node_head = head(config.node_outputs)?;
        let graph_head = head(config.graph_outputs)?;
        Ok(Self {
            config,
            dtype,
            input,
            layers,
            node_head,
            graph_head,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &GinConfig {
        &self.config
    }

    /// The parameters' dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Named parameters: `{prefix}.input.{weight,bias}`, `{prefix}.layers.{k}.mlp.{i}.{weight,bias}`,
    /// `{prefix}.layers.{k}.edge.{weight,bias}` (with edge features), `{prefix}.layers.{k}.eps`
    /// (with `learn_eps`), `{prefix}.node_head.{weight,bias}`, `{prefix}.graph_head.{weight,bias}`.
    pub fn named_params(&self, prefix: &str, out: &mut Vec<(String, Var)>) {
        let mut push = |name: String, l: &Linear| {
            out.push((format!("{name}.weight"), l.weight.clone()));
            out.push((format!("{name}.bias"), l.bias.clone()));
        };
        push(format!("{prefix}.input"), &self.input);
        for (k, layer) in self.layers.iter().enumerate() {
            for (i, l) in layer.mlp.layers.iter().enumerate() {
                push(format!("{prefix}.layers.{k}.mlp.{i}"), l);
            }
            if let Some(e) = &layer.edge {
                push(format!("{prefix}.layers.{k}.edge"), e);
            }
        }
        for (name, head) in [("node_head", &self.node_head), ("graph_head", &self.graph_head)] {
            if let Some(l) = head {
                push(format!("{prefix}.{name}"), l);
            }
        }
        for (k, layer) in self.layers.iter().enumerate() {
            if let Some(eps) = &layer.eps {
                out.push((format!("{prefix}.layers.{k}.eps"), eps.clone()));
            }
        }
        for (k, layer) in self.layers.iter().enumerate() {
            if let Some(norm) = &layer.norm {
                out.push((format!("{prefix}.layers.{k}.norm.gain"), norm.gain.clone()));
                out.push((format!("{prefix}.layers.{k}.norm.bias"), norm.bias.clone()));
            }
        }
    }

    /// Number of scalar parameters.
    pub fn num_params(&self) -> usize {
        let mut all = Vec::new();
        self.named_params("", &mut all);
        all.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Check `graphs` against the configuration (reads the indices to the host once).
    fn check(&self, graphs: &GraphBatch) -> Result<()> {
        graphs.check()?;
        let ((n, e), (f, fe)) = (graphs.sizes()?, (self.config.node_features, self.config.edge_features));
        let dims = |t: &Tensor| format!("{:?}", t.dims());
        if graphs.node_features.dims() != [n, f] {
            let allowed = format!("must be [N, {f}] as configured");
            return Err(GfnError::invalid("node_features", dims(&graphs.node_features), allowed));
        }
        match (&graphs.edge_features, fe) {
            (None, 0) => {}
            (Some(ef), fe) if fe > 0 && ef.dims() == [e, fe] => {}
            (got, _) => {
                let allowed = match fe {
                    0 => "must be absent: the network is configured without edge features".into(),
                    _ => format!("must be [{e}, {fe}] as configured"),
                };
                let got = got.as_ref().map_or("none".into(), dims);
                return Err(GfnError::invalid("edge_features", got, allowed));
            }
        }
        let ids = graphs.edge_index.flatten_all()?.to_vec1::<u32>()?;
        if let Some(&bad) = ids.iter().find(|&&v| v as usize >= n) {
            return Err(GfnError::invalid("edge_index", bad, format!("must be below N = {n}")));
        }
        let g = graphs.num_graphs;
        if let Some(&bad) = graphs.node_graph.to_vec1::<u32>()?.iter().find(|&&v| v as usize >= g) {
            return Err(GfnError::invalid(
                "node_graph",
                bad,
                format!("must be below num_graphs = {g}"),
            ));
        }
        Ok(())
    }

    /// The forward pass on a batch of graphs, recording the autograd graph. Inputs are cast to the
    /// network's dtype; shapes and index ranges are checked against the configuration first.
    pub fn forward(&self, graphs: &GraphBatch) -> Result<GinOutput> {
        self.check(graphs)?;
        let (n, hidden, dtype) = (graphs.sizes()?.0, self.config.hidden, self.dtype);
        let zeros = |rows: usize| Tensor::zeros((rows, hidden), dtype, graphs.node_features.device());
        let src = graphs.edge_index.get(0)?.contiguous()?;
        let dst = graphs.edge_index.get(1)?.contiguous()?;
        let edge_x = graphs.edge_features.as_ref().map(|t| t.to_dtype(dtype)).transpose()?;
        let mut h = self.input.forward(&graphs.node_features.to_dtype(dtype)?, false)?;
        let owner = graphs.node_graph.contiguous()?;
        let inv_count = if self.config.graph_norm {
            let mut count = vec![0f64; graphs.num_graphs];
            for g in owner.to_vec1::<u32>()? {
                count[g as usize] += 1.0;
            }
            let inv: Vec<f64> = count.iter().map(|&c| 1.0 / c.max(1.0)).collect();
            Tensor::from_vec(inv, (graphs.num_graphs, 1), owner.device())?.to_dtype(dtype)?
        } else {
            Tensor::zeros((graphs.num_graphs, 1), dtype, owner.device())?
        };
        for (k, layer) in self.layers.iter().enumerate() {
            let mut msg = h.index_select(&src, 0)?;
            if let (Some(lin), Some(ef)) = (&layer.edge, &edge_x) {
                msg = (msg + lin.forward(ef, false)?)?.relu()?;
            }
            let own = match &layer.eps {
                Some(eps) => h.broadcast_mul(&(eps.as_tensor() + 1.0)?)?,
                None => h,
            };
            h = layer
                .mlp
                .forward(&(own + zeros(n)?.index_add(&dst, &msg, 0)?)?, false)?;
            if let Some(norm) = &layer.norm {
                h = norm.forward(&h, &owner, &inv_count, graphs.num_graphs)?;
            }
            if k + 1 < self.layers.len() {
                h = h.relu()?;
            }
        }
        let nodes = self.node_head.as_ref().map(|l| l.forward(&h, false)).transpose()?;
        let pool = |l: &Linear| l.forward(&zeros(graphs.num_graphs)?.index_add(&owner, &h, 0)?, false);
        let graphs = self.graph_head.as_ref().map(pool).transpose()?;
        Ok(GinOutput {
            nodes,
            graphs,
            hidden: h,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::obs::HostGraph;
    use crate::rng_from_seed;
    use rand::Rng;

    const DEV: Device = Device::Cpu;
    type Rows = Vec<Vec<f64>>;

    /// 3 node features, 3 layers of width 8 with 2-layer MLPs, 2 node and 3 graph outputs.
    fn config(edge_features: usize, learn_eps: bool) -> GinConfig {
        let (node_features, hidden, layers, mlp_layers, node_outputs, graph_outputs) = (3, 8, 3, 2, 2, 3);
        GinConfig {
            node_features,
            edge_features,
            hidden,
            layers,
            mlp_layers,
            node_outputs,
            graph_outputs,
            learn_eps,
            graph_norm: false,
        }
    }

    fn net(cfg: GinConfig, seed: u64) -> Gin {
        Gin::new(cfg, DType::F64, &DEV, &mut rng_from_seed(seed)).unwrap()
    }

    fn params(gin: &Gin) -> Vec<(String, Var)> {
        let mut p = Vec::new();
        gin.named_params("g", &mut p);
        p
    }

    /// A random graph with `n` nodes, each ordered pair an edge with probability `p`.
    fn random_graph(rng: &mut GfnRng, n: usize, p: f64, fe: usize) -> HostGraph {
        let node_features = (0..n * 3).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut g = HostGraph {
            node_features,
            ..Default::default()
        };
        for (s, t) in (0..n as u32).flat_map(|s| (0..n as u32).map(move |t| (s, t))) {
            if s != t && rng.random_bool(p) {
                g.edges.push((s, t));
                g.edge_features.extend((0..fe).map(|_| rng.random_range(-1.0..1.0f32)));
            }
        }
        g
    }

    fn shuffle(rng: &mut GfnRng, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            p.swap(i, rng.random_range(0..=i));
        }
        p
    }

    /// Node `i` becomes node `perm[i]`; edges are remapped and listed in the order `order`.
    fn relabel(g: &HostGraph, perm: &[usize], order: &[usize], fe: usize) -> HostGraph {
        let mut out = HostGraph {
            node_features: g.node_features.clone(),
            ..Default::default()
        };
        for (i, &p) in perm.iter().enumerate() {
            out.node_features[p * 3..p * 3 + 3].copy_from_slice(&g.node_features[i * 3..i * 3 + 3]);
        }
        for &k in order {
            let (s, t) = g.edges[k];
            out.edges.push((perm[s as usize] as u32, perm[t as usize] as u32));
            out.edge_features
                .extend_from_slice(&g.edge_features[k * fe..(k + 1) * fe]);
        }
        out
    }

    fn run(gin: &Gin, graphs: &[HostGraph]) -> (Rows, Rows) {
        let b = GraphBatch::from_graphs(graphs, 3, gin.config().edge_features, &DEV).unwrap();
        let out = gin.forward(&b).unwrap();
        let rows = |t: Option<Tensor>| t.unwrap().to_vec2().unwrap();
        (rows(out.nodes), rows(out.graphs))
    }

    fn max_diff(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
        assert_eq!(a.len(), b.len());
        let d = a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| (x - y).abs());
        d.fold(0.0, f64::max)
    }

    /// The module doc's formulas with host loops, from the named parameters.
    fn reference(gin: &Gin, g: &HostGraph) -> (Rows, Rows) {
        let p: HashMap<String, (Vec<f64>, Vec<usize>)> = params(gin)
            .into_iter()
            .map(|(n, v)| (n, (v.flatten_all().unwrap().to_vec1().unwrap(), v.dims().to_vec())))
            .collect();
        let lin = |x: &Rows, name: &str| -> Rows {
            let ((w, d), b) = (&p[&format!("g.{name}.weight")], &p[&format!("g.{name}.bias")].0);
            let out = |r: &Vec<f64>, o: usize| b[o] + (0..d[0]).map(|i| r[i] * w[i * d[1] + o]).sum::<f64>();
            x.iter().map(|r| (0..d[1]).map(|o| out(r, o)).collect()).collect()
        };
        let relu = |x: Rows| -> Rows { x.iter().map(|r| r.iter().map(|v| v.max(0.0)).collect()).collect() };
        let (c, fe) = (gin.config(), gin.config().edge_features);
        let rows =
            |v: &[f32], w: usize| -> Rows { v.chunks(w).map(|r| r.iter().map(|&x| x as f64).collect()).collect() };
        let mut h = lin(&rows(&g.node_features, 3), "input");
        for k in 0..c.layers {
            let eps = p.get(&format!("g.layers.{k}.eps")).map_or(0.0, |e| e.0[0]);
            let mut z: Rows = h.iter().map(|r| r.iter().map(|v| (1.0 + eps) * v).collect()).collect();
            let we = (fe > 0).then(|| lin(&rows(&g.edge_features, fe), &format!("layers.{k}.edge")));
            for (e, &(s, t)) in g.edges.iter().enumerate() {
                for j in 0..c.hidden {
                    let m = h[s as usize][j];
                    z[t as usize][j] += we.as_ref().map_or(m, |we| (m + we[e][j]).max(0.0));
                }
            }
            for i in 0..c.mlp_layers {
                z = lin(&z, &format!("layers.{k}.mlp.{i}"));
                z = if i + 1 < c.mlp_layers { relu(z) } else { z };
            }
            h = if k + 1 < c.layers { relu(z) } else { z };
        }
        let pooled = (0..c.hidden).map(|j| h.iter().map(|r| r[j]).sum()).collect();
        (lin(&h, "node_head"), lin(&vec![pooled], "graph_head"))
    }

    #[test]
    fn forward_matches_the_formulas_on_a_directed_graph() {
        for fe in [0, 2] {
            let gin = net(config(fe, true), 13);
            for (k, (_, v)) in params(&gin).iter().filter(|(n, _)| n.ends_with("eps")).enumerate() {
                v.set(&Tensor::new(&[0.2 * k as f64 - 0.3], &DEV).unwrap()).unwrap();
            }
            let g = random_graph(&mut rng_from_seed(14), 6, 0.3, fe);
            let (nodes, graph) = run(&gin, std::slice::from_ref(&g));
            let (want_nodes, want_graph) = reference(&gin, &g);
            let d = max_diff(&nodes, &want_nodes).max(max_diff(&graph, &want_graph));
            assert!(d <= 1e-12, "fe {fe}: differs from the formulas by {d}");
        }
    }

    #[test]
    fn relabelling_nodes_permutes_node_outputs_and_keeps_graph_outputs() {
        for (fe, graph_norm) in [(0, false), (2, false), (2, true)] {
            let gin = net(
                GinConfig {
                    graph_norm,
                    ..config(fe, true)
                },
                1,
            );
            let mut rng = rng_from_seed(2);
            let graphs: Vec<_> = [5, 7, 4].iter().map(|&n| random_graph(&mut rng, n, 0.4, fe)).collect();
            let (mut perms, mut moved) = (Vec::new(), Vec::new());
            for g in &graphs {
                let perm = shuffle(&mut rng, g.node_features.len() / 3);
                let order = shuffle(&mut rng, g.edges.len());
                assert!(perm.iter().enumerate().any(|(i, &p)| i != p));
                moved.push(relabel(g, &perm, &order, fe));
                perms.push(perm);
            }
            let ((nodes, graph_out), (nodes_p, graph_out_p)) = (run(&gin, &graphs), run(&gin, &moved));
            let mut offset = 0;
            for perm in &perms {
                for (i, &p) in perm.iter().enumerate() {
                    let d = max_diff(&nodes[offset + i..=offset + i], &nodes_p[offset + p..=offset + p]);
                    assert!(d <= 1e-10, "fe {fe}: node {i} → {p} differs by {d}");
                }
                offset += perm.len();
            }
            assert!(max_diff(&graph_out, &graph_out_p) <= 1e-10, "fe {fe}");
            // Not trivially equal: relabelling moved the node outputs.
            assert!(max_diff(&nodes, &nodes_p) > 1e-3, "fe {fe}");
        }
    }

    #[test]
    fn a_graphs_outputs_do_not_depend_on_its_batch() {
        for graph_norm in [false, true] {
            batch_independence(graph_norm);
        }
    }

    fn batch_independence(graph_norm: bool) {
        let gin = net(
            GinConfig {
                graph_norm,
                ..config(2, true)
            },
            3,
        );
        let mut rng = rng_from_seed(4);
        let (a, b) = (random_graph(&mut rng, 5, 0.5, 2), random_graph(&mut rng, 6, 0.5, 2));
        let empty = HostGraph::default();
        let edgeless = HostGraph {
            node_features: vec![0.3, -0.2, 0.9, 0.1, 0.4, -0.5],
            ..Default::default()
        };
        let (a_nodes, a_graph) = run(&gin, std::slice::from_ref(&a));
        let (l_nodes, l_graph) = run(&gin, std::slice::from_ref(&edgeless));
        // The empty graph alone (N = 0, E = 0) reads the zero embedding: its output is the bias.
        let (e_nodes, e_graph) = run(&gin, std::slice::from_ref(&empty));
        assert!(e_nodes.is_empty());
        let bias = gin.graph_head.as_ref().unwrap().bias.to_vec1::<f64>().unwrap();
        assert_eq!(e_graph, vec![bias]);
        let batches: [(&[&HostGraph], usize, usize); 3] = [
            (&[&a, &b], 0, 0),
            (&[&b, &empty, &a], 6, 2),
            (&[&empty, &edgeless, &b, &a], 8, 3),
        ];
        for (k, (batch, a_offset, a_index)) in batches.into_iter().enumerate() {
            let (nodes, graph_out) = run(&gin, &batch.iter().map(|&g| g.clone()).collect::<Vec<_>>());
            let d = max_diff(&a_nodes, &nodes[a_offset..a_offset + 5]);
            assert!(d <= 1e-12, "batch {k}: nodes differ by {d}");
            assert!(max_diff(&a_graph, &graph_out[a_index..=a_index]) <= 1e-12, "batch {k}");
            if let Some(e) = batch.iter().position(|&g| *g == empty) {
                assert!(max_diff(&e_graph, &graph_out[e..=e]) <= 1e-12, "batch {k}");
            }
            if let Some(l) = batch.iter().position(|&g| *g == edgeless) {
                assert!(max_diff(&l_nodes, &nodes[0..2]) <= 1e-12, "batch {k}");
                assert!(max_diff(&l_graph, &graph_out[l..=l]) <= 1e-12, "batch {k}");
            }
        }
    }

    fn loss(gin: &Gin, batch: &GraphBatch, c1: &Tensor, c2: &Tensor) -> Tensor {
        let out = gin.forward(batch).unwrap();
        let a = (out.nodes.unwrap() * c1).unwrap().sum_all().unwrap();
        (a + (out.graphs.unwrap() * c2).unwrap().sum_all().unwrap()).unwrap()
    }

    #[test]
    fn gradients_match_central_finite_differences() {
        for graph_norm in [false, true] {
            finite_differences(graph_norm);
        }
    }

    fn finite_differences(graph_norm: bool) {
        let mut cfg = config(2, true);
        (cfg.hidden, cfg.layers, cfg.graph_norm) = (5, 2, graph_norm);
        let gin = net(cfg, 5);
        let mut rng = rng_from_seed(6);
        let graphs = [random_graph(&mut rng, 4, 0.5, 2), random_graph(&mut rng, 5, 0.4, 2)];
        let batch = GraphBatch::from_graphs(&graphs, 3, 2, &DEV).unwrap();
        let params = params(&gin);
        let names: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
        for want in ["0.eps", "1.eps", "0.edge.weight", "1.edge.bias"].map(|s| format!("g.layers.{s}")) {
            assert!(names.contains(&want.as_str()), "{want} missing from {names:?}");
        }
        // Move ε off 0 so that (1 + ε) is exercised away from the identity.
        for (_, v) in params.iter().filter(|(n, _)| n.ends_with("eps")) {
            v.set(&Tensor::new(&[0.3f64], &DEV).unwrap()).unwrap();
        }
        let mut draw = |n| (0..n).map(|_| rng.random_range(-1.0..1.0)).collect::<Vec<f64>>();
        let c1 = Tensor::from_vec(draw(18), (9, 2), &DEV).unwrap();
        let c2 = Tensor::from_vec(draw(6), (2, 3), &DEV).unwrap();
        let grads = loss(&gin, &batch, &c1, &c2).backward().unwrap();
        let (step, mut checked) = (1e-6, 0);
        for (name, var) in &params {
            let grad = grads.get(var).unwrap_or_else(|| panic!("no gradient for {name}"));
            let grad = grad.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let orig = var.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let n = orig.len();
            let entries: Vec<usize> = (0..n.min(3))
                .map(|j| if n <= 3 { j } else { rng.random_range(0..n) })
                .collect();
            for i in entries {
                let at = |delta: f64| {
                    let mut v = orig.clone();
                    v[i] += delta;
                    var.set(&Tensor::from_vec(v, var.shape(), &DEV).unwrap()).unwrap();
                    loss(&gin, &batch, &c1, &c2).to_scalar::<f64>().unwrap()
                };
                let (fd, a) = ((at(step) - at(-step)) / (2.0 * step), grad[i]);
                at(0.0);
                let rel = (a - fd).abs() / a.abs().max(fd.abs()).max(1e-3);
                assert!(rel <= 1e-5, "{name}[{i}]: autograd {a} vs finite difference {fd}");
                checked += 1;
            }
        }
        if graph_norm {
            assert!(names.contains(&"g.layers.0.norm.gain"), "{names:?}");
            assert!(
                !names.contains(&"g.layers.1.norm.gain"),
                "the last layer has no norm: {names:?}"
            );
        }
        assert!(checked >= 3 * 16, "{checked}");
    }

    fn star(leaves: usize) -> HostGraph {
        let mut g = HostGraph {
            node_features: vec![0.5, -0.3, 0.8],
            ..Default::default()
        };
        for l in 1..=leaves as u32 {
            g.node_features.extend([-0.7, 0.2, 0.6]);
            g.edges.extend([(0, l), (l, 0)]);
        }
        g
    }

    #[test]
    fn sum_aggregation_counts_neighbours_and_isomorphic_graphs_agree() {
        // Wide enough that no layer's ReLUs are all dead on these few inputs (that would make every
        // node state a function of the degree alone).
        let mut cfg = config(0, false);
        cfg.hidden = 32;
        let gin = net(cfg, 7);
        let (one, two) = (run(&gin, &[star(1)]), run(&gin, &[star(2)]));
        // A mean (or max) aggregator gives the centre the same input in both stars.
        let d = max_diff(&one.0[0..1], &two.0[0..1]);
        assert!(d > 1e-4, "centre outputs differ by only {d}");
        // A path a–b–c listed in two node orders: identical graph outputs.
        let path = |x: [[f32; 3]; 3], edges: &[(u32, u32)]| HostGraph {
            node_features: x.concat(),
            edges: edges.iter().flat_map(|&(s, t)| [(s, t), (t, s)]).collect(),
            edge_features: vec![],
        };
        let (a, b, c) = ([1.0, 0.0, 0.5], [0.0, 1.0, -0.5], [0.3, 0.3, 0.3]);
        let p1 = path([a, b, c], &[(0, 1), (1, 2)]);
        let out = run(&gin, &[p1.clone(), path([c, a, b], &[(2, 1), (0, 2)])]);
        assert!(max_diff(&out.1[0..1], &out.1[1..2]) <= 1e-12);
        // Same node features and edge count but not isomorphic (a–b–c vs b–a–c): different.
        let out = run(&gin, &[p1, path([a, b, c], &[(1, 0), (0, 2)])]);
        assert!(max_diff(&out.1[0..1], &out.1[1..2]) > 1e-4, "{out:?}");
    }

    #[test]
    fn eps_is_a_parameter_only_when_learned_and_gets_gradient() {
        let (fixed, learned) = (net(config(2, false), 8), net(config(2, true), 8));
        assert!(params(&fixed).iter().all(|(n, _)| !n.contains("eps")));
        assert_eq!(learned.num_params(), fixed.num_params() + 3);
        let g = random_graph(&mut rng_from_seed(9), 5, 0.5, 2);
        // ε starts at 0 and draws nothing: both nets compute the same function at first.
        let g = std::slice::from_ref(&g);
        assert_eq!(max_diff(&run(&fixed, g).0, &run(&learned, g).0), 0.0);
        let batch = GraphBatch::from_graphs(g, 3, 2, &DEV).unwrap();
        let out = learned.forward(&batch).unwrap();
        let loss = (out.nodes.unwrap().sum_all().unwrap() + out.graphs.unwrap().sum_all().unwrap()).unwrap();
        let grads = loss.backward().unwrap();
        let eps = params(&learned).into_iter().filter(|(n, _)| n.contains("eps"));
        assert_eq!(eps.clone().count(), 3);
        for (name, v) in eps {
            let g = grads.get(&v).unwrap().to_vec1::<f64>().unwrap()[0];
            assert!(g.abs() > 1e-6, "{name}: gradient {g}");
        }
    }

    #[test]
    fn a_seed_fixes_every_weight_and_output() {
        let flat = |g: &Gin| -> Vec<(String, Vec<f32>)> {
            let flat = |(n, v): (String, Var)| (n, v.flatten_all().unwrap().to_vec1().unwrap());
            params(g).into_iter().map(flat).collect()
        };
        let make = |seed| Gin::new(config(2, true), DType::F32, &DEV, &mut rng_from_seed(seed)).unwrap();
        let (a, b, c) = (make(10), make(10), make(11));
        assert_eq!(flat(&a), flat(&b));
        for ((name, x), (_, y)) in flat(&a).iter().zip(&flat(&c)) {
            assert!(name.ends_with("eps") || x != y, "{name} equal across seeds");
        }
        let batch = GraphBatch::from_graphs(&[random_graph(&mut rng_from_seed(12), 5, 0.5, 2)], 3, 2, &DEV).unwrap();
        let out = |g: &Gin| g.forward(&batch).unwrap().nodes.unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(out(&a), out(&b));
        assert_ne!(out(&a), out(&c));
        assert_eq!(a.forward(&batch).unwrap().hidden.dtype(), DType::F32);
    }

    fn field(err: GfnError) -> &'static str {
        match err {
            GfnError::InvalidConfig { field, .. } => field,
            other => panic!("not a configuration error: {other}"),
        }
    }

    #[test]
    fn bad_configurations_and_inputs_name_the_field() {
        let base = config(2, true);
        let new = |c: GinConfig, dtype| Gin::new(c, dtype, &DEV, &mut rng_from_seed(0)).map(|_| ()).unwrap_err();
        type Edit = fn(&mut GinConfig);
        let cases: [(&str, Edit); 5] = [
            ("node_features", |c| c.node_features = 0),
            ("hidden", |c| c.hidden = 0),
            ("layers", |c| c.layers = 0),
            ("mlp_layers", |c| c.mlp_layers = 0),
            ("node_outputs", |c| (c.node_outputs, c.graph_outputs) = (0, 0)),
        ];
        for (want, set) in cases {
            let mut c = base;
            set(&mut c);
            assert_eq!(field(new(c, DType::F64)), want);
        }
        assert_eq!(field(new(base, DType::BF16)), "dtype");
        // One head is enough.
        let mut b = GraphBatch::from_graphs(&[star(2)], 3, 0, &DEV).unwrap();
        b.edge_features = Some(Tensor::ones((4, 2), DType::F32, &DEV).unwrap());
        for (node_outputs, graph_outputs) in [(0, 3), (2, 0)] {
            let mut c = base;
            (c.node_outputs, c.graph_outputs) = (node_outputs, graph_outputs);
            let out = net(c, 0).forward(&b).unwrap();
            let heads = (out.nodes.is_some(), out.graphs.is_some());
            assert_eq!(heads, (node_outputs > 0, graph_outputs > 0));
            assert_eq!(out.hidden.dims(), [3, 8]);
        }

        let gin = net(base, 0);
        let good = GraphBatch::from_graphs(&[random_graph(&mut rng_from_seed(1), 4, 0.5, 2)], 3, 2, &DEV).unwrap();
        gin.forward(&good).unwrap();
        let (n, e) = good.sizes().unwrap();
        let with = |f: &dyn Fn(&mut GraphBatch)| {
            let mut b = good.clone();
            f(&mut b);
            field(gin.forward(&b).unwrap_err())
        };
        let narrow = Tensor::zeros((n, 2), DType::F32, &DEV).unwrap();
        assert_eq!(with(&|b| b.node_features = narrow.clone()), "node_features");
        assert_eq!(with(&|b| b.edge_features = None), "edge_features");
        let wide = Tensor::zeros((e, 3), DType::F32, &DEV).unwrap();
        assert_eq!(with(&|b| b.edge_features = Some(wide.clone())), "edge_features");
        let mut idx = good.edge_index.to_vec2::<u32>().unwrap();
        idx[1][e - 1] = n as u32;
        let idx = Tensor::from_vec(idx.concat(), (2, e), &DEV).unwrap();
        assert_eq!(with(&|b| b.edge_index = idx.clone()), "edge_index");
        let owners = Tensor::new(&[0u32, 0, 1, 0], &DEV).unwrap();
        assert_eq!(with(&|b| b.node_graph = owners.clone()), "node_graph");
        let plain = net(config(0, true), 0);
        assert_eq!(field(plain.forward(&good).unwrap_err()), "edge_features");
    }
}
