//! Typed values of the training configuration's options that are not numbers. Each is parsed
//! once, where text enters (a flag, a TOML file), and written back as the same text, so
//! `config.toml` and the checkpoint's configuration hash read as they always did.

use std::fmt;
use std::str::FromStr;

use gfn_core::{GfnError, Result};

gfn_core::choice! {
    /// The built-in tasks.
    pub enum EnvName("env") {
        /// Hypergrid (TB paper).
        Hypergrid = "hypergrid",
        /// Set generation (SubTB paper).
        Set = "set",
        /// Bag (multiset) generation (FL paper).
        Bag = "bag",
        /// Bit sequences (TB paper).
        Bitseq = "bitseq",
        /// Bayesian network structure (DAG-GFlowNet / FL paper).
        Bayesnet = "bayesnet",
        /// EB-GFN: 2D toy data.
        Ebm2d = "ebm-2d",
        /// EB-GFN: Ising model learned from Gibbs samples.
        Ising = "ising",
        /// GFlowNet sampling from a fixed Ising energy.
        IsingFixed = "ising-fixed",
        /// EB-GFN: binarised digits.
        Digits = "digits",
        /// Maximum independent sets of random RB graphs (LED-GFN), a GFlowNet conditioned on the
        /// graph.
        Mis = "mis",
        /// Typed graphs built node by node and edge by edge (torchgfn's GraphBuilding).
        GraphBuilding = "graph-building",
    }
}

gfn_core::choice! {
    /// Normalisation in the GIN (`gin_norm`).
    pub enum GinNorm("gin_norm") {
        /// GraphNorm on mis (dense graphs of 20–300 nodes, whose sums grow with the degree at
        /// every layer), none elsewhere (on graphs of a few nodes GraphNorm erases what tells
        /// them apart: a one-node graph's standardised features are all 0).
        Auto = "auto",
        /// GraphNorm after every layer but the last.
        Graph = "graph",
        /// None.
        None = "none",
    }
}

gfn_core::choice! {
    /// The RB graphs of the maximum-independent-set task.
    pub enum MisGraphs("mis_graphs") {
        /// 20–60 nodes (4–8 cliques of 3–8 nodes): the setting that trains on a 2-core machine.
        Reduced = "reduced",
        /// LED-GFN's "small" setting: 200–300 nodes (20–24 cliques of 5–11 nodes).
        Small = "small",
    }
}

impl MisGraphs {
    /// The generator's parameters.
    pub fn params(self) -> gfn_envs::mis_graphs::RbParams {
        match self {
            Self::Reduced => gfn_envs::mis_graphs::RbParams::reduced(),
            Self::Small => gfn_envs::mis_graphs::RbParams::small(),
        }
    }
}

impl EnvName {
    /// An energy-based-modelling task (EB-GFN or PCD trains an energy model beside the sampler).
    pub fn is_ebm(self) -> bool {
        matches!(self, Self::Ebm2d | Self::Ising | Self::Digits)
    }
}

gfn_core::choice! {
    /// How an energy-based-modelling task is trained.
    pub enum EbmMethod("ebm_method") {
        /// The EBM with a GFlowNet sampler (EB-GFN).
        Ebgfn = "ebgfn",
        /// Persistent contrastive divergence with Gibbs negatives.
        Pcd = "pcd",
    }
}

gfn_core::choice! {
    /// How local search keeps a refined object.
    pub enum LocalSearchAccept("local_search_accept") {
        /// Keep x' when R(x') ≥ R(x) (LS-GFN).
        Greedy = "greedy",
        /// Metropolis–Hastings toward R.
        Mh = "mh",
    }
}

gfn_core::choice! {
    /// The CPU training engine.
    pub enum Engine("engine") {
        /// The tape on the CPU where the model allows it, the graph elsewhere.
        Auto = "auto",
        /// Rollout outputs reused, hand-written batched backward (f32 on the CPU).
        Tape = "tape",
        /// candle autograd over one batched forward.
        Graph = "graph",
    }
}

/// Where training runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceChoice {
    /// The CPU engines.
    Cpu,
    /// The device engine on its CPU reference ops (slow, for checking).
    CpuKernels,
    /// The device engine on a CUDA GPU: `cuda` (`None`, device 0) or `cuda:N`.
    Cuda(Option<usize>),
}

impl DeviceChoice {
    /// Where the device engine runs: `None` for the CPU engines, `Some(None)` for its CPU
    /// reference ops, `Some(Some(n))` for CUDA device `n`.
    pub fn engine_device(self) -> Option<Option<usize>> {
        match self {
            Self::Cpu => None,
            Self::CpuKernels => Some(None),
            Self::Cuda(n) => Some(Some(n.unwrap_or(0))),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::CpuKernels => f.write_str("cpu-kernels"),
            Self::Cuda(None) => f.write_str("cuda"),
            Self::Cuda(Some(n)) => write!(f, "cuda:{n}"),
        }
    }
}

impl FromStr for DeviceChoice {
    type Err = GfnError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cpu-kernels" => Ok(Self::CpuKernels),
            "cuda" => Ok(Self::Cuda(None)),
            d => match d.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Self::Cuda(Some(n))),
                _ => Err(GfnError::invalid(
                    "device",
                    d,
                    "must be cpu, cpu-kernels, cuda or cuda:N",
                )),
            },
        }
    }
}

gfn_core::string_serde!(DeviceChoice);

/// A number that may be left to a rule (`auto`, `none`): [`Rule::Rule`] or a value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    /// The word: the option's rule applies.
    Rule,
    /// A number, not NaN.
    Value(f64),
}

