//! The trainer's data-parallel step ([`crate::distributed`]): every rank of this process samples
//! and differentiates its own batch, then the ranks exchange their status, loss, generator state,
//! gradients and terminal objects, and every rank applies the same mean gradient and records the
//! same objects, in rank order.

use std::time::Instant;

use anyhow::{Result, bail};
use candle_core::backprop::GradStore;
use gfn_core::optim::Adam;
use gfn_core::rng::GfnRng;

use super::Trainer;
use crate::distributed::{Collective, RankFailure, ordered_mean, rank_stream, rng_from_words, rng_words};

/// Where a step's gradients go: into the optimiser, or appended to a flat buffer (every
/// optimiser slot in order, zeros for a slot without a gradient, with `present` saying which)
/// for the all-gather.
pub(super) enum GradSink<'b> {
    Apply,
    Collect {
        grads: &'b mut Vec<f32>,
        present: &'b mut Vec<bool>,
    },
}

impl GradSink<'_> {
    pub(super) fn store(&mut self, opt: &mut Adam, g: &GradStore) -> Result<()> {
        match self {
            Self::Apply => opt.step(g)?,
            Self::Collect { grads, present } => {
                present.clear();
                for slot in &opt.slots {
                    match g.get(slot.var.as_tensor()) {
                        Some(t) => {
                            grads.extend_from_slice(&t.flatten_all()?.to_vec1::<f32>()?);
                            present.push(true);
                        }
                        None => {
                            grads.extend(std::iter::repeat_n(0.0, slot.m.len()));
                            present.push(false);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    pub(super) fn slices(&mut self, opt: &mut Adam, g: &[Option<&[f32]>]) -> Result<()> {
        match self {
            Self::Apply => opt.step_slices(g)?,
            Self::Collect { grads, present } => {
                if g.len() != opt.slots.len() {
                    bail!("{} gradients for {} parameters", g.len(), opt.slots.len());
                }
                present.clear();
                for (slot, g) in opt.slots.iter().zip(g) {
                    match g {
                        Some(g) => grads.extend_from_slice(g),
                        None => grads.extend(std::iter::repeat_n(0.0, slot.m.len())),
                    }
                    present.push(g.is_some());
                }
            }
        }
        Ok(())
    }
}

/// Header of one rank's step: status (0 ok, 1 failed), loss, rows evaluated, then its
/// generator's eight state words.
const HEADER: usize = 3 + 8;

/// The most ranks a run may have.
pub const MAX_RANKS: usize = 1 << 20;

/// A data-parallel run's ranks as this process holds them, and the step's buffers.
pub struct Ranks {
    comm: Box<dyn Collective>,
    /// Generators of this process's ranks after the first (the trainer's `rng` is the first's).
    rngs: Vec<GfnRng>,
    /// Every rank's generator state after the last step, eight words each (for checkpoints).
    streams: Vec<u32>,
    grads: Vec<f32>,
    present: Vec<bool>,
    all_grads: Vec<f32>,
    mean: Vec<f32>,
    head: Vec<f64>,
    all_head: Vec<f64>,
    states: Vec<i32>,
    all_states: Vec<i32>,
    log_reward: Vec<f64>,
    all_log_reward: Vec<f64>,
    /// Seconds in the collectives (all-gathers of headers, gradients and objects), included in
    /// the trainer's `wall_seconds`.
    pub exchange_seconds: f64,
    /// Check after every step that every rank holds the same parameters ([`Ranks::set_verify`]).
    verify: bool,
    /// Steps whose parameters were checked equal on every rank.
    pub verified_steps: u64,
}

impl Ranks {
    /// The number of ranks.
    pub fn size(&self) -> usize {
        self.comm.size()
    }
    /// The first rank this process computes.
    pub fn first(&self) -> usize {
        self.comm.local_ranks().start
    }
    /// `virtual` or `mpi`.
    pub fn kind(&self) -> &'static str {
        self.comm.kind()
    }
    pub(super) fn into_comm(self) -> Box<dyn Collective> {
        self.comm
    }
    /// After every step, exchange a hash (FNV-1a) of every parameter's bits and stop with an
    /// error naming the first rank whose parameters differ from rank 0's.
    pub fn set_verify(&mut self, on: bool) {
        self.verify = on;
    }
    /// Whether every step checks the ranks' parameters ([`Ranks::set_verify`]).
    pub fn verify(&self) -> bool {
        self.verify
    }
}

impl Trainer {
    /// Train as the ranks behind `comm` from now on: each samples `batch_size` trajectories per
    /// step from its own generator (rank r: the run's generator advanced by r jumps, or the
    /// stream a checkpoint saved for it), and every rank applies the mean of all ranks'
    /// gradients. Only rank 0 should evaluate and write. Refuses what has no data-parallel form
    /// here: the device engine, policy gradients, LED's potentials, local search, more than one
    /// update per batch, and replay unless `replay_shared`.
    pub fn distribute(&mut self, comm: Box<dyn Collective>) -> Result<()> {
        let n = comm.size();
        if n > MAX_RANKS {
            bail!("invalid number of ranks {n}: at most {MAX_RANKS}");
        }
        // The exchange's buffers grow with the ranks: every rank's gradients and objects.
        let per_rank = 4.0 * 2.0 * self.optimizer.num_params() as f64
            + 2.0 * self.config.batch_size as f64 * (4.0 * self.env.state_dim() as f64 + 8.0)
            + 8.0 * (HEADER as f64 + 8.0);
        crate::memory::check(
            &[crate::memory::Need {
                field: "ranks",
                value: n.to_string(),
                what: "the ranks' gradients and objects exchanged each step".into(),
                bytes: per_rank * n as f64,
            }],
            crate::memory::machine_memory(),
        )?;
        let refuse = |what: &str| -> Result<()> { bail!("data-parallel training ({n} ranks) does not support {what}") };
        if self.device_engine.is_some() {
            refuse(&format!("device = {} (train on the cpu)", self.config.device))?;
        }
        if let gfn_objectives::Objective::PolicyGradient(_) = self.objective {
            refuse(&format!(
                "loss = {} (the policy-gradient family)",
                self.objective.name()
            ))?;
        }
        if self.led.is_some() {
            refuse(&format!("loss = {} (LED's potential network)", self.objective.name()))?;
        }
        if self.config.local_search > 0 {
            refuse(&format!("local_search = {}", self.config.local_search))?;
        }
        if self.config.updates_per_batch > 1 {
            refuse(&format!("updates_per_batch = {}", self.config.updates_per_batch))?;
        }
        if self.replay.is_some() && !self.config.replay_shared && n > 1 {
            refuse(&format!(
                "replay_size = {} with one buffer per rank; set replay_shared = true to give every rank every rank's new objects",
                self.config.replay_size
            ))?;
        }
        if !self.optimizer.slots.iter().all(|s| s.var.device().is_cpu()) {
            refuse("parameters off the cpu")?;
        }
        let saved = std::mem::take(&mut self.saved_streams);
        let stream = |r: usize| -> Result<GfnRng> {
            match saved.get(r * 8..(r + 1) * 8) {
                Some(words) if r > 0 => rng_from_words(words),
                _ => Ok(rank_stream(&self.rng, r)),
            }
        };
        let local = comm.local_ranks();
        let first = stream(local.start)?;
        let rngs = local.clone().skip(1).map(stream).collect::<Result<Vec<_>>>()?;
        let mut streams = Vec::with_capacity(8 * n);
        for r in 0..n {
            streams.extend(rng_words(&stream(r)?)?);
        }
        self.rng = first;
        self.ranks = Some(Ranks {
            comm,
            rngs,
            streams,
            grads: Vec::new(),
            present: Vec::new(),
            all_grads: Vec::new(),
            mean: Vec::new(),
            head: Vec::new(),
            all_head: Vec::new(),
            states: Vec::new(),
            all_states: Vec::new(),
            log_reward: Vec::new(),
            all_log_reward: Vec::new(),
            exchange_seconds: 0.0,
            verify: false,
            verified_steps: 0,
        });
        Ok(())
    }

    /// The data-parallel layout, if any.
    pub fn ranks(&self) -> Option<&Ranks> {
        self.ranks.as_ref()
    }

    /// The data-parallel layout, to change its checks ([`Ranks::set_verify`]).
    pub fn ranks_mut(&mut self) -> Option<&mut Ranks> {
        self.ranks.as_mut()
    }

    /// Whether this process evaluates and writes: rank 0, or a run without ranks.
    pub fn is_rank0(&self) -> bool {
        self.ranks.as_ref().is_none_or(|r| r.first() == 0)
    }

    /// Every rank's generator state (eight words each) for a checkpoint of a run of more than
    /// one rank; `None` otherwise.
    pub(super) fn rank_streams(&self) -> Option<&[u32]> {
        self.ranks
            .as_ref()
            .filter(|r| r.size() > 1)
            .map(|r| r.streams.as_slice())
    }

    /// One data-parallel step (see [`Trainer::distribute`]).
    pub(super) fn distributed_step(&mut self) -> Result<f64> {
        let mut ranks = self.ranks.take().expect("a distributed step has ranks");
        let out = self.exchange_step(&mut ranks);
        self.ranks = Some(ranks);
        out
    }

    fn exchange_step(&mut self, d: &mut Ranks) -> Result<f64> {
        let start = Instant::now();
        let local = d.comm.local_ranks();
        let n = d.comm.size();
        let sd = self.env.state_dim();
        let b = self.config.batch_size;
        d.grads.clear();
        d.head.clear();
        d.states.clear();
        d.log_reward.clear();
        let mut failure = None;
        for (i, rank) in local.clone().enumerate() {
            if i > 0 {
                std::mem::swap(&mut self.rng, &mut d.rngs[i - 1]);
            }
            let out = self.local_step(GradSink::Collect {
                grads: &mut d.grads,
                present: &mut d.present,
            });
            if i > 0 {
                std::mem::swap(&mut self.rng, &mut d.rngs[i - 1]);
            }
            let rng = if i > 0 { &d.rngs[i - 1] } else { &self.rng };
            match out {
                Ok(value) => {
                    d.head.extend([0.0, value, self.batch.num_rows() as f64]);
                    for bi in 0..self.batch.batch_size {
                        d.states.extend_from_slice(self.batch.terminal_state(bi));
                    }
                    d.log_reward.extend_from_slice(&self.batch.log_reward);
                }
                Err(e) if local.len() == 1 => {
                    // Tell the other processes, then stop with this rank's own error.
                    d.head.extend([1.0, f64::NAN, 0.0]);
                    failure = Some(e.context(format!("rank {rank}")));
                }
                Err(e) => return Err(e.context(format!("rank {rank}"))),
            }
            d.head.extend(rng_words(rng)?.into_iter().map(f64::from));
        }
        let t = Instant::now();
        d.comm.all_gather_f64(&d.head, &mut d.all_head)?;
        let failed: Vec<usize> = (0..n).filter(|r| d.all_head[r * HEADER] != 0.0).collect();
        if !failed.is_empty() {
            let mine = failure
                .as_ref()
                .map(|e| format!("{e:#}").into_bytes())
                .unwrap_or_default();
            let messages = d.comm.all_gather_bytes(&[mine])?;
            if let Some(e) = failure {
                return Err(e);
            }
            let r = failed[0];
            return Err(RankFailure {
                rank: r,
                message: String::from_utf8_lossy(&messages[r]).into_owned(),
            }
            .into());
        }
        let p = d.grads.len() / local.len();
        if p != self.optimizer.num_params() {
            bail!("{p} gradients for {} parameters", self.optimizer.num_params());
        }
        d.comm.all_gather_f32(&d.grads, &mut d.all_grads)?;
        d.comm.all_gather_i32(&d.states, &mut d.all_states)?;
        d.comm.all_gather_f64(&d.log_reward, &mut d.all_log_reward)?;
        d.exchange_seconds += t.elapsed().as_secs_f64();
        if d.all_states.len() != n * b * sd || d.all_log_reward.len() != n * b {
            bail!("the ranks sampled batches of different sizes");
        }
        ordered_mean(&d.all_grads, p, &mut d.mean);
        let mut slices = Vec::with_capacity(self.optimizer.slots.len());
        let mut at = 0;
        for (slot, &present) in self.optimizer.slots.iter().zip(&d.present) {
            let len = slot.m.len();
            slices.push(present.then(|| &d.mean[at..at + len]));
            at += len;
        }
        self.optimizer.step_slices(&slices)?;
        // Every rank's objects, in rank order, into the replay buffer and the trackers.
        for k in 0..n * b {
            let x = &d.all_states[k * sd..(k + 1) * sd];
            let log_r = d.all_log_reward[k];
            if let Some(replay) = &mut self.replay {
                replay.add_one(x, log_r);
            }
            self.record_object(x, log_r);
        }
        d.streams.clear();
        let mut value = 0.0;
        let mut rows = 0.0;
        for r in 0..n {
            let h = &d.all_head[r * HEADER..(r + 1) * HEADER];
            value += h[1];
            rows += h[2];
            d.streams.extend(h[3..].iter().map(|&w| w as u32));
        }
        let value = value / n as f64;
        if d.verify {
            self.verify_ranks(d)?;
        }
        self.count_step(start, rows as usize, value, (n * b) as u64);
        Ok(value)
    }

    /// Every rank's hash of its parameters' bits, compared with rank 0's.
    fn verify_ranks(&self, d: &mut Ranks) -> Result<()> {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for slot in &self.optimizer.slots {
            let p = slot.var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            for x in p {
                h = crate::checkpoint::fnv1a(h, &x.to_bits().to_le_bytes());
            }
        }
        let words = [(h >> 32) as f64, (h & 0xffff_ffff) as f64];
        let local: Vec<f64> = d.comm.local_ranks().flat_map(|_| words).collect();
        let mut all = Vec::new();
        d.comm.all_gather_f64(&local, &mut all)?;
        if let Some(r) = (1..d.comm.size()).find(|&r| all[2 * r..2 * r + 2] != all[..2]) {
            bail!(
                "rank {r}'s parameters differ from rank 0's after iteration {}",
                self.iteration + 1
            );
        }
        d.verified_steps += 1;
        Ok(())
    }
}

/// The generator states a checkpoint saved for each rank (`ranks/rng`), or none.
pub(super) fn saved_streams(ck: &crate::checkpoint::Checkpoint) -> Result<Vec<u32>> {
    match ck.aux.iter().find(|(name, _, _)| name == "ranks/rng") {
        None => Ok(Vec::new()),
        Some((_, _, crate::checkpoint::AuxData::U32(words))) if words.len() % 8 == 0 => Ok(words.clone()),
        Some(_) => bail!("checkpoint tensor ranks/rng should be U32 words, eight per rank"),
    }
}

#[cfg(test)]
mod tests {
    use std::ops::Range;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use candle_core::Device;
    use gfn_envs::{SequenceEnv, SequenceOrder};

    use super::*;
    use crate::config::TrainConfig;
    use crate::distributed::VirtualRanks;

    /// A trainer on 4-letter sequences of length 3, and its reward's call counter: the reward
    /// fails on the call whose number is then stored in the second counter (0: never).
    fn trainer() -> (Trainer, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let fail_at = Arc::new(AtomicUsize::new(0));
        let (c, f) = (calls.clone(), fail_at.clone());
        let reward = Arc::new(move |x: &[i32], out: &mut [f64]| -> gfn_core::Result<()> {
            if c.fetch_add(1, Ordering::SeqCst) + 1 == f.load(Ordering::SeqCst) {
                return Err(gfn_core::GfnError::Other("the reward model is down".into()));
            }
            let len = x.len() / out.len();
            for (o, row) in out.iter_mut().zip(x.chunks(len)) {
                *o = row.iter().map(|&c| c as f64).sum::<f64>() * 0.1;
            }
            Ok(())
        });
        let env = SequenceEnv::new("seq", 4, 3, SequenceOrder::Append, reward).unwrap();
        let config = TrainConfig {
            hidden: 16,
            batch_size: 4,
            ..TrainConfig::default()
        };
        let t = Trainer::with_env(config, Box::new(env), &Device::Cpu).unwrap();
        (t, calls, fail_at)
    }

    #[test]
    fn a_failing_rank_is_named_with_its_cause() {
        // Virtual ranks: rank 1's batch is the second reward call of the first step.
        let (mut t, calls, fail_at) = trainer();
        fail_at.store(calls.load(Ordering::SeqCst) + 2, Ordering::SeqCst);
        t.distribute(Box::new(VirtualRanks::new(2).unwrap())).unwrap();
        let e = format!("{:#}", t.step().unwrap_err());
        assert!(e.contains("rank 1") && e.contains("the reward model is down"), "{e}");
        assert_eq!(t.iteration, 0);
    }

    /// A checkpoint of a two-rank run restored into a trainer with two ranks continues it bit for
    /// bit (every rank's stream restored), and keeps the ranks' checks.
    #[test]
    fn restoring_keeps_the_ranks_and_their_streams() {
        let two = || -> Trainer {
            let (mut t, _, _) = trainer();
            t.distribute(Box::new(VirtualRanks::new(2).unwrap())).unwrap();
            t.ranks_mut().unwrap().set_verify(true);
            t
        };
        let mut a = two();
        for _ in 0..3 {
            a.step().unwrap();
        }
        let mut b = two();
        b.restore(&a.checkpoint().unwrap()).unwrap();
        assert!(b.ranks().unwrap().verify());
        for _ in 0..3 {
            a.step().unwrap();
            b.step().unwrap();
        }
        assert_eq!(a.checkpoint().unwrap().tensors, b.checkpoint().unwrap().tensors);
        assert_eq!(b.ranks().unwrap().verified_steps, 3);
    }

    /// Rank 0 of two processes, whose peer (rank 1) reports a failure in the step's exchange.
    struct PeerFails;

    impl Collective for PeerFails {
        fn size(&self) -> usize {
            2
        }
        fn local_ranks(&self) -> Range<usize> {
            0..1
        }
        fn all_gather_f32(&self, local: &[f32], out: &mut Vec<f32>) -> Result<()> {
            *out = [local, local].concat();
            Ok(())
        }
        fn all_gather_f64(&self, local: &[f64], out: &mut Vec<f64>) -> Result<()> {
            let mut peer = local.to_vec();
            peer[0] = 1.0;
            *out = [local, &peer[..]].concat();
            Ok(())
        }
        fn all_gather_i32(&self, local: &[i32], out: &mut Vec<i32>) -> Result<()> {
            *out = [local, local].concat();
            Ok(())
        }
        fn all_gather_bytes(&self, local: &[Vec<u8>]) -> Result<Vec<Vec<u8>>> {
            Ok(vec![local[0].clone(), b"rank 1: out of memory".to_vec()])
        }
        fn kind(&self) -> &'static str {
            "test"
        }
    }

    #[test]
    fn a_peer_failure_stops_this_rank_naming_the_peer() {
        let (mut t, _, _) = trainer();
        t.distribute(Box::new(PeerFails)).unwrap();
        let e = t.step().unwrap_err();
        let f = e.root_cause().downcast_ref::<RankFailure>().expect("a RankFailure");
        assert_eq!((f.rank, f.message.as_str()), (1, "rank 1: out of memory"));
        assert_eq!(t.iteration, 0, "no update after a failed exchange");
    }
}
