//! The custom ops: each a candle `CustomOp`/`InplaceOp` whose `cpu_fwd` is the reference and
//! whose `cuda_fwd` launches the kernel of the same name in `kernels.cu`.
//!
//! | op | inputs | output |
//! |---|---|---|
//! | [`Featurize`] | rows `[n, W]` u32 | `[n, F]` f32 |
//! | [`ForwardMask`] / [`BackwardMask`] | rows `[n, W]` u32 | `[n, A]` / `[n, A_B]` u8 (done rows: no forward action) |
//! | [`SampleStep`] (in place) | trajectory `[T+1, B, W]` u32, logits `[B, C ≥ A]` f32 | writes row `t+1` and the action of row `t` |
//! | [`RolloutStep`] (in place) | trajectory, the P_F net's weights | features + MLP + [`SampleStep`] fused |
//! | [`BiasAct`] | `[n, m]`, `[m]` | `x + b`, ReLU |
//! | [`LogSoftmaxGather`] | logits `[n, A]` f32, mask u8, actions `[n]` u32 | `[n]` f32, with a backward pass |
//! | [`BackwardActions`] / [`UniformLogPb`] | trajectory `[T+1, B, W]` | `[T, B]` u32 / f32 |
//! | [`LogReward`] | rows `[n, W]`, table f32 | `[n]` f32 |
//! | [`SubTbLoss`] | `δ = log P_F − log P_B` `[T, B]`, `log F` `[T+1, B]` f32, lengths `[B]` u32 | `[B]` f32, with a backward pass |
//! | [`AdamMoments`], [`AdamApply`] (in place) | moments `[2n]`, gradient / parameter | updated in place |
//!
//! All tensors must be contiguous (a start offset is fine).

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::backend::BackendStorage;

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, InplaceOp2, Layout, Result as CResult, Shape, Tensor, bail,
};

use crate::philox;
use crate::spec::{EnvSpec, NO_ACTION};

static POISON: AtomicBool = AtomicBool::new(false);

/// Fill every output buffer with a poison pattern (NaN, `0xDEADBEEF`, `0xAB`) before the kernel
/// or reference writes it, so a test sees any element left unwritten.
pub fn set_poison(on: bool) {
    POISON.store(on, Ordering::SeqCst);
}

/// Whether outputs are poisoned.
pub fn poison() -> bool {
    POISON.load(Ordering::SeqCst)
}

/// The poison values: f32 NaN, u32 `0xDEADBEEF`, u8 `0xAB`.
pub const POISON_U32: u32 = 0xDEAD_BEEF;
/// See [`POISON_U32`].
pub const POISON_U8: u8 = 0xAB;

fn contiguous(l: &Layout, op: &str) -> CResult<(usize, usize)> {
    match l.contiguous_offsets() {
        Some(r) => Ok(r),
        None => bail!("{op}: contiguous inputs only (got strides {:?})", l.stride()),
    }
}

fn cpu_u32<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> CResult<&'a [u32]> {
    let (a, b) = contiguous(l, op)?;
    match s {
        CpuStorage::U32(v) => Ok(&v[a..b]),
        other => bail!("{op}: expected u32, got {:?}", other.dtype()),
    }
}

fn cpu_u8<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> CResult<&'a [u8]> {
    let (a, b) = contiguous(l, op)?;
    match s {
        CpuStorage::U8(v) => Ok(&v[a..b]),
        other => bail!("{op}: expected u8, got {:?}", other.dtype()),
    }
}

fn cpu_f32<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> CResult<&'a [f32]> {
    let (a, b) = contiguous(l, op)?;
    match s {
        CpuStorage::F32(v) => Ok(&v[a..b]),
        other => bail!("{op}: expected f32, got {:?}", other.dtype()),
    }
}

fn cpu_f32_mut<'a>(s: &'a mut CpuStorage, l: &Layout, op: &str) -> CResult<&'a mut [f32]> {
    let (a, b) = contiguous(l, op)?;
    match s {
        CpuStorage::F32(v) => Ok(&mut v[a..b]),
        other => bail!("{op}: expected f32, got {:?}", other.dtype()),
    }
}

fn out_f32(n: usize) -> Vec<f32> {
    vec![if poison() { f32::NAN } else { 0.0 }; n]
}
fn out_u32(n: usize) -> Vec<u32> {
    vec![if poison() { POISON_U32 } else { 0 }; n]
}
fn out_u8(n: usize) -> Vec<u8> {
    vec![if poison() { POISON_U8 } else { 0 }; n]
}

/// Rows and width of a `[n, W]` (or `[.., W]`) row tensor, checked against the spec.
fn rows_of(l: &Layout, env: &EnvSpec, op: &str) -> CResult<usize> {
    let dims = l.dims();
    let w = *dims.last().unwrap_or(&0);
    if w != env.row_width() {
        bail!(
            "{op}: rows must be {} wide (state + 3), got shape {dims:?}",
            env.row_width()
        );
    }
    Ok(l.shape().elem_count() / w)
}

/// `(T, B)` of a trajectory buffer `[T+1, B, W]`.
fn traj_dims(l: &Layout, env: &EnvSpec, op: &str) -> CResult<(usize, usize)> {
    match l.dims() {
        &[t1, b, w] if t1 >= 1 && w == env.row_width() => Ok((t1 - 1, b)),
        d => bail!("{op}: trajectory must be [T+1, B, {}], got {d:?}", env.row_width()),
    }
}

/// Network inputs of every row.
#[derive(Debug, Clone, Copy)]
pub struct Featurize(pub EnvSpec);

impl CustomOp1 for Featurize {
    fn name(&self) -> &'static str {
        "gfn-featurize"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let env = &self.0;
        let n = rows_of(l, env, self.name())?;
        let rows = cpu_u32(s, l, self.name())?;
        let (w, f_dim) = (env.row_width(), env.feature_dim());
        let mut out = out_f32(n * f_dim);
        for (r, o) in rows.chunks_exact(w).zip(out.chunks_exact_mut(f_dim)) {
            for (f, o) in o.iter_mut().enumerate() {
                *o = env.feature(r, f);
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((n, f_dim))))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> CResult<(candle_core::CudaStorage, Shape)> {
        let env = &self.0;
        let n = rows_of(l, env, self.name())?;
        let f_dim = env.feature_dim();
        let out = crate::cuda::featurize(env, s, l, n, f_dim)?;
        Ok((out, Shape::from((n, f_dim))))
    }
}

/// Forward (`backward = false`) or backward action masks of every row.
#[derive(Debug, Clone, Copy)]
pub struct ForwardMask(pub EnvSpec);
/// See [`ForwardMask`].
#[derive(Debug, Clone, Copy)]
pub struct BackwardMask(pub EnvSpec);