impl Rule {
    /// The number, or `otherwise` under the rule.
    pub fn or(self, otherwise: f64) -> f64 {
        match self {
            Self::Rule => otherwise,
            Self::Value(v) => v,
        }
    }

    fn parse(field: &'static str, word: &str, s: &str) -> Result<Self> {
        if s == word {
            return Ok(Self::Rule);
        }
        s.parse::<f64>()
            .ok()
            .filter(|v| !v.is_nan())
            .map(Self::Value)
            .ok_or_else(|| GfnError::invalid(field, s, format!("must be {word} or a number")))
    }
}

macro_rules! rule_option {
    ($(#[$meta:meta])* $name:ident($field:literal, $word:literal)) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq)]
        pub struct $name(pub Rule);

        impl $name {
            /// The word that leaves the value to the rule.
            pub const WORD: &'static str = $word;
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.0 {
                    Rule::Rule => f.write_str($word),
                    Rule::Value(v) => write!(f, "{v}"),
                }
            }
        }

        impl FromStr for $name {
            type Err = GfnError;
            fn from_str(s: &str) -> Result<Self> {
                Rule::parse($field, $word, s).map(Self)
            }
        }

        gfn_core::string_serde!($name);
    };
}

rule_option! {
    /// pg-g's low-reward floor: `auto` (log R0 on hypergrid) or a number.
    GuideFloor("guide_floor", "auto")
}

rule_option! {
    /// ε at the end of its schedule: `none` (constant) or a number.
    EpsilonFinal("epsilon_final", "none")
}

rule_option! {
    /// The temperature at the end of its schedule: `none` (constant) or a number.
    TemperatureFinal("temperature_final", "none")
}

/// What a GFlowNet is conditioned on (`condition`): `none`, or `beta=LO..HI`, the reward exponent
/// `β` drawn uniformly from `[LO, HI]` for each training trajectory (`R^β`, a conditional
/// GFlowNet over the range: [`gfn_envs::Tempered`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Condition {
    /// Unconditional.
    None,
    /// The reward exponent over a range.
    Beta {
        /// Lowest β.
        lo: f64,
        /// Highest β.
        hi: f64,
    },
}

impl std::fmt::Display for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("none"),
            Self::Beta { lo, hi } => write!(f, "beta={lo}..{hi}"),
        }
    }
}

impl std::str::FromStr for Condition {
    type Err = GfnError;
    fn from_str(s: &str) -> Result<Self> {
        if s == "none" {
            return Ok(Self::None);
        }
        let bad = || GfnError::invalid("condition", s, "must be none or beta=LO..HI (0 < LO ≤ HI)");
        let range = s.strip_prefix("beta=").ok_or_else(bad)?;
        let (lo, hi) = range.split_once("..").ok_or_else(bad)?;
        let (lo, hi) = (
            lo.trim().parse::<f64>().map_err(|_| bad())?,
            hi.trim().parse::<f64>().map_err(|_| bad())?,
        );
        if !(lo.is_finite() && hi.is_finite() && lo > 0.0 && lo <= hi) {
            return Err(bad());
        }
        Ok(Self::Beta { lo, hi })
    }
}

gfn_core::string_serde!(Condition);

/// The conditions evaluation reports (`eval_conditions`): `auto` (the environment's: for
/// `beta=LO..HI`, LO, √(LO·HI) and HI) or a `;`-separated list of conditions, each a
/// `,`-separated list of values (`0.5;1;2`).
#[derive(Debug, Clone, PartialEq)]
pub enum EvalConditions {
    /// The environment's own list.
    Auto,
    /// These conditions.
    List(Vec<Vec<f64>>),
}

impl std::fmt::Display for EvalConditions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::List(l) => {
                let parts: Vec<String> = l
                    .iter()
                    .map(|c| c.iter().map(f64::to_string).collect::<Vec<_>>().join(","))
                    .collect();
                f.write_str(&parts.join(";"))
            }
        }
    }
}

impl std::str::FromStr for EvalConditions {
    type Err = GfnError;
    fn from_str(s: &str) -> Result<Self> {
        if s == "auto" {
            return Ok(Self::Auto);
        }
        let bad = || {
            GfnError::invalid(
                "eval_conditions",
                s,
                "must be auto or conditions separated by ';', each values separated by ',' (e.g. 0.5;1;2)",
            )
        };
        let list = s
            .split(';')
            .map(|c| {
                c.split(',')
                    .map(|v| v.trim().parse::<f64>().ok().filter(|x| x.is_finite()).ok_or_else(bad))
                    .collect::<Result<Vec<f64>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self::List(list))
    }
}

gfn_core::string_serde!(EvalConditions);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_and_rules_round_trip_their_text() {
        for text in ["cpu", "cpu-kernels", "cuda", "cuda:3"] {
            assert_eq!(text.parse::<DeviceChoice>().unwrap().to_string(), text);
        }
        assert_eq!("cuda".parse::<DeviceChoice>().unwrap().engine_device(), Some(Some(0)));
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
        for text in ["auto", "-2.5", "1e-9"] {
            let floor: GuideFloor = text.parse().unwrap();
            assert_eq!(floor.to_string().parse::<GuideFloor>().unwrap(), floor);
        }
        assert_eq!("auto".parse::<GuideFloor>().unwrap().0.or(7.0), 7.0);
        assert_eq!("0.25".parse::<EpsilonFinal>().unwrap().0.or(7.0), 0.25);
        let e = "nan".parse::<EpsilonFinal>().unwrap_err().to_string();
        assert_eq!(e, "invalid epsilon_final = nan: must be none or a number");
        assert!("auto".parse::<EpsilonFinal>().is_err());
    }
}
