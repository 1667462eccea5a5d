//! Synchronous data-parallel training: N ranks, each sampling its own batch from its own RNG
//! stream, computing its rewards, loss and gradients; the gradients gathered from every rank and
//! summed in rank order, so every rank applies the same update and holds the same parameters.
//!
//! The ranks live behind [`Collective`]: [`VirtualRanks`] runs all N ranks in one process, one
//! after another (the test oracle of a distributed run, and a way to debug one), and `MpiRanks`
//! (cargo feature `mpi`) runs one rank per MPI process. Both move the same numbers in the same
//! order, so an N-rank MPI run equals the one-process `virtual_ranks = N` run bit for bit.
//!
//! The reduction is an all-gather followed by a sum in rank order on every rank,
//! `g = (g_0 + g_1 + … + g_{N−1}) · (1/N)` (no scaling at N = 1), rather than `MPI_Allreduce`,
//! whose summation order an MPI library may choose per message size: fixed order is what makes a
//! run reproducible across rank layouts and libraries. It moves N·P floats to every rank instead
//! of about 2·P; `docs/DISTRIBUTED.md` gives the measured cost and where it starts to matter.
//!
//! Rank r's stream is the run's generator (after parameter initialisation) advanced by r jumps
//! of 2^128 draws (`Xoshiro256PlusPlus::jump`), so rank 0 of a one-rank run is the plain run.

use std::ops::Range;

use anyhow::{Result, bail};
use gfn_core::rng::GfnRng;

/// The ranks of a data-parallel run, as one process sees them. `Send`, so a trainer holding them
/// can move between threads (Python releases the GIL around a step); it is never shared.
pub trait Collective: Send {
    /// The number of ranks N.
    fn size(&self) -> usize;
    /// The ranks this process computes (all of them for virtual ranks, its own under MPI).
    fn local_ranks(&self) -> Range<usize>;
    /// Every rank's block of `local.len() / local_ranks().len()` values, in rank order, into
    /// `out` (resized to N blocks).
    fn all_gather_f32(&self, local: &[f32], out: &mut Vec<f32>) -> Result<()>;
    /// [`Collective::all_gather_f32`] for f64.
    fn all_gather_f64(&self, local: &[f64], out: &mut Vec<f64>) -> Result<()>;
    /// [`Collective::all_gather_f32`] for i32.
    fn all_gather_i32(&self, local: &[i32], out: &mut Vec<i32>) -> Result<()>;
    /// One byte string per local rank in, every rank's string out, in rank order (lengths may
    /// differ).
    fn all_gather_bytes(&self, local: &[Vec<u8>]) -> Result<Vec<Vec<u8>>>;
    /// A short name for summaries: `virtual` or `mpi`.
    fn kind(&self) -> &'static str;
}

/// All N ranks in this process: every collective is a copy.
#[derive(Debug, Clone, Copy)]
pub struct VirtualRanks {
    size: usize,
}

impl VirtualRanks {
    /// `size` ranks (at least 1).
    pub fn new(size: usize) -> Result<Self> {
        if size == 0 {
            bail!("invalid virtual_ranks = 0: a run has at least one rank");
        }
        Ok(Self { size })
    }
}

impl Collective for VirtualRanks {
    fn size(&self) -> usize {
        self.size
    }
    fn local_ranks(&self) -> Range<usize> {
        0..self.size
    }
    fn all_gather_f32(&self, local: &[f32], out: &mut Vec<f32>) -> Result<()> {
        out.clear();
        out.extend_from_slice(local);
        Ok(())
    }
    fn all_gather_f64(&self, local: &[f64], out: &mut Vec<f64>) -> Result<()> {
        out.clear();
        out.extend_from_slice(local);
        Ok(())
    }
    fn all_gather_i32(&self, local: &[i32], out: &mut Vec<i32>) -> Result<()> {
        out.clear();
        out.extend_from_slice(local);
        Ok(())
    }
    fn all_gather_bytes(&self, local: &[Vec<u8>]) -> Result<Vec<Vec<u8>>> {
        Ok(local.to_vec())
    }
    fn kind(&self) -> &'static str {
        "virtual"
    }
}

