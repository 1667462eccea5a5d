//! The CPU fast path: an MLP forward that records its activations row by row as a rollout
//! proceeds, and one batched, hand-written backward pass over all recorded rows.
//!
//! In a training step every visited state is evaluated exactly once, during the rollout, one
//! small batch per time step. The rollout's outputs *are* the loss's outputs: they become a leaf
//! tensor, candle's autograd differentiates the loss down to that leaf (cheap: `[rows, outputs]`),
//! and the gradient flows through the network in a single batched backward pass of large GEMMs
//! (`dW = Aᵀ·G`, `db = Σ_rows G`, `G ← (G·Wᵀ) ⊙ 1[A > 0]`). Nothing is computed twice, and the
//! per-op bookkeeping of a tensor graph (gradient zeroing, strided bias reductions, allocation per
//! op) disappears. Weights stay in the candle `Var`s, the single source of truth; this module reads
//! them through their CPU storage. Tested against candle's autograd in `estimator.rs`.

use candle_core::{CpuStorage, Storage, Tensor};

use crate::nn::Mlp;
use crate::{GfnError, Result};

/// `C (+)= op(A)·op(B)`, all row-major; `op(X) = Xᵀ` when its flag is set (X then stored
/// transposed). `C` is `m×n`, `op(A)` is `m×k`, `op(B)` is `k×n`.
#[allow(unsafe_code)]
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_t: bool,
    b: &[f32],
    b_t: bool,
    c: &mut [f32],
    accumulate: bool,
) {
    assert!(
        a.len() >= m * k && b.len() >= k * n && c.len() >= m * n,
        "sgemm: operand too short"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return;
    }
    let (a_rs, a_cs) = if a_t { (1, m as isize) } else { (k as isize, 1) };
    let (b_rs, b_cs) = if b_t { (1, k as isize) } else { (n as isize, 1) };
    let threads = candle_core::utils::get_num_threads();
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above guarantee that every index the strides can reach
    // (rows < m or k, columns < k or n) lies inside the slices, and `c` is borrowed mutably, so
    // it aliases neither `a` nor `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// Run `f` on the contiguous f32 data of a CPU tensor.
pub fn with_cpu_f32<T>(t: &Tensor, f: impl FnOnce(&[f32]) -> T) -> Result<T> {
    let (storage, layout) = t.storage_and_layout();
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| GfnError::Other("fast path: parameters must be contiguous".into()))?;
    match &*storage {
        Storage::Cpu(CpuStorage::F32(v)) => Ok(f(&v[start..end])),
        _ => Err(GfnError::Other("fast path: f32 parameters on the CPU only".into())),
    }
}

/// Activations of every row an [`Mlp`] evaluated since the last [`MlpTape::clear`]:
/// `acts[0]` the inputs, `acts[l]` the output of layer `l − 1` (after ReLU for hidden layers),
/// `acts[L]` the network outputs.
#[derive(Debug, Default, Clone)]
pub struct MlpTape {
    acts: Vec<Vec<f32>>,
    dims: Vec<usize>,
    rows: usize,
}

impl MlpTape {
    /// Forget all rows (keeps allocations).
    pub fn clear(&mut self) {
        self.acts.iter_mut().for_each(Vec::clear);
        self.rows = 0;
    }
    /// Rows recorded.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Outputs of all recorded rows, `[rows, out]`.
    pub fn outputs(&self) -> &[f32] {
        self.acts.last().map_or(&[], Vec::as_slice)
    }
    /// Output width.
    pub fn out_dim(&self) -> usize {
        self.dims.last().copied().unwrap_or(0)
    }
}

/// Parameter gradients of an [`Mlp`], per layer `(dW [in, out], db [out])`.
#[derive(Debug, Default, Clone)]
pub struct MlpGrads {
    /// Per layer.
    pub layers: Vec<(Vec<f32>, Vec<f32>)>,
    scratch: Vec<f32>,
    next: Vec<f32>,
}

impl MlpGrads {
    /// The gradients flat, in [`Mlp::flat_params`] order, appended to `out`.
    pub fn flatten_into(&self, out: &mut Vec<f32>) {
        for (w, b) in &self.layers {
            out.extend_from_slice(w);
            out.extend_from_slice(b);
        }
    }
}

impl Mlp {
    /// Layer widths, input first.
    pub fn dims(&self) -> Vec<usize> {
        let mut d = vec![self.layers[0].weight.dims()[0]];
        d.extend(self.layers.iter().map(|l| l.weight.dims()[1]));
        d
    }

