//! Suite `led`'s own figures and further claims: how close the top-100 mean reward comes to its
//! exact ceiling, the best LED dropout rate γ, and LED's share of training time. The suite itself
//! — the LED-GFN paper's set and bag grid, its columns, plots and pairwise claims — is
//! `suites/led.toml`.

use std::path::Path;

use anyhow::Result;
use serde_json::Value;

use crate::bench::Session;
use crate::curves;
use crate::report::{Aggregate, Stats, row_stats, seeds_cell};
use crate::suite::{Extract, num};

/// "Within 1% of the ceiling": top-k mean reward ≥ (1 − this) × the exact ceiling.
const CEILING_TOLERANCE: f64 = 0.01;
/// The LED potential's share of training time that the implementation aims to stay under.
const LED_COST_TARGET: f64 = 0.25;
/// Table of the γ ablation (`suites/led.toml`); its rows are `led-db γ=<γ>`.
const GAMMA: &str = "γ ablation: led-db on set small";

/// The exact ceiling of a run's top-k metric (the mean reward of the best `k` objects of p*).
fn ceiling(r: &Value) -> Option<f64> {
    num(r, "/summary/target/top_k_mean_reward").filter(|c| *c > 0.0)
}

/// Whether top-k figures (an evaluation's or the summary's) hold `k` objects whose mean reward is
/// within [`CEILING_TOLERANCE`] of `ceiling`. With fewer than `k` objects the mean is not the
/// metric the ceiling bounds.
fn near_ceiling(top_k: &Value, ceiling: f64) -> bool {
    let (Some(k), Some(found), Some(mean)) = (num(top_k, "/k"), num(top_k, "/found"), num(top_k, "/mean_reward"))
    else {
        return false;
    };
    found >= k && mean >= (1.0 - CEILING_TOLERANCE) * ceiling
}

/// Final top-k mean reward ÷ the exact ceiling (once `k` objects are held).
pub fn fraction_of_ceiling(r: &Value) -> Option<f64> {
    let found = num(r, "/summary/top_k/found")?;
    (found >= num(r, "/summary/top_k/k")?).then_some(())?;
    Some(num(r, "/summary/top_k/mean_reward")? / ceiling(r)?)
}

/// Trajectories until the top-k mean reward first came within 1% of the ceiling; `None` if it
/// never did (or the ceiling is unknown).
pub fn trajectories_to_ceiling(r: &Value) -> Option<f64> {
    let c = ceiling(r)?;
    curves::first_reaching(r, |p| near_ceiling(&p["top_k"], c)).map(|(t, _)| t)
}

/// 1 if the run's top-k mean came within 1% of the ceiling, 0 if not; `None` without a ceiling
/// or a top-k curve.
pub fn reached_ceiling(r: &Value) -> Option<f64> {
    ceiling(r)?;
    if curves::values(r, "/top_k/mean_reward").is_empty() {
        return None;
    }
    Some(if trajectories_to_ceiling(r).is_some() { 1.0 } else { 0.0 })
}

/// The γ ablation's claim line: the best γ by final top-100 mean reward.
fn gamma_claim(session: &Session) -> String {
    let top_k: Extract = &|r| num(r, "/summary/top_k/mean_reward");
    // The table's rows in run order: γ ascending.
    let labels = crate::report::distinct(session.runs.iter().filter(|r| r.group == GAMMA).map(|r| r.row.as_str()));
    let mut rows: Vec<(&str, Stats)> = labels
        .iter()
        .filter_map(|row| {
            let gamma = row.rsplit_once("γ=").map_or(*row, |(_, g)| g);
            Some((gamma, row_stats(session, GAMMA, row, top_k)?))
        })
        .collect();
    if rows.is_empty() {
        return "- *Best LED dropout rate γ on set small*: no γ-ablation run finished.\n".into();
    }
    rows.sort_by(|a, b| b.1.mean.total_cmp(&a.1.mean));
    let all: Vec<String> = rows
        .iter()
        .map(|(g, s)| format!("γ = {g}: {}", seeds_cell(s, None)))
        .collect();
    let (best, s) = &rows[0];
    let margin = match rows.get(1) {
        Some((g2, s2)) => {
            let j = crate::judge::judge(s, s2, crate::judge::Better::Higher);
            format!(
                "; against the runner-up γ = {g2}: {} ({})",
                j.verdict.word(),
                j.detail()
            )
        }
        None => String::new(),
    };
    format!(
        "- *Best LED dropout rate γ on set small, by final top-100 mean reward*: **γ = {best}**{margin} ({}). The paper's rule (γ 0.1 below 10 transitions, 0.2 otherwise) gives 0.2 for set small's 20 transitions, which the set small table's led-db rows use.\n",
        all.join("; ")
    )
}

/// The LED cost line: the largest share of training time spent on LED's potential.
fn led_cost_claim(session: &Session) -> String {
    let shares: Vec<(&str, f64)> = session
        .runs
        .iter()
        .filter(|r| r.ok)
        .filter_map(|r| {
            let s = r.summary.as_ref()?.pointer("/led/fraction_of_training")?.as_f64()?;
            Some((r.name.as_str(), s))
        })
        .collect();
    let Some(&(worst, max)) = shares.iter().max_by(|a, b| a.1.total_cmp(&b.1)) else {
        return "- *LED's potential costs at most 25% of training time*: no LED run finished.\n".into();
    };
    let mean = shares.iter().map(|s| s.1).sum::<f64>() / shares.len() as f64;
    format!(
        "- *LED's potential costs at most {:.0}% of training time*: **{}** (largest share {:.1}%, in {worst}; mean {:.1}% over {} LED runs).\n",
        100.0 * LED_COST_TARGET,
        if max <= LED_COST_TARGET { "met" } else { "not met" },
        100.0 * max,
        100.0 * mean,
        shares.len()
    )
}