fn mask_cpu(env: &EnvSpec, s: &CpuStorage, l: &Layout, backward: bool, op: &str) -> CResult<(CpuStorage, Shape)> {
    let n = rows_of(l, env, op)?;
    let rows = cpu_u32(s, l, op)?;
    let a_dim = if backward { env.n_backward() } else { env.n_actions() };
    let mut out = out_u8(n * a_dim);
    for (r, o) in rows.chunks_exact(env.row_width()).zip(out.chunks_exact_mut(a_dim)) {
        for (a, o) in o.iter_mut().enumerate() {
            *o = u8::from(if backward {
                env.bwd_allowed(r, a)
            } else {
                r[env.done_col()] == 0 && env.fwd_allowed(r, a)
            });
        }
    }
    Ok((CpuStorage::U8(out), Shape::from((n, a_dim))))
}

impl CustomOp1 for ForwardMask {
    fn name(&self) -> &'static str {
        "gfn-forward-mask"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        mask_cpu(&self.0, s, l, false, self.name())
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> CResult<(candle_core::CudaStorage, Shape)> {
        let n = rows_of(l, &self.0, self.name())?;
        let out = crate::cuda::mask(&self.0, s, l, n, false)?;
        Ok((out, Shape::from((n, self.0.n_actions()))))
    }
}

impl CustomOp1 for BackwardMask {
    fn name(&self) -> &'static str {
        "gfn-backward-mask"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        mask_cpu(&self.0, s, l, true, self.name())
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> CResult<(candle_core::CudaStorage, Shape)> {
        let n = rows_of(l, &self.0, self.name())?;
        let out = crate::cuda::mask(&self.0, s, l, n, true)?;
        Ok((out, Shape::from((n, self.0.n_backward()))))
    }
}

/// The sampler's settings (`struct SampleP` in `kernels.cu`).
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct SampleParams {
    /// The run's sampling seed.
    pub seed: u64,
    /// The training iteration (part of the RNG counter).
    pub iteration: u64,
    /// Uniform-exploration weight ε ∈ [0, 1].
    pub epsilon: f64,
    /// `1 / temperature`.
    pub inv_temp: f64,
}

#[cfg(feature = "cuda")]
#[allow(unsafe_code)]
// SAFETY: plain old data, `#[repr(C)]`, laid out as `struct SampleP`.
unsafe impl candle_core::cuda_backend::cudarc::driver::DeviceRepr for SampleParams {}

impl SampleParams {
    /// The action drawn for row `row` of state `s` at step `t` from `logits` (P_F first): with
    /// the uniform of slot `A` below ε, the `⌊u·n⌋`-th allowed action (`u` of slot `A+1`);
    /// otherwise Gumbel-max, `argmax_a l_a/T − log(−log u_a)` over the allowed actions (`u_a` the
    /// uniform of slot `a`, ties to the smaller index). Exactly a draw from
    /// `(1−ε)·softmax(l/T) + ε·uniform` on the allowed actions; [`NO_ACTION`] if none is allowed.
    /// The kernels' `warp_sample`.
    pub fn pick(&self, env: &EnvSpec, s: &[u32], logits: &[f32], row: u32, t: u32) -> u32 {
        let a_n = env.n_actions();
        let n_valid = (0..a_n).filter(|&a| env.fwd_allowed(s, a)).count();
        if n_valid == 0 {
            return NO_ACTION;
        }
        let u = |slot: usize| philox::uniform(self.seed, row, t, self.iteration, slot as u32);
        if self.epsilon > 0.0 && u(a_n) < self.epsilon {
            let k = ((u(a_n + 1) * n_valid as f64) as usize).min(n_valid - 1);
            if let Some(a) = (0..a_n).filter(|&a| env.fwd_allowed(s, a)).nth(k) {
                return a as u32;
            }
        }
        let (mut best, mut arg) = (f64::NEG_INFINITY, NO_ACTION);
        for (a, &l) in logits.iter().enumerate().take(a_n) {
            if !env.fwd_allowed(s, a) {
                continue;
            }
            let v = f64::from(l) * self.inv_temp - (-u(a).ln()).ln();
            if v > best {
                best = v;
                arg = a as u32;
            }
        }
        arg
    }
}

/// Copy row `t` to row `t+1` (action [`NO_ACTION`]), record `chosen` in row `t` and apply it to
/// row `t+1` (the kernels' `warp_record`).
fn record(env: &EnvSpec, s: &mut [u32], nx: &mut [u32], chosen: u32, was_done: bool) {
    nx.copy_from_slice(s);
    nx[env.act_col()] = NO_ACTION;
    s[env.act_col()] = if was_done { NO_ACTION } else { chosen };
    if !was_done {
        if chosen == NO_ACTION {
            nx[env.done_col()] = 1;
        } else {
            env.apply_step(nx, chosen);
        }
    }
}

/// Slots `t` and `t+1` of a `[T+1, B, W]` trajectory buffer, mutable.
fn slots_mut<'a>(
    s1: &'a mut CpuStorage,
    l1: &Layout,
    env: &EnvSpec,
    t: usize,
    op: &str,
) -> CResult<(&'a mut [u32], &'a mut [u32], usize)> {
    let (steps, batch) = traj_dims(l1, env, op)?;
    if t >= steps {
        bail!("{op}: slot {t} out of range (T = {steps})");
    }
    let (a, b) = contiguous(l1, op)?;
    let CpuStorage::U32(traj) = s1 else {
        bail!("{op}: trajectory must be u32")
    };
    let w = env.row_width();
    let (cur, next) = traj[a..b][t * batch * w..(t + 2) * batch * w].split_at_mut(batch * w);
    Ok((cur, next, batch))
}

/// One rollout step from given logits, in place on a trajectory buffer: every row `b` of slot
/// `t` draws its action with [`SampleParams::pick`] from `logits[b]` (`[B, C]`, P_F first),
/// records it in slot `t` and writes the next state into slot `t+1`.
#[derive(Debug, Clone, Copy)]
pub struct SampleStep {
    /// The environment.
    pub env: EnvSpec,
    /// The slot sampled from.
    pub t: usize,
    /// The sampler.
    pub sample: SampleParams,
}

impl InplaceOp2 for SampleStep {
    fn name(&self) -> &'static str {
        "gfn-sample-step"
    }
    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> CResult<()> {
        let env = &self.env;
        let (cur, next, batch) = slots_mut(s1, l1, env, self.t, self.name())?;
        let a_dim = env.n_actions();
        let stride = logit_stride(l2, batch, a_dim, self.name())?;
        let logits = cpu_f32(s2, l2, self.name())?;
        let w = env.row_width();
        for (bi, (s, nx)) in cur.chunks_exact_mut(w).zip(next.chunks_exact_mut(w)).enumerate() {
            let was_done = s[env.done_col()] != 0;
            let chosen = if was_done {
                NO_ACTION
            } else {
                let l = &logits[bi * stride..bi * stride + a_dim];
                self.sample.pick(env, s, l, bi as u32, self.t as u32)
            };
            record(env, s, nx, chosen, was_done);
        }
        Ok(())
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &mut candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> CResult<()> {
        let (steps, batch) = traj_dims(l1, &self.env, self.name())?;
        if self.t >= steps {
            bail!("{}: slot {} out of range (T = {steps})", self.name(), self.t);
        }
        let stride = logit_stride(l2, batch, self.env.n_actions(), self.name())?;
        crate::cuda::sample_step(self, s1, l1, s2, l2, batch, stride)
    }
}

