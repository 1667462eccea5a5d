//! Kernel launches (the `cuda` feature). The PTX is `kernels.cu` compiled by nvcc at build time
//! (build.rs); candle loads it once per device as module `gfn_kernels`.
#![allow(unsafe_code)]

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CudaDevice, CudaStorage, Layout, Result as CResult, bail};

use crate::ops::{
    AdamApply, AdamMoments, HeadGrad, MAX_FUSED_LAYERS, POISON_U8, POISON_U32, RolloutStep, SampleStep, StepLogProb,
    TB_THREADS, poison,
};
use crate::spec::EnvSpec;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/gfn_kernels.ptx"));
const MODULE: &str = "gfn_kernels";
const THREADS: u32 = 256;

/// The kernel `name` of our module on `dev` (loaded once per device).
macro_rules! func {
    ($dev:expr, $name:expr) => {
        $dev.get_or_load_custom_func($name, MODULE, PTX)
    };
}

fn cfg(n: usize) -> LaunchConfig {
    let n = n.max(1) as u32;
    LaunchConfig {
        grid_dim: (n.div_ceil(THREADS), 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn view<'a, T: CudaDType + DeviceRepr>(s: &'a CudaStorage, l: &Layout, what: &str) -> CResult<CudaView<'a, T>> {
    let Some((a, b)) = l.contiguous_offsets() else {
        bail!("{what}: contiguous inputs only")
    };
    Ok(s.as_cuda_slice::<T>()?.slice(a..b))
}

/// An output buffer of `n` elements, filled with `poison_value` when poisoning is on.
fn alloc<T: DeviceRepr + ValidAsZeroBits + Clone + 'static>(
    dev: &CudaDevice,
    n: usize,
    poison_value: T,
) -> CResult<CudaSlice<T>> {
    let n = n.max(1);
    if poison() {
        let host = vec![poison_value; n];
        let mut out = dev.alloc_zeros::<T>(n)?;
        dev.memcpy_htod(&host, &mut out)?;
        Ok(out)
    } else {
        // SAFETY: every element is written by the kernel launched next.
        unsafe { dev.alloc::<T>(n) }
    }
}

fn wrap<T: CudaDType>(slice: CudaSlice<T>, dev: &CudaDevice) -> CudaStorage {
    CudaStorage::wrap_cuda_slice(slice, dev.clone())
}

fn i32_of(v: usize, what: &str) -> CResult<i32> {
    match i32::try_from(v) {
        Ok(v) => Ok(v),
        Err(_) => bail!("{what} = {v} is too large for the kernels (at most {})", i32::MAX),
    }
}

pub(crate) fn featurize(env: &EnvSpec, s: &CudaStorage, l: &Layout, n: usize, f_dim: usize) -> CResult<CudaStorage> {
    let dev = s.device();
    let rows = view::<u32>(s, l, "featurize")?;
    let out = alloc::<f32>(dev, n * f_dim, f32::NAN)?;
    let (w, ni, fi) = (
        i32_of(env.row_width(), "W")?,
        i32_of(n, "rows")?,
        i32_of(f_dim, "features")?,
    );
    let f = func!(dev, "gfn_featurize")?;
    let mut b = f.builder();
    b.arg(env).arg(&rows).arg(&w).arg(&ni).arg(&fi).arg(&out);
    // SAFETY: argument list matches `gfn_featurize`.
    unsafe { b.launch(cfg(n * f_dim)) }.w()?;
    Ok(wrap(out, dev))
}

pub(crate) fn mask(env: &EnvSpec, s: &CudaStorage, l: &Layout, n: usize, backward: bool) -> CResult<CudaStorage> {
    let dev = s.device();
    let rows = view::<u32>(s, l, "mask")?;
    let a_dim = if backward { env.n_backward() } else { env.n_actions() };
    let out = alloc::<u8>(dev, n * a_dim, POISON_U8)?;
    let (w, ni) = (i32_of(env.row_width(), "W")?, i32_of(n, "rows")?);
    let f = func!(
        dev,
        if backward {
            "gfn_backward_mask"
        } else {
            "gfn_forward_mask"
        }
    )?;
    let mut b = f.builder();
    b.arg(env).arg(&rows).arg(&w).arg(&ni).arg(&out);
    // SAFETY: argument list matches `gfn_forward_mask` / `gfn_backward_mask`.
    unsafe { b.launch(cfg(n * a_dim)) }.w()?;
    Ok(wrap(out, dev))
}

