//! Checkpoints: parameters, Adam moments, RNG state and counters in one safetensors file,
//! written atomically, with one checksum over the tensor bytes and every metadata field (counters,
//! RNG states, the configuration's hash), so corruption or a hand edit is detected on load; the
//! configuration it was written for is bound to it by that hash
//! ([`crate::config::TrainConfig::binding_hash`]).
//! A checkpoint holds only what determines the rest of the run, so the same seed and
//! configuration give the same bytes; wall-clock time lives in `timing.json` beside it.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use candle_core::Tensor;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use gfn_core::GfnRng;
use gfn_core::exact::EmpiricalTracker;
use gfn_core::optim::Adam;

const FORMAT: &str = "gfn-checkpoint-v2";

/// Everything a run needs to continue exactly where it stopped.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Iterations completed.
    pub iteration: u64,
    /// Trajectories sampled.
    pub trajectories: u64,
    /// The run's RNG.
    pub rng: GfnRng,
    /// Adam's step counter.
    pub adam_t: u64,
    /// Sum and count of the training losses since the last periodic evaluation.
    pub loss_window: (f64, u64),
    /// Empirical-distribution tracker.
    pub tracker: EmpiricalTracker,
    /// The best distinct measured objects.
    pub top_k: gfn_core::topk::TopKTracker,
    /// Rewards of the most recent measured samples.
    pub recent: gfn_core::topk::RecentRewards,
    /// RNG of the measurement samples.
    pub metric_rng: GfnRng,
    /// Named f32 tensors: `param/…`, `adam_m/…`, `adam_v/…`, with their shapes.
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    /// Named f64 and u32 tensors (LED's replay buffer: log rewards bit-exact, indices).
    pub aux: Vec<(String, Vec<usize>, AuxData)>,
    /// [`crate::config::TrainConfig::binding_hash`] of the configuration it was written for.
    pub config_hash: String,
}

/// The data of an auxiliary tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum AuxData {
    /// 64-bit floats.
    F64(Vec<f64>),
    /// 32-bit unsigned integers.
    U32(Vec<u32>),
}

/// Fold the metadata fields (sorted by key, the checksum itself excluded) into the checksum.
fn metadata_sum<'a>(sum: u64, fields: impl Iterator<Item = (&'a str, &'a str)>) -> u64 {
    fields.fold(sum, |h, (k, v)| {
        fnv1a(fnv1a(fnv1a(h, k.as_bytes()), &[0]), v.as_bytes())
    })
}

