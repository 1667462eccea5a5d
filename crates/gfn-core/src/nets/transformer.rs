//! A pre-LayerNorm transformer encoder over token sequences, usable as a GFlowNet policy network
//! (P_F, P_B or log F).
//!
//! # Layout
//!
//! Batch-first throughout. The input is a [`TokenBatch`]: `ids` `[B, L]` u32 and `mask` `[B, L]`
//! (1 = real token, 0 = padding, real tokens first). A learned BOS vector is prepended to every
//! row, so the encoder works on `T = L + 1` positions: position 0 is BOS, position `j + 1` holds
//! token `j`. The empty sequence (a GFlowNet's initial state) is therefore just BOS and is valid.
//!
//! ```text
//! x₀[b, 0]   = bos + pos[0]
//! x₀[b, j+1] = E[ids[b, j]] + pos[j + 1]                 E: [vocab, d_model]
//! per layer: x = x + MHA(LN₁(x));  x = x + GELU(LN₂(x)·W₁ + b₁)·W₂ + b₂
//! hidden     = LN_f(x) · m                               [B, L + 1, d_model]
//! ```
//!
//! `pos` is either a learned `[max_len + 1, d_model]` table or the fixed sinusoidal table of
//! Vaswani et al. Linear layers store weights `[in, out]` (`y = x·W + b`, as in [`crate::nn`]).
//!
//! # Masking
//!
//! The key mask is `m = [1, mask]` `[B, T]` (BOS is always real). Padded keys get `−10⁹` added
//! to their attention scores, so after the max-shifted softmax their weight is exactly 0 and a
//! real position never sees padding: outputs on real positions do not depend on how far a row is
//! padded nor on the ids stored in padding (they are replaced by 0 before the lookup). Padded
//! *queries* are computed but discarded: `hidden` and the per-position head are multiplied by
//! the mask, so they are exactly 0 on padding, and pooling only sums real positions.
//!
//! Everything (LayerNorm, softmax, the exact erf GELU) is built from candle tensor ops with a
//! backward pass, so candle autograd differentiates every parameter. Parameters are drawn from
//! the library's seeded [`GfnRng`] in a fixed order, so a seed fixes every weight.

use candle_core::{D, DType, Device, Tensor, Var};
use rand::Rng;

use crate::nn::LayerNorm;
use crate::nn::Linear;
use crate::obs::TokenBatch;
use crate::{GfnError, GfnRng, Result};

/// Added (negated) to the attention scores of padded keys.
const MASK_PENALTY: f64 = 1e9;

crate::choice! {
    /// How positions are encoded.
    pub enum Positions("positions") {
        /// A learned `[max_len + 1, d_model]` table (row 0 for BOS).
        Learned = "learned",
        /// The fixed table `PE[p, 2i] = sin(p / 10000^(2i/d))`, `PE[p, 2i+1] = cos(p / 10000^(2i/d))`;
        /// no parameters.
        Sinusoidal = "sinusoidal",
    }
}

/// Sizes of a [`TransformerEncoder`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TransformerConfig {
    /// Number of token ids (ids lie in `0..vocab`).
    pub vocab: usize,
    /// Longest token sequence accepted (BOS not counted).
    pub max_len: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Attention heads; must divide `d_model`.
    pub heads: usize,
    /// Number of encoder layers.
    pub layers: usize,
    /// Hidden width of the feed-forward block.
    pub d_ff: usize,
    /// Position encoding.
    pub positions: Positions,
    /// Outputs per token position (0 = no per-position head).
    pub position_outputs: usize,
    /// Outputs per sequence from the pooled state (0 = no pooled head).
    pub pooled_outputs: usize,
}

