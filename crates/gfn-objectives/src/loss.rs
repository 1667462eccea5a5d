//! Losses as objects: the balance objectives as typed values behind one trait, each saying what it
//! needs, for training loops written around [`BalanceTerms`] (the MLP's, or any policy's through
//! [`BalanceTerms::through`]). Names are parsed once ([`parse_balance_loss`]), at the edge.
//!
//! | value | loss | needs |
//! |---|---|---|
//! | [`Tb`] | `mean_b (log Z + Σ log P_F − Σ log P_B − log R)²` | log Z |
//! | [`Db`] | `mean (log F(s) + log P_F(s'|s) − log F(s') − log P_B(s|s'))²`, `F(x) := R(x)` | log F |
//! | [`SubTb`] | SubTB(λ): every sub-trajectory, weights `λ^len` | log F |
//! | [`FlDb`], [`FlSubTb`] | DB / SubTB(λ) on `F̃ = F / e^{−E(s)}` with the intermediate energies | log F, intermediate energies |
//! | [`ModifiedDb`] | modified DB: every state terminal through the exit action | an exit action |
//! | [`LedDb`], [`LedSubTb`] | DB / SubTB(λ) on node flows shifted by learned potentials (`gfn-led`'s `led_offsets`) | log F, potentials |
//! | [`ReverseKl`] | reverse-KL variational inference (REINFORCE) | log Z |
//!
//! Flow matching, the policy-gradient family and soft Q-learning read more than the terms (edge
//! flows of parent states, value heads, raw Q logits). Every objective, these included, is a
//! [`RowLoss`]: a loss of a batch given a forward over its rows ([`RowForward`]: the MLP's graph or
//! tape); every [`BalanceLoss`] is one through its terms, and [`Objective::as_loss`] gives the
//! object of an [`Objective`]:
//!
//! | value | loss | needs |
//! |---|---|---|
//! | [`FlowMatching`] | `mean_s (log Σ_{s'→s} F(s'→s) − log Σ_{s→s''} F(s→s''))²` over the batch's states | the parents' edge flows |
//! | [`SoftQ`] | the soft Bellman residual on the P_F logits as Q-values | — |
//! | [`PolicyGradient`] | RL-U / RL-B / RL-G / RL-T's surrogate with GAE(λ) on the log F head | log F (the value), log Z; RL-B and RL-G a backward batch |

use candle_core::Tensor;
use gfn_core::batch::TrajectoryBatch;
use gfn_core::{Env, GfnError, Result};

use crate::terms::BalanceTerms;
use crate::{Objective, PgConfig};
use crate::{ObjectiveName, detailed_balance, fl, mdb, subtrajectory_balance, trajectory_balance, vi};
use gfn_core::estimator::RowForward;

/// What a balance loss needs beyond P_F (and P_B, learned or uniform).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Needs {
    /// A `log F(s)` head.
    pub log_flow: bool,
    /// A learned scalar `log Z`.
    pub log_z: bool,
    /// The environment's intermediate energies (`Env::intermediate_log_reward`).
    pub intermediate_energies: bool,
    /// An exit action (every state a possible object).
    pub exit_action: bool,
    /// Learned potentials: per-node offsets in [`LossInputs::potentials`] (LED).
    pub potentials: bool,
    /// The edge flows into every state of the batch from its parents (flow matching: the
    /// forward evaluates the parents' rows too).
    pub parent_flows: bool,
    /// Backward trajectories from the batch's objects beside the forward ones (RL-B, RL-G:
    /// [`Objective::pg_loss`](crate::Objective::pg_loss)).
    pub backward_batch: bool,
}

/// What a loss may read besides the terms.
#[derive(Clone, Copy)]
#[allow(missing_debug_implementations)]
pub struct LossInputs<'a> {
    /// The environment.
    pub env: &'a dyn Env,
    /// The trajectories the terms were gathered from.
    pub batch: &'a TrajectoryBatch,
    /// The learned `log Z`, `[1]`, if the policy has one.
    pub log_z: Option<&'a Tensor>,
    /// LED: the cumulative learned potentials of every node of the batch, in the layout of
    /// [`BalanceTerms::with_offsets`] (`gfn_led::led_offsets` computes them).
    pub potentials: Option<&'a [f64]>,
}