/// Rank `rank`'s generator: `base` advanced by `rank` jumps of 2^128 draws.
pub fn rank_stream(base: &GfnRng, rank: usize) -> GfnRng {
    let mut rng = base.clone();
    for _ in 0..rank {
        rng.jump();
    }
    rng
}

/// A generator's state as eight 32-bit words (for checkpoints' auxiliary tensors).
pub fn rng_words(rng: &GfnRng) -> Result<Vec<u32>> {
    let state: [u64; 4] = match serde_json::to_value(rng)? {
        serde_json::Value::Object(m) => serde_json::from_value(m.get("s").cloned().unwrap_or_default())?,
        _ => bail!("unexpected serialised generator"),
    };
    Ok(state.iter().flat_map(|w| [*w as u32, (*w >> 32) as u32]).collect())
}

/// The generator whose state [`rng_words`] wrote.
pub fn rng_from_words(words: &[u32]) -> Result<GfnRng> {
    if words.len() != 8 {
        bail!("a generator state has 8 words, not {}", words.len());
    }
    let s: Vec<u64> = words.chunks(2).map(|w| w[0] as u64 | ((w[1] as u64) << 32)).collect();
    Ok(serde_json::from_value(serde_json::json!({ "s": s }))?)
}

/// A rank's failure, as every rank reports it: the rank and its message.
#[derive(Debug, Clone)]
pub struct RankFailure {
    /// The rank that failed.
    pub rank: usize,
    /// Its error, with causes.
    pub message: String,
}

impl std::fmt::Display for RankFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "rank {} failed: {}", self.rank, self.message)
    }
}

impl std::error::Error for RankFailure {}

/// The sum over ranks of `gathered` (N blocks of `p`), in rank order, times 1/N (unscaled at
/// N = 1), into `out`.
pub fn ordered_mean(gathered: &[f32], p: usize, out: &mut Vec<f32>) {
    let n = gathered.len() / p.max(1);
    out.clear();
    out.extend_from_slice(&gathered[..p]);
    for r in 1..n {
        for (o, g) in out.iter_mut().zip(&gathered[r * p..(r + 1) * p]) {
            *o += g;
        }
    }
    if n > 1 {
        let scale = 1.0 / n as f32;
        for o in out.iter_mut() {
            *o *= scale;
        }
    }
}

#[cfg(feature = "mpi")]
pub use mpi_ranks::{MpiEnvironment, MpiRanks};

#[cfg(feature = "mpi")]
mod mpi_ranks {
    use super::*;
    use mpi::Count;
    use mpi::datatype::PartitionMut;
    use mpi::environment::Threading;
    use mpi::topology::{Communicator, SimpleCommunicator};
    use mpi::traits::*;

    /// MPI in this process, from `MPI_Init_thread` (serialized calls: a trainer may step on
    /// another thread than the one that initialised MPI, never two at once) to `MPI_Finalize`
    /// when it is dropped. Keep it alive until every trainer using its ranks is gone.
    pub struct MpiEnvironment {
        universe: mpi::environment::Universe,
    }

    impl MpiEnvironment {
        /// Initialise MPI (once per process).
        pub fn init() -> Result<Self> {
            let Some((universe, level)) = mpi::initialize_with_threading(Threading::Serialized) else {
                bail!("MPI is already initialised in this process");
            };
            if level < Threading::Serialized {
                bail!("this MPI library provides thread level {level:?}; gfn needs serialized calls from any thread");
            }
            Ok(Self { universe })
        }

        /// This process's rank in `MPI_COMM_WORLD`.
        pub fn rank(&self) -> usize {
            self.universe.world().rank() as usize
        }

        /// The number of processes.
        pub fn size(&self) -> usize {
            self.universe.world().size() as usize
        }

        /// The ranks, to give a trainer ([`crate::train::Trainer::distribute`]).
        pub fn ranks(&self) -> MpiRanks {
            MpiRanks {
                world: self.universe.world(),
            }
        }