impl TransformerConfig {
    /// Check the sizes; the error names the offending field.
    pub fn validate(&self) -> Result<()> {
        let sizes = [
            ("vocab", self.vocab),
            ("max_len", self.max_len),
            ("d_model", self.d_model),
            ("heads", self.heads),
            ("layers", self.layers),
            ("d_ff", self.d_ff),
        ];
        if let Some((field, v)) = sizes.into_iter().find(|&(_, v)| v == 0) {
            return Err(GfnError::invalid(field, v, "must be at least 1"));
        }
        if !self.d_model.is_multiple_of(self.heads) {
            return Err(GfnError::invalid(
                "heads",
                self.heads,
                format!("must divide d_model = {}", self.d_model),
            ));
        }
        if self.position_outputs == 0 && self.pooled_outputs == 0 {
            return Err(GfnError::invalid(
                "position_outputs",
                0,
                "position_outputs and pooled_outputs cannot both be 0 (the encoder would have no output head)",
            ));
        }
        Ok(())
    }
}

/// What [`TransformerEncoder::forward`] returns.
#[derive(Debug, Clone)]
pub struct TransformerOutput {
    /// Per-position head on the `L` token positions (BOS excluded), `[B, L, position_outputs]`;
    /// exactly 0 on padding. `None` when `position_outputs = 0`.
    pub positions: Option<Tensor>,
    /// Pooled head `[B, pooled_outputs]` on `Σ_t m[b,t]·h[b,t] / Σ_t m[b,t]`, the mean of the final
    /// hidden states over BOS and the real tokens. `None` when `pooled_outputs = 0`.
    pub pooled: Option<Tensor>,
    /// Final (LayerNormed) hidden states `[B, L + 1, d_model]`, BOS first, 0 on padding.
    pub hidden: Tensor,
}

/// One pre-LN encoder layer.
#[derive(Debug, Clone)]
struct Block {
    ln1: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ln2: LayerNorm,
    ff1: Linear,
    ff2: Linear,
}

/// The position table: learned parameters or a fixed tensor.
#[derive(Debug, Clone)]
enum PositionTable {
    Learned(Var),
    Fixed(Tensor),
}

/// A pre-LayerNorm transformer encoder with a per-position and a pooled linear head; see the
/// [module documentation](self).
#[derive(Debug, Clone)]
pub struct TransformerEncoder {
    config: TransformerConfig,
    dtype: DType,
    bos: Var,
    embedding: Var,
    positions: PositionTable,
    blocks: Vec<Block>,
    final_ln: LayerNorm,
    position_head: Option<Linear>,
    pooled_head: Option<Linear>,
}

/// `U(−bound, bound)` entries drawn in f32 from `rng` (so a seed gives the same weights in every
/// dtype), stored in `dtype`.
fn uniform_var(shape: &[usize], bound: f32, dtype: DType, device: &Device, rng: &mut GfnRng) -> Result<Var> {
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-bound..bound)).collect();
    Ok(Var::from_tensor(&Tensor::from_vec(v, shape, device)?.to_dtype(dtype)?)?)
}

/// A linear layer with PyTorch's default initialisation `U(−1/√in, 1/√in)`, weight then bias.
fn linear(input: usize, output: usize, dtype: DType, device: &Device, rng: &mut GfnRng) -> Result<Linear> {
    let bound = 1.0 / (input as f32).sqrt();
    Ok(Linear {
        weight: uniform_var(&[input, output], bound, dtype, device, rng)?,
        bias: uniform_var(&[output], bound, dtype, device, rng)?,
    })
}

/// The sinusoidal table `[rows, d]`: `PE[p, 2i] = sin(p·ω_i)`, `PE[p, 2i+1] = cos(p·ω_i)`,
/// `ω_i = 10000^(−2i/d)`.
fn sinusoidal_table(rows: usize, d: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let mut table = vec![0f64; rows * d];
    for p in 0..rows {
        for c in 0..d {
            let angle = p as f64 * 10000f64.powf(-((c / 2 * 2) as f64) / d as f64);
            table[p * d + c] = if c % 2 == 0 { angle.sin() } else { angle.cos() };
        }
    }
    Ok(Tensor::from_vec(table, (rows, d), device)?.to_dtype(dtype)?)
}

/// The exact GELU `x·Φ(x) = ½·x·(1 + erf(x/√2))`, the function candle's `gelu_erf` computes,
/// built from `erf` because `gelu_erf`'s backward rounds `1/√(2π)` to 0.398942 (a relative
/// gradient error near 10⁻⁶), while `erf`'s backward is exact.
fn gelu(x: &Tensor) -> Result<Tensor> {
    let phi = ((x * std::f64::consts::FRAC_1_SQRT_2)?.erf()? + 1.0)?;
    Ok((x * 0.5)?.mul(&phi)?)
}