/// The suite's further claims (`extra = "led"` in `suites/led.toml`).
pub fn extra(session: &Session, _aggs: &[Aggregate], _dir: &Path) -> Result<String> {
    let mut md = String::from("\n## Further claims\n\n");
    md.push_str(&gamma_claim(session));
    md.push_str(&led_cost_claim(session));
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::RunRecord;
    use serde_json::json;

    /// A run record whose top-k mean follows `means` (one evaluation per 100 trajectories, `k`
    /// objects held from the `full_from`-th evaluation on), with ceiling `ceiling`.
    fn record(means: &[f64], full_from: usize, ceiling: Option<f64>) -> Value {
        let curve: Vec<Value> = means
            .iter()
            .enumerate()
            .map(|(i, m)| {
                json!({"trajectories": 100.0 * (i + 1) as f64, "seconds": i as f64,
                    "top_k": {"k": 100.0, "found": if i >= full_from { 100.0 } else { 50.0 }, "mean_reward": m, "diversity": 3.0}})
            })
            .collect();
        json!({
            "summary": {
                "trajectories": 100 * means.len(),
                "target": {"top_k_mean_reward": ceiling, "mean_reward": 1.0},
                "top_k": {"k": 100, "found": 100, "mean_reward": means.last()},
            },
            "curve": curve,
        })
    }

    #[test]
    fn trajectories_to_within_one_percent_of_the_ceiling() {
        // 1.2 at the first evaluation does not count: only 50 of 100 objects were held.
        let r = record(&[1.2, 0.5, 0.98, 0.991, 0.995], 1, Some(1.0));
        assert_eq!(trajectories_to_ceiling(&r), Some(400.0));
        assert_eq!(reached_ceiling(&r), Some(1.0));
        assert!((fraction_of_ceiling(&r).unwrap() - 0.995).abs() < 1e-12);

        let never = record(&[0.5, 0.9, 0.985], 0, Some(1.0));
        assert_eq!(trajectories_to_ceiling(&never), None);
        assert_eq!(reached_ceiling(&never), Some(0.0));

        let unknown = record(&[0.5, 1.0], 0, None);
        assert_eq!(trajectories_to_ceiling(&unknown), None);
        assert_eq!(reached_ceiling(&unknown), None);
        assert_eq!(fraction_of_ceiling(&unknown), None);
    }

    fn run_record(name: &str, group: &str, row: &str, seed: u64, mut rec: Value) -> RunRecord {
        rec["summary"]["iterations"] = json!(10);
        rec["summary"]["wall_seconds"] = json!(1.0);
        let curve = rec["curve"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut p = p.clone();
                p["iteration"] = json!(i + 1);
                serde_json::from_value(p).unwrap()
            })
            .collect();
        RunRecord {
            name: name.into(),
            group: group.into(),
            row: row.into(),
            seed,
            command: Vec::new(),
            ok: true,
            error: None,
            process_wall_seconds: Some(1.0),
            peak_rss_mb: None,
            summary: Some(rec["summary"].clone()),
            curve,
            peers: Vec::new(),
        }
    }

    #[test]
    fn further_claims_are_judged_from_the_data() {
        let mut session: Session = serde_json::from_value(json!({
            "request": {"suite": "led", "options": {"quick": false, "seeds": 2, "threads": 1}, "vs": [], "command": "test"},
            "started": "now", "finished": "now", "plan": [], "versions": {"peers": {}}, "machine": {}, "git": {},
            "rss_method": "none", "peers": [], "runs": []
        }))
        .unwrap();
        let dir = std::env::temp_dir();
        assert!(
            extra(&session, &[], &dir)
                .unwrap()
                .contains("no γ-ablation run finished")
        );
        assert!(extra(&session, &[], &dir).unwrap().contains("no LED run finished"));
        for seed in 0..2u64 {
            let wiggle = 0.001 * seed as f64;
            for g in ["0", "0.1", "0.2", "0.5"] {
                let x: f64 = g.parse().unwrap();
                let mut rec = record(&[0.5, 0.9 + x / 10.0 + wiggle], 0, Some(1.0));
                rec["summary"]["led"] = json!({"seconds": 0.1, "fraction_of_training": 0.05 + x / 10.0 + wiggle});
                let row = format!("led-db γ={g}");
                session.runs.push(run_record(
                    &format!("set-small-gamma{g}-led-db-seed{seed}"),
                    GAMMA,
                    &row,
                    seed,
                    rec,
                ));
            }
        }
        let md = extra(&session, &[], &dir).unwrap();
        assert!(md.starts_with("\n## Further claims\n\n"), "{md}");
        assert!(
            md.contains("**γ = 0.5**; against the runner-up γ = 0.2: reproduced (p < 0.001, g = 24.24)"),
            "{md}"
        );
        assert!(
            md.contains("(γ = 0.5: 0.9505 ± 0.0007 (2 seeds); γ = 0.2: 0.9205 ± 0.0007 (2 seeds)"),
            "{md}"
        );
        assert!(
            md.contains("**met** (largest share 10.1%, in set-small-gamma0.5-led-db-seed1; mean 7.1% over 8 LED runs)"),
            "{md}"
        );
    }
}
