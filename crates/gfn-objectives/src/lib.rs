//! # gfn-objectives
//!
//! Balance objectives for GFlowNets, each in its own file with its formula:
//! [`fm`] flow matching, [`db`] detailed balance, [`tb`] trajectory balance, [`subtb`] SubTB(λ),
//! [`fl`] their forward-looking forms FL-DB and FL-SubTB(λ), and [`mdb`] modified DB; beside
//! them the policy-gradient family ([`pg`], with RL-T's trust-region step in [`trpo`]), reverse-KL
//! variational inference ([`vi`]), soft Q-learning ([`softq`]) and backward importance-sampled
//! likelihoods ([`likelihood`]).
//! They take [`BalanceTerms`] (or [`fm::FlowMatchingTerms`]): padded per-step log-probabilities
//! and flows gathered from one batched forward pass, so no log-probability is computed twice.
//! [`Objective`] ties a loss to a batch and an estimator; [`loss::BalanceLoss`] gives the balance
//! objectives as typed values for loops written around the terms (any policy, through the seam).

pub mod db;
pub mod fl;
pub mod fm;
pub mod likelihood;
pub mod loss;
pub mod mdb;
pub mod pg;
pub mod softq;
pub mod subtb;
pub mod tb;
pub mod terms;
pub mod trpo;
pub mod vi;

use candle_core::Tensor;
use gfn_core::batch::TrajectoryBatch;
use gfn_core::estimator::{Estimator, RowForward, masked_logsumexp};
use gfn_core::{Env, GfnError, Result};

pub use db::detailed_balance;
pub use fm::{FlowMatchingTerms, flow_matching};
pub use pg::{PgConfig, PgStats, PgVariant, policy_gradient};
pub use subtb::subtrajectory_balance;
pub use tb::trajectory_balance;
pub use terms::BalanceTerms;

gfn_core::choice! {
    /// The name of an [`Objective`], as configuration files and the command line give it.
    pub enum ObjectiveName("loss") {
        /// Flow matching.
        Fm = "fm",
        /// Detailed balance.
        Db = "db",
        /// Trajectory balance.
        Tb = "tb",
        /// SubTB(λ).
        SubTb = "subtb",
        /// Forward-looking DB.
        FlDb = "fl-db",
        /// Forward-looking SubTB(λ).
        FlSubTb = "fl-subtb",
        /// Modified DB.
        ModifiedDb = "mdb",
        /// LED-DB.
        LedDb = "led-db",
        /// LED-SubTB(λ).
        LedSubTb = "led-subtb",
        /// Policy gradient with a uniform P_B (RL-U).
        PgUniform = "pg-u",
        /// Policy gradient with P_B trained by policy gradient (RL-B).
        PgBackward = "pg-b",
        /// Policy gradient with P_B trained toward a guide (RL-G).
        PgGuided = "pg-g",
        /// Policy gradient with a trust-region P_F step (RL-T).
        PgTrustRegion = "pg-trpo",
        /// Reverse-KL variational inference.
        ReverseKl = "vi",
        /// Soft Q-learning.
        SoftQ = "soft-q",
    }
}

impl ObjectiveName {
    /// The policy-gradient family (pg-u, pg-b, pg-g, pg-trpo).
    pub fn is_policy_gradient(self) -> bool {
        matches!(
            self,
            Self::PgUniform | Self::PgBackward | Self::PgGuided | Self::PgTrustRegion
        )
    }

    /// Whether the objective trains on its own samples only (policy gradients, VI, LED), so it
    /// cannot use replayed or locally searched trajectories.
    pub fn is_on_policy(self) -> bool {
        self.is_policy_gradient() || matches!(self, Self::ReverseKl | Self::LedDb | Self::LedSubTb)
    }

    /// Whether the objective has SubTB's λ.
    pub fn has_lambda(self) -> bool {
        matches!(self, Self::SubTb | Self::FlSubTb | Self::LedSubTb)
    }

    /// LED's forms (learned potentials).
    pub fn is_led(self) -> bool {
        matches!(self, Self::LedDb | Self::LedSubTb)
    }
}