    /// Evaluate `rows` new rows `x` (`[rows, in]`), append their activations to `tape`, and
    /// return their outputs.
    pub fn forward_taped<'t>(&self, x: &[f32], rows: usize, tape: &'t mut MlpTape) -> Result<&'t [f32]> {
        let dims = self.dims();
        if tape.dims != dims {
            tape.dims = dims.clone();
            tape.acts = vec![Vec::new(); dims.len()];
            tape.rows = 0;
        }
        if x.len() != rows * dims[0] {
            return Err(GfnError::Other(format!(
                "fast path: {} inputs for {rows} rows of width {}",
                x.len(),
                dims[0]
            )));
        }
        let r0 = tape.rows;
        tape.acts[0].extend_from_slice(x);
        let last = self.layers.len() - 1;
        for (l, layer) in self.layers.iter().enumerate() {
            let (din, dout) = (dims[l], dims[l + 1]);
            let (lo, hi) = tape.acts.split_at_mut(l + 1);
            let input = &lo[l][r0 * din..];
            let out = &mut hi[0];
            let start = out.len();
            with_cpu_f32(layer.bias.as_tensor(), |b| {
                for _ in 0..rows {
                    out.extend_from_slice(b);
                }
            })?;
            with_cpu_f32(layer.weight.as_tensor(), |w| {
                sgemm(rows, dout, din, input, false, w, false, &mut out[start..], true);
            })?;
            if l < last {
                out[start..].iter_mut().for_each(|v| *v = v.max(0.0));
            }
        }
        tape.rows += rows;
        Ok(&tape.acts[last + 1][r0 * dims[last + 1]..])
    }

    /// Forward-mode derivative over every row of `tape`: the outputs' change `J·v` (`[rows, out]`,
    /// into `out`) for a change `v` of the parameters, flat in [`Mlp::flat_params`] order. Exact:
    /// the tangent goes through each layer as `ṫ ← (ṫ·W + A·V_W + v_b) ⊙ 1[A' > 0]`, with the
    /// tape's activations `A` (inputs held constant) and the same ReLU gate as
    /// [`Mlp::backward_taped`], so `⟨J·v, u⟩ = ⟨v, Jᵀ·u⟩` to rounding.
    pub fn jvp_taped(&self, tape: &MlpTape, v: &[f32], out: &mut Vec<f32>) -> Result<()> {
        let dims = &tape.dims;
        if *dims != self.dims() || v.len() != self.num_params() {
            return Err(GfnError::Other(format!(
                "fast path: a tangent of {} parameters for a network of {}",
                v.len(),
                self.num_params()
            )));
        }
        let rows = tape.rows;
        let nl = self.layers.len();
        let mut tangent: Vec<f32> = Vec::new();
        let mut offset = 0;
        for l in 0..nl {
            let (din, dout) = (dims[l], dims[l + 1]);
            let (vw, vb) = (
                &v[offset..offset + din * dout],
                &v[offset + din * dout..offset + din * dout + dout],
            );
            offset += din * dout + dout;
            let mut next = Vec::with_capacity(rows * dout);
            for _ in 0..rows {
                next.extend_from_slice(vb);
            }
            sgemm(rows, dout, din, &tape.acts[l], false, vw, false, &mut next, true);
            if l > 0 {
                with_cpu_f32(self.layers[l].weight.as_tensor(), |w| {
                    sgemm(rows, dout, din, &tangent, false, w, false, &mut next, true);
                })?;
            }
            if l + 1 < nl {
                for (d, &a) in next.iter_mut().zip(&tape.acts[l + 1]) {
                    *d = if a > 0.0 { *d } else { 0.0 };
                }
            }
            tangent = next;
        }
        *out = tangent;
        Ok(())
    }

    /// Every parameter, flat: per layer the weight `[in, out]` row-major, then the bias (the
    /// order of [`Mlp::named_params`] and of [`MlpGrads::layers`]).
    pub fn flat_params(&self) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(self.num_params());
        for l in &self.layers {
            with_cpu_f32(l.weight.as_tensor(), |w| out.extend_from_slice(w))?;
            with_cpu_f32(l.bias.as_tensor(), |b| out.extend_from_slice(b))?;
        }
        Ok(out)
    }

    /// Overwrite every parameter from a flat vector in [`Mlp::flat_params`] order.
    pub fn set_flat_params(&self, flat: &[f32]) -> Result<()> {
        if flat.len() != self.num_params() {
            return Err(GfnError::Other(format!(
                "{} values for a network of {} parameters",
                flat.len(),
                self.num_params()
            )));
        }
        let mut offset = 0;
        for l in &self.layers {
            for var in [&l.weight, &l.bias] {
                let n = var.elem_count();
                let t = Tensor::from_slice(&flat[offset..offset + n], var.dims(), var.device())?;
                var.set(&t)?;
                offset += n;
            }
        }
        Ok(())
    }

    /// Backward pass over every row of `tape` given `d_out = ∂L/∂outputs` (`[rows, out]`):
    /// fills `grads` with `∂L/∂W`, `∂L/∂b` of every layer.
    pub fn backward_taped(&self, tape: &MlpTape, d_out: &[f32], grads: &mut MlpGrads) -> Result<()> {
        let dims = &tape.dims;
        let rows = tape.rows;
        if *dims != self.dims() || d_out.len() != rows * tape.out_dim() {
            return Err(GfnError::Other(
                "fast path: tape and gradient do not match the network".into(),
            ));
        }
        let nl = self.layers.len();
        grads.layers.resize_with(nl, Default::default);
        grads.scratch.clear();
        grads.scratch.extend_from_slice(d_out);
        for l in (0..nl).rev() {
            let (din, dout) = (dims[l], dims[l + 1]);
            let (dw, db) = &mut grads.layers[l];
            dw.resize(din * dout, 0.0);
            db.clear();
            db.resize(dout, 0.0);
            let g = &grads.scratch;
            sgemm(din, dout, rows, &tape.acts[l], true, g, false, dw, false);
            for row in g.chunks_exact(dout) {
                db.iter_mut().zip(row).for_each(|(d, &x)| *d += x);
            }
            if l > 0 {
                grads.next.resize(rows * din, 0.0);
                with_cpu_f32(self.layers[l].weight.as_tensor(), |w| {
                    sgemm(rows, din, dout, g, false, w, true, &mut grads.next, false);
                })?;
                // Branch-free select, so the loop vectorises.
                for (d, &a) in grads.next.iter_mut().zip(&tape.acts[l]) {
                    *d = if a > 0.0 { *d } else { 0.0 };
                }
                std::mem::swap(&mut grads.scratch, &mut grads.next);
            }
        }
        Ok(())
    }
}