/// A balance objective over [`BalanceTerms`].
pub trait BalanceLoss: std::fmt::Debug + Send + Sync {
    /// Its name on the command line (`tb`, `subtb`, …).
    fn name(&self) -> &'static str;
    /// What it needs.
    fn needs(&self) -> Needs;
    /// The loss of the terms (consumed: the forward-looking forms shift them).
    fn loss(&self, terms: BalanceTerms, inputs: &LossInputs) -> Result<Tensor>;

    /// Refuse an environment or policy that lacks what this loss needs, naming it.
    fn check(&self, env: &dyn Env, has_log_flow: bool, has_log_z: bool) -> Result<()> {
        let needs = self.needs();
        let conditional = env.condition_space().is_some();
        let missing = if needs.log_flow && !has_log_flow {
            Some("a log F head")
        } else if needs.log_z && conditional && !has_log_flow {
            Some("a log F head on a conditional environment (log Z(c) = log F(s_0(c)))")
        } else if needs.log_z && !conditional && !has_log_z {
            Some("a learned log Z")
        } else if needs.intermediate_energies && !fl::has_intermediate_energies(env) {
            Some("an environment with intermediate energies")
        } else if needs.exit_action && env.exit_action().is_none() {
            Some("an environment with an exit action")
        } else {
            None
        };
        match missing {
            Some(what) => Err(GfnError::invalid("loss", self.name(), format!("needs {what}"))),
            None => Ok(()),
        }
    }
}

fn log_z<'a>(inputs: &LossInputs<'a>, name: &str) -> Result<&'a Tensor> {
    inputs
        .log_z
        .ok_or_else(|| GfnError::invalid("loss", name, "needs a learned log Z"))
}

/// The `log Z` a trajectory-level loss compares against: the learned scalar, or for a conditional
/// environment ([`Env::condition_space`]) `log Z(c) = log F(s_0(c))` per trajectory, `[B]`, the
/// flow head at each trajectory's initial state.
fn trajectory_log_z(terms: &BalanceTerms, inputs: &LossInputs, name: &str) -> Result<Tensor> {
    if inputs.env.condition_space().is_none() {
        return Ok(log_z(inputs, name)?.clone());
    }
    let flow = terms.log_flow.as_ref().ok_or_else(|| {
        GfnError::invalid(
            "loss",
            name,
            format!(
                "on the conditional {} needs a log F head: log Z(c) is log F(s_0(c))",
                inputs.env.name()
            ),
        )
    })?;
    Ok(flow.narrow(1, 0, 1)?.flatten_all()?)
}

fn potentials(inputs: &LossInputs, name: &str) -> Result<Vec<f64>> {
    inputs.potentials.map(<[f64]>::to_vec).ok_or_else(|| {
        GfnError::invalid(
            "loss",
            name,
            "needs the learned potentials of a gfn-led PotentialNet (LossInputs::potentials)",
        )
    })
}

fn checked_lambda(lambda: f64) -> Result<f64> {
    if lambda.is_finite() && lambda > 0.0 {
        Ok(lambda)
    } else {
        Err(GfnError::invalid("lambda", lambda, "must be finite and > 0"))
    }
}

/// Trajectory balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tb;

/// Detailed balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Db;

/// SubTB(λ).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SubTb {
    lambda: f64,
}

impl SubTb {
    /// SubTB with weight `λ > 0`.
    pub fn new(lambda: f64) -> Result<Self> {
        Ok(Self {
            lambda: checked_lambda(lambda)?,
        })
    }
    /// λ.
    pub fn lambda(&self) -> f64 {
        self.lambda
    }
}

/// Forward-looking DB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlDb;

/// Forward-looking SubTB(λ).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FlSubTb {
    lambda: f64,
}

impl FlSubTb {
    /// FL-SubTB with weight `λ > 0`.
    pub fn new(lambda: f64) -> Result<Self> {
        Ok(Self {
            lambda: checked_lambda(lambda)?,
        })
    }
}

