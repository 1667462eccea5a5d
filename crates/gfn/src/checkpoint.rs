//! Checkpoints: parameters, Adam moments, RNG state and counters in one safetensors file,
//! written atomically, with a checksum over the tensor bytes so corruption is detected on load.
//! A checkpoint holds only what determines the rest of the run, so the same seed and
//! configuration give the same bytes; wall-clock time lives in `timing.json` beside it.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use gfn_core::GfnRng;
use gfn_core::exact::EmpiricalTracker;

const FORMAT: &str = "gfn-checkpoint-v1";

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
    /// The best distinct sampled objects.
    pub top_k: gfn_core::topk::TopKTracker,
    /// Named f32 tensors: `param/…`, `adam_m/…`, `adam_v/…`, with their shapes.
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

fn fnv1a(h: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(h, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl Checkpoint {
    /// Serialise to safetensors bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut sorted: Vec<_> = self.tensors.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = sorted
            .iter()
            .map(|(n, s, v)| (n.clone(), s.clone(), f32_bytes(v)))
            .collect();
        let mut sum = 0xcbf2_9ce4_8422_2325u64;
        for (n, _, b) in &bytes {
            sum = fnv1a(fnv1a(sum, n.as_bytes()), b);
        }
        // One metadata entry holding a JSON object with sorted keys: safetensors takes a HashMap,
        // whose iteration order (and so the file's bytes) would differ from run to run.
        let fields: std::collections::BTreeMap<&str, String> = [
            ("format", FORMAT.to_string()),
            ("iteration", self.iteration.to_string()),
            ("trajectories", self.trajectories.to_string()),
            ("adam_t", self.adam_t.to_string()),
            ("loss_sum", format!("{:e}", self.loss_window.0)),
            ("loss_count", self.loss_window.1.to_string()),
            ("rng", serde_json::to_string(&self.rng)?),
            ("tracker", serde_json::to_string(&self.tracker)?),
            ("top_k", serde_json::to_string(&self.top_k)?),
            ("checksum", format!("{sum:016x}")),
        ]
        .into_iter()
        .collect();
        let meta = HashMap::from([("gfn".to_string(), serde_json::to_string(&fields)?)]);
        let views = bytes
            .iter()
            .map(|(n, s, b)| Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), b)?)))
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
            bail!("unknown format {:?} (expected {FORMAT})", get("format")?);
        }
        let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
        names.sort();
        let mut sum = 0xcbf2_9ce4_8422_2325u64;
        let mut tensors = Vec::with_capacity(names.len());
        for n in names {
            let t = st.tensor(&n)?;
            if t.dtype() != Dtype::F32 {
                bail!("tensor {n} is {:?}, expected F32", t.dtype());
            }
            sum = fnv1a(fnv1a(sum, n.as_bytes()), t.data());
            let v = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            tensors.push((n, t.shape().to_vec(), v));
        }
        if format!("{sum:016x}") != *get("checksum")? {
            bail!("checksum mismatch: the tensor data was modified");
        }
        Ok(Self {
            iteration: get("iteration")?.parse()?,
            trajectories: get("trajectories")?.parse()?,
            adam_t: get("adam_t")?.parse()?,
            loss_window: (get("loss_sum")?.parse()?, get("loss_count")?.parse()?),
            rng: serde_json::from_str(get("rng")?)?,
            tracker: serde_json::from_str(get("tracker")?)?,
            top_k: serde_json::from_str(get("top_k")?)?,
            tensors,
        })
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Result<&(String, Vec<usize>, Vec<f32>)> {
        self.tensors
            .iter()
            .find(|t| t.0 == name)
            .with_context(|| format!("checkpoint has no tensor {name}"))
    }
}