/// One warp per row: `n` rows in blocks of 8 warps.
fn warp_cfg(n: usize) -> LaunchConfig {
    cfg(n * 32)
}

pub(crate) fn sample_step(
    op: &SampleStep,
    s1: &mut CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    batch: usize,
    logit_stride: usize,
) -> CResult<()> {
    let dev = s1.device().clone();
    let logits = view::<f32>(s2, l2, "sample-step")?;
    let Some((a, b_end)) = l1.contiguous_offsets() else {
        bail!("sample-step: contiguous trajectory only")
    };
    let mut traj = s1.as_cuda_slice_mut::<u32>()?.slice_mut(a..b_end);
    let (w, bi, ti) = (
        i32_of(op.env.row_width(), "W")?,
        i32_of(batch, "batch")?,
        i32_of(op.t, "t")?,
    );
    let stride = i32_of(logit_stride, "logit stride")?;
    let f = func!(&dev, "gfn_sample_step")?;
    let mut b = f.builder();
    b.arg(&op.env)
        .arg(&mut traj)
        .arg(&w)
        .arg(&bi)
        .arg(&ti)
        .arg(&logits)
        .arg(&stride)
        .arg(&op.sample);
    // SAFETY: argument list matches `gfn_sample_step`.
    unsafe { b.launch(warp_cfg(batch)) }.w()?;
    Ok(())
}

/// `struct MlpP` of `kernels.cu`.
#[repr(C)]
#[derive(Clone, Copy)]
struct MlpP {
    weight: [u64; MAX_FUSED_LAYERS],
    bias: [u64; MAX_FUSED_LAYERS],
    dims: [i32; MAX_FUSED_LAYERS + 1],
    n_layers: i32,
}

// SAFETY: plain old data, `#[repr(C)]`, laid out as `struct MlpP` (device pointers as u64).
unsafe impl DeviceRepr for MlpP {}