        /// Stop every rank of the job (`MPI_Abort`) with `code`: for a failure only this rank
        /// knows of, which would leave the others waiting in an exchange.
        pub fn abort(&self, code: i32) -> ! {
            self.universe.world().abort(code)
        }
    }

    /// One rank per MPI process (`mpirun -n N`): collectives over `MPI_COMM_WORLD`.
    pub struct MpiRanks {
        world: SimpleCommunicator,
    }

    // SAFETY: the communicator is a handle of `MPI_COMM_WORLD`, which outlives it (the
    // environment finalises MPI only when dropped); MPI was initialised for serialized calls
    // from any thread, and `MpiRanks` is `Send` but not `Sync`, so one thread at a time calls
    // through it.
    #[allow(unsafe_code)]
    unsafe impl Send for MpiRanks {}

    impl MpiRanks {
        /// This process's rank.
        pub fn rank(&self) -> usize {
            self.world.rank() as usize
        }

        fn gather<T: Equivalence + Copy + Default>(&self, local: &[T], out: &mut Vec<T>) -> Result<()> {
            out.clear();
            out.resize(local.len() * self.size(), T::default());
            self.world.all_gather_into(local, &mut out[..]);
            Ok(())
        }
    }

    impl Collective for MpiRanks {
        fn size(&self) -> usize {
            self.world.size() as usize
        }
        fn local_ranks(&self) -> Range<usize> {
            let r = self.rank();
            r..r + 1
        }
        fn all_gather_f32(&self, local: &[f32], out: &mut Vec<f32>) -> Result<()> {
            self.gather(local, out)
        }
        fn all_gather_f64(&self, local: &[f64], out: &mut Vec<f64>) -> Result<()> {
            self.gather(local, out)
        }
        fn all_gather_i32(&self, local: &[i32], out: &mut Vec<i32>) -> Result<()> {
            self.gather(local, out)
        }
        fn all_gather_bytes(&self, local: &[Vec<u8>]) -> Result<Vec<Vec<u8>>> {
            let mine: &[u8] = local.first().map(|v| v.as_slice()).unwrap_or(&[]);
            let mut counts = vec![0 as Count; self.size()];
            self.world.all_gather_into(&(mine.len() as Count), &mut counts[..]);
            let displs: Vec<Count> = counts
                .iter()
                .scan(0, |acc, &c| {
                    let d = *acc;
                    *acc += c;
                    Some(d)
                })
                .collect();
            let total: Count = counts.iter().sum();
            let mut buf = vec![0u8; total as usize];
            {
                let mut part = PartitionMut::new(&mut buf[..], &counts[..], &displs[..]);
                self.world.all_gather_varcount_into(mine, &mut part);
            }
            Ok(counts
                .iter()
                .zip(&displs)
                .map(|(&c, &d)| buf[d as usize..(d + c) as usize].to_vec())
                .collect())
        }
        fn kind(&self) -> &'static str {
            "mpi"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngCore;

    #[test]
    fn generator_words_round_trip_and_streams_differ() {
        let mut base = gfn_core::rng::rng_from_seed(7);
        base.next_u64();
        let back = rng_from_words(&rng_words(&base).unwrap()).unwrap();
        assert_eq!(back, base);
        let (mut r0, mut r1) = (rank_stream(&base, 0), rank_stream(&base, 1));
        assert_eq!(r0, base);
        assert_ne!(r0.next_u64(), r1.next_u64());
        assert!(rng_from_words(&[1, 2, 3]).is_err());
    }

    #[test]
    fn the_mean_sums_in_rank_order_and_leaves_one_rank_alone() {
        let g = [1.0f32, 2.0, 3.0, 5.0, 1e8, -1e8];
        let mut out = Vec::new();
        ordered_mean(&g[..2], 2, &mut out);
        assert_eq!(out, vec![1.0, 2.0]);
        ordered_mean(&g, 2, &mut out);
        // ((1 + 3) + 1e8) / 3 in f32, as the ranks' order gives it.
        assert_eq!(out[0], ((1.0f32 + 3.0) + 1e8) * (1.0 / 3.0));
        assert_eq!(out[1], ((2.0f32 + 5.0) + -1e8) * (1.0 / 3.0));
    }
}