/// A training objective.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Objective {
    /// Flow matching.
    FlowMatching,
    /// Detailed balance.
    DetailedBalance,
    /// Trajectory balance.
    TrajectoryBalance,
    /// SubTB(λ).
    SubTrajectoryBalance {
        /// Geometric weight λ > 0.
        lambda: f64,
    },
    /// Forward-looking detailed balance (intermediate energies).
    ForwardLookingDb,
    /// Modified detailed balance (every state terminal through an exit action).
    ModifiedDb,
    /// LED-DB: FL-DB with learned potentials as increments (`gfn-led`).
    LedDb,
    /// LED-SubTB(λ).
    LedSubTb {
        /// Geometric weight λ > 0.
        lambda: f64,
    },
    /// Forward-looking SubTB(λ).
    ForwardLookingSubTb {
        /// Geometric weight λ > 0.
        lambda: f64,
    },
    /// Policy-gradient training (RL-U, RL-B, RL-G, RL-T; [`pg`], [`trpo`]).
    PolicyGradient(PgConfig),
    /// Reverse-KL variational inference by REINFORCE ([`vi`]).
    ReverseKl,
    /// Soft Q-learning, maximum-entropy RL ([`softq`]): exact on trees only.
    SoftQ,
}

impl Objective {
    /// GAE's λ of the policy-gradient objectives unless set ([`Objective::with_pg_settings`]).
    pub const DEFAULT_GAE_LAMBDA: f64 = 0.99;

    /// The objective named `name` (see [`ObjectiveName`]), with SubTB's `lambda` where it has one.
    pub fn parse(name: &str, lambda: f64) -> Result<Self> {
        Self::new(name.parse()?, lambda)
    }

    /// The objective `kind`, with SubTB's `lambda` where it has one (checked there only) and the
    /// policy-gradient defaults ([`Objective::with_pg_settings`] changes them).
    pub fn new(kind: ObjectiveName, lambda: f64) -> Result<Self> {
        use ObjectiveName as N;
        let check_lambda = || {
            if lambda.is_finite() && lambda > 0.0 {
                Ok(lambda)
            } else {
                Err(GfnError::invalid("lambda", lambda, "must be finite and > 0"))
            }
        };
        let pg = |variant| {
            Self::PolicyGradient(PgConfig {
                variant,
                gae_lambda: Self::DEFAULT_GAE_LAMBDA,
                guide_floor: f64::NEG_INFINITY,
            })
        };
        Ok(match kind {
            N::Fm => Self::FlowMatching,
            N::Db => Self::DetailedBalance,
            N::Tb => Self::TrajectoryBalance,
            N::SubTb => Self::SubTrajectoryBalance {
                lambda: check_lambda()?,
            },
            N::FlDb => Self::ForwardLookingDb,
            N::FlSubTb => Self::ForwardLookingSubTb {
                lambda: check_lambda()?,
            },
            N::ModifiedDb => Self::ModifiedDb,
            N::LedDb => Self::LedDb,
            N::LedSubTb => Self::LedSubTb {
                lambda: check_lambda()?,
            },
            N::PgUniform => pg(PgVariant::Uniform),
            N::PgBackward => pg(PgVariant::Backward),
            N::PgGuided => pg(PgVariant::Guided),
            N::PgTrustRegion => pg(PgVariant::TrustRegion),
            N::ReverseKl => Self::ReverseKl,
            N::SoftQ => Self::SoftQ,
        })
    }

    /// Which objective this is.
    pub fn kind(&self) -> ObjectiveName {
        use ObjectiveName as N;
        match self {
            Self::FlowMatching => N::Fm,
            Self::DetailedBalance => N::Db,
            Self::TrajectoryBalance => N::Tb,
            Self::SubTrajectoryBalance { .. } => N::SubTb,
            Self::ForwardLookingDb => N::FlDb,
            Self::ForwardLookingSubTb { .. } => N::FlSubTb,
            Self::ModifiedDb => N::ModifiedDb,
            Self::LedDb => N::LedDb,
            Self::LedSubTb { .. } => N::LedSubTb,
            Self::ReverseKl => N::ReverseKl,
            Self::SoftQ => N::SoftQ,
            Self::PolicyGradient(c) => match c.variant {
                PgVariant::Uniform => N::PgUniform,
                PgVariant::Backward => N::PgBackward,
                PgVariant::Guided => N::PgGuided,
                PgVariant::TrustRegion => N::PgTrustRegion,
            },
        }
    }