/// Modified detailed balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ModifiedDb;

/// Reverse-KL variational inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReverseKl;

/// LED-DB: detailed balance on node flows shifted by learned potentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LedDb;

/// LED-SubTB(λ).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LedSubTb {
    lambda: f64,
}

impl LedSubTb {
    /// LED-SubTB with weight `λ > 0`.
    pub fn new(lambda: f64) -> Result<Self> {
        Ok(Self {
            lambda: checked_lambda(lambda)?,
        })
    }
}

impl BalanceLoss for Tb {
    fn name(&self) -> &'static str {
        "tb"
    }
    fn needs(&self) -> Needs {
        Needs {
            log_z: true,
            ..Needs::default()
        }
    }
    fn loss(&self, terms: BalanceTerms, inputs: &LossInputs) -> Result<Tensor> {
        let log_z = trajectory_log_z(&terms, inputs, BalanceLoss::name(self))?;
        trajectory_balance(&terms, &log_z)
    }
}

impl BalanceLoss for Db {
    fn name(&self) -> &'static str {
        "db"
    }
    fn needs(&self) -> Needs {
        Needs {
            log_flow: true,
            ..Needs::default()
        }
    }
    fn loss(&self, terms: BalanceTerms, _: &LossInputs) -> Result<Tensor> {
        detailed_balance(&terms)
    }
}

impl BalanceLoss for SubTb {
    fn name(&self) -> &'static str {
        "subtb"
    }
    fn needs(&self) -> Needs {
        Needs {
            log_flow: true,
            ..Needs::default()
        }
    }
    fn loss(&self, terms: BalanceTerms, _: &LossInputs) -> Result<Tensor> {
        subtrajectory_balance(&terms, self.lambda)
    }
}

impl BalanceLoss for FlDb {
    fn name(&self) -> &'static str {
        "fl-db"
    }
    fn needs(&self) -> Needs {
        Needs {
            log_flow: true,
            intermediate_energies: true,
            ..Needs::default()
        }
    }
    fn loss(&self, terms: BalanceTerms, inputs: &LossInputs) -> Result<Tensor> {
        detailed_balance(&terms.with_offsets(fl::intermediate_offsets(inputs.env, inputs.batch)?)?)
    }
}

impl BalanceLoss for FlSubTb {
    fn name(&self) -> &'static str {
        "fl-subtb"
    }
    fn needs(&self) -> Needs {
        Needs {
            log_flow: true,
            intermediate_energies: true,
            ..Needs::default()
        }
    }
    fn loss(&self, terms: BalanceTerms, inputs: &LossInputs) -> Result<Tensor> {
        let offsets = fl::intermediate_offsets(inputs.env, inputs.batch)?;
        subtrajectory_balance(&terms.with_offsets(offsets)?, self.lambda)
    }
}

impl BalanceLoss for ModifiedDb {
    fn name(&self) -> &'static str {
        "mdb"
    }
    fn needs(&self) -> Needs {
        Needs {
            exit_action: true,
            ..Needs::default()
        }
    }
    fn loss(&self, terms: BalanceTerms, inputs: &LossInputs) -> Result<Tensor> {
        mdb::modified_detailed_balance(&terms, mdb::node_log_rewards(inputs.env, inputs.batch)?)
    }
}

impl BalanceLoss for ReverseKl {
    fn name(&self) -> &'static str {
        "vi"
    }
    fn needs(&self) -> Needs {
        Needs {
            log_z: true,
            ..Needs::default()
        }
    }
    fn loss(&self, terms: BalanceTerms, inputs: &LossInputs) -> Result<Tensor> {
        let log_z = trajectory_log_z(&terms, inputs, BalanceLoss::name(self))?;
        Ok(vi::reverse_kl(&terms, &log_z)?.0)
    }
}

impl BalanceLoss for LedDb {
    fn name(&self) -> &'static str {
        "led-db"
    }
    fn needs(&self) -> Needs {
        Needs {
            log_flow: true,
            potentials: true,
            ..Needs::default()
        }
    }
    fn loss(&self, terms: BalanceTerms, inputs: &LossInputs) -> Result<Tensor> {
        detailed_balance(&terms.with_offsets(potentials(inputs, BalanceLoss::name(self))?)?)
    }
}