/// Most layers [`RolloutStep`] fuses (`MAX_LAYERS` in `kernels.cu`).
pub const MAX_FUSED_LAYERS: usize = 4;
/// Largest layer width [`RolloutStep`] keeps in shared memory (2 · 4 rows · 1536 floats =
/// 48 KiB, the default limit).
pub const MAX_FUSED_WIDTH: usize = 1536;

/// The fused rollout step, in place on a trajectory buffer: for every row of slot `t`, the
/// features, the P_F net (`layers`: `(W [in, out], b [out])`, ReLU between layers, only the first
/// `A` outputs of the last), [`SampleParams::pick`], the record and the transition — one kernel
/// per environment step instead of one per layer and stage. Products are `mul_add` chains over
/// the input index from the bias, as the kernel's `fmaf` chains, so the logits are bit-identical.
#[derive(Debug, Clone)]
pub struct RolloutStep {
    /// The environment.
    pub env: EnvSpec,
    /// The slot sampled from.
    pub t: usize,
    /// The sampler.
    pub sample: SampleParams,
    /// The P_F net's layers.
    pub layers: Vec<(Tensor, Tensor)>,
    /// Trajectories per thread block on the GPU (1, 2, 4, 8 or 16); 0 = chosen from the batch
    /// and the number of multiprocessors. The samples do not depend on it.
    pub rows: usize,
}

impl RolloutStep {
    /// Layer widths `[F, h1, …, out]`, checked against the environment and the fused limits.
    pub fn dims(&self) -> CResult<Vec<usize>> {
        let op = "gfn-rollout-step";
        if self.layers.is_empty() || self.layers.len() > MAX_FUSED_LAYERS {
            bail!("{op}: 1 to {MAX_FUSED_LAYERS} layers, got {}", self.layers.len());
        }
        let mut dims = vec![self.env.feature_dim()];
        for (k, (w, b)) in self.layers.iter().enumerate() {
            match (w.dims(), b.dims()) {
                (&[i, o], &[o2]) if i == dims[k] && o == o2 && w.dtype() == DType::F32 && b.dtype() == DType::F32 => {
                    dims.push(o)
                }
                (a, c) => bail!(
                    "{op}: layer {k} must be f32 [{}, out] with bias [out], got {a:?}, {c:?}",
                    dims[k]
                ),
            }
        }
        if *dims.last().unwrap_or(&0) < self.env.n_actions() {
            bail!(
                "{op}: the last layer has fewer outputs than the {} actions",
                self.env.n_actions()
            );
        }
        if dims.iter().any(|&d| d > MAX_FUSED_WIDTH) {
            bail!("{op}: layers wider than {MAX_FUSED_WIDTH} are not fused");
        }
        Ok(dims)
    }
}

/// The CPU view of an f32 tensor's values.
fn with_cpu_values<T>(t: &Tensor, f: impl FnOnce(&[f32]) -> CResult<T>) -> CResult<T> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(s) => f(cpu_f32(s, layout, "gfn-rollout-step")?),
        _ => bail!("gfn-rollout-step: weights and trajectory on different devices"),
    }
}

impl candle_core::InplaceOp1 for RolloutStep {
    fn name(&self) -> &'static str {
        "gfn-rollout-step"
    }
    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout) -> CResult<()> {
        let env = &self.env;
        let dims = self.dims()?;
        let (cur, next, _) = slots_mut(s1, l1, env, self.t, self.name())?;
        let w = env.row_width();
        let n_layers = self.layers.len();
        let mut x = vec![0f32; dims.iter().copied().max().unwrap_or(0)];
        let mut y = x.clone();
        for (bi, (s, nx)) in cur.chunks_exact_mut(w).zip(next.chunks_exact_mut(w)).enumerate() {
            for (f, v) in x.iter_mut().enumerate().take(dims[0]) {
                *v = env.feature(s, f);
            }
            for (k, (wt, bt)) in self.layers.iter().enumerate() {
                let last = k == n_layers - 1;
                let (din, wout) = (dims[k], dims[k + 1]);
                let dout = if last { env.n_actions() } else { wout };
                with_cpu_values(wt, |wv| {
                    with_cpu_values(bt, |bv| {
                        for o in 0..dout {
                            let mut acc = bv[o];
                            for i in 0..din {
                                acc = x[i].mul_add(wv[i * wout + o], acc);
                            }
                            y[o] = if !last && acc < 0.0 { 0.0 } else { acc };
                        }
                        Ok(())
                    })
                })?;
                std::mem::swap(&mut x, &mut y);
            }
            let was_done = s[env.done_col()] != 0;
            let chosen = if was_done {
                NO_ACTION
            } else {
                self.sample
                    .pick(env, s, &x[..env.n_actions()], bi as u32, self.t as u32)
            };
            record(env, s, nx, chosen, was_done);
        }
        Ok(())
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &mut candle_core::CudaStorage, l1: &Layout) -> CResult<()> {
        let dims = self.dims()?;
        let (steps, batch) = traj_dims(l1, &self.env, self.name())?;
        if self.t >= steps {
            bail!("{}: slot {} out of range (T = {steps})", self.name(), self.t);
        }
        crate::cuda::rollout_step(self, s1, l1, batch, &dims)
    }
}

/// Row stride of a `[B, C]` logits tensor whose first `A ≤ C` columns are the P_F logits (the
/// shared-trunk output `[P_F | P_B | log F]` is read in place).
fn logit_stride(l: &Layout, batch: usize, a_dim: usize, op: &str) -> CResult<usize> {
    match l.dims() {
        &[b, c] if b == batch && c >= a_dim => Ok(c),
        d => bail!("{op}: logits must be [{batch}, C ≥ {a_dim}] (P_F first), got {d:?}"),
    }
}

/// `out = x + b` over rows, then ReLU when `relu`: the rollout's fused bias and activation
/// (x `[n, m]`, b `[m]`; no backward — the rollout keeps no graph).
#[derive(Debug, Clone, Copy)]
pub struct BiasAct {
    /// Apply ReLU after the bias.
    pub relu: bool,
}

fn bias_dims(l1: &Layout, l2: &Layout, op: &str) -> CResult<(usize, usize)> {
    match (l1.dims(), l2.dims()) {
        (&[n, m], &[m2]) if m == m2 => Ok((n, m)),
        (a, b) => bail!("{op}: x must be [n, m] and b [m], got {a:?} and {b:?}"),
    }
}

