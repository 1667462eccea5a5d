//! LED-GFN inside the training loop (Jang et al. 2024; the official code's online scheme,
//! papers.md §1.1): every iteration the potential network scores the sampled batch's
//! transitions; the re-centred potentials become the increments of LED-DB / LED-SubTB; the same
//! potentials (not recomputed) get one decomposition-loss update with a fresh dropout mask; then
//! `led_steps` more updates replay random batches from a FIFO buffer of the last `led_buffer`
//! batches.

use std::collections::VecDeque;

use anyhow::{Context, Result, bail};
use candle_core::Device;
use rand::Rng;

use gfn_core::optim::{Adam, AdamParams};
use gfn_core::tape::{MlpGrads, MlpTape};
use gfn_core::{GfnRng, TrajectoryBatch};
use gfn_led::{
    PotentialNet, TransitionInputs, decomposed_len, decomposition_loss_and_grad, draw_mask, led_offsets, recentre,
};

use crate::checkpoint::{AuxData, Checkpoint, F32Tensors};
use crate::config::TrainConfig;

/// Auxiliary tensors of a checkpoint.
type AuxTensors = Vec<(String, Vec<usize>, AuxData)>;

/// One stored batch: the potential network's inputs and the regression targets.
#[derive(Debug, Clone)]
struct Stored {
    inputs: TransitionInputs,
    lens: Vec<usize>,
    log_reward: Vec<f64>,
}

/// The potential network, its optimiser and its replay buffer. The network runs on the CPU
/// tape engine: a recorded forward pass, the decomposition loss's gradient in closed form, one
/// hand-written backward pass, the fused Adam step.
#[derive(Debug)]
pub struct LedTrainer {
    /// `φ_θ(s → s')`.
    pub net: PotentialNet,
    optimizer: Adam,
    buffer: VecDeque<Stored>,
    capacity: usize,
    drop_rate: Option<f64>,
    extra_steps: usize,
    masks: Vec<f32>,
    tape: MlpTape,
    grads: MlpGrads,
    pending: Option<(Vec<f64>, Stored)>,
}

impl LedTrainer {
    /// The LED machinery of `config` for an environment with `feature_dim` inputs; parameters
    /// drawn from `rng`. The potential network is `led_hidden` wide (0: `hidden`).
    pub fn new(config: &TrainConfig, feature_dim: usize, device: &Device, rng: &mut GfnRng) -> Result<Self> {
        if !device.is_cpu() {
            bail!("invalid device: LED's potential network runs on the CPU");
        }
        let hidden = if config.led_hidden == 0 {
            config.hidden
        } else {
            config.led_hidden
        };
        let net = PotentialNet::new(feature_dim, hidden, config.layers, device, rng)?;
        let params = net.named_params().into_iter().map(|(n, v)| (n, v, 0)).collect();
        Ok(Self {
            net,
            optimizer: Adam::new(params, vec![AdamParams::adam(config.led_lr)]),
            // Grows as batches arrive: the buffer may be longer than the run.
            buffer: VecDeque::new(),
            capacity: config.led_buffer,
            drop_rate: (config.led_drop_rate >= 0.0).then_some(config.led_drop_rate),
            extra_steps: config.led_steps,
            masks: Vec::new(),
            tape: MlpTape::default(),
            grads: MlpGrads::default(),
            pending: None,
        })
    }

    /// Potentials `[B, T]` of `inputs`, with the activations recorded on the tape.
    fn forward(&mut self, inputs: &TransitionInputs) -> Result<Vec<f64>> {
        self.tape.clear();
        let m = inputs.transitions();
        if m == 0 {
            return Ok(inputs.scatter(&[]));
        }
        let y = self.net.mlp().forward_taped(inputs.features(), m, &mut self.tape)?;
        Ok(inputs.scatter(y))
    }

    /// Node offsets `[B, T+1]` for the GFlowNet loss from the current potentials of `batch`
    /// (re-centred, constants for the GFlowNet). The potentials are kept for
    /// [`LedTrainer::update`].
    pub fn offsets(&mut self, batch: &TrajectoryBatch) -> Result<Vec<f64>> {
        let inputs = self.net.inputs(batch);
        let phi = self.forward(&inputs)?;
        let (_, t) = inputs.shape();
        let lens: Vec<usize> = (0..batch.batch_size).map(|b| decomposed_len(batch, b)).collect();
        let hat = recentre(&phi, t, &lens, &batch.log_reward);
        let offsets = led_offsets(batch, &hat)?;
        self.pending = Some((
            phi,
            Stored {
                inputs,
                lens,
                log_reward: batch.log_reward.clone(),
            },
        ));
        Ok(offsets)
    }

    /// One decomposition update on the batch of the last [`LedTrainer::offsets`] call (reusing its
    /// potentials and recorded activations), then `led_steps` replayed updates; returns the
    /// first update's loss.
    pub fn update(&mut self, rng: &mut GfnRng) -> Result<f64> {
        let (phi, stored) = self
            .pending
            .take()
            .ok_or_else(|| anyhow::anyhow!("LED update without potentials: call offsets first"))?;
        let first = self.step_on(&phi, &stored, rng)?;
        if self.capacity > 0 {
            if self.buffer.len() == self.capacity {
                self.buffer.pop_front();
            }
            self.buffer.push_back(stored);
        }
        // The buffer is moved out for the replay so its batches are borrowed, not copied.
        let buffer = std::mem::take(&mut self.buffer);
        let replay = (|| -> Result<()> {
            for _ in 0..self.extra_steps {
                if buffer.is_empty() {
                    break;
                }
                let stored = &buffer[rng.random_range(0..buffer.len())];
                let phi = self.forward(&stored.inputs)?;
                self.step_on(&phi, stored, rng)?;
            }
            Ok(())
        })();
        self.buffer = buffer;
        replay?;
        Ok(first)
    }