    /// Short name ([`ObjectiveName::name`]).
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// Policy-gradient objectives: GAE's λ ∈ [0, 1] and RL-G's low-reward floor (states with
    /// `log R(s) ≤ guide_floor` get the guide's capped exit). Other objectives are unchanged.
    pub fn with_pg_settings(self, gae_lambda: f64, guide_floor: f64) -> Result<Self> {
        match self {
            Self::PolicyGradient(c) => {
                if !(0.0..=1.0).contains(&gae_lambda) {
                    return Err(GfnError::invalid("gae_lambda", gae_lambda, "must be in [0, 1]"));
                }
                if guide_floor.is_nan() {
                    return Err(GfnError::invalid("guide_floor", guide_floor, "must be a number"));
                }
                Ok(Self::PolicyGradient(PgConfig {
                    gae_lambda,
                    guide_floor,
                    ..c
                }))
            }
            other => Ok(other),
        }
    }

    /// Whether each step also samples backward trajectories from the batch's terminal objects
    /// and passes both to [`Objective::pg_loss`] (RL-B, RL-G).
    pub fn needs_backward_batch(&self) -> bool {
        matches!(self, Self::PolicyGradient(c) if c.variant.trains_backward())
    }

    /// Whether the estimator needs a log F(s) head.
    pub fn needs_flow_head(&self) -> bool {
        matches!(
            self,
            Self::DetailedBalance
                | Self::SubTrajectoryBalance { .. }
                | Self::ForwardLookingDb
                | Self::ForwardLookingSubTb { .. }
                | Self::LedDb
                | Self::LedSubTb { .. }
                | Self::PolicyGradient(_)
        )
    }

    /// Whether the loss needs learned per-transition potentials ([`Objective::loss_with_offsets`]).
    pub fn needs_potentials(&self) -> bool {
        matches!(self, Self::LedDb | Self::LedSubTb { .. })
    }

    /// Whether the objective needs intermediate energies ([`Env::intermediate_log_reward`]).
    pub fn needs_intermediate_energies(&self) -> bool {
        matches!(
            self,
            Self::ForwardLookingDb | Self::ForwardLookingSubTb { .. } | Self::ModifiedDb
        )
    }

    /// A clear error when `env` cannot serve this objective.
    pub fn check_env<E: Env + ?Sized>(&self, env: &E) -> Result<()> {
        if matches!(self, Self::ModifiedDb) && env.exit_action().is_none() {
            return Err(GfnError::invalid(
                "loss",
                "mdb",
                format!("needs an exit action from every state; {} has none", env.name()),
            ));
        }
        if let Self::PolicyGradient(c) = self
            && c.variant == PgVariant::Guided
            && env.exit_action().is_none()
        {
            return Err(GfnError::invalid(
                "loss",
                "pg-g",
                format!(
                    "the guide caps the exit action at low-reward states; {} has none",
                    env.name()
                ),
            ));
        }
        if env.condition_space().is_some() && matches!(self, Self::PolicyGradient(_)) {
            return Err(GfnError::invalid(
                "loss",
                self.name(),
                format!(
                    "is not available on the conditional {}: the policy-gradient losses keep a scalar log Z; use tb, db, subtb, fl-db, fl-subtb, led-db, led-subtb, mdb, fm, soft-q or vi",
                    env.name()
                ),
            ));
        }
        if self.needs_intermediate_energies() && !fl::has_intermediate_energies(env) {
            return Err(GfnError::invalid(
                "loss",
                self.name(),
                format!(
                    "needs an environment whose partial objects have energies (Env::intermediate_log_reward); {} has none",
                    env.name()
                ),
            ));
        }
        Ok(())
    }

    /// Whether the objective uses P_B (flow matching does not).
    pub fn uses_backward_policy(&self) -> bool {
        match self {
            Self::FlowMatching | Self::SoftQ => false,
            Self::PolicyGradient(c) => c.variant.trains_backward(),
            _ => true,
        }
    }

    /// Whether the scalar log Z is trained.
    pub fn uses_log_z(&self) -> bool {
        matches!(
            self,
            Self::TrajectoryBalance | Self::PolicyGradient(_) | Self::ReverseKl
        )
    }

    /// The policy-gradient loss ([`pg::policy_gradient`]) on `batch`: its first `n_forward`
    /// trajectories sampled forward, the rest (RL-B, RL-G) backward from their terminal objects.
    /// Returns the surrogate to differentiate, the step's figures and the unmasked P_F logits of
    /// every row of `batch` (`[rows, n_actions]`, what RL-T's trust-region step starts from).
    pub fn pg_loss<E: Env + ?Sized>(
        &self,
        env: &E,
        batch: &TrajectoryBatch,
        n_forward: usize,
        forward: &mut dyn RowForward,
    ) -> Result<(Tensor, PgStats, Tensor)> {
        let (parts, stats, pf_logits) = self.pg_parts(env, batch, n_forward, forward)?;
        Ok((parts.total()?, stats, pf_logits))
    }