/// Softmax over the last axis, `exp(s − max s) / Σ exp(s − max s)`; the shift is detached (the
/// softmax does not depend on it), so the backward pass is the plain softmax one.
fn softmax_last(s: &Tensor) -> Result<Tensor> {
    let e = s.broadcast_sub(&s.max_keepdim(D::Minus1)?.detach())?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

impl TransformerEncoder {
    /// Build an encoder with every parameter in `dtype` (F32 or F64) on `device`, drawn from `rng`
    /// in a fixed order: BOS `U(−√3, √3)`, token embedding `U(−√3, √3)` (unit variance), the
    /// learned position table (if any) likewise, then per layer the q, k, v, o, FFN-in, FFN-out
    /// linear layers (`U(±1/√in)`), then the per-position head and the pooled head. LayerNorm
    /// gains start at 1 and biases at 0.
    pub fn new(config: TransformerConfig, dtype: DType, device: &Device, rng: &mut GfnRng) -> Result<Self> {
        config.validate()?;
        if !matches!(dtype, DType::F32 | DType::F64) {
            return Err(GfnError::invalid("dtype", format!("{dtype:?}"), "must be F32 or F64"));
        }
        let (d, f) = (config.d_model, config.d_ff);
        let unit = 3f32.sqrt();
        let bos = uniform_var(&[d], unit, dtype, device, rng)?;
        let embedding = uniform_var(&[config.vocab, d], unit, dtype, device, rng)?;
        let positions = match config.positions {
            Positions::Learned => {
                PositionTable::Learned(uniform_var(&[config.max_len + 1, d], unit, dtype, device, rng)?)
            }
            Positions::Sinusoidal => PositionTable::Fixed(sinusoidal_table(config.max_len + 1, d, dtype, device)?),
        };
        let blocks = (0..config.layers)
            .map(|_| {
                Ok(Block {
                    ln1: LayerNorm::new(d, dtype, device)?,
                    q: linear(d, d, dtype, device, rng)?,
                    k: linear(d, d, dtype, device, rng)?,
                    v: linear(d, d, dtype, device, rng)?,
                    o: linear(d, d, dtype, device, rng)?,
                    ln2: LayerNorm::new(d, dtype, device)?,
                    ff1: linear(d, f, dtype, device, rng)?,
                    ff2: linear(f, d, dtype, device, rng)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut head = |n: usize| (n > 0).then(|| linear(d, n, dtype, device, rng)).transpose();
        let position_head = head(config.position_outputs)?;
        let pooled_head = head(config.pooled_outputs)?;
        Ok(Self {
            final_ln: LayerNorm::new(d, dtype, device)?,
            config,
            dtype,
            bos,
            embedding,
            positions,
            blocks,
            position_head,
            pooled_head,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &TransformerConfig {
        &self.config
    }

    /// The dtype of every parameter and output.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Encode a batch. Refuses a batch longer than `max_len`, ids that are not u32, a mask of
    /// another shape, and real token ids `≥ vocab` (padding ids are ignored).
    pub fn forward(&self, tokens: &TokenBatch) -> Result<TransformerOutput> {
        let c = &self.config;
        let (b, l) = tokens.dims()?;
        let (t, d) = (l + 1, c.d_model);
        if l > c.max_len {
            return Err(GfnError::invalid(
                "tokens",
                format!("a batch of length {l}"),
                format!("must be at most max_len = {}", c.max_len),
            ));
        }
        if tokens.ids.dtype() != DType::U32 || tokens.mask.dims() != [b, l] {
            return Err(GfnError::invalid(
                "tokens",
                format!("ids {:?} {:?}", tokens.ids.dtype(), tokens.ids.dims())
                    + &format!(", mask {:?}", tokens.mask.dims()),
                "must be u32 ids and a mask of the same [B, L] shape",
            ));
        }
        let mask = tokens.mask.to_dtype(self.dtype)?;
        // Padding ids are replaced by 0 so whatever they hold is never looked up.
        let ids = tokens.ids.mul(&tokens.mask.to_dtype(DType::U32)?)?.flatten_all()?;
        if b * l > 0 {
            let top = ids.max(0)?.to_scalar::<u32>()?;
            if top as usize >= c.vocab {
                return Err(GfnError::invalid(
                    "tokens",
                    format!("id {top}"),
                    format!("must be below vocab = {}", c.vocab),
                ));
            }
        }
        let emb = self.embedding.as_tensor().index_select(&ids, 0)?.reshape((b, l, d))?;
        let bos = self.bos.as_tensor().reshape((1, 1, d))?;
        let bos = bos.broadcast_as((b, 1, d))?.contiguous()?;
        let table = match &self.positions {
            PositionTable::Learned(v) => v.as_tensor().narrow(0, 0, t)?,
            PositionTable::Fixed(x) => x.narrow(0, 0, t)?,
        };
        let x = Tensor::cat(&[&bos, &emb], 1)?.broadcast_add(&table)?;
        // Key mask m = [1, mask] `[B, T]`; the additive score bias (m − 1)·10⁹ `[B, 1, 1, T]`.
        let keys = Tensor::cat(&[&Tensor::ones((b, 1), self.dtype, mask.device())?, &mask], 1)?;
        let bias = keys.affine(MASK_PENALTY, -MASK_PENALTY)?.reshape((b, 1, 1, t))?;
        let mut h = x.reshape((b * t, d))?;
        for block in &self.blocks {
            h = (&h + self.attention(block, &block.ln1.forward(&h)?, b, t, &bias)?)?;
            let inner = gelu(&block.ff1.forward(&block.ln2.forward(&h)?, false)?)?;
            h = (&h + block.ff2.forward(&inner, false)?)?;
        }
        let hidden = self.final_ln.forward(&h)?.reshape((b, t, d))?;
        let hidden = hidden.broadcast_mul(&keys.unsqueeze(2)?)?;
        let positions = self.position_head.as_ref().map(|head| -> Result<Tensor> {
            let tok = hidden.narrow(1, 1, l)?.reshape((b * l, d))?;
            let out = head.forward(&tok, false)?.reshape((b, l, c.position_outputs))?;
            Ok(out.broadcast_mul(&mask.unsqueeze(2)?)?)
        });
        let pooled = self.pooled_head.as_ref().map(|head| -> Result<Tensor> {
            head.forward(&hidden.sum(1)?.broadcast_div(&keys.sum_keepdim(1)?)?, false)
        });
        let (positions, pooled) = (positions.transpose()?, pooled.transpose()?);
        Ok(TransformerOutput {
            positions,
            pooled,
            hidden,
        })
    }

    /// Multi-head scaled dot-product attention on `x` `[B·T, d_model]` (already LayerNormed):
    /// per head `softmax(Q·Kᵀ/√d_h + bias)·V` with `Q = x·W_q + b_q` (likewise K, V) split into
    /// `heads` slices of width `d_h = d_model / heads`, heads concatenated, then `·W_o + b_o`.
    fn attention(&self, block: &Block, x: &Tensor, b: usize, t: usize, bias: &Tensor) -> Result<Tensor> {
        let (heads, d) = (self.config.heads, self.config.d_model);
        let dh = d / heads;
        // `[B·T, d_model] → [B, heads, T, d_h]`.
        let split = |lin: &Linear| -> Result<Tensor> {
            let y = lin.forward(x, false)?.reshape((b, t, heads, dh))?;
            Ok(y.transpose(1, 2)?.contiguous()?)
        };
        let (q, k, v) = (split(&block.q)?, split(&block.k)?, split(&block.v)?);
        let scores = q.matmul(&k.t()?.contiguous()?)?.affine(1.0 / (dh as f64).sqrt(), 0.0)?;
        let weights = softmax_last(&scores.broadcast_add(bias)?)?;
        let mixed = weights.matmul(&v)?.transpose(1, 2)?.contiguous()?.reshape((b * t, d))?;
        block.o.forward(&mixed, false)
    }

    /// Named parameters: `{prefix}.bos`, `{prefix}.embedding`, `{prefix}.positions` (learned only),
    /// `{prefix}.layers.{i}.{ln1,ln2}.{gain,bias}`, `{prefix}.layers.{i}.attn.{q,k,v,o}.{weight,bias}`,
    /// `{prefix}.layers.{i}.ffn.{0,1}.{weight,bias}`, `{prefix}.final_ln.{gain,bias}`,
    /// `{prefix}.position_head.{weight,bias}`, `{prefix}.pooled_head.{weight,bias}` (heads only
    /// when present).
    pub fn named_params(&self, prefix: &str, out: &mut Vec<(String, Var)>) {
        let lin = |name: String, l: &Linear, out: &mut Vec<(String, Var)>| {
            out.push((format!("{name}.weight"), l.weight.clone()));
            out.push((format!("{name}.bias"), l.bias.clone()));
        };
        out.push((format!("{prefix}.bos"), self.bos.clone()));
        out.push((format!("{prefix}.embedding"), self.embedding.clone()));
        if let PositionTable::Learned(v) = &self.positions {
            out.push((format!("{prefix}.positions"), v.clone()));
        }
        for (i, block) in self.blocks.iter().enumerate() {
            let p = format!("{prefix}.layers.{i}");
            block.ln1.named_params(&format!("{p}.ln1"), out);
            for (name, l) in [("q", &block.q), ("k", &block.k), ("v", &block.v), ("o", &block.o)] {
                lin(format!("{p}.attn.{name}"), l, out);
            }
            block.ln2.named_params(&format!("{p}.ln2"), out);
            lin(format!("{p}.ffn.0"), &block.ff1, out);
            lin(format!("{p}.ffn.1"), &block.ff2, out);
        }
        self.final_ln.named_params(&format!("{prefix}.final_ln"), out);
        if let Some(h) = &self.position_head {
            lin(format!("{prefix}.position_head"), h, out);
        }
        if let Some(h) = &self.pooled_head {
            lin(format!("{prefix}.pooled_head"), h, out);
        }
    }

    /// Number of scalar parameters.
    pub fn num_params(&self) -> usize {
        let mut params = Vec::new();
        self.named_params("", &mut params);
        params.iter().map(|(_, v)| v.elem_count()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng_from_seed;

    const VOCAB: usize = 5;

    fn config(positions: Positions, max_len: usize) -> TransformerConfig {
        TransformerConfig {
            vocab: VOCAB,
            max_len,
            d_model: 8,
            heads: 2,
            layers: 2,
            d_ff: 12,
            positions,
            position_outputs: 3,
            pooled_outputs: 2,
        }
    }

    fn encoder(cfg: TransformerConfig, seed: u64) -> TransformerEncoder {
        TransformerEncoder::new(cfg, DType::F64, &Device::Cpu, &mut rng_from_seed(seed)).unwrap()
    }

    fn batch(seqs: &[Vec<u32>], max_len: usize) -> TokenBatch {
        TokenBatch::from_sequences(seqs, VOCAB, max_len, &Device::Cpu).unwrap()
    }

    /// (per-position `[B][L][P]`, pooled `[B][Q]`) as host vectors.
    type Host = (Vec<Vec<Vec<f64>>>, Vec<Vec<f64>>);

    fn run(enc: &TransformerEncoder, tokens: &TokenBatch) -> Host {
        let out = enc.forward(tokens).unwrap();
        (
            out.positions.unwrap().to_vec3().unwrap(),
            out.pooled.unwrap().to_vec2().unwrap(),
        )
    }

    /// Any tensor's entries as host f64, row-major.
    fn flat(t: &Tensor) -> Vec<f64> {
        t.to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    fn diff(a: &[f64], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
    }

    /// Row `r` of `a` matches row `r2` of `b` on its `len` real positions and its pooled output.
    fn same_row(a: &Host, r: usize, b: &Host, r2: usize, len: usize, tol: f64) {
        for j in 0..len {
            let e = diff(&a.0[r][j], &b.0[r2][j]);
            assert!(e <= tol, "row {r} vs {r2}, position {j}: {e:e}");
        }
        let e = diff(&a.1[r], &b.1[r2]);
        assert!(e <= tol, "pooled row {r} vs {r2}: {e:e}");
    }

    #[test]
    fn padding_changes_nothing_and_padded_outputs_are_zero() {
        let dev = Device::Cpu;
        let mut rng = rng_from_seed(11);
        for positions in [Positions::Learned, Positions::Sinusoidal] {
            let enc = encoder(config(positions, 7), 1);
            let seqs = vec![vec![1, 2, 3], vec![4], vec![], vec![0, 0]];
            let tight = run(&enc, &batch(&seqs, 7));
            // The same rows padded to 7 columns whose padding holds random ids, some ≥ vocab.
            let l = 7;
            let (mut ids, mut mask) = (vec![0u32; seqs.len() * l], vec![0f32; seqs.len() * l]);
            for (r, s) in seqs.iter().enumerate() {
                for j in 0..l {
                    ids[r * l + j] = s.get(j).copied().unwrap_or_else(|| rng.random_range(0..40));
                    mask[r * l + j] = if j < s.len() { 1.0 } else { 0.0 };
                }
            }
            let padded = TokenBatch {
                ids: Tensor::from_vec(ids, (seqs.len(), l), &dev).unwrap(),
                mask: Tensor::from_vec(mask, (seqs.len(), l), &dev).unwrap(),
            };
            let loose = run(&enc, &padded);
            let hidden = enc.forward(&padded).unwrap().hidden.to_vec3::<f64>().unwrap();
            for (r, s) in seqs.iter().enumerate() {
                same_row(&tight, r, &loose, r, s.len(), 1e-10);
                for j in s.len()..l {
                    assert!(loose.0[r][j].iter().all(|&v| v == 0.0), "{positions:?} row {r} pad {j}");
                    assert!(hidden[r][j + 1].iter().all(|&v| v == 0.0), "hidden {r} {j}");
                }
                for j in s.len()..tight.0[r].len() {
                    assert!(tight.0[r][j].iter().all(|&v| v == 0.0));
                }
            }
        }
    }

    #[test]
    fn rows_do_not_depend_on_the_rest_of_the_batch_or_its_order() {
        let enc = encoder(config(Positions::Learned, 6), 2);
        let seqs = vec![vec![1, 2], vec![3, 3, 4, 0, 1, 2], vec![2], vec![]];
        let together = run(&enc, &batch(&seqs, 6));
        for (r, s) in seqs.iter().enumerate() {
            let alone = run(&enc, &batch(std::slice::from_ref(s), 6));
            same_row(&together, r, &alone, 0, s.len(), 1e-10);
        }
        let order = [3, 0, 2, 1];
        let shuffled: Vec<_> = order.iter().map(|&r| seqs[r].clone()).collect();
        let permuted = run(&enc, &batch(&shuffled, 6));
        for (i, &r) in order.iter().enumerate() {
            same_row(&together, r, &permuted, i, seqs[r].len(), 1e-10);
        }
    }

    #[test]
    fn gradients_match_central_finite_differences() {
        let dev = Device::Cpu;
        let enc = encoder(config(Positions::Learned, 4), 3);
        // Every token id and every position row is used.
        let tokens = batch(&[vec![0, 1, 2, 3], vec![4, 2], vec![], vec![3, 0, 4]], 4);
        let mut rng = rng_from_seed(5);
        let mut draw = |n: usize| -> Vec<f64> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
        let c1 = Tensor::from_vec(draw(4 * 2), (4, 2), &dev).unwrap();
        let c2 = Tensor::from_vec(draw(4 * 4 * 3), (4, 4, 3), &dev).unwrap();
        let loss = || -> Tensor {
            let out = enc.forward(&tokens).unwrap();
            let a = (out.pooled.unwrap() * &c1).unwrap().sum_all().unwrap();
            (a + (out.positions.unwrap() * &c2).unwrap().sum_all().unwrap()).unwrap()
        };
        let grads = loss().backward().unwrap();
        let mut params = Vec::new();
        enc.named_params("enc", &mut params);
        assert_eq!(params.len(), 3 + 2 * 16 + 2 + 4);
        let h = 1e-6;
        for (name, var) in &params {
            let (g, base, shape) = (flat(grads.get(var).unwrap()), flat(var), var.shape().clone());
            let mut largest = 0f64;
            for _ in 0..6 {
                let i = rng.random_range(0..base.len());
                let at = |delta: f64| -> f64 {
                    let mut v = base.clone();
                    v[i] += delta;
                    var.set(&Tensor::from_vec(v, shape.clone(), &dev).unwrap()).unwrap();
                    loss().to_scalar::<f64>().unwrap()
                };
                let fd = (at(h) - at(-h)) / (2.0 * h);
                at(0.0);
                let err = (fd - g[i]).abs() / fd.abs().max(g[i].abs()).max(1e-3);
                assert!(err <= 1e-5, "{name}[{i}]: autograd {} vs f.d. {fd} ({err:e})", g[i]);
                largest = largest.max(g[i].abs());
            }
            // The key bias shifts every score of a query equally, which the softmax ignores.
            if !name.ends_with("attn.k.bias") {
                assert!(largest > 1e-6, "{name} receives no gradient at the sampled entries");
            }
        }
    }

    #[test]
    fn order_matters_and_identical_rows_agree() {
        for positions in [Positions::Learned, Positions::Sinusoidal] {
            let enc = encoder(config(positions, 4), 4);
            let out = run(&enc, &batch(&[vec![1, 2, 3], vec![3, 2, 1], vec![1, 2, 3]], 4));
            let apart = diff(&out.1[0], &out.1[1]);
            assert!(
                apart > 1e-6,
                "{positions:?}: a sequence and its reverse agree ({apart:e})"
            );
            same_row(&out, 0, &out, 2, 3, 1e-12);
        }
    }

    #[test]
    fn the_empty_sequence_is_finite_and_the_same_everywhere() {
        let dev = Device::Cpu;
        let enc = encoder(config(Positions::Sinusoidal, 4), 6);
        let alone = run(&enc, &batch(&[vec![]], 4));
        let mixed = run(&enc, &batch(&[vec![], vec![1, 2, 3, 4], vec![]], 4));
        assert!(alone.1[0].iter().all(|v| v.is_finite()));
        same_row(&alone, 0, &mixed, 0, 0, 1e-12);
        same_row(&alone, 0, &mixed, 2, 0, 1e-12);
        assert!(mixed.0[0].iter().chain(&mixed.0[2]).flatten().all(|&v| v == 0.0));
        // A batch with no token column at all is the same state.
        let bare = TokenBatch {
            ids: Tensor::zeros((2, 0), DType::U32, &dev).unwrap(),
            mask: Tensor::zeros((2, 0), DType::F32, &dev).unwrap(),
        };
        let out = enc.forward(&bare).unwrap();
        assert_eq!(out.positions.unwrap().dims(), [2, 0, 3]);
        assert_eq!(out.hidden.dims(), [2, 1, 8]);
        let pooled = out.pooled.unwrap().to_vec2::<f64>().unwrap();
        assert!(diff(&alone.1[0], &pooled[0]) <= 1e-12 && diff(&alone.1[0], &pooled[1]) <= 1e-12);
    }

    #[test]
    fn a_seed_fixes_every_weight_and_output() {
        let cfg = config(Positions::Learned, 4);
        let (a, b) = (encoder(cfg.clone(), 7), encoder(cfg.clone(), 7));
        let other = encoder(cfg.clone(), 8);
        let params = |e: &TransformerEncoder| -> Vec<(String, Vec<f64>)> {
            let mut p = Vec::new();
            e.named_params("m", &mut p);
            p.iter().map(|(n, v)| (n.clone(), flat(v))).collect()
        };
        let (pa, pb, po) = (params(&a), params(&b), params(&other));
        assert_eq!(pa, pb);
        for ((name, x), (_, y)) in pa.iter().zip(&po) {
            // LayerNorm parameters are constants; everything else is drawn.
            assert_eq!(name.contains("ln"), x == y, "{name}");
        }
        let tokens = batch(&[vec![1, 2, 3], vec![0]], 4);
        let (oa, ob, oo) = (run(&a, &tokens), run(&b, &tokens), run(&other, &tokens));
        assert_eq!(oa, ob);
        assert!(diff(&oa.1[0], &oo.1[0]) > 1e-6);
        // An f32 encoder from the same seed holds the same draws, rounded to f32, and runs in f32.
        let single = TransformerEncoder::new(cfg, DType::F32, &Device::Cpu, &mut rng_from_seed(7)).unwrap();
        assert_eq!(params(&single), pa);
        let mut p32 = Vec::new();
        single.named_params("m", &mut p32);
        assert!(p32.iter().all(|(_, v)| v.dtype() == DType::F32));
        let out = single.forward(&tokens).unwrap();
        assert_eq!(out.pooled.unwrap().dtype(), DType::F32);
    }

    #[test]
    fn shapes_and_parameter_count() {
        for positions in [Positions::Learned, Positions::Sinusoidal] {
            let mut cfg = config(positions, 4);
            cfg.position_outputs = 0;
            let enc = encoder(cfg, 9);
            let (d, f, v, l) = (8, 12, VOCAB, 4);
            let layer = 2 * d + 4 * (d * d + d) + 2 * d + (d * f + f) + (f * d + d);
            let learned = (positions == Positions::Learned) as usize * (l + 1) * d;
            assert_eq!(enc.num_params(), d + v * d + learned + 2 * layer + 2 * d + (d * 2 + 2));
            let out = enc.forward(&batch(&[vec![1], vec![2, 3, 4]], 4)).unwrap();
            assert!(out.positions.is_none());
            assert_eq!(out.pooled.unwrap().dims(), [2, 2]);
            assert_eq!(out.hidden.dims(), [2, 4, 8]);
        }
    }

    #[test]
    fn bad_configurations_and_inputs_name_the_field() {
        let dev = Device::Cpu;
        let err = |cfg: TransformerConfig| -> String {
            TransformerEncoder::new(cfg, DType::F64, &dev, &mut rng_from_seed(0))
                .unwrap_err()
                .to_string()
        };
        let base = config(Positions::Learned, 4);
        let mut three = base.clone();
        three.heads = 3;
        let e = err(three);
        assert!(e.contains("heads = 3") && e.contains("d_model = 8"), "{e}");
        let names = ["vocab", "max_len", "d_model", "heads", "layers", "d_ff"];
        for (k, field) in names.iter().enumerate() {
            let mut c = base.clone();
            let slots = [
                &mut c.vocab,
                &mut c.max_len,
                &mut c.d_model,
                &mut c.heads,
                &mut c.layers,
                &mut c.d_ff,
            ];
            *slots.into_iter().nth(k).unwrap() = 0;
            let e = err(c);
            assert!(e.contains(&format!("invalid {field} = 0")), "{e}");
        }
        let e = err(TransformerConfig {
            position_outputs: 0,
            pooled_outputs: 0,
            ..base.clone()
        });
        assert!(e.contains("position_outputs") && e.contains("pooled_outputs"), "{e}");
        let e = TransformerEncoder::new(base.clone(), DType::F16, &dev, &mut rng_from_seed(0)).unwrap_err();
        assert!(e.to_string().contains("dtype"), "{e}");

        let enc = encoder(base, 0);
        let long = TokenBatch::from_sequences(&[vec![1; 5]], VOCAB, 10, &dev).unwrap();
        let e = enc.forward(&long).unwrap_err().to_string();
        assert!(e.contains("max_len = 4"), "{e}");
        let ok = batch(&[vec![1, 2]], 4);
        let bad_mask = TokenBatch {
            mask: Tensor::ones((1, 3), DType::F32, &dev).unwrap(),
            ..ok.clone()
        };
        let e = enc.forward(&bad_mask).unwrap_err().to_string();
        assert!(e.contains("invalid tokens") && e.contains("mask"), "{e}");
        let bad_id = TokenBatch {
            ids: Tensor::new(&[[1u32, 5]], &dev).unwrap(),
            ..ok
        };
        let e = enc.forward(&bad_id).unwrap_err().to_string();
        assert!(e.contains("id 5") && e.contains("vocab = 5"), "{e}");
    }
}
