//! What a run needs at the least, checked before anything is allocated. A configuration whose
//! networks or trajectory buffers cannot fit in this machine's memory is refused with an error
//! that names the field, instead of aborting on a failed allocation halfway through set-up.
//!
//! The figures are lower bounds (parameters with their gradients and Adam moments; the padded
//! per-trajectory buffers of [`gfn_core::TrajectoryBatch`] and one recorded activation row per
//! trajectory), so a run that fits is never refused; a run that passes may still need more.

use gfn_core::{Env, GfnError, Result};

/// Bytes per trainable parameter: the value, its gradient and Adam's two moments, all `f32`.
const BYTES_PER_PARAM: f64 = 16.0;

/// One consumer of memory and the field that sizes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Need {
    /// The configuration field to blame when the run does not fit.
    pub field: &'static str,
    /// Its value, as the user wrote it.
    pub value: String,
    /// What the memory is for, e.g. "the trajectory buffers of one training batch".
    pub what: String,
    /// Lower bound on the bytes needed.
    pub bytes: f64,
}

/// Bytes of an MLP `inputs → hidden × layers → outputs` with gradients and Adam moments.
pub fn mlp_bytes(inputs: usize, hidden: usize, layers: usize, outputs: usize) -> f64 {
    let (i, h, l, o) = (inputs as f64, hidden as f64, layers as f64, outputs as f64);
    let params = if layers == 0 {
        i * o + o
    } else {
        i * h + h + (l - 1.0) * (h * h + h) + h * o + o
    };
    params * BYTES_PER_PARAM
}

/// The need of a network, blamed on `hidden` or, where the depth is the larger number, `layers`.
pub fn network_need(
    what: &str,
    (hidden_field, layers_field): (&'static str, &'static str),
    inputs: usize,
    hidden: usize,
    layers: usize,
    outputs: usize,
) -> Need {
    let (field, value) = if layers > hidden {
        (layers_field, layers)
    } else {
        (hidden_field, hidden)
    };
    Need {
        field,
        value: value.to_string(),
        what: format!("{what} ({hidden} wide, {layers} hidden layers) with its gradients and Adam moments"),
        bytes: mlp_bytes(inputs, hidden, layers, outputs),
    }
}

/// Bytes of `n` trajectories of `env`: the padded per-step buffers (actions both ways, `log P_F`,
/// `log P_B`, node rows), the terminal state, and at least one visited state per trajectory with
/// its features, masks and one recorded activation row of `hidden × layers` values.
pub fn trajectory_bytes(env: &dyn Env, n: usize, hidden: usize, layers: usize) -> f64 {
    let cap = env.max_actions() as f64;
    let per_step = 5.0 * 4.0; // actions, backward actions, log_pf, log_pb (4 bytes each), node rows
    let row = 4.0 * (env.state_dim() + env.feature_dim()) as f64
        + (env.n_actions() + env.n_backward_actions()) as f64
        + 4.0
        + 4.0 * hidden as f64 * layers as f64;
    n as f64 * (cap * per_step + 4.0 * env.state_dim() as f64 + row)
}

/// The need of `n` trajectories of `env`, blamed on `field`.
pub fn trajectory_need(field: &'static str, what: &str, env: &dyn Env, n: usize, hidden: usize, layers: usize) -> Need {
    Need {
        field,
        value: n.to_string(),
        what: what.to_string(),
        bytes: trajectory_bytes(env, n, hidden, layers),
    }
}

/// Bytes per state of exact evaluation ([`gfn_core::exact::ExactEvaluator`]), a lower bound: the
/// state and its entry in the index (≥ 28 bytes of map entry and vector header), its features,
/// both masks, the child and backward-action tables, the parents, and the `f64` forward
/// log-probabilities of one evaluation.
pub fn exact_bytes_per_state(env: &dyn Env) -> f64 {
    let (sd, nf, na, nb) = (
        env.state_dim() as f64,
        env.feature_dim() as f64,
        env.n_actions() as f64,
        env.n_backward_actions() as f64,
    );
    28.0 + 8.0 * sd + 4.0 * nf + 17.0 * na + 9.0 * nb
}

