//! `gfnrs`: gfn for Python. A PyO3 module over the `gfn` library: the trainer of the `gfn`
//! command (same configuration keys, same run directories, the same bits for the same seed),
//! built-in environments by name, and a generic sequence environment whose reward is a Python
//! callable scored once per batch. Rust works with the GIL released; a reward callback takes it
//! back for its call.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use candle_core::Device;
use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray1, PyArray2, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyString};

use gfn::config::{ConfigArgs, TrainConfig};
use gfn::train::Trainer as RustTrainer;
use gfn_cli::driver::{self, Progress};
use gfn_cli::run_dir::RunDir;
use gfn_core::{Env, GfnError, Sampler, SamplingOptions, TrajectoryBatch, rng_from_seed};
use gfn_envs::{SequenceEnv, SequenceOrder, SequenceReward};

/// Where a reward callback leaves the Python exception it raised, for the call that reaches
/// Python to raise it again (with its traceback).
type ErrorSlot = Arc<Mutex<Option<PyErr>>>;

/// A generic sequence environment: `length` tokens over an alphabet of `alphabet` symbols,
/// generated in `order` ("append", "prepend-append" or "any-slot"), with
/// `log_reward(states: np.ndarray[int32, (n, length)]) -> np.ndarray[float64, (n,)]` called once
/// per batch of terminal sequences.
#[pyclass(module = "gfnrs", frozen)]
struct Sequence {
    env: SequenceEnv,
    errors: ErrorSlot,
    /// Reward calls and the seconds they took, from entering the callback's Rust side to
    /// returning (the interpreter attached, the array built, the call, the conversion back).
    cost: Arc<Mutex<(u64, f64)>>,
}

#[pymethods]
impl Sequence {
    #[new]
    #[pyo3(signature = (alphabet, length, log_reward, order = "append", name = None))]
    fn new(alphabet: usize, length: usize, log_reward: Py<PyAny>, order: &str, name: Option<String>) -> PyResult<Self> {
        let order: SequenceOrder = order
            .parse()
            .map_err(|e: GfnError| PyValueError::new_err(e.to_string()))?;
        let errors: ErrorSlot = Arc::default();
        let cost: Arc<Mutex<(u64, f64)>> = Arc::default();
        let (slot, counter) = (errors.clone(), cost.clone());
        let reward: Arc<SequenceReward> = Arc::new(move |states: &[i32], out: &mut [f64]| {
            let start = std::time::Instant::now();
            let result = Python::attach(|py| call_reward(py, &log_reward, states, length, out)).map_err(|e| {
                let text = e.to_string();
                *slot.lock().expect("the error slot") = Some(e);
                GfnError::Other(format!("the log_reward callback failed: {text}"))
            });
            let mut c = counter.lock().expect("the cost counter");
            c.0 += 1;
            c.1 += start.elapsed().as_secs_f64();
            result
        });
        let name = name.unwrap_or_else(|| format!("sequence-{alphabet}x{length}-{order}"));
        let env = SequenceEnv::new(name, alphabet, length, order, reward).map_err(value_error)?;
        Ok(Self { env, errors, cost })
    }

    /// The alphabet's size.
    #[getter]
    fn alphabet(&self) -> usize {
        self.env.alphabet()
    }

    /// Tokens per sequence.
    #[getter]
    fn length(&self) -> usize {
        self.env.length()
    }

    /// Calls of `log_reward` so far (one per scored batch).
    #[getter]
    fn reward_calls(&self) -> u64 {
        self.cost.lock().expect("the cost counter").0
    }

    /// Seconds spent in those calls, measured on the Rust side: attaching to the interpreter,
    /// building the array, the call itself and the conversion of its result.
    #[getter]
    fn reward_seconds(&self) -> f64 {
        self.cost.lock().expect("the cost counter").1
    }
}