impl BalanceLoss for LedSubTb {
    fn name(&self) -> &'static str {
        "led-subtb"
    }
    fn needs(&self) -> Needs {
        Needs {
            log_flow: true,
            potentials: true,
            ..Needs::default()
        }
    }
    fn loss(&self, terms: BalanceTerms, inputs: &LossInputs) -> Result<Tensor> {
        subtrajectory_balance(
            &terms.with_offsets(potentials(inputs, BalanceLoss::name(self))?)?,
            self.lambda,
        )
    }
}

/// The balance loss named `name` (`tb`, `db`, `subtb`, `fl-db`, `fl-subtb`, `mdb`, `led-db`,
/// `led-subtb`, `vi`; `lambda` for the SubTB forms), refused with the names it accepts.
pub fn parse_balance_loss(name: &str, lambda: f64) -> Result<Box<dyn BalanceLoss>> {
    balance_loss(name.parse()?, lambda)
}

/// The balance loss of `kind` (`lambda` for the SubTB forms); flow matching, the policy-gradient
/// family and soft Q-learning are refused (they are [`Objective`](crate::Objective)s over more
/// than the terms).
pub fn balance_loss(kind: ObjectiveName, lambda: f64) -> Result<Box<dyn BalanceLoss>> {
    use ObjectiveName as N;
    Ok(match kind {
        N::Tb => Box::new(Tb),
        N::Db => Box::new(Db),
        N::SubTb => Box::new(SubTb::new(lambda)?),
        N::FlDb => Box::new(FlDb),
        N::FlSubTb => Box::new(FlSubTb::new(lambda)?),
        N::ModifiedDb => Box::new(ModifiedDb),
        N::LedDb => Box::new(LedDb),
        N::LedSubTb => Box::new(LedSubTb::new(lambda)?),
        N::ReverseKl => Box::new(ReverseKl),
        other => {
            return Err(GfnError::invalid(
                "loss",
                other,
                "must be a balance loss over the terms: tb, db, subtb, fl-db, fl-subtb, mdb, led-db, led-subtb or vi",
            ));
        }
    })
}

/// Any objective as a loss of a batch given a forward over its rows.
pub trait RowLoss: std::fmt::Debug + Send + Sync {
    /// Its name on the command line.
    fn name(&self) -> &'static str;
    /// What it needs.
    fn needs(&self) -> Needs;
    /// The loss of `inputs.batch`, the rows evaluated by `forward` (its `log Z` where
    /// `inputs.log_z` is `None`).
    fn row_loss(&self, inputs: &LossInputs, forward: &mut dyn RowForward) -> Result<Tensor>;
}

/// A balance loss over a row forward: one forward over every row, the terms, the loss.
impl<T: BalanceLoss + ?Sized> RowLoss for T {
    fn name(&self) -> &'static str {
        BalanceLoss::name(self)
    }
    fn needs(&self) -> Needs {
        BalanceLoss::needs(self)
    }
    fn row_loss(&self, inputs: &LossInputs, forward: &mut dyn RowForward) -> Result<Tensor> {
        let out = forward.forward_rows(inputs.batch, &[], 0)?;
        let terms = BalanceTerms::from_batch(inputs.batch, &out)?;
        let log_z = forward.log_z();
        let inputs = LossInputs {
            log_z: inputs.log_z.or(Some(&log_z)),
            ..*inputs
        };
        self.loss(terms, &inputs)
    }
}

/// Flow matching.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlowMatching;

impl RowLoss for FlowMatching {
    fn name(&self) -> &'static str {
        "fm"
    }
    fn needs(&self) -> Needs {
        Needs {
            parent_flows: true,
            ..Needs::default()
        }
    }
    fn row_loss(&self, inputs: &LossInputs, forward: &mut dyn RowForward) -> Result<Tensor> {
        crate::flow_matching(&crate::FlowMatchingTerms::from_batch(
            inputs.env,
            inputs.batch,
            forward,
        )?)
    }
}