    /// A decomposition update from potentials whose activations are on the tape.
    fn step_on(&mut self, phi: &[f64], stored: &Stored, rng: &mut GfnRng) -> Result<f64> {
        let (b, t) = stored.inputs.shape();
        self.masks.clear();
        self.masks.resize(b * t, 0.0);
        for (i, &n) in stored.lens.iter().enumerate() {
            if n > 0 {
                let gamma = self.drop_rate.unwrap_or_else(|| gfn_led::default_drop_rate(n));
                draw_mask(n, gamma, rng, &mut self.masks[i * t..(i + 1) * t])?;
            }
        }
        let (loss, grad) = decomposition_loss_and_grad(phi, t, &self.masks, &stored.lens, &stored.log_reward)?;
        if !loss.is_finite() {
            bail!("the LED decomposition loss is {loss}");
        }
        if stored.inputs.transitions() == 0 {
            return Ok(loss);
        }
        let d_out = stored.inputs.gather(&grad);
        self.net.mlp().backward_taped(&self.tape, &d_out, &mut self.grads)?;
        let slices: Vec<Option<&[f32]>> = self
            .grads
            .layers
            .iter()
            .flat_map(|(w, b)| [Some(w.as_slice()), Some(b.as_slice())])
            .collect();
        self.optimizer.step_slices(&slices)?;
        Ok(loss)
    }

    /// Add the potential network, its Adam state and the replay buffer to a checkpoint's
    /// tensors (names under `led/`), so a resumed LED run continues bit for bit.
    pub fn save(&self, tensors: &mut F32Tensors, aux: &mut AuxTensors) -> Result<()> {
        crate::checkpoint::save_adam("led", &self.optimizer, tensors)?;
        let t = self.optimizer.t;
        aux.push((
            "led/adam_t".into(),
            vec![2],
            AuxData::U32(vec![t as u32, (t >> 32) as u32]),
        ));
        aux.push((
            "led/buffer_len".into(),
            vec![1],
            AuxData::U32(vec![self.buffer.len() as u32]),
        ));
        for (j, st) in self.buffer.iter().enumerate() {
            let key = |k: &str| format!("led/buffer/{j:05}/{k}");
            let (b, t) = st.inputs.shape();
            let m = st.inputs.transitions();
            let width = st.inputs.features().len().checked_div(m).unwrap_or(0);
            tensors.push((key("x"), vec![m, width], st.inputs.features().to_vec()));
            let u32s = |v: &[usize]| v.iter().map(|&x| x as u32).collect::<Vec<u32>>();
            aux.push((key("shape"), vec![3], AuxData::U32(u32s(&[m, b, t]))));
            aux.push((key("index"), vec![b * t], AuxData::U32(st.inputs.index().to_vec())));
            aux.push((key("lens"), vec![st.lens.len()], AuxData::U32(u32s(&st.lens))));
            aux.push((
                key("log_reward"),
                vec![st.log_reward.len()],
                AuxData::F64(st.log_reward.clone()),
            ));
        }
        Ok(())
    }

    /// Restore what [`LedTrainer::save`] wrote.
    pub fn restore(&mut self, ck: &Checkpoint) -> Result<()> {
        crate::checkpoint::restore_adam("led", &mut self.optimizer, ck)?;
        let u32s = |name: &str| -> Result<Vec<u32>> {
            match &ck.aux(name)?.2 {
                AuxData::U32(v) => Ok(v.clone()),
                AuxData::F64(_) => bail!("tensor {name} should be U32"),
            }
        };
        let t = u32s("led/adam_t")?;
        if t.len() != 2 {
            bail!("tensor led/adam_t should hold 2 values");
        }
        self.optimizer.t = u64::from(t[0]) | (u64::from(t[1]) << 32);
        let n = *u32s("led/buffer_len")?
            .first()
            .context("tensor led/buffer_len is empty")? as usize;
        if n > self.capacity {
            bail!(
                "the checkpoint's LED buffer holds {n} batches, led_buffer = {}",
                self.capacity
            );
        }
        self.buffer.clear();
        for j in 0..n {
            let key = |k: &str| format!("led/buffer/{j:05}/{k}");
            let shape = u32s(&key("shape"))?;
            let [m, b, t] = shape[..] else {
                bail!("tensor {} should hold 3 values", key("shape"));
            };
            let x = ck.tensor(&key("x"))?.2.clone();
            let inputs = TransitionInputs::from_parts(x, u32s(&key("index"))?, m as usize, b as usize, t as usize)?;
            let lens: Vec<usize> = u32s(&key("lens"))?.into_iter().map(|l| l as usize).collect();
            let log_reward = match &ck.aux(&key("log_reward"))?.2 {
                AuxData::F64(v) => v.clone(),
                AuxData::U32(_) => bail!("tensor {} should be F64", key("log_reward")),
            };
            if lens.len() != b as usize || log_reward.len() != b as usize {
                bail!("LED buffer entry {j} is inconsistent");
            }
            self.buffer.push_back(Stored {
                inputs,
                lens,
                log_reward,
            });
        }
        self.pending = None;
        Ok(())
    }
}