/// One call of a Python reward over a batch: `states` as an int32 array `[n, length]`, the
/// result converted to float64 and checked for its shape.
fn call_reward(py: Python<'_>, f: &Py<PyAny>, states: &[i32], length: usize, out: &mut [f64]) -> PyResult<()> {
    let n = out.len();
    let x = Array2::from_shape_vec((n, length), states.to_vec())
        .map_err(|e| PyValueError::new_err(e.to_string()))?
        .into_pyarray(py);
    let r = f.call1(py, (x,))?;
    let np = py.import("numpy")?;
    let r = np.call_method1("asarray", (r, "float64"))?;
    let r = r.cast_into::<PyArray1<f64>>().map_err(|_| {
        PyValueError::new_err(format!(
            "log_reward must return one float per sequence, shape ({n},); it returned another shape for a batch of {n}"
        ))
    })?;
    if r.len() != n {
        return Err(PyValueError::new_err(format!(
            "log_reward returned {} values for a batch of {n} sequences: it must return shape ({n},)",
            r.len()
        )));
    }
    out.copy_from_slice(r.readonly().as_slice()?);
    Ok(())
}

fn value_error(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// A configuration key's Python value as TOML.
fn toml_value(key: &str, v: &Bound<'_, PyAny>) -> PyResult<toml::Value> {
    if v.is_instance_of::<PyBool>() {
        Ok(toml::Value::Boolean(v.extract()?))
    } else if v.is_instance_of::<PyInt>() {
        Ok(toml::Value::Integer(v.extract()?))
    } else if v.is_instance_of::<PyFloat>() {
        Ok(toml::Value::Float(v.extract()?))
    } else if v.is_instance_of::<PyString>() {
        Ok(toml::Value::String(v.extract()?))
    } else {
        Err(PyValueError::new_err(format!(
            "invalid {key} = {v}: a configuration value must be a bool, int, float or str"
        )))
    }
}

/// One intra-op thread per the configuration's `threads` (default 1), as the `gfn` command sets
/// it: candle reads `RAYON_NUM_THREADS` at each parallel kernel.
#[allow(unsafe_code)]
fn set_threads(n: usize) {
    // SAFETY: called with the GIL held, from the thread that builds the trainer; the module's
    // Rust threads run only inside calls that have returned, and Python code that reads the
    // environment concurrently would have to run without the GIL.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
}

/// The configuration of keyword arguments, validated as the `gfn` command validates its flags:
/// values, and options that have no effect on this run.
fn config_of(options: Option<&Bound<'_, PyDict>>, custom_env: bool) -> PyResult<TrainConfig> {
    let mut table = toml::Table::new();
    if let Some(options) = options {
        for (k, v) in options.iter() {
            let key: String = k.extract()?;
            // `lambda` is a Python keyword: `lambda_=0.9` names it.
            let key = key.strip_suffix('_').map_or(key.clone(), str::to_string);
            table.insert(key.clone(), toml_value(&key, &v)?);
        }
    }
    let args: ConfigArgs = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| PyValueError::new_err(format!("invalid configuration: {}", e.message())))?;
    let given = args.given();
    let config = args.resolve(ConfigArgs::default(), "").map_err(value_error)?;
    if custom_env {
        config.validate_training().map_err(value_error)?;
    } else {
        config.validate().map_err(value_error)?;
        config.check_given(&given).map_err(value_error)?;
    }
    set_threads(config.threads);
    Ok(config)
}

/// Sampled objects `[n, state_dim]` and their `log R`.
type Samples<'py> = (Bound<'py, PyArray2<i32>>, Bound<'py, PyArray1<f64>>);

/// A GFlowNet trainer: the `gfn` command's training loop as an object.
///
/// `Trainer(env="hypergrid", ndim=4, height=8, loss="tb", seed=0)` takes the `gfn train` options
/// by their configuration names (`gfn train --help`, or a run's `config.toml`); `env` may also be a
/// [`Sequence`] with a Python reward.
#[pyclass(module = "gfnrs", unsendable, subclass)]
struct Trainer {
    inner: RustTrainer,
    /// The custom environment's error slot (a Python reward's exception).
    errors: Option<ErrorSlot>,
}