/// Soft Q-learning (exact on trees only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SoftQ;

impl RowLoss for SoftQ {
    fn name(&self) -> &'static str {
        "soft-q"
    }
    fn needs(&self) -> Needs {
        Needs::default()
    }
    fn row_loss(&self, inputs: &LossInputs, forward: &mut dyn RowForward) -> Result<Tensor> {
        crate::softq::soft_q_loss(inputs.batch, &forward.forward_rows(inputs.batch, &[], 0)?)
    }
}

/// The policy-gradient family (RL-U, RL-B, RL-G, RL-T) with its settings. On a batch of forward
/// trajectories alone its loss is RL-U's (and RL-T's, whose trust-region step is
/// [`crate::trpo`]); RL-B and RL-G train P_B on backward trajectories too, through
/// [`Objective::pg_loss`](crate::Objective::pg_loss).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PolicyGradient(pub PgConfig);

impl RowLoss for PolicyGradient {
    fn name(&self) -> &'static str {
        Objective::PolicyGradient(self.0).name()
    }
    fn needs(&self) -> Needs {
        Needs {
            log_flow: true,
            log_z: true,
            backward_batch: self.0.variant.trains_backward(),
            ..Needs::default()
        }
    }
    fn row_loss(&self, inputs: &LossInputs, forward: &mut dyn RowForward) -> Result<Tensor> {
        let objective = Objective::PolicyGradient(self.0);
        if self.0.variant.trains_backward() {
            return Err(GfnError::Other(format!(
                "{} trains P_B on backward trajectories: call Objective::pg_loss with them",
                objective.name()
            )));
        }
        Ok(objective
            .pg_loss(inputs.env, inputs.batch, inputs.batch.batch_size, forward)?
            .0)
    }
}

impl Objective {
    /// This objective as a loss object.
    pub fn as_loss(&self) -> Box<dyn RowLoss> {
        match *self {
            Self::FlowMatching => Box::new(FlowMatching),
            Self::SoftQ => Box::new(SoftQ),
            Self::PolicyGradient(c) => Box::new(PolicyGradient(c)),
            Self::TrajectoryBalance => Box::new(Tb),
            Self::DetailedBalance => Box::new(Db),
            Self::SubTrajectoryBalance { lambda } => Box::new(SubTb { lambda }),
            Self::ForwardLookingDb => Box::new(FlDb),
            Self::ForwardLookingSubTb { lambda } => Box::new(FlSubTb { lambda }),
            Self::ModifiedDb => Box::new(ModifiedDb),
            Self::LedDb => Box::new(LedDb),
            Self::LedSubTb { lambda } => Box::new(LedSubTb { lambda }),
            Self::ReverseKl => Box::new(ReverseKl),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ObjectiveName;

    /// Every objective's loss object says what the objective's own flags say it needs.
    #[test]
    fn loss_objects_need_what_their_objectives_need() {
        for &kind in ObjectiveName::ALL {
            let objective = Objective::new(kind, 0.9).unwrap();
            let loss = objective.as_loss();
            let needs = loss.needs();
            assert_eq!(RowLoss::name(loss.as_ref()), kind.name());
            assert_eq!(needs.log_flow, objective.needs_flow_head(), "{kind}: log F");
            assert_eq!(needs.log_z, objective.uses_log_z(), "{kind}: log Z");
            // Modified DB reads every state's reward as an object's, through its exit action.
            assert_eq!(
                needs.intermediate_energies,
                objective.needs_intermediate_energies() && kind != ObjectiveName::ModifiedDb,
                "{kind}: intermediate energies"
            );
            assert_eq!(
                needs.exit_action,
                kind == ObjectiveName::ModifiedDb,
                "{kind}: exit action"
            );
            assert_eq!(needs.potentials, objective.needs_potentials(), "{kind}: potentials");
            assert_eq!(
                needs.backward_batch,
                objective.needs_backward_batch(),
                "{kind}: backward batch"
            );
            assert_eq!(needs.parent_flows, kind == ObjectiveName::Fm, "{kind}: parent flows");
        }
    }
}