/// The need of enumerating `states` states of `env` for exact evaluation, blamed on `field`.
pub fn exact_need(field: &'static str, value: String, env: &dyn Env, states: f64) -> Need {
    Need {
        field,
        value,
        what: format!("exact evaluation's tables over the {states:.0} states it enumerates"),
        bytes: states * exact_bytes_per_state(env),
    }
}

/// The memory assumed where the machine's cannot be read: more than any machine this runs on has.
pub const ASSUMED_MEMORY: f64 = 4.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0;

/// This machine's memory in bytes (`MemTotal` of `/proc/meminfo`); `None` where it cannot be
/// read ([`check`] then assumes [`ASSUMED_MEMORY`]).
pub fn machine_memory() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0)
}

/// Refuse `needs` whose total exceeds `available` bytes (`None`: [`ASSUMED_MEMORY`]), naming the
/// largest one's field.
pub fn check(needs: &[Need], available: Option<f64>) -> Result<()> {
    let (available, whose) = match available {
        Some(bytes) => (bytes, format!("this machine's {}", human_bytes(bytes))),
        None => (
            ASSUMED_MEMORY,
            format!(
                "the {} assumed where the machine's memory cannot be read",
                human_bytes(ASSUMED_MEMORY)
            ),
        ),
    };
    let total: f64 = needs.iter().map(|n| n.bytes).sum();
    if total <= available {
        return Ok(());
    }
    let largest = needs
        .iter()
        .max_by(|a, b| a.bytes.total_cmp(&b.bytes))
        .expect("a total above the memory has at least one need");
    Err(GfnError::invalid(
        largest.field,
        &largest.value,
        format!(
            "the run needs at least {} of memory, {} of it for {}, more than {whose}",
            human_bytes(total),
            human_bytes(largest.bytes),
            largest.what,
        ),
    ))
}

/// `bytes` in binary units with three significant digits, e.g. `23.5 GiB`.
pub fn human_bytes(bytes: f64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = bytes;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v:.0} B")
    } else if v >= 100.0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mlp_bytes_counts_every_parameter_four_times() {
        // 3 → 4 → 4 → 2: 3·4+4 + 4·4+4 + 4·2+2 = 46 parameters.
        assert_eq!(mlp_bytes(3, 4, 2, 2), 46.0 * 16.0);
        assert_eq!(mlp_bytes(3, 4, 0, 2), 8.0 * 16.0);
    }

    #[test]
    fn a_run_over_the_memory_names_its_largest_need() {
        let needs = [
            Need {
                field: "hidden",
                value: "256".into(),
                what: "the network".into(),
                bytes: 1e6,
            },
            Need {
                field: "batch_size",
                value: "4294967297".into(),
                what: "the trajectory buffers of one training batch".into(),
                bytes: 3e12,
            },
        ];
        assert!(check(&needs, None).is_ok());
        assert!(check(&needs, Some(4e12)).is_ok());
        let huge = [Need {
            bytes: 1e16,
            ..needs[1].clone()
        }];
        let err = check(&huge, None).unwrap_err().to_string();
        assert!(err.contains("batch_size") && err.contains("4.0 TiB assumed"), "{err}");
        let err = check(&needs, Some(2.0 * 1024f64.powi(3))).unwrap_err().to_string();
        assert!(err.contains("batch_size") && err.contains("4294967297"), "{err}");
        assert!(err.contains("2.7 TiB") && err.contains("2.0 GiB"), "{err}");
    }

    #[test]
    fn bytes_read_in_binary_units() {
        assert_eq!(human_bytes(512.0), "512 B");
        assert_eq!(human_bytes(1536.0), "1.5 KiB");
        assert_eq!(human_bytes(23.5 * 1024f64.powi(3)), "23.5 GiB");
        assert_eq!(human_bytes(300.0 * 1024f64.powi(4)), "300 TiB");
    }
}