/// Turn a library error into the Python exception that caused it (a reward callback's), or a
/// `ValueError` (bad input) / `RuntimeError` (anything else) carrying the whole message.
fn raise(errors: &Option<ErrorSlot>, e: anyhow::Error) -> PyErr {
    if let Some(slot) = errors
        && let Some(err) = slot.lock().expect("the error slot").take()
    {
        return err;
    }
    let text = format!("{e:#}");
    if e.chain()
        .any(|c| matches!(c.downcast_ref::<GfnError>(), Some(GfnError::InvalidConfig { .. })))
    {
        PyValueError::new_err(text)
    } else {
        PyRuntimeError::new_err(text)
    }
}

fn json_to_py(py: Python<'_>, v: &serde_json::Value) -> PyResult<Py<PyAny>> {
    let text = serde_json::to_string(v).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    Ok(py.import("json")?.call_method1("loads", (text,))?.unbind())
}

/// The driver's progress hook calling a Python callback with each evaluation record.
struct Callback<'py> {
    py: Python<'py>,
    callback: Option<Py<PyAny>>,
    error: Option<PyErr>,
}

impl Progress<gfn::train::EvalRecord> for Callback<'_> {
    fn on_step(&mut self, _: u64, _: f64) {}
    fn on_eval(&mut self, record: &gfn::train::EvalRecord) {
        let (Some(f), None) = (&self.callback, &self.error) else {
            return;
        };
        let value = serde_json::to_value(record).unwrap_or_default();
        if let Err(e) = json_to_py(self.py, &value).and_then(|r| f.call1(self.py, (r,))) {
            self.error = Some(e);
        }
    }
}

#[pymethods]
impl Trainer {
    #[new]
    #[pyo3(signature = (env = None, **options))]
    fn new(env: Option<&Bound<'_, PyAny>>, options: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let device = Device::Cpu;
        match env {
            Some(e) if e.is_instance_of::<Sequence>() => {
                let seq = e.cast::<Sequence>()?.get();
                let config = config_of(options, true)?;
                let errors = Some(seq.errors.clone());
                let env: Box<dyn Env> = Box::new(seq.env.clone());
                let inner = RustTrainer::with_env(config, env, &device).map_err(|e| raise(&errors, e))?;
                Ok(Self { inner, errors })
            }
            other => {
                let options = match other {
                    Some(name) => {
                        let d = options.map_or_else(|| PyDict::new(name.py()), |o| o.clone());
                        d.set_item("env", name)?;
                        Some(d)
                    }
                    None => options.cloned(),
                };
                let config = config_of(options.as_ref(), false)?;
                let inner = RustTrainer::new(config, &device).map_err(|e| raise(&None, e))?;
                Ok(Self { inner, errors: None })
            }
        }
    }

    /// Resume the run in `dir` (written by `Trainer.run` or the `gfn` command) up to `iterations`
    /// (default: its own total); `run(dir)` then continues it.
    #[staticmethod]
    #[pyo3(signature = (dir, iterations = None))]
    fn resume(dir: PathBuf, iterations: Option<usize>) -> PyResult<Self> {
        let run_dir = RunDir::new(&dir);
        let config = run_dir.read_config().map_err(|e| raise(&None, e))?;
        set_threads(config.threads);
        let inner: RustTrainer = driver::resume(&run_dir, iterations, &Device::Cpu).map_err(|e| raise(&None, e))?;
        Ok(Self { inner, errors: None })
    }

    /// One training iteration (sample a batch, score it, one update); returns its loss.
    fn step(&mut self, py: Python<'_>) -> PyResult<f64> {
        let inner = &mut self.inner;
        py.detach(|| inner.step()).map_err(|e| raise(&self.errors, e))
    }

    /// `n` training iterations (default: up to the configuration's `iterations`), calling
    /// `callback(iteration, loss)` after each; returns the last loss.
    #[pyo3(signature = (n = None, callback = None))]
    fn train(&mut self, py: Python<'_>, n: Option<u64>, callback: Option<Py<PyAny>>) -> PyResult<f64> {
        let n = n.unwrap_or_else(|| (self.inner.config.iterations as u64).saturating_sub(self.inner.iteration));
        let mut loss = f64::NAN;
        for _ in 0..n {
            loss = self.step(py)?;
            if let Some(f) = &callback {
                f.call1(py, (self.inner.iteration, loss))?;
            }
        }
        Ok(loss)
    }