pub(crate) fn rollout_step(
    op: &RolloutStep,
    s1: &mut CudaStorage,
    l1: &Layout,
    batch: usize,
    dims: &[usize],
) -> CResult<()> {
    use candle_core::cuda_backend::cudarc::driver::DevicePtr;
    let dev = s1.device().clone();
    let stream = dev.cuda_stream();
    let mut net = MlpP {
        weight: [0; MAX_FUSED_LAYERS],
        bias: [0; MAX_FUSED_LAYERS],
        dims: [0; MAX_FUSED_LAYERS + 1],
        n_layers: i32_of(op.layers.len(), "layers")?,
    };
    for (k, d) in dims.iter().enumerate() {
        net.dims[k] = i32_of(*d, "layer width")?;
    }
    // Hold the storages (and the pointers' guards) until the launch is queued.
    let guards: Vec<_> = op
        .layers
        .iter()
        .flat_map(|(w, b)| [w.storage_and_layout(), b.storage_and_layout()])
        .collect();
    let mut ptrs = Vec::with_capacity(guards.len());
    for (storage, layout) in &guards {
        let candle_core::Storage::Cuda(cs) = &**storage else {
            bail!("rollout-step: weights must be on the GPU with the trajectory")
        };
        let Some((a, e)) = layout.contiguous_offsets() else {
            bail!("rollout-step: contiguous weights only")
        };
        ptrs.push(cs.as_cuda_slice::<f32>()?.slice(a..e));
    }
    let mut syncs = Vec::with_capacity(ptrs.len());
    for (i, v) in ptrs.iter().enumerate() {
        let (p, sync) = v.device_ptr(&stream);
        if i % 2 == 0 {
            net.weight[i / 2] = p;
        } else {
            net.bias[i / 2] = p;
        }
        syncs.push(sync);
    }
    let Some((a, b_end)) = l1.contiguous_offsets() else {
        bail!("rollout-step: contiguous trajectory only")
    };
    let mut traj = s1.as_cuda_slice_mut::<u32>()?.slice_mut(a..b_end);
    // Activation rows padded to a multiple of 4 floats (the kernel reads them as float4).
    let ld = dims.iter().copied().max().unwrap_or(1).next_multiple_of(4);
    let rows = rollout_rows(&dev, batch, ld, op.rows)?;
    let (w, bi, ti, ldi) = (
        i32_of(op.env.row_width(), "W")?,
        i32_of(batch, "batch")?,
        i32_of(op.t, "t")?,
        i32_of(ld, "width")?,
    );
    let shared = (2 * rows * ld * 4) as u32;
    let f = func!(&dev, ROLLOUT_KERNELS[rows.trailing_zeros() as usize])?;
    let mut b = f.builder();
    b.arg(&op.env)
        .arg(&mut traj)
        .arg(&w)
        .arg(&bi)
        .arg(&ti)
        .arg(&net)
        .arg(&ldi)
        .arg(&op.sample);
    let launch = LaunchConfig {
        grid_dim: (batch.div_ceil(rows) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: shared,
    };
    // SAFETY: argument list matches `gfn_rollout_step_r*`; the weights outlive the launch (the op
    // holds their tensors) and `syncs` records their use on drop.
    unsafe { b.launch(launch) }.w()?;
    drop(syncs);
    Ok(())
}

/// The rollout kernels by rows per block: 1, 2, 4, 8, 16.
const ROLLOUT_KERNELS: [&str; 5] = [
    "gfn_rollout_step_r1",
    "gfn_rollout_step_r2",
    "gfn_rollout_step_r4",
    "gfn_rollout_step_r8",
    "gfn_rollout_step_r16",
];

/// Rows per block of the fused rollout: `asked` (a power of two ≤ 16) if not 0, else the smallest
/// that puts at most about one block on each multiprocessor (B/R ≤ 1.25 · SMs), capped by the 48 KiB
/// of shared memory the activations may take.
fn rollout_rows(dev: &CudaDevice, batch: usize, ld: usize, asked: usize) -> CResult<usize> {
    use candle_core::cuda_backend::cudarc::driver::sys::CUdevice_attribute;
    let fits = |r: usize| 2 * r * ld * 4 <= 48 * 1024;
    if asked != 0 {
        if !asked.is_power_of_two() || asked > 16 {
            bail!("rollout rows = {asked}: must be 1, 2, 4, 8 or 16");
        }
        if !fits(asked) {
            bail!("rollout rows = {asked}: {asked} rows of width {ld} need more than 48 KiB of shared memory");
        }
        return Ok(asked);
    }
    let sms = dev
        .cuda_stream()
        .context()
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .w()? as usize;
    let mut r = 1;
    while r < 16 && batch.div_ceil(r) * 4 > sms.max(1) * 5 && fits(2 * r) {
        r *= 2;
    }
    Ok(r)
}

pub(crate) fn lsg(
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    s3: &CudaStorage,
    l3: &Layout,
    n: usize,
    a_dim: usize,
    jacobian: bool,
) -> CResult<CudaStorage> {
    let dev = s1.device();
    let (logits, mask, act) = (
        view::<f32>(s1, l1, "log-softmax-gather")?,
        view::<u8>(s2, l2, "log-softmax-gather")?,
        view::<u32>(s3, l3, "log-softmax-gather")?,
    );
    let out = alloc::<f32>(dev, if jacobian { n * a_dim } else { n }, f32::NAN)?;
    let (ni, ai) = (i32_of(n, "rows")?, i32_of(a_dim, "actions")?);
    if jacobian {
        let f = func!(dev, "gfn_log_softmax_gather_jacobian")?;
        let mut b = f.builder();
        b.arg(&logits).arg(&mask).arg(&act).arg(&ni).arg(&ai).arg(&out);
        // SAFETY: argument list matches `gfn_log_softmax_gather_jacobian`.
        unsafe { b.launch(warp_cfg(n)) }.w()?;
    } else {
        let f = func!(dev, "gfn_log_softmax_gather")?;
        let mut b = f.builder();
        b.arg(&logits).arg(&mask).arg(&act).arg(&ni).arg(&ai).arg(&out);
        // SAFETY: argument list matches `gfn_log_softmax_gather`.
        unsafe { b.launch(warp_cfg(n)) }.w()?;
    }
    Ok(wrap(out, dev))
}

pub(crate) fn per_step(
    env: &EnvSpec,
    s: &CudaStorage,
    l: &Layout,
    steps: usize,
    batch: usize,
    log_pb: bool,
) -> CResult<CudaStorage> {
    let dev = s.device();
    let traj = view::<u32>(s, l, "per-step")?;
    let (w, ti, bi) = (
        i32_of(env.row_width(), "W")?,
        i32_of(steps, "T")?,
        i32_of(batch, "batch")?,
    );
    if log_pb {
        let out = alloc::<f32>(dev, steps * batch, f32::NAN)?;
        let f = func!(dev, "gfn_uniform_log_pb")?;
        let mut b = f.builder();
        b.arg(env).arg(&traj).arg(&w).arg(&ti).arg(&bi).arg(&out);
        // SAFETY: argument list matches `gfn_uniform_log_pb`.
        unsafe { b.launch(cfg(steps * batch)) }.w()?;
        Ok(wrap(out, dev))
    } else {
        let out = alloc::<u32>(dev, steps * batch, POISON_U32)?;
        let f = func!(dev, "gfn_backward_actions")?;
        let mut b = f.builder();
        b.arg(env).arg(&traj).arg(&w).arg(&ti).arg(&bi).arg(&out);
        // SAFETY: argument list matches `gfn_backward_actions`.
        unsafe { b.launch(cfg(steps * batch)) }.w()?;
        Ok(wrap(out, dev))
    }
}

pub(crate) fn log_reward(
    env: &EnvSpec,
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    n: usize,
) -> CResult<CudaStorage> {
    let dev = s1.device();
    let (rows, aux) = (view::<u32>(s1, l1, "log-reward")?, view::<f32>(s2, l2, "log-reward")?);
    let out = alloc::<f32>(dev, n, f32::NAN)?;
    let (w, ni) = (i32_of(env.row_width(), "W")?, i32_of(n, "rows")?);
    let f = func!(dev, "gfn_log_reward")?;
    let mut b = f.builder();
    b.arg(env).arg(&rows).arg(&w).arg(&ni).arg(&aux).arg(&out);
    // SAFETY: argument list matches `gfn_log_reward`.
    unsafe { b.launch(cfg(n)) }.w()?;
    Ok(wrap(out, dev))
}

pub(crate) fn subtb(
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    s3: &CudaStorage,
    l3: &Layout,
    steps: usize,
    batch: usize,
    log_lambda: f64,
    jacobian: bool,
) -> CResult<CudaStorage> {
    let dev = s1.device();
    let (delta, flows, lengths) = (
        view::<f32>(s1, l1, "subtb")?,
        view::<f32>(s2, l2, "subtb")?,
        view::<u32>(s3, l3, "subtb")?,
    );
    let (ti, bi) = (i32_of(steps, "T")?, i32_of(batch, "batch")?);
    let n_out = if jacobian { (2 * steps + 1) * batch } else { batch };
    let out = alloc::<f32>(dev, n_out, f32::NAN)?;
    let f = func!(
        dev,
        if jacobian {
            "gfn_subtb_jacobian"
        } else {
            "gfn_subtb_fwd"
        }
    )?;
    let mut b = f.builder();
    b.arg(&delta)
        .arg(&flows)
        .arg(&lengths)
        .arg(&ti)
        .arg(&bi)
        .arg(&log_lambda)
        .arg(&out);
    // SAFETY: argument list matches `gfn_subtb_fwd` / `gfn_subtb_jacobian`.
    unsafe { b.launch(cfg(batch)) }.w()?;
    Ok(wrap(out, dev))
}

pub(crate) fn adam_moments(
    op: &AdamMoments,
    s1: &mut CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    n: usize,
) -> CResult<()> {
    let dev = s1.device().clone();
    let g = view::<f32>(s2, l2, "adam")?;
    let Some((a, e)) = l1.contiguous_offsets() else {
        bail!("adam: contiguous moments only")
    };
    let mut mv = s1.as_cuda_slice_mut::<f32>()?.slice_mut(a..e);
    let ni = i32_of(n, "parameters")?;
    let f = func!(&dev, "gfn_adam_moments")?;
    let mut b = f.builder();
    b.arg(&mut mv).arg(&g).arg(&ni).arg(&op.beta1).arg(&op.beta2);
    // SAFETY: argument list matches `gfn_adam_moments`.
    unsafe { b.launch(cfg(n)) }.w()?;
    Ok(())
}

pub(crate) fn adam_apply(
    op: &AdamApply,
    s1: &mut CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    n: usize,
) -> CResult<()> {
    let dev = s1.device().clone();
    let mv = view::<f32>(s2, l2, "adam")?;
    let Some((a, e)) = l1.contiguous_offsets() else {
        bail!("adam: contiguous parameters only")
    };
    let mut p = s1.as_cuda_slice_mut::<f32>()?.slice_mut(a..e);
    let ni = i32_of(n, "parameters")?;
    let f = func!(&dev, "gfn_adam_apply")?;
    let mut b = f.builder();
    b.arg(&mut p)
        .arg(&mv)
        .arg(&ni)
        .arg(&op.lr)
        .arg(&op.sm)
        .arg(&op.sv)
        .arg(&op.eps)
        .arg(&op.decay);
    // SAFETY: argument list matches `gfn_adam_apply`.
    unsafe { b.launch(cfg(n)) }.w()?;
    Ok(())
}

pub(crate) fn bias_act(
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    n: usize,
    m: usize,
    relu: bool,
) -> CResult<CudaStorage> {
    let dev = s1.device();
    let (x, b) = (view::<f32>(s1, l1, "bias-act")?, view::<f32>(s2, l2, "bias-act")?);
    let out = alloc::<f32>(dev, n * m, f32::NAN)?;
    let (ni, mi, ri) = (i32_of(n, "rows")?, i32_of(m, "columns")?, i32::from(relu));
    let f = func!(dev, "gfn_bias_act")?;
    let mut bld = f.builder();
    bld.arg(&x).arg(&b).arg(&ni).arg(&mi).arg(&ri).arg(&out);
    // SAFETY: argument list matches `gfn_bias_act`.
    unsafe { bld.launch(cfg(n * m)) }.w()?;
    Ok(wrap(out, dev))
}

/// Turn off candle's per-tensor CUDA event tracking on `dev`: everything here runs on the
/// device's one stream, so the events (several driver calls per kernel argument) buy nothing.
pub(crate) fn single_stream(dev: &candle_core::Device) {
    if let candle_core::Device::Cuda(d) = dev {
        // SAFETY: gfn uses one stream per device; no tensor crosses streams.
        unsafe { d.disable_event_tracking() };
    }
}

pub(crate) fn step_log_prob(
    op: &StepLogProb,
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    steps: usize,
    batch: usize,
    stride: usize,
    width: usize,
) -> CResult<CudaStorage> {
    let dev = s1.device();
    let (logits, traj) = (
        view::<f32>(s1, l1, "step-log-prob")?,
        view::<u32>(s2, l2, "step-log-prob")?,
    );
    let n = steps * batch;
    let out = alloc::<f32>(dev, n, f32::NAN)?;
    let (w, ti, bi, si, ci, wi, bw) = (
        i32_of(op.env.row_width(), "W")?,
        i32_of(steps, "T")?,
        i32_of(batch, "batch")?,
        i32_of(stride, "columns")?,
        i32_of(op.col, "column")?,
        i32_of(width, "width")?,
        i32::from(op.backward),
    );
    let f = func!(dev, "gfn_step_log_prob")?;
    let mut b = f.builder();
    b.arg(&op.env)
        .arg(&traj)
        .arg(&w)
        .arg(&ti)
        .arg(&bi)
        .arg(&logits)
        .arg(&si)
        .arg(&ci)
        .arg(&wi)
        .arg(&bw)
        .arg(&out);
    // SAFETY: argument list matches `gfn_step_log_prob`.
    unsafe { b.launch(warp_cfg(n)) }.w()?;
    Ok(wrap(out, dev))
}

pub(crate) fn head_grad(
    op: &HeadGrad,
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    s3: &CudaStorage,
    l3: &Layout,
    steps: usize,
    batch: usize,
    stride: usize,
) -> CResult<CudaStorage> {
    let dev = s1.device();
    let (logits, traj, g) = (
        view::<f32>(s1, l1, "head-grad")?,
        view::<u32>(s2, l2, "head-grad")?,
        view::<f32>(s3, l3, "head-grad")?,
    );
    let n = (steps + 1) * batch;
    let out = alloc::<f32>(dev, n * stride, f32::NAN)?;
    let col = |c: Option<usize>| -> CResult<i32> {
        match c {
            Some(c) => i32_of(c, "column"),
            None => Ok(-1),
        }
    };
    let (w, ti, bi, si, pf, pb, fl, mode) = (
        i32_of(op.env.row_width(), "W")?,
        i32_of(steps, "T")?,
        i32_of(batch, "batch")?,
        i32_of(stride, "columns")?,
        col(op.cols.pf)?,
        col(op.cols.pb)?,
        col(op.cols.flow)?,
        i32::from(!op.per_trajectory),
    );
    let f = func!(dev, "gfn_head_grad")?;
    let mut b = f.builder();
    b.arg(&op.env)
        .arg(&traj)
        .arg(&w)
        .arg(&ti)
        .arg(&bi)
        .arg(&logits)
        .arg(&si)
        .arg(&pf)
        .arg(&pb)
        .arg(&fl)
        .arg(&g)
        .arg(&mode)
        .arg(&out);
    // SAFETY: argument list matches `gfn_head_grad`.
    unsafe { b.launch(warp_cfg(n)) }.w()?;
    Ok(wrap(out, dev))
}

pub(crate) fn tb_grad(
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    s3: &CudaStorage,
    l3: &Layout,
    steps: usize,
    batch: usize,
) -> CResult<CudaStorage> {
    let dev = s1.device();
    let (pf, pb, rz) = (
        view::<f32>(s1, l1, "tb-grad")?,
        view::<f32>(s2, l2, "tb-grad")?,
        view::<f32>(s3, l3, "tb-grad")?,
    );
    let log_r = rz.slice(0..batch);
    let log_z = rz.slice(batch..batch + 1);
    let out = alloc::<f32>(dev, 2 + batch, f32::NAN)?;
    let (ti, bi) = (i32_of(steps, "T")?, i32_of(batch, "batch")?);
    let f = func!(dev, "gfn_tb_grad")?;
    let mut b = f.builder();
    b.arg(&pf).arg(&pb).arg(&ti).arg(&bi).arg(&log_r).arg(&log_z).arg(&out);
    let launch = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (TB_THREADS as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: argument list matches `gfn_tb_grad` (one block of TB_THREADS, its tree's size).
    unsafe { b.launch(launch) }.w()?;
    Ok(wrap(out, dev))
}

pub(crate) fn relu_grad(s1: &mut CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout, n: usize) -> CResult<()> {
    let dev = s1.device().clone();
    let h = view::<f32>(s2, l2, "relu-grad")?;
    let Some((a, e)) = l1.contiguous_offsets() else {
        bail!("relu-grad: contiguous gradient only")
    };
    let mut d = s1.as_cuda_slice_mut::<f32>()?.slice_mut(a..e);
    let ni = n as i64;
    let f = func!(&dev, "gfn_relu_grad")?;
    let mut b = f.builder();
    b.arg(&mut d).arg(&h).arg(&ni);
    // SAFETY: argument list matches `gfn_relu_grad`.
    unsafe { b.launch(cfg(n)) }.w()?;
    Ok(())
}

pub(crate) fn col_sum(s: &CudaStorage, l: &Layout, n: usize, m: usize, parts: usize) -> CResult<CudaStorage> {
    let dev = s.device();
    let x = view::<f32>(s, l, "col-sum")?;
    let partial = alloc::<f32>(dev, parts * m, f32::NAN)?;
    let out = alloc::<f32>(dev, m, f32::NAN)?;
    let (ni, mi, pi) = (i32_of(n, "rows")?, i32_of(m, "columns")?, i32_of(parts, "parts")?);
    let f = func!(dev, "gfn_col_sum_partial")?;
    let mut b = f.builder();
    b.arg(&x).arg(&ni).arg(&mi).arg(&pi).arg(&partial);
    let launch = LaunchConfig {
        grid_dim: (m.div_ceil(32) as u32, parts as u32, 1),
        block_dim: (32, 8, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: argument list matches `gfn_col_sum_partial`.
    unsafe { b.launch(launch) }.w()?;
    let f = func!(dev, "gfn_col_sum_final")?;
    let mut b = f.builder();
    b.arg(&partial).arg(&pi).arg(&mi).arg(&out);
    // SAFETY: argument list matches `gfn_col_sum_final`.
    unsafe { b.launch(cfg(m)) }.w()?;
    Ok(wrap(out, dev))
}

/// The GPU's name and ordinal, e.g. `NVIDIA H200 (cuda:0)`.
pub(crate) fn name(dev: &CudaDevice) -> String {
    let ctx = dev.cuda_stream().context().clone();
    let name = ctx.name().unwrap_or_else(|e| format!("unknown GPU ({e:?})"));
    format!("{name} (cuda:{})", ctx.ordinal())
}