    /// [`Objective::pg_loss`] with the loss in its parts (RL-T's trust-region step takes the
    /// forward surrogate's gradient apart from the rest).
    pub fn pg_parts<E: Env + ?Sized>(
        &self,
        env: &E,
        batch: &TrajectoryBatch,
        n_forward: usize,
        forward: &mut dyn RowForward,
    ) -> Result<(pg::PgParts, PgStats, Tensor)> {
        let Self::PolicyGradient(config) = self else {
            return Err(GfnError::Other(format!(
                "{} is not a policy-gradient objective",
                self.name()
            )));
        };
        let out = forward.forward_rows(batch, &[], 0)?;
        let terms = BalanceTerms::from_batch(batch, &out)?;
        let low = (config.variant == PgVariant::Guided).then(|| pg::low_reward_nodes(env, batch, config.guide_floor));
        let (parts, stats) = pg::policy_gradient_parts(&terms, n_forward, &forward.log_z(), config, low.as_deref())?;
        Ok((parts, stats, out.pf_logits))
    }

    /// The loss of `batch`, its rows evaluated by `forward` (see [`Objective::as_loss`]).
    pub fn loss(&self, env: &dyn Env, batch: &TrajectoryBatch, forward: &mut dyn RowForward) -> Result<Tensor> {
        self.loss_with_offsets(env, batch, forward, None)
    }

    /// [`Objective::loss`] with the node offsets `[B, T+1]` of learned potentials (LED-DB,
    /// LED-SubTB: `gfn_led::led_offsets` of the re-centred potentials); other objectives ignore
    /// them.
    pub fn loss_with_offsets(
        &self,
        env: &dyn Env,
        batch: &TrajectoryBatch,
        forward: &mut dyn RowForward,
        offsets: Option<Vec<f64>>,
    ) -> Result<Tensor> {
        let inputs = loss::LossInputs {
            env,
            batch,
            log_z: None,
            potentials: offsets.as_deref(),
        };
        self.as_loss().row_loss(&inputs, forward)
    }

    /// The model's estimate of log Z: the log Z parameter (TB), log F(s_0) (DB, SubTB; log F̃(s_0)
    /// for FL, whose initial offset is 0), the total log edge flow out of s_0 (FM), or
    /// `log R(s_0) − log P_F(exit | s_0)` (modified DB).
    pub fn log_z_estimate<E: Env + ?Sized>(&self, env: &E, estimator: &Estimator) -> Result<f64> {
        // A conditional environment's log Z(c) is log F(s_0(c)), read below.
        if self.uses_log_z() && env.condition_space().is_none() {
            return estimator.log_z_value();
        }
        let mut s0 = vec![0; env.state_dim()];
        env.initial_state(&mut s0);
        let mut f = vec![0.0; env.feature_dim()];
        env.featurize(&s0, &mut f);
        let out = estimator.forward_detached(&estimator.features_tensor(&f, 1)?)?;
        let mut m = vec![false; env.n_actions()];
        env.forward_mask(&s0, &mut m);
        let m: Vec<u8> = m.into_iter().map(u8::from).collect();
        let m = Tensor::from_vec(m, (1, env.n_actions()), estimator.device())?;
        let v = match (self, out.log_flow) {
            // Soft Q: the soft value V(s_0) = log Σ_paths R, log Z on a tree.
            (Self::FlowMatching | Self::SoftQ, _) => masked_logsumexp(&out.pf_logits, &m)?,
            (Self::ModifiedDb, _) => {
                let exit = env
                    .exit_action()
                    .ok_or_else(|| GfnError::invalid("loss", "mdb", "needs an exit action"))?;
                let log_r0 = env
                    .intermediate_log_reward(&s0)
                    .ok_or_else(|| GfnError::invalid("loss", "mdb", "needs the reward of s_0"))?;
                let lp = gfn_core::estimator::masked_log_softmax(&out.pf_logits, &m)?;
                let lp_exit = f64::from(lp.flatten_all()?.to_vec1::<f32>()?[exit]);
                return Ok(log_r0 - lp_exit);
            }
            (_, Some(f)) => f,
            (_, None) => return Err(GfnError::Other("estimator has no log F head".into())),
        };
        Ok(f64::from(v.flatten_all()?.to_vec1::<f32>()?[0]))
    }
}