    /// Train up to the configuration's `iterations` in the run directory `out` (new, or the
    /// directory of a resumed run), exactly as `gfn train --out` does: metrics, checkpoints and
    /// the summary, resumable by `gfn train --resume` and `Trainer.resume`. `callback(record)`
    /// gets each evaluation record as a dict. Returns the summary.
    #[pyo3(signature = (out, callback = None))]
    fn run(&mut self, py: Python<'_>, out: PathBuf, callback: Option<Py<PyAny>>) -> PyResult<Py<PyAny>> {
        let dir = RunDir::new(&out);
        // A fresh trainer starts a new run (the directory must be new or empty); a resumed one
        // continues its own directory.
        let _lock = if self.inner.iteration == 0 {
            dir.create_new()
        } else {
            dir.lock_existing()
        }
        .map_err(|e| raise(&None, e))?;
        let mut progress = Callback {
            py,
            callback,
            error: None,
        };
        let summary = driver::run(&mut self.inner, &dir, &mut progress);
        if let Some(e) = progress.error {
            return Err(e);
        }
        let summary = summary.map_err(|e| raise(&self.errors, e))?;
        json_to_py(py, &summary)
    }

    /// Evaluate the current policy (exact where the state space is enumerable); returns the
    /// evaluation record as a dict and appends it to the history.
    fn evaluate(&mut self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let record = self.inner.evaluate().map_err(|e| raise(&self.errors, e))?;
        let value = serde_json::to_value(&record).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        json_to_py(py, &value)
    }

    /// `n` objects from the current policy, from their own RNG stream `seed` (training's is
    /// untouched): `(states int32 [n, state_dim], log_rewards float64 [n])`.
    #[pyo3(signature = (n, seed = 0))]
    fn sample<'py>(&self, py: Python<'py>, n: usize, seed: u64) -> PyResult<Samples<'py>> {
        if n == 0 {
            return Err(PyValueError::new_err("invalid n = 0: must be at least 1"));
        }
        let t = &self.inner;
        // The network and the environment only: a trainer is Send, not Sync.
        let (net, env) = (&t.net, t.env.as_ref());
        let mut batch = TrajectoryBatch::default();
        py.detach(|| {
            let mut rng = rng_from_seed(seed);
            let mut sampler = Sampler::default();
            net.sample(env, &mut sampler, n, SamplingOptions::default(), &mut rng, &mut batch)
        })
        .map_err(|e| raise(&self.errors, e.into()))?;
        let sd = t.env.state_dim();
        let states = Array2::from_shape_vec((n, sd), batch.terminal_states.clone())
            .map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        Ok((states.into_pyarray(py), batch.log_reward.clone().into_pyarray(py)))
    }

    /// Iterations completed.
    #[getter]
    fn iteration(&self) -> u64 {
        self.inner.iteration
    }

    /// The learned `log Z`.
    #[getter]
    fn log_z(&self) -> PyResult<f64> {
        let z = self
            .inner
            .net
            .log_z()
            .as_tensor()
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>());
        Ok(f64::from(z.map_err(|e| PyRuntimeError::new_err(e.to_string()))?[0]))
    }

    /// The configuration as TOML (a run's `config.toml`).
    #[getter]
    fn config(&self) -> String {
        self.inner.config.to_toml()
    }

    /// The environment's name.
    #[getter]
    fn env_name(&self) -> String {
        self.inner.env.name()
    }

    /// The evaluation records so far, as dicts.
    #[getter]
    fn history(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let value = serde_json::to_value(&self.inner.history).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        json_to_py(py, &value)
    }
}

/// gfn for Python: GFlowNets in Rust (the native part; `gfnrs/__init__.py` wraps it).
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Trainer>()?;
    m.add_class::<Sequence>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
