//! A new environment is one trait impl: a "staircase" where an object is a non-decreasing
//! sequence of `LEN` digits in `0..BASE`, built one digit at a time, with reward
//! `exp(−|Σ digits − TARGET|)`. It trains with every objective and is evaluated exactly, with
//! no other code.
//!
//! ```sh
//! cargo run --release -p gfn --example custom_env
//! ```

use candle_core::Device;
use gfn::config::TrainConfig;
use gfn::train::Trainer;
use gfn_core::Env;
use gfn_objectives::ObjectiveName;

const LEN: usize = 4;
const BASE: i32 = 5;
const TARGET: i32 = 9;

/// State: `LEN` slots holding digits, `-1` for "not yet chosen"; slots fill left to right.
struct Staircase;

impl Staircase {
    fn filled(s: &[i32]) -> usize {
        s.iter().take_while(|&&d| d >= 0).count()
    }
}

impl Env for Staircase {
    fn name(&self) -> String {
        format!("staircase-{LEN}x{BASE}")
    }
    fn state_dim(&self) -> usize {
        LEN
    }
    fn n_actions(&self) -> usize {
        BASE as usize // append digit a (no exit action: an object is complete after LEN digits)
    }
    fn n_backward_actions(&self) -> usize {
        1 // remove the last digit
    }
    fn exit_action(&self) -> Option<usize> {
        None
    }
    fn feature_dim(&self) -> usize {
        LEN * (BASE as usize + 1)
    }
    fn max_actions(&self) -> usize {
        LEN
    }
    fn initial_state(&self, out: &mut [i32]) {
        out.fill(-1);
    }
    fn forward_mask(&self, s: &[i32], mask: &mut [bool]) {
        let k = Self::filled(s);
        let last = if k == 0 { 0 } else { s[k - 1] };
        for (a, m) in mask.iter_mut().enumerate() {
            *m = k < LEN && a as i32 >= last; // non-decreasing
        }
    }
    fn backward_mask(&self, s: &[i32], mask: &mut [bool]) {
        mask[0] = Self::filled(s) > 0;
    }
    fn step(&self, s: &mut [i32], action: usize) -> usize {
        s[Self::filled(s)] = action as i32;
        0
    }
    fn backward_step(&self, s: &mut [i32], _action: usize) -> usize {
        let k = Self::filled(s) - 1;
        let digit = s[k] as usize;
        s[k] = -1;
        digit
    }
    fn is_terminal(&self, s: &[i32]) -> bool {
        Self::filled(s) == LEN
    }
    fn log_reward(&self, s: &[i32]) -> f64 {
        -f64::from((s.iter().sum::<i32>() - TARGET).abs())
    }
    fn featurize(&self, s: &[i32], out: &mut [f32]) {
        out.fill(0.0);
        for (i, &d) in s.iter().enumerate() {
            out[i * (BASE as usize + 1) + (d + 1) as usize] = 1.0; // one-hot, "empty" included
        }
    }
    fn enumerate_states(&self) -> Option<Vec<i32>> {
        // Breadth-first by number of digits: parents always come before children.
        let mut layer = vec![vec![-1; LEN]];
        let mut out: Vec<i32> = layer[0].clone();
        for k in 0..LEN {
            let mut next = Vec::new();
            for s in &layer {
                let low = if k == 0 { 0 } else { s[k - 1] };
                for d in low..BASE {
                    let mut c = s.clone();
                    c[k] = d;
                    out.extend_from_slice(&c);
                    next.push(c);
                }
            }
            layer = next;
        }
        Some(out)
    }
}

fn main() -> anyhow::Result<()> {
    gfn_core::dag::check_env(&Staircase)?; // step/backward_step inverse, topological order, …
    for loss in [
        ObjectiveName::Tb,
        ObjectiveName::Db,
        ObjectiveName::SubTb,
        ObjectiveName::Fm,
    ] {
        let config = TrainConfig {
            loss,
            hidden: 64,
            ..Default::default()
        };
        let mut t = Trainer::with_env(config, Box::new(Staircase), &Device::Cpu)?;
        for _ in 0..1000 {
            t.step()?;
        }
        let exact = t.evaluate()?.exact.expect("the staircase is enumerable");
        println!(
            "{loss:<5} exact TV {:.4}  log Z learned {:.4} (true {:.4})",
            exact.dist.tv, exact.log_z_learned, exact.log_z_true
        );
    }
    Ok(())
}