/// FNV-1a, 64 bits (also the configuration's binding hash).
pub fn fnv1a(h: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(h, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// Little-endian words of `N` bytes.
fn words<T, const N: usize>(data: &[u8], from: fn([u8; N]) -> T) -> Vec<T> {
    data.chunks_exact(N)
        .map(|c| from(c.try_into().expect("chunks_exact yields N bytes")))
        .collect()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl Checkpoint {
    /// Serialise to safetensors bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut bytes: Vec<(String, Vec<usize>, Dtype, Vec<u8>)> = self
            .tensors
            .iter()
            .map(|(n, s, v)| (n.clone(), s.clone(), Dtype::F32, f32_bytes(v)))
            .collect();
        for (n, s, v) in &self.aux {
            let (dtype, b) = match v {
                AuxData::F64(v) => (Dtype::F64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
                AuxData::U32(v) => (Dtype::U32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            };
            bytes.push((n.clone(), s.clone(), dtype, b));
        }
        bytes.sort_by(|a, b| a.0.cmp(&b.0));
        if bytes.windows(2).any(|w| w[0].0 == w[1].0) {
            bail!("checkpoint tensor names must be unique");
        }
        let mut sum = 0xcbf2_9ce4_8422_2325u64;
        for (n, _, _, b) in &bytes {
            sum = fnv1a(fnv1a(sum, n.as_bytes()), b);
        }
        // One metadata entry holding a JSON object with sorted keys: safetensors takes a HashMap,
        // whose iteration order (and so the file's bytes) would differ from run to run.
        let mut fields: std::collections::BTreeMap<&str, String> = [
            ("format", FORMAT.to_string()),
            ("iteration", self.iteration.to_string()),
            ("trajectories", self.trajectories.to_string()),
            ("adam_t", self.adam_t.to_string()),
            ("loss_sum", format!("{:e}", self.loss_window.0)),
            ("loss_count", self.loss_window.1.to_string()),
            ("rng", serde_json::to_string(&self.rng)?),
            ("tracker", serde_json::to_string(&self.tracker)?),
            ("top_k", serde_json::to_string(&self.top_k)?),
            ("recent", serde_json::to_string(&self.recent)?),
            ("metric_rng", serde_json::to_string(&self.metric_rng)?),
            ("config", self.config_hash.clone()),
        ]
        .into_iter()
        .collect();
        let sum = metadata_sum(sum, fields.iter().map(|(k, v)| (*k, v.as_str())));
        fields.insert("checksum", format!("{sum:016x}"));
        let meta = HashMap::from([("gfn".to_string(), serde_json::to_string(&fields)?)]);
        let views = bytes
            .iter()
            .map(|(n, s, d, b)| Ok((n.clone(), TensorView::new(*d, s.clone(), b)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(safetensors::serialize(views, Some(meta))?)
    }

    /// Write atomically to `path`.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::io::write_atomic(path, &self.to_bytes()?)
    }

    /// Read and verify `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let data = std::fs::read(path).with_context(|| format!("cannot read checkpoint {}", path.display()))?;
        Self::from_bytes(&data).with_context(|| format!("checkpoint {} is corrupt or truncated", path.display()))
    }

    /// Parse and verify safetensors bytes.
    pub fn from_bytes(data: &[u8]) -> Result<Self> {
        let st = SafeTensors::deserialize(data)?;
        let (_, header) = SafeTensors::read_metadata(data)?;
        let raw = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get("gfn"))
            .context("not a gfn checkpoint (no gfn metadata)")?;
        let meta: HashMap<String, String> = serde_json::from_str(raw).context("gfn metadata is not valid JSON")?;
        let get = |k: &str| meta.get(k).with_context(|| format!("missing metadata field {k}"));
        if get("format")? != FORMAT {
            bail!(
                "format {:?} is not {FORMAT}: written by another version of gfn (v1 checkpoints carry no checksum over their metadata and cannot be verified)",
                get("format")?
            );
        }
        let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
        names.sort();
        let mut sum = 0xcbf2_9ce4_8422_2325u64;
        let mut tensors = Vec::with_capacity(names.len());
        let mut aux = Vec::new();
        for n in names {
            let t = st.tensor(&n)?;
            sum = fnv1a(fnv1a(sum, n.as_bytes()), t.data());
            let shape = t.shape().to_vec();
            match t.dtype() {
                Dtype::F32 => tensors.push((n, shape, words(t.data(), f32::from_le_bytes))),
                Dtype::F64 => aux.push((n, shape, AuxData::F64(words(t.data(), f64::from_le_bytes)))),
                Dtype::U32 => aux.push((n, shape, AuxData::U32(words(t.data(), u32::from_le_bytes)))),
                d => bail!("tensor {n} is {d:?}; checkpoints hold F32, F64 and U32 tensors"),
            }
        }
        let mut sorted: Vec<(&str, &str)> = meta
            .iter()
            .filter(|(k, _)| k.as_str() != "checksum")
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        sorted.sort();
        let sum = metadata_sum(sum, sorted.into_iter());
        if format!("{sum:016x}") != *get("checksum")? {
            bail!("checksum mismatch: the checkpoint's tensors or metadata were modified");
        }
        Ok(Self {
            iteration: get("iteration")?.parse()?,
            trajectories: get("trajectories")?.parse()?,
            adam_t: get("adam_t")?.parse()?,
            loss_window: (get("loss_sum")?.parse()?, get("loss_count")?.parse()?),
            rng: serde_json::from_str(get("rng")?)?,
            tracker: serde_json::from_str(get("tracker")?)?,
            top_k: serde_json::from_str(get("top_k")?)?,
            aux,
            recent: serde_json::from_str(get("recent")?)?,
            metric_rng: serde_json::from_str(get("metric_rng")?)?,
            tensors,
            config_hash: get("config")?.clone(),
        })
    }

    /// The first f32 tensor (parameters, Adam moments) holding a non-finite value, if any: a
    /// checkpoint is only written for a valid state.
    pub fn non_finite(&self) -> Option<&str> {
        self.tensors
            .iter()
            .find(|(_, _, v)| v.iter().any(|x| !x.is_finite()))
            .map(|(n, _, _)| n.as_str())
    }

    /// Check that `config_hash` (the hash of the run's `config.toml`) is the one this checkpoint
    /// was written for.
    pub fn check_config(&self, config_hash: &str, dir: &Path) -> Result<()> {
        if self.config_hash != config_hash {
            bail!(
                "{}/config.toml is not the configuration its checkpoint was written for (edited after the run? only --iterations may change, through --resume)",
                dir.display()
            );
        }
        Ok(())
    }

    /// The auxiliary tensor named `name`.
    pub fn aux(&self, name: &str) -> Result<&(String, Vec<usize>, AuxData)> {
        self.aux
            .iter()
            .find(|t| t.0 == name)
            .with_context(|| format!("checkpoint has no tensor {name}"))
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Result<&(String, Vec<usize>, Vec<f32>)> {
        self.tensors
            .iter()
            .find(|t| t.0 == name)
            .with_context(|| format!("checkpoint has no tensor {name}"))
    }
}

/// f32 tensors of a checkpoint: name, shape, values.
pub type F32Tensors = Vec<(String, Vec<usize>, Vec<f32>)>;

/// Parameters and Adam moments of `opt`, under `prefix/` (`prefix/param/NAME`,
/// `prefix/adam_m/NAME`, `prefix/adam_v/NAME`); the step counter is the caller's.
pub fn save_adam(prefix: &str, opt: &Adam, out: &mut F32Tensors) -> Result<()> {
    for s in &opt.slots {
        let shape = s.var.dims().to_vec();
        let values = s.var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        out.push((format!("{prefix}/param/{}", s.name), shape.clone(), values));
        out.push((format!("{prefix}/adam_m/{}", s.name), shape.clone(), s.m.clone()));
        out.push((format!("{prefix}/adam_v/{}", s.name), shape, s.v.clone()));
    }
    Ok(())
}

/// Inverse of [`save_adam`], checking every shape.
pub fn restore_adam(prefix: &str, opt: &mut Adam, ck: &Checkpoint) -> Result<()> {
    for s in &mut opt.slots {
        let (_, shape, data) = ck.tensor(&format!("{prefix}/param/{}", s.name))?;
        if shape.as_slice() != s.var.dims() {
            bail!(
                "tensor {prefix}/param/{} has shape {shape:?}, the model expects {:?}",
                s.name,
                s.var.dims()
            );
        }
        s.var
            .set(&Tensor::from_slice(data, shape.as_slice(), s.var.device())?)?;
        for (kind, dst) in [("adam_m", &mut s.m), ("adam_v", &mut s.v)] {
            let (_, _, data) = ck.tensor(&format!("{prefix}/{kind}/{}", s.name))?;
            if data.len() != dst.len() {
                bail!("optimiser state {prefix}/{kind}/{} has the wrong size", s.name);
            }
            dst.copy_from_slice(data);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        Checkpoint {
            iteration: 7,
            trajectories: 112,
            rng: gfn_core::rng_from_seed(3),
            adam_t: 7,
            loss_window: (1.5, 2),
            tracker: EmpiricalTracker::new(10),
            top_k: gfn_core::topk::TopKTracker::new(4),
            recent: gfn_core::topk::RecentRewards::new(5),
            metric_rng: gfn_core::rng_from_seed(4),
            tensors: vec![("param/w".into(), vec![2], vec![0.5, -1.25])],
            aux: vec![
                (
                    "led/log_reward".into(),
                    vec![3],
                    AuxData::F64(vec![0.1, -1e-300, f64::MIN_POSITIVE]),
                ),
                ("led/index".into(), vec![2], AuxData::U32(vec![0, u32::MAX])),
            ],
            config_hash: "0123456789abcdef".into(),
        }
    }

    /// Replace the first occurrence of `from` by `to` (same length) in the bytes.
    fn edit(bytes: &[u8], from: &str, to: &str) -> Vec<u8> {
        assert_eq!(from.len(), to.len());
        let at = bytes
            .windows(from.len())
            .position(|w| w == from.as_bytes())
            .unwrap_or_else(|| panic!("{from} not in the checkpoint"));
        let mut out = bytes.to_vec();
        out[at..at + to.len()].copy_from_slice(to.as_bytes());
        out
    }

    /// The checksum covers the metadata: an edited counter, RNG state or configuration hash is
    /// refused, and the configuration binding names the run's config.toml.
    #[test]
    fn edited_metadata_is_caught() {
        let bytes = sample().to_bytes().unwrap();
        for (from, to) in [
            (r#"\"iteration\":\"7\""#, r#"\"iteration\":\"9\""#),
            (r#"\"adam_t\":\"7\""#, r#"\"adam_t\":\"1\""#),
            ("0123456789abcdef", "0123456789abcdee"),
        ] {
            let bad = edit(&bytes, from, to);
            let err = Checkpoint::from_bytes(&bad).unwrap_err().to_string();
            assert!(err.contains("checksum"), "{from}: {err}");
        }
        let ck = Checkpoint::from_bytes(&bytes).unwrap();
        ck.check_config("0123456789abcdef", Path::new("run")).unwrap();
        let err = ck
            .check_config("fedcba9876543210", Path::new("run"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("run/config.toml") && err.contains("--resume"), "{err}");
        let mut nan = sample();
        assert_eq!(nan.non_finite(), None);
        nan.tensors[0].2[1] = f32::NAN;
        assert_eq!(nan.non_finite(), Some("param/w"));
    }

    /// f64 and u32 tensors come back bit for bit, and a flipped byte in any tensor is caught.
    #[test]
    fn aux_tensors_round_trip_and_corruption_is_caught() {
        let ck = sample();
        let bytes = ck.to_bytes().unwrap();
        let back = Checkpoint::from_bytes(&bytes).unwrap();
        assert_eq!(back.tensors, ck.tensors);
        assert_eq!(back.aux("led/log_reward").unwrap(), &ck.aux[0]);
        assert_eq!(back.aux("led/index").unwrap(), &ck.aux[1]);
        assert_eq!(back.to_bytes().unwrap(), bytes, "serialisation is not deterministic");
        // The data section is the last 24 + 8 + 8 bytes; flip one bit inside it.
        let mut bad = bytes.clone();
        let at = bad.len() - 13;
        bad[at] ^= 1;
        let err = Checkpoint::from_bytes(&bad).unwrap_err().to_string();
        assert!(err.contains("checksum"), "{err}");
        let mut dup = sample();
        dup.aux.push(("param/w".into(), vec![1], AuxData::U32(vec![1])));
        assert!(dup.to_bytes().is_err());
    }
}
