//! Evaluation of a conditional GFlowNet: the exact metrics of the policy at each evaluated
//! condition `c`, against its own target `p(x | c) ∝ R(x | c)`, with `log Z(c)` read from the
//! flow head at `s_0(c)`.

use gfn_core::conditional::Pinned;
use gfn_core::exact::{ExactEvaluator, ExactMetrics};
use gfn_core::{Env, GfnError, Result};
use gfn_objectives::Objective;
use serde::{Deserialize, Serialize};

use crate::options::EvalConditions;
use crate::seam::Net;

/// One evaluated condition: its values and the exact evaluator of the environment pinned there.
#[derive(Debug)]
pub struct ConditionEvaluator {
    /// The condition's values.
    pub condition: Vec<f64>,
    /// `name=value,…`.
    pub label: String,
    /// Exact evaluation at the condition.
    pub evaluator: ExactEvaluator,
}

/// The exact metrics at one condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConditionMetrics {
    /// `name=value,…`.
    pub label: String,
    /// The condition's values.
    pub condition: Vec<f64>,
    /// Exact metrics of `P_T(· | c)` against `p(· | c)`, and `log Z(c)`.
    pub exact: ExactMetrics,
}

/// The evaluators of `env` at `which` conditions (`auto`: the environment's own list); empty for
/// an unconditional environment. A condition whose pinned space cannot be enumerated is an error
/// naming it.
pub fn condition_evaluators(env: &dyn Env, which: &EvalConditions) -> Result<Vec<ConditionEvaluator>> {
    let Some(space) = env.condition_space() else {
        return Ok(Vec::new());
    };
    let list = match which {
        EvalConditions::Auto => space.evaluation.clone(),
        EvalConditions::List(l) => l.clone(),
    };
    list.into_iter()
        .map(|condition| {
            let pinned = Pinned::new(env, &condition)?;
            let evaluator = ExactEvaluator::new(&pinned).map_err(|e| {
                GfnError::invalid(
                    "eval_conditions",
                    pinned.label(),
                    format!("cannot be evaluated exactly: {e}"),
                )
            })?;
            Ok(ConditionEvaluator {
                label: pinned.label().to_string(),
                condition,
                evaluator,
            })
        })
        .collect()
}

/// The exact metrics of `net` at each condition.
pub fn evaluate_conditions(
    net: &Net,
    objective: &Objective,
    env: &dyn Env,
    evaluators: &[ConditionEvaluator],
) -> Result<Vec<ConditionMetrics>> {
    evaluators
        .iter()
        .map(|c| {
            let pinned = Pinned::new(env, &c.condition)?;
            let log_z = net.log_z_estimate(objective, &pinned)?;
            let log_pf = net.exact_log_pf(&c.evaluator, &pinned)?;
            Ok(ConditionMetrics {
                label: c.label.clone(),
                condition: c.condition.clone(),
                exact: c.evaluator.metrics_for(&log_pf, log_z),
            })
        })
        .collect()
}