impl CustomOp2 for BiasAct {
    fn name(&self) -> &'static str {
        "gfn-bias-act"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> CResult<(CpuStorage, Shape)> {
        let (n, m) = bias_dims(l1, l2, self.name())?;
        let (x, b) = (cpu_f32(s1, l1, self.name())?, cpu_f32(s2, l2, self.name())?);
        let mut out = out_f32(n * m);
        for (o, xr) in out.chunks_exact_mut(m).zip(x.chunks_exact(m)) {
            for ((o, &x), &b) in o.iter_mut().zip(xr).zip(b) {
                let v = x + b;
                *o = if self.relu && v < 0.0 { 0.0 } else { v };
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((n, m))))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> CResult<(candle_core::CudaStorage, Shape)> {
        let (n, m) = bias_dims(l1, l2, self.name())?;
        let out = crate::cuda::bias_act(s1, l1, s2, l2, n, m, self.relu)?;
        Ok((out, Shape::from((n, m))))
    }
}

/// `out[r] = log softmax(logits[r] restricted to mask[r])[actions[r]]`, 0 where the action is
/// [`NO_ACTION`]; differentiable in the logits.
#[derive(Debug, Clone, Copy)]
pub struct LogSoftmaxGather;

/// The Jacobian rows of [`LogSoftmaxGather`]: `1[j = a] − softmax_j` on allowed `j`, 0 elsewhere
/// and on rows without an action.
#[derive(Debug, Clone, Copy)]
pub struct LogSoftmaxGatherJacobian;

fn lsg_dims(l1: &Layout, l2: &Layout, l3: &Layout, op: &str) -> CResult<(usize, usize)> {
    let (n, a) = match l1.dims() {
        &[n, a] => (n, a),
        d => bail!("{op}: logits must be [n, A], got {d:?}"),
    };
    if l2.dims() != [n, a] || l3.dims() != [n] {
        bail!(
            "{op}: mask must be [{n}, {a}] and actions [{n}], got {:?} and {:?}",
            l2.dims(),
            l3.dims()
        );
    }
    Ok((n, a))
}

/// Max and normaliser of the allowed logits of one row (f32, in index order).
fn masked_max_z(l: &[f32], m: &[u8]) -> (f32, f32) {
    env_max_z(l, |j| m[j] != 0)
}

impl CustomOp3 for LogSoftmaxGather {
    fn name(&self) -> &'static str {
        "gfn-log-softmax-gather"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (n, a_dim) = lsg_dims(l1, l2, l3, self.name())?;
        let (logits, mask, act) = (
            cpu_f32(s1, l1, self.name())?,
            cpu_u8(s2, l2, self.name())?,
            cpu_u32(s3, l3, self.name())?,
        );
        let mut out = out_f32(n);
        for r in 0..n {
            let a = act[r];
            if a == NO_ACTION {
                out[r] = 0.0;
                continue;
            }
            let (l, m) = (&logits[r * a_dim..(r + 1) * a_dim], &mask[r * a_dim..(r + 1) * a_dim]);
            let (mx, z) = masked_max_z(l, m);
            out[r] = l[a as usize] - mx - z.ln();
        }
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> CResult<(candle_core::CudaStorage, Shape)> {
        let (n, a_dim) = lsg_dims(l1, l2, l3, self.name())?;
        let out = crate::cuda::lsg(s1, l1, s2, l2, s3, l3, n, a_dim, false)?;
        Ok((out, Shape::from(n)))
    }
    fn bwd(
        &self,
        logits: &Tensor,
        mask: &Tensor,
        actions: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let jac = logits.apply_op3_no_bwd(mask, actions, &LogSoftmaxGatherJacobian)?;
        let g = jac.broadcast_mul(&grad_res.unsqueeze(1)?)?;
        Ok((Some(g), None, None))
    }
}

impl CustomOp3 for LogSoftmaxGatherJacobian {
    fn name(&self) -> &'static str {
        "gfn-log-softmax-gather-jacobian"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (n, a_dim) = lsg_dims(l1, l2, l3, self.name())?;
        let (logits, mask, act) = (
            cpu_f32(s1, l1, self.name())?,
            cpu_u8(s2, l2, self.name())?,
            cpu_u32(s3, l3, self.name())?,
        );
        let mut out = out_f32(n * a_dim);
        for r in 0..n {
            let o = &mut out[r * a_dim..(r + 1) * a_dim];
            let a = act[r];
            if a == NO_ACTION {
                o.fill(0.0);
                continue;
            }
            let (l, m) = (&logits[r * a_dim..(r + 1) * a_dim], &mask[r * a_dim..(r + 1) * a_dim]);
            let (mx, z) = masked_max_z(l, m);
            for j in 0..a_dim {
                let p = if m[j] != 0 { (l[j] - mx).exp() / z } else { 0.0 };
                o[j] = if j as u32 == a { 1.0 } else { 0.0 } - p;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((n, a_dim))))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> CResult<(candle_core::CudaStorage, Shape)> {
        let (n, a_dim) = lsg_dims(l1, l2, l3, self.name())?;
        let out = crate::cuda::lsg(s1, l1, s2, l2, s3, l3, n, a_dim, true)?;
        Ok((out, Shape::from((n, a_dim))))
    }
}

/// The backward action undoing each step `t → t+1` of a trajectory buffer, `[T, B]`.
#[derive(Debug, Clone, Copy)]
pub struct BackwardActions(pub EnvSpec);
/// `log P_B(s_t | s_{t+1})` of the uniform backward policy for each step, `[T, B]` (0 for the
/// exit step and past the end).
#[derive(Debug, Clone, Copy)]
pub struct UniformLogPb(pub EnvSpec);

impl CustomOp1 for BackwardActions {
    fn name(&self) -> &'static str {
        "gfn-backward-actions"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let env = &self.0;
        let (steps, batch) = traj_dims(l, env, self.name())?;
        let traj = cpu_u32(s, l, self.name())?;
        let w = env.row_width();
        let mut out = out_u32(steps * batch);
        for (i, o) in out.iter_mut().enumerate() {
            *o = env.bwd_action(traj[i * w + env.act_col()]);
        }
        Ok((CpuStorage::U32(out), Shape::from((steps, batch))))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> CResult<(candle_core::CudaStorage, Shape)> {
        let (steps, batch) = traj_dims(l, &self.0, self.name())?;
        let out = crate::cuda::per_step(&self.0, s, l, steps, batch, false)?;
        Ok((out, Shape::from((steps, batch))))
    }
}

impl CustomOp1 for UniformLogPb {
    fn name(&self) -> &'static str {
        "gfn-uniform-log-pb"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let env = &self.0;
        let (steps, batch) = traj_dims(l, env, self.name())?;
        let traj = cpu_u32(s, l, self.name())?;
        let w = env.row_width();
        let mut out = out_f32(steps * batch);
        for (i, o) in out.iter_mut().enumerate() {
            let ba = env.bwd_action(traj[i * w + env.act_col()]);
            if ba == NO_ACTION {
                *o = 0.0;
                continue;
            }
            let nx = &traj[(i + batch) * w..(i + batch + 1) * w];
            let c = (0..env.n_backward()).filter(|&a| env.bwd_allowed(nx, a)).count();
            *o = -((c as f64).ln() as f32);
        }
        Ok((CpuStorage::F32(out), Shape::from((steps, batch))))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> CResult<(candle_core::CudaStorage, Shape)> {
        let (steps, batch) = traj_dims(l, &self.0, self.name())?;
        let out = crate::cuda::per_step(&self.0, s, l, steps, batch, true)?;
        Ok((out, Shape::from((steps, batch))))
    }
}

/// `log R` of each (complete) row, given the reward table (see [`crate::spec::DeviceEnv::aux`]).
#[derive(Debug, Clone, Copy)]
pub struct LogReward(pub EnvSpec);

impl CustomOp2 for LogReward {
    fn name(&self) -> &'static str {
        "gfn-log-reward"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> CResult<(CpuStorage, Shape)> {
        let env = &self.0;
        let n = rows_of(l1, env, self.name())?;
        let rows = cpu_u32(s1, l1, self.name())?;
        let aux = cpu_f32(s2, l2, self.name())?;
        let mut out = out_f32(n);
        for (o, r) in out.iter_mut().zip(rows.chunks_exact(env.row_width())) {
            *o = env.log_reward(r, aux);
        }
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> CResult<(candle_core::CudaStorage, Shape)> {
        let n = rows_of(l1, &self.0, self.name())?;
        let out = crate::cuda::log_reward(&self.0, s1, l1, s2, l2, n)?;
        Ok((out, Shape::from(n)))
    }
}

/// Fused SubTB(λ) per trajectory (gfn-objectives' `subtrajectory_balance`, without the batch
/// mean): for trajectory `b` of `n = lengths[b]` steps, with
/// `g_k = log F(s_k) − Σ_{t<k} δ_t` (`δ = log P_F − log P_B`, `log F(s_n) = log R` written by the
/// caller),
///
/// `L_b = Σ_{0≤i<j≤n} λ^{j−i} (g_i − g_j)² / Σ_{0≤i<j≤n} λ^{j−i}`,
///
/// the normaliser a log-sum-exp in f64. Inputs t-major: `δ` `[T, B]`, `log F` `[T+1, B]`.
#[derive(Debug, Clone, Copy)]
pub struct SubTbLoss {
    /// `ln λ`.
    pub log_lambda: f64,
}

/// The gradient of [`SubTbLoss`] per trajectory: `[2T+1, B]`, rows `0..T` `∂L_b/∂δ`, rows
/// `T..2T+1` `∂L_b/∂ log F`.
#[derive(Debug, Clone, Copy)]
pub struct SubTbJacobian {
    /// `ln λ`.
    pub log_lambda: f64,
}

fn subtb_dims(l1: &Layout, l2: &Layout, l3: &Layout, op: &str) -> CResult<(usize, usize)> {
    let (t, b) = match l1.dims() {
        &[t, b] => (t, b),
        d => bail!("{op}: delta must be [T, B], got {d:?}"),
    };
    if l2.dims() != [t + 1, b] || l3.dims() != [b] {
        bail!(
            "{op}: flows must be [{}, {b}] and lengths [{b}], got {:?} and {:?}",
            t + 1,
            l2.dims(),
            l3.dims()
        );
    }
    Ok((t, b))
}

fn subtb_log_norm(n: usize, log_lambda: f64) -> f64 {
    let mut mx = f64::NEG_INFINITY;
    for k in 1..=n {
        mx = mx.max(((n - k + 1) as f64).ln() + k as f64 * log_lambda);
    }
    let mut s = 0.0;
    for k in 1..=n {
        s += (((n - k + 1) as f64).ln() + k as f64 * log_lambda - mx).exp();
    }
    mx + s.ln()
}

/// The CPU reference of `gfn_subtb_fwd` for column `b`.
fn subtb_column(delta: &[f32], flows: &[f32], steps: usize, batch: usize, b: usize, n: usize, ll: f64) -> f64 {
    let n = n.min(steps);
    if n == 0 {
        return 0.0;
    }
    let lz = subtb_log_norm(n, ll);
    let (mut total, mut acc_i) = (0.0, 0.0);
    for i in 0..n {
        let gi = f64::from(flows[i * batch + b]) - acc_i;
        let mut acc_j = acc_i + f64::from(delta[i * batch + b]);
        for j in i + 1..=n {
            let d = gi - (f64::from(flows[j * batch + b]) - acc_j);
            total += (((j - i) as f64) * ll - lz).exp() * d * d;
            if j < n {
                acc_j += f64::from(delta[j * batch + b]);
            }
        }
        acc_i += f64::from(delta[i * batch + b]);
    }
    total
}

/// The CPU reference of `gfn_subtb_bwd` for column `b` (with `gout = 1`).
fn subtb_column_grad(
    delta: &[f32],
    flows: &[f32],
    steps: usize,
    batch: usize,
    b: usize,
    n: usize,
    ll: f64,
    out: &mut [f32],
) {
    let (gd, gf) = out.split_at_mut(steps * batch);
    for t in 0..steps {
        gd[t * batch + b] = 0.0;
    }
    for t in 0..=steps {
        gf[t * batch + b] = 0.0;
    }
    let n = n.min(steps);
    if n == 0 {
        return;
    }
    let lz = subtb_log_norm(n, ll);
    let mut acc_k = 0.0;
    for k in 0..=n {
        let gk = f64::from(flows[k * batch + b]) - acc_k;
        let (mut big_g, mut acc) = (0.0, 0.0);
        for j in 0..=n {
            let gj = f64::from(flows[j * batch + b]) - acc;
            if j != k {
                let gap = j.abs_diff(k);
                big_g += 2.0 * ((gap as f64) * ll - lz).exp() * (gk - gj);
            }
            if j < n {
                acc += f64::from(delta[j * batch + b]);
            }
        }
        gf[k * batch + b] = big_g as f32;
        if k < n {
            acc_k += f64::from(delta[k * batch + b]);
        }
    }
    let mut suffix = 0.0f64;
    for t in (0..n).rev() {
        suffix += f64::from(gf[(t + 1) * batch + b]);
        gd[t * batch + b] = (-suffix) as f32;
    }
}

impl CustomOp3 for SubTbLoss {
    fn name(&self) -> &'static str {
        "gfn-subtb-loss"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (steps, batch) = subtb_dims(l1, l2, l3, self.name())?;
        let (delta, flows, lengths) = (
            cpu_f32(s1, l1, self.name())?,
            cpu_f32(s2, l2, self.name())?,
            cpu_u32(s3, l3, self.name())?,
        );
        let mut out = out_f32(batch);
        for (b, o) in out.iter_mut().enumerate() {
            *o = subtb_column(delta, flows, steps, batch, b, lengths[b] as usize, self.log_lambda) as f32;
        }
        Ok((CpuStorage::F32(out), Shape::from(batch)))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> CResult<(candle_core::CudaStorage, Shape)> {
        let (steps, batch) = subtb_dims(l1, l2, l3, self.name())?;
        let out = crate::cuda::subtb(s1, l1, s2, l2, s3, l3, steps, batch, self.log_lambda, false)?;
        Ok((out, Shape::from(batch)))
    }
    fn bwd(
        &self,
        delta: &Tensor,
        flows: &Tensor,
        lengths: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let steps = delta.dim(0)?;
        let jac = delta.apply_op3_no_bwd(
            flows,
            lengths,
            &SubTbJacobian {
                log_lambda: self.log_lambda,
            },
        )?;
        let jac = jac.broadcast_mul(&grad_res.unsqueeze(0)?)?;
        let gd = jac.narrow(0, 0, steps)?;
        let gf = jac.narrow(0, steps, steps + 1)?;
        Ok((Some(gd), Some(gf), None))
    }
}

impl CustomOp3 for SubTbJacobian {
    fn name(&self) -> &'static str {
        "gfn-subtb-jacobian"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (steps, batch) = subtb_dims(l1, l2, l3, self.name())?;
        let (delta, flows, lengths) = (
            cpu_f32(s1, l1, self.name())?,
            cpu_f32(s2, l2, self.name())?,
            cpu_u32(s3, l3, self.name())?,
        );
        let mut out = out_f32((2 * steps + 1) * batch);
        for b in 0..batch {
            subtb_column_grad(
                delta,
                flows,
                steps,
                batch,
                b,
                lengths[b] as usize,
                self.log_lambda,
                &mut out,
            );
        }
        Ok((CpuStorage::F32(out), Shape::from((2 * steps + 1, batch))))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> CResult<(candle_core::CudaStorage, Shape)> {
        let (steps, batch) = subtb_dims(l1, l2, l3, self.name())?;
        let out = crate::cuda::subtb(s1, l1, s2, l2, s3, l3, steps, batch, self.log_lambda, true)?;
        Ok((out, Shape::from((2 * steps + 1, batch))))
    }
}

/// Adam's moment update, in place on `mv = [m | v]` (`2n`) from the gradient `g` (`n`):
/// `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`.
#[derive(Debug, Clone, Copy)]
pub struct AdamMoments {
    /// β₁.
    pub beta1: f32,
    /// β₂.
    pub beta2: f32,
}

/// Adam's parameter update, in place on `p` from `mv`:
/// `p ← p·decay − lr·(m·sm) / (√(v·sv) + ε)`, `sm = 1/(1−β₁ᵗ)`, `sv = 1/(1−β₂ᵗ)`.
#[derive(Debug, Clone, Copy)]
pub struct AdamApply {
    /// Learning rate.
    pub lr: f32,
    /// Bias correction of m.
    pub sm: f32,
    /// Bias correction of v.
    pub sv: f32,
    /// ε.
    pub eps: f32,
    /// `1 − lr·weight_decay`.
    pub decay: f32,
}

fn check_mv(l1: &Layout, l2: &Layout, op: &str) -> CResult<usize> {
    let n = l2.shape().elem_count();
    if l1.shape().elem_count() != 2 * n {
        bail!("{op}: moments must hold 2×{n} values, got {:?}", l1.dims());
    }
    Ok(n)
}

impl InplaceOp2 for AdamMoments {
    fn name(&self) -> &'static str {
        "gfn-adam-moments"
    }
    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> CResult<()> {
        let n = check_mv(l1, l2, self.name())?;
        let g = cpu_f32(s2, l2, self.name())?;
        let mv = cpu_f32_mut(s1, l1, self.name())?;
        let (m, v) = mv.split_at_mut(n);
        let (b1, b2) = (self.beta1, self.beta2);
        for ((m, v), &g) in m.iter_mut().zip(v.iter_mut()).zip(g) {
            *m = b1 * *m + (1.0 - b1) * g;
            *v = b2 * *v + (1.0 - b2) * g * g;
        }
        Ok(())
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &mut candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> CResult<()> {
        let n = check_mv(l1, l2, self.name())?;
        crate::cuda::adam_moments(self, s1, l1, s2, l2, n)
    }
}

impl InplaceOp2 for AdamApply {
    fn name(&self) -> &'static str {
        "gfn-adam-apply"
    }
    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> CResult<()> {
        let n = l1.shape().elem_count();
        if l2.shape().elem_count() != 2 * n {
            bail!("{}: moments must hold 2×{n} values, got {:?}", self.name(), l2.dims());
        }
        let mv = cpu_f32(s2, l2, self.name())?;
        let p = cpu_f32_mut(s1, l1, self.name())?;
        let (m, v) = mv.split_at(n);
        for ((p, &m), &v) in p.iter_mut().zip(m).zip(v) {
            *p = *p * self.decay - self.lr * (m * self.sm) / ((v * self.sv).sqrt() + self.eps);
        }
        Ok(())
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &mut candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> CResult<()> {
        let n = l1.shape().elem_count();
        if l2.shape().elem_count() != 2 * n {
            bail!("{}: moments must hold 2×{n} values, got {:?}", self.name(), l2.dims());
        }
        crate::cuda::adam_apply(self, s1, l1, s2, l2, n)
    }
}

// ------------------------------------------------------------ the hand-written training pass

/// Max and normaliser of the logits of the actions `allowed(j)` permits (f32, in index order).
fn env_max_z(l: &[f32], allowed: impl Fn(usize) -> bool) -> (f32, f32) {
    let mut mx = f32::NEG_INFINITY;
    for (j, &v) in l.iter().enumerate() {
        if allowed(j) {
            mx = mx.max(v);
        }
    }
    let mut z = 0.0f32;
    for (j, &v) in l.iter().enumerate() {
        if allowed(j) {
            z += (v - mx).exp();
        }
    }
    (mx, z)
}

/// `[N, C]` of a network output whose rows are the `N = (T+1)·B` rows of a trajectory buffer.
fn output_dims(l: &Layout, rows: usize, op: &str) -> CResult<usize> {
    match l.dims() {
        &[n, c] if n == rows => Ok(c),
        d => bail!("{op}: network output must be [{rows}, C] (one row per trajectory row), got {d:?}"),
    }
}

/// `log P(a | s)` of every step of a trajectory buffer, read from one head of a network output
/// over all its rows: forward, `log P_F(a_t | s_t)` from row `(t, b)`; backward,
/// `log P_B(s_t | s_{t+1})` of the undoing action from row `(t+1, b)`. Masks come from the
/// environment. Inputs: output `[(T+1)·B, C]` f32, trajectory `[T+1, B, W]`; output `[T, B]`, 0 where
/// the step has no such action. No backward pass (its gradient is [`HeadGrad`]).
#[derive(Debug, Clone, Copy)]
pub struct StepLogProb {
    /// The environment.
    pub env: EnvSpec,
    /// First column of the head in the output.
    pub col: usize,
    /// `false`: P_F (width `A`); `true`: P_B (width `A_B`).
    pub backward: bool,
}

impl StepLogProb {
    fn width(&self) -> usize {
        if self.backward {
            self.env.n_backward()
        } else {
            self.env.n_actions()
        }
    }
}

impl CustomOp2 for StepLogProb {
    fn name(&self) -> &'static str {
        "gfn-step-log-prob"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> CResult<(CpuStorage, Shape)> {
        let env = &self.env;
        let (steps, batch) = traj_dims(l2, env, self.name())?;
        let c = output_dims(l1, (steps + 1) * batch, self.name())?;
        let width = self.width();
        if self.col + width > c {
            bail!(
                "{}: head columns {}..{} past the output's {c}",
                self.name(),
                self.col,
                self.col + width
            );
        }
        let (logits, traj) = (cpu_f32(s1, l1, self.name())?, cpu_u32(s2, l2, self.name())?);
        let w = env.row_width();
        let mut out = out_f32(steps * batch);
        for (i, o) in out.iter_mut().enumerate() {
            let mut a = traj[i * w + env.act_col()];
            let row = if self.backward { i + batch } else { i };
            if self.backward {
                a = env.bwd_action(a);
            }
            if a == NO_ACTION {
                *o = 0.0;
                continue;
            }
            let s = &traj[row * w..(row + 1) * w];
            let l = &logits[row * c + self.col..row * c + self.col + width];
            let (mx, z) = env_max_z(l, |j| {
                if self.backward {
                    env.bwd_allowed(s, j)
                } else {
                    env.fwd_allowed(s, j)
                }
            });
            *o = l[a as usize] - mx - z.ln();
        }
        Ok((CpuStorage::F32(out), Shape::from((steps, batch))))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> CResult<(candle_core::CudaStorage, Shape)> {
        let (steps, batch) = traj_dims(l2, &self.env, self.name())?;
        let c = output_dims(l1, (steps + 1) * batch, self.name())?;
        if self.col + self.width() > c {
            bail!("{}: head columns past the output's {c}", self.name());
        }
        let out = crate::cuda::step_log_prob(self, s1, l1, s2, l2, steps, batch, c, self.width())?;
        Ok((out, Shape::from((steps, batch))))
    }
}

/// Where the heads of one network's output are: the first column of P_F, of P_B and of log F,
/// `None` where that head is not in this network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeadCols {
    /// P_F logits (`A` columns).
    pub pf: Option<usize>,
    /// P_B logits (`A_B` columns).
    pub pb: Option<usize>,
    /// log F (one column).
    pub flow: Option<usize>,
}

/// The loss's gradient with respect to one network output `[(T+1)·B, C]` (every column written):
/// row `(t, b)` gets `g_pf(t, b)·(1[j = a_t] − p_j)` on its P_F columns (allowed `j`),
/// `g_pb(t−1, b)·(1[j = a'] − q_j)` on its P_B columns (the action undoing step `t−1 → t`),
/// `g_flow(t, b)` on its log F column, 0 elsewhere — the chain rule through
/// [`StepLogProb`] with the per-step gradients `g`. Inputs: output, trajectory, `g`: with
/// `per_trajectory` (TB) `g` is `[B]` and `g_pf = g_b`, `g_pb = −g_b`, `g_flow = 0`; otherwise `g`
/// is `[3, T+1, B]`, the planes `g_pf`, `g_pb` (by step) and `g_flow`.
#[derive(Debug, Clone, Copy)]
pub struct HeadGrad {
    /// The environment.
    pub env: EnvSpec,
    /// The heads of this output.
    pub cols: HeadCols,
    /// `g` per trajectory (TB) rather than per step.
    pub per_trajectory: bool,
}

impl HeadGrad {
    fn check(&self, l1: &Layout, l2: &Layout, l3: &Layout) -> CResult<(usize, usize, usize)> {
        let op = self.name();
        let (steps, batch) = traj_dims(l2, &self.env, op)?;
        let c = output_dims(l1, (steps + 1) * batch, op)?;
        let want: Vec<usize> = if self.per_trajectory {
            vec![batch]
        } else {
            vec![3, steps + 1, batch]
        };
        if l3.dims() != want.as_slice() {
            bail!("{op}: g must be {want:?}, got {:?}", l3.dims());
        }
        let fits = |col: Option<usize>, width: usize| col.is_none_or(|k| k + width <= c);
        if !(fits(self.cols.pf, self.env.n_actions())
            && fits(self.cols.pb, self.env.n_backward())
            && fits(self.cols.flow, 1))
        {
            bail!("{op}: head columns {:?} past the output's {c}", self.cols);
        }
        Ok((steps, batch, c))
    }
}

impl CustomOp3 for HeadGrad {
    fn name(&self) -> &'static str {
        "gfn-head-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (steps, batch, c) = self.check(l1, l2, l3)?;
        let env = &self.env;
        let (logits, traj, g) = (
            cpu_f32(s1, l1, self.name())?,
            cpu_u32(s2, l2, self.name())?,
            cpu_f32(s3, l3, self.name())?,
        );
        let w = env.row_width();
        let n = (steps + 1) * batch;
        let (na, nb) = (env.n_actions(), env.n_backward());
        let mut out = out_f32(n * c);
        for r in 0..n {
            let (t, b) = (r / batch, r % batch);
            let s = &traj[r * w..(r + 1) * w];
            let l = &logits[r * c..(r + 1) * c];
            let o = &mut out[r * c..(r + 1) * c];
            o.fill(0.0);
            if let Some(k) = self.cols.pf {
                let a = if t < steps { s[env.act_col()] } else { NO_ACTION };
                if a != NO_ACTION {
                    let gpf = if self.per_trajectory { g[b] } else { g[r] };
                    let lh = &l[k..k + na];
                    let (mx, z) = env_max_z(lh, |j| env.fwd_allowed(s, j));
                    for j in 0..na {
                        let p = if env.fwd_allowed(s, j) {
                            (lh[j] - mx).exp() / z
                        } else {
                            0.0
                        };
                        o[k + j] = gpf * (if j as u32 == a { 1.0 } else { 0.0 } - p);
                    }
                }
            }
            if let Some(k) = self.cols.pb
                && t >= 1
            {
                let ab = env.bwd_action(traj[(r - batch) * w + env.act_col()]);
                if ab != NO_ACTION {
                    let gpb = if self.per_trajectory { -g[b] } else { g[n + r - batch] };
                    let lh = &l[k..k + nb];
                    let (mx, z) = env_max_z(lh, |j| env.bwd_allowed(s, j));
                    for j in 0..nb {
                        let q = if env.bwd_allowed(s, j) {
                            (lh[j] - mx).exp() / z
                        } else {
                            0.0
                        };
                        o[k + j] = gpb * (if j as u32 == ab { 1.0 } else { 0.0 } - q);
                    }
                }
            }
            if let Some(k) = self.cols.flow
                && !self.per_trajectory
            {
                o[k] = g[2 * n + r];
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((n, c))))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> CResult<(candle_core::CudaStorage, Shape)> {
        let (steps, batch, c) = self.check(l1, l2, l3)?;
        let out = crate::cuda::head_grad(self, s1, l1, s2, l2, s3, l3, steps, batch, c)?;
        Ok((out, Shape::from(((steps + 1) * batch, c))))
    }
}

/// Threads of `gfn_tb_grad`'s one block (its reduction tree; the CPU reference follows it).
pub const TB_THREADS: usize = 1024;

/// Trajectory balance and its gradient in one pass: with
/// `resid_b = log Z + Σ_t (log P_F − log P_B)[t, b] − log R_b`, the output `[2 + B]` is
/// `[mean_b resid², ∂/∂log Z = mean_b 2·resid, 2·resid_b / B …]`. Inputs: `log P_F`, `log P_B`
/// `[T, B]`, and `[log R_0 … log R_{B−1}, log Z]` `[B + 1]`. Sums in a fixed order (the kernel's
/// one block of [`TB_THREADS`] threads), so every run gives the same bits.
#[derive(Debug, Clone, Copy)]
pub struct TbGrad;

fn tb_dims(l1: &Layout, l2: &Layout, l3: &Layout, op: &str) -> CResult<(usize, usize)> {
    let (t, b) = match l1.dims() {
        &[t, b] => (t, b),
        d => bail!("{op}: log P_F must be [T, B], got {d:?}"),
    };
    if l2.dims() != [t, b] || l3.dims() != [b + 1] {
        bail!(
            "{op}: log P_B must be [{t}, {b}] and [log R | log Z] [{}], got {:?} and {:?}",
            b + 1,
            l2.dims(),
            l3.dims()
        );
    }
    Ok((t, b))
}

impl CustomOp3 for TbGrad {
    fn name(&self) -> &'static str {
        "gfn-tb-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (steps, batch) = tb_dims(l1, l2, l3, self.name())?;
        let (pf, pb, rz) = (
            cpu_f32(s1, l1, self.name())?,
            cpu_f32(s2, l2, self.name())?,
            cpu_f32(s3, l3, self.name())?,
        );
        let lz = rz[batch];
        let mut out = out_f32(2 + batch);
        let mut sq = vec![0f64; TB_THREADS];
        let mut lin = vec![0f64; TB_THREADS];
        for b in 0..batch {
            let mut acc = 0f32;
            for t in 0..steps {
                acc += pf[t * batch + b] - pb[t * batch + b];
            }
            let resid = lz + acc - rz[b];
            out[2 + b] = 2.0 * resid / batch as f32;
            sq[b % TB_THREADS] += f64::from(resid) * f64::from(resid);
            lin[b % TB_THREADS] += f64::from(resid);
        }
        let mut half = TB_THREADS / 2;
        while half > 0 {
            for i in 0..half {
                sq[i] += sq[i + half];
                lin[i] += lin[i + half];
            }
            half /= 2;
        }
        out[0] = (sq[0] / batch as f64) as f32;
        out[1] = (2.0 * lin[0] / batch as f64) as f32;
        Ok((CpuStorage::F32(out), Shape::from(2 + batch)))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> CResult<(candle_core::CudaStorage, Shape)> {
        let (steps, batch) = tb_dims(l1, l2, l3, self.name())?;
        let out = crate::cuda::tb_grad(s1, l1, s2, l2, s3, l3, steps, batch)?;
        Ok((out, Shape::from(2 + batch)))
    }
}

/// ReLU's backward, in place on the gradient `d` given the layer's output `h` (same shape):
/// `d ← 0` where `h ≤ 0`.
#[derive(Debug, Clone, Copy)]
pub struct ReluGrad;

impl InplaceOp2 for ReluGrad {
    fn name(&self) -> &'static str {
        "gfn-relu-grad"
    }
    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> CResult<()> {
        if l1.dims() != l2.dims() {
            bail!("{}: shapes differ, {:?} and {:?}", self.name(), l1.dims(), l2.dims());
        }
        let h = cpu_f32(s2, l2, self.name())?;
        let d = cpu_f32_mut(s1, l1, self.name())?;
        for (d, &h) in d.iter_mut().zip(h) {
            // `h` is a ReLU output: 0 (or NaN, which must not pass a gradient either) or > 0.
            if h.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
                *d = 0.0;
            }
        }
        Ok(())
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &mut candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> CResult<()> {
        if l1.dims() != l2.dims() {
            bail!("{}: shapes differ, {:?} and {:?}", self.name(), l1.dims(), l2.dims());
        }
        crate::cuda::relu_grad(s1, l1, s2, l2, l1.shape().elem_count())
    }
}

/// Column sums of `[n, m]` → `[m]` (a bias gradient), in the kernel's fixed order: partial sums
/// over the rows `p·8 + y + k·8P` for `P = `[`col_sum_parts`]`(n)` parts and 8 lanes `y`, the lanes
/// added in order, then the parts in order.
#[derive(Debug, Clone, Copy)]
pub struct ColSum;

/// Row partitions of [`ColSum`] for `n` rows.
pub fn col_sum_parts(n: usize) -> usize {
    (n / 512).clamp(1, 128)
}

impl CustomOp1 for ColSum {
    fn name(&self) -> &'static str {
        "gfn-col-sum"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let (n, m) = match l.dims() {
            &[n, m] => (n, m),
            d => bail!("{}: input must be [n, m], got {d:?}", self.name()),
        };
        let x = cpu_f32(s, l, self.name())?;
        let parts = col_sum_parts(n);
        let mut out = out_f32(m);
        for (j, o) in out.iter_mut().enumerate() {
            let mut total = 0f32;
            for p in 0..parts {
                let mut part = 0f32;
                for y in 0..8 {
                    let mut acc = 0f32;
                    let mut i = p * 8 + y;
                    while i < n {
                        acc += x[i * m + j];
                        i += parts * 8;
                    }
                    part += acc;
                }
                total += part;
            }
            *o = total;
        }
        Ok((CpuStorage::F32(out), Shape::from(m)))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> CResult<(candle_core::CudaStorage, Shape)> {
        let (n, m) = match l.dims() {
            &[n, m] => (n, m),
            d => bail!("{}: input must be [n, m], got {d:?}", self.name()),
        };
        let out = crate::cuda::col_sum(s, l, n, m, col_sum_parts(n))?;
        Ok((out, Shape::from(m)))
    }
}
