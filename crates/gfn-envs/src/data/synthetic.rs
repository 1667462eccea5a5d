//! The seven 2D toy distributions of EB-GFN (and ALOE before it), quantised to 32 bits with a
//! Gray code.
//!
//! **Data.** [`sample`] draws fresh points of a [`Dataset`] following the official generators
//! (`synthetic/synthetic_data.py`, which calls scikit-learn's `make_circles`, `make_moons` and
//! `make_swiss_roll`; their formulas are re-implemented here):
//!
//! | name | generator |
//! |---|---|
//! | `2spirals` | `n = √U·540·2π/360`, `d = (−cos n·n + U₁/2, sin n·n + U₂/2)`, points `±d/3 + N(0, 0.1²)` |
//! | `8gaussians` | `(4·c + N(0, 0.5²))/1.414`, `c` uniform over `(±1,0), (0,±1), (±1/√2, ±1/√2)` |
//! | `circles` | `make_circles(factor 0.5, noise 0.08)·3`: radius 1 and 0.5, evenly spaced angles |
//! | `moons` | `make_moons(noise 0.1)·2 + (−1, −0.2)` |
//! | `pinwheel` | 5 arms, radial std 0.3, tangential std 0.1, rate 0.25, `×2` |
//! | `swissroll` | `make_swiss_roll(noise 1.0)`, columns `[0, 2]`, `/5` |
//! | `checkerboard` | `x₁ ~ U(−2,2)`, `x₂ = U(0,1) − 2·Bern(½) + (⌊x₁⌋ mod 2)`, `×2` |
//!
//! All randomness comes from the [`GfnRng`] passed in; normal draws use the Box–Muller transform
//! ([`standard_normal_pair`]). The official code returns `5·⌊n/5⌋` pinwheel points and
//! `2·⌊n/2⌋` spiral points; here every dataset returns exactly `n` points, with the classes as
//! balanced as `n` allows (identical to the official class counts when `n` is a multiple of 5 or 2).
//!
//! **Quantisation** ([`GrayCode`]). A point becomes `D = 32` bits, 16 per coordinate. With
//! `int_scale = 2^15/(f_scale + 1)`, a coordinate `v` gives the sign bit (`0` if `v·int_scale ≥ 0`,
//! else `1`) followed by the 15-bit reflected Gray code `g = q ⊕ (q ≫ 1)` of the magnitude
//! `q = ⌊|v·int_scale|⌋`, most significant bit first; the x-coordinate's 16 bits come first.
//! Decoding inverts it: `v = ±gray⁻¹(g)/int_scale`, so a round trip truncates `v` towards zero by
//! less than `1/int_scale`. `f_scale` is the official per-dataset constant ([`Dataset::f_scale`]).

use std::fmt;
use std::str::FromStr;

use gfn_core::{GfnError, GfnRng, Result, rng::uniform};
use rand::Rng;

/// One of the seven 2D toy distributions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dataset {
    /// `2spirals`: two interleaved spirals, one the point reflection of the other.
    TwoSpirals,
    /// `8gaussians`: eight Gaussians (std 0.5/1.414) on a circle of radius 4/1.414.
    EightGaussians,
    /// `circles`: two noisy concentric circles of radius 3 and 1.5.
    Circles,
    /// `moons`: two interleaving noisy half circles.
    Moons,
    /// `pinwheel`: five curved arms.
    Pinwheel,
    /// `swissroll`: the 2D projection of scikit-learn's swiss roll.
    Swissroll,
    /// `checkerboard`: uniform on the 8 dark squares of a 4×4 checkerboard covering `[−4, 4)²`.
    Checkerboard,
}

impl Dataset {
    /// All seven datasets, in the paper's order.
    pub const ALL: [Dataset; 7] = [
        Dataset::TwoSpirals,
        Dataset::EightGaussians,
        Dataset::Circles,
        Dataset::Moons,
        Dataset::Pinwheel,
        Dataset::Swissroll,
        Dataset::Checkerboard,
    ];

    /// The official name (`2spirals`, `8gaussians`, `circles`, `moons`, `pinwheel`, `swissroll`,
    /// `checkerboard`).
    pub fn name(self) -> &'static str {
        match self {
            Dataset::TwoSpirals => "2spirals",
            Dataset::EightGaussians => "8gaussians",
            Dataset::Circles => "circles",
            Dataset::Moons => "moons",
            Dataset::Pinwheel => "pinwheel",
            Dataset::Swissroll => "swissroll",
            Dataset::Checkerboard => "checkerboard",
        }
    }

    /// The official quantisation constant `f_scale = max|s| + 1`, the maximum over the 10,000
    /// coordinates of 5,000 samples the official code draws from `RandomState(1)`.
    ///
    /// The values are those of the reference table (6 decimals, with `int_scale` to 3 decimals),
    /// refined to 8 decimals so that they round to the table's `f_scale` *and* give its
    /// `int_scale = 2^15/(f_scale + 1)` to every printed digit (the 6-decimal `f_scale` alone misses
    /// the last digit of `int_scale` for 8gaussians, circles and pinwheel). The remaining
    /// uncertainty of `int_scale` (≈ 2·10⁻⁸ relative) moves a quantisation boundary past fewer than
    /// 1 in 10⁴ points.
    pub fn f_scale(self) -> f64 {
        match self {
            Dataset::TwoSpirals => 4.480_986_18,
            Dataset::EightGaussians => 5.194_776_67,
            Dataset::Circles => 4.780_577_64,
            Dataset::Moons => 4.669_443_25,
            Dataset::Pinwheel => 4.946_059_54,
            Dataset::Swissroll => 4.265_938_92,
            Dataset::Checkerboard => 4.999_416_00,
        }
    }

    /// The official 32-bit Gray-code quantiser of this dataset (from [`Dataset::f_scale`]).
    pub fn gray_code(self) -> GrayCode {
        GrayCode::from_valid_f_scale(self.f_scale())
    }
}

impl fmt::Display for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Dataset {
    type Err = GfnError;

    fn from_str(s: &str) -> Result<Self> {
        Dataset::ALL.into_iter().find(|d| d.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Dataset::ALL.iter().map(|d| d.name()).collect();
            GfnError::invalid("dataset", s, format!("one of {}", names.join(", ")))
        })
    }
}

gfn_core::string_serde!(Dataset);

/// Two independent standard normal draws by the Box–Muller transform:
/// `r = √(−2 ln U₁)`, `(r cos 2πU₂, r sin 2πU₂)`, with `U₁ ∈ (0, 1]` so the logarithm is finite.
pub fn standard_normal_pair(rng: &mut GfnRng) -> [f64; 2] {
    let u1 = 1.0 - uniform(rng);
    let u2 = uniform(rng);
    let r = (-2.0 * u1.ln()).sqrt();
    let (sin, cos) = (std::f64::consts::TAU * u2).sin_cos();
    [r * cos, r * sin]
}

/// `n` fresh points of `dataset` (see the [module documentation](self) for the formulas).
/// Every call draws new points from `rng`; the same generator state gives the same points.
pub fn sample(dataset: Dataset, n: usize, rng: &mut GfnRng) -> Vec<[f64; 2]> {
    match dataset {
        Dataset::TwoSpirals => two_spirals(n, rng),
        Dataset::EightGaussians => eight_gaussians(n, rng),
        Dataset::Circles => circles(n, rng),
        Dataset::Moons => moons(n, rng),
        Dataset::Pinwheel => pinwheel(n, rng),
        Dataset::Swissroll => swissroll(n, rng),
        Dataset::Checkerboard => checkerboard(n, rng),
    }
}

/// `n` fresh points of `dataset`, Gray-coded with the dataset's official quantiser: a flat
/// `n × 32` row-major vector of 0/1 (the binary vectors an EB-GFN model is trained on).
pub fn sample_bits(dataset: Dataset, n: usize, rng: &mut GfnRng) -> Vec<i32> {
    let points = sample(dataset, n, rng);
    let mut bits = vec![0i32; n * GrayCode::BITS];
    dataset
        .gray_code()
        .encode_into(&points, &mut bits)
        .expect("sample() returns finite points and the buffer has n·32 entries");
    bits
}

/// Uniform random permutation in place (Fisher–Yates), like `numpy`'s `permutation`/`shuffle`.
fn shuffle(points: &mut [[f64; 2]], rng: &mut GfnRng) {
    for i in (1..points.len()).rev() {
        let j = rng.random_range(0..=i);
        points.swap(i, j);
    }
}

/// Adds independent `N(0, std²)` noise to both coordinates of every point.
fn add_noise(points: &mut [[f64; 2]], std: f64, rng: &mut GfnRng) {
    for p in points {
        let z = standard_normal_pair(rng);
        p[0] += std * z[0];
        p[1] += std * z[1];
    }
}

/// `2spirals`: `n = √U·540·2π/360` (so `n ∈ [0, 3π]`), `d = (−cos n·n + U₁·0.5, sin n·n + U₂·0.5)`;
/// even-indexed points are `d/3`, the next odd-indexed point is `−d/3` (the official code stacks
/// the `d/3` half and then the `−d/3` half), then every point gets `N(0, 0.1²)` noise.
fn two_spirals(n: usize, rng: &mut GfnRng) -> Vec<[f64; 2]> {
    let mut points = Vec::with_capacity(n);
    let mut arm = [0.0; 2];
    for k in 0..n {
        if k % 2 == 0 {
            let t = uniform(rng).sqrt() * 540.0 * std::f64::consts::TAU / 360.0;
            let dx = -t.cos() * t + uniform(rng) * 0.5;
            let dy = t.sin() * t + uniform(rng) * 0.5;
            arm = [dx / 3.0, dy / 3.0];
            points.push(arm);
        } else {
            points.push([-arm[0], -arm[1]]);
        }
    }
    add_noise(&mut points, 0.1, rng);
    points
}

/// `8gaussians`: `(4·c + N(0, 0.5²))/1.414`, the centre `c` uniform over the 8 unit vectors
/// `(±1, 0), (0, ±1), (±1/√2, ±1/√2)`.
fn eight_gaussians(n: usize, rng: &mut GfnRng) -> Vec<[f64; 2]> {
    let h = std::f64::consts::FRAC_1_SQRT_2;
    let centres = [
        [1.0, 0.0],
        [-1.0, 0.0],
        [0.0, 1.0],
        [0.0, -1.0],
        [h, h],
        [h, -h],
        [-h, h],
        [-h, -h],
    ];
    (0..n)
        .map(|_| {
            let z = standard_normal_pair(rng);
            let c = centres[rng.random_range(0..8)];
            [(0.5 * z[0] + 4.0 * c[0]) / 1.414, (0.5 * z[1] + 4.0 * c[1]) / 1.414]
        })
        .collect()
}

/// `numpy.linspace(0, stop, m, endpoint)`: `k·stop/(m − 1)` (endpoint) or `k·stop/m`.
fn linspace(stop: f64, m: usize, endpoint: bool) -> impl Iterator<Item = f64> {
    let div = if endpoint { m.saturating_sub(1).max(1) } else { m.max(1) };
    let step = stop / div as f64;
    (0..m).map(move |k| k as f64 * step)
}

/// `circles` = scikit-learn `make_circles(n, factor=0.5, noise=0.08)·3`: `⌊n/2⌋` points on the
/// unit circle at angles `linspace(0, 2π, ⌊n/2⌋, endpoint=False)`, the other `⌈n/2⌉` on the circle
/// of radius `factor` likewise, shuffled, plus `N(0, noise²)` per coordinate; then `×3`.
fn circles(n: usize, rng: &mut GfnRng) -> Vec<[f64; 2]> {
    let (factor, noise, scale) = (0.5, 0.08, 3.0);
    let n_out = n / 2;
    let n_in = n - n_out;
    let tau = std::f64::consts::TAU;
    let mut points: Vec<[f64; 2]> = linspace(tau, n_out, false)
        .map(|a| [a.cos(), a.sin()])
        .chain(linspace(tau, n_in, false).map(|a| [factor * a.cos(), factor * a.sin()]))
        .collect();
    shuffle(&mut points, rng);
    add_noise(&mut points, noise, rng);
    points.iter().map(|p| [scale * p[0], scale * p[1]]).collect()
}

/// `moons` = scikit-learn `make_moons(n, noise=0.1)·2 + (−1, −0.2)`: `⌊n/2⌋` points
/// `(cos t, sin t)` and `⌈n/2⌉` points `(1 − cos t, 1 − sin t − 0.5)`, `t` = `linspace(0, π)`
/// (endpoint included), shuffled, plus `N(0, noise²)` per coordinate.
fn moons(n: usize, rng: &mut GfnRng) -> Vec<[f64; 2]> {
    let noise = 0.1;
    let n_out = n / 2;
    let n_in = n - n_out;
    let pi = std::f64::consts::PI;
    let mut points: Vec<[f64; 2]> = linspace(pi, n_out, true)
        .map(|t| [t.cos(), t.sin()])
        .chain(linspace(pi, n_in, true).map(|t| [1.0 - t.cos(), 1.0 - t.sin() - 0.5]))
        .collect();
    shuffle(&mut points, rng);
    add_noise(&mut points, noise, rng);
    points.iter().map(|p| [2.0 * p[0] - 1.0, 2.0 * p[1] - 0.2]).collect()
}

/// `pinwheel` (the FFJORD/ALOE generator): features `f = (1 + 0.3·z₁, 0.1·z₂)` (radial std 0.3,
/// tangential std 0.1), label `l` (point `k` of the batch has label `k mod 5` before shuffling),
/// angle `a = 2πl/5 + 0.25·exp(f₁)`, point `2·f·R(a)` with the row-vector convention of the
/// official `einsum("ti,tij->tj", f, R)`, `R = [[cos a, −sin a], [sin a, cos a]]`, i.e.
/// `2·(f₁ cos a + f₂ sin a, −f₁ sin a + f₂ cos a)` (arms curl clockwise outwards); shuffled.
fn pinwheel(n: usize, rng: &mut GfnRng) -> Vec<[f64; 2]> {
    let (radial_std, tangential_std, num_classes, rate) = (0.3, 0.1, 5, 0.25);
    let mut points: Vec<[f64; 2]> = (0..n)
        .map(|k| {
            let z = standard_normal_pair(rng);
            let (f1, f2) = (1.0 + radial_std * z[0], tangential_std * z[1]);
            let label = (k % num_classes) as f64;
            let angle = label * std::f64::consts::TAU / num_classes as f64 + rate * f1.exp();
            let (sin, cos) = angle.sin_cos();
            [2.0 * (f1 * cos + f2 * sin), 2.0 * (-f1 * sin + f2 * cos)]
        })
        .collect();
    shuffle(&mut points, rng);
    points
}

/// `swissroll` = scikit-learn `make_swiss_roll(n, noise=1.0)`, columns `[0, 2]`, `/5`:
/// `t = 1.5π(1 + 2U)`, `(t cos t + N(0, 1), t sin t + N(0, 1))/5` (the roll's height `21U` is
/// column 1, which is dropped, so it is not drawn).
fn swissroll(n: usize, rng: &mut GfnRng) -> Vec<[f64; 2]> {
    let noise = 1.0;
    (0..n)
        .map(|_| {
            let t = 1.5 * std::f64::consts::PI * (1.0 + 2.0 * uniform(rng));
            let z = standard_normal_pair(rng);
            [(t * t.cos() + noise * z[0]) / 5.0, (t * t.sin() + noise * z[1]) / 5.0]
        })
        .collect()
}

/// `checkerboard`: `x₁ ~ U(−2, 2)`, `x₂ = U(0, 1) − 2·Bern(½) + (⌊x₁⌋ mod 2)` (Python's
/// non-negative modulo), point `2·(x₁, x₂)`. Every point lies in `[−4, 4)²` on a cell with
/// `⌊x/2⌋ + ⌊y/2⌋` even.
fn checkerboard(n: usize, rng: &mut GfnRng) -> Vec<[f64; 2]> {
    (0..n)
        .map(|_| {
            let x1 = uniform(rng) * 4.0 - 2.0;
            let shift = if rng.random_bool(0.5) { 2.0 } else { 0.0 };
            let x2 = uniform(rng) - shift + x1.floor().rem_euclid(2.0);
            [2.0 * x1, 2.0 * x2]
        })
        .collect()
}

/// The 15-bit-magnitude reflected Gray code: `g = q ⊕ (q ≫ 1)`.
#[inline]
pub fn gray_encode(q: u32) -> u32 {
    q ^ (q >> 1)
}

/// Inverse of [`gray_encode`]: `q = g ⊕ (g ≫ 1) ⊕ (g ≫ 2) ⊕ …` (prefix XOR from the top bit).
#[inline]
pub fn gray_decode(g: u32) -> u32 {
    let mut q = g;
    let mut shift = 1;
    while shift < 32 {
        q ^= q >> shift;
        shift <<= 1;
    }
    q
}

/// The EB-GFN 32-bit quantiser: sign bit plus 15-bit Gray-coded magnitude per coordinate (see
/// the [module documentation](self)).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GrayCode {
    f_scale: f64,
    int_scale: f64,
}

impl GrayCode {
    /// Bits per point, `D = 32`.
    pub const BITS: usize = 32;
    /// Bits per coordinate: 1 sign bit and [`GrayCode::MAGNITUDE_BITS`] magnitude bits.
    pub const BITS_PER_COORD: usize = 16;
    /// Magnitude bits per coordinate.
    pub const MAGNITUDE_BITS: usize = 15;
    /// The largest magnitude `q` a coordinate can hold, `2^15 − 1`.
    pub const MAX_MAGNITUDE: u32 = (1 << Self::MAGNITUDE_BITS) - 1;

    /// The quantiser with scale `f_scale` (positive, finite): `int_scale = 2^15/(f_scale + 1)`, so
    /// coordinates with `|v| < f_scale + 1` are represented without clamping.
    pub fn new(f_scale: f64) -> Result<Self> {
        if !(f_scale.is_finite() && f_scale > 0.0) {
            return Err(GfnError::invalid("f_scale", f_scale, "must be positive and finite"));
        }
        Ok(Self::from_valid_f_scale(f_scale))
    }

    /// The official recipe on given points: `f_scale = max |coordinate| + 1` (the points must be
    /// non-empty and finite).
    pub fn fit(points: &[[f64; 2]]) -> Result<Self> {
        if points.is_empty() {
            return Err(GfnError::invalid(
                "points",
                "[]",
                "need at least one point to fit f_scale",
            ));
        }
        let mut max_abs: f64 = 0.0;
        for p in points {
            for &v in p {
                if !v.is_finite() {
                    return Err(GfnError::invalid("point coordinate", v, "must be finite"));
                }
                max_abs = max_abs.max(v.abs());
            }
        }
        Self::new(max_abs + 1.0)
    }

    fn from_valid_f_scale(f_scale: f64) -> Self {
        Self {
            f_scale,
            int_scale: (1u32 << Self::MAGNITUDE_BITS) as f64 / (f_scale + 1.0),
        }
    }

    /// `f_scale`, the bound the quantiser was built for.
    pub fn f_scale(&self) -> f64 {
        self.f_scale
    }

    /// `int_scale = 2^15/(f_scale + 1)`: quantisation steps per unit; the resolution is
    /// `1/int_scale`.
    pub fn int_scale(&self) -> f64 {
        self.int_scale
    }

    /// The 16 bits of one coordinate as an integer, sign bit at bit 15, Gray code below it.
    /// The magnitude `q = ⌊|v·int_scale|⌋` is clamped to `2^15 − 1` (coordinates with
    /// `|v| ≥ 2^15/int_scale = f_scale + 1`, infinities included, all map to the largest
    /// magnitude; the official code would fail on them). `v` must not be NaN.
    fn encode_coord(&self, v: f64) -> Result<u32> {
        if v.is_nan() {
            return Err(GfnError::invalid("point coordinate", v, "must not be NaN"));
        }
        let scaled = v * self.int_scale;
        let sign = u32::from(scaled < 0.0);
        // `as` truncates towards zero and saturates (∞ → u32::MAX), then the clamp.
        let q = (scaled.abs() as u32).min(Self::MAX_MAGNITUDE);
        Ok(sign << Self::MAGNITUDE_BITS | gray_encode(q))
    }

    fn decode_coord(&self, word: u32) -> f64 {
        let q = gray_decode(word & Self::MAX_MAGNITUDE) as f64;
        let v = q / self.int_scale;
        if word >> Self::MAGNITUDE_BITS & 1 == 1 { -v } else { v }
    }

    /// The 32 bits (0/1) of a point, most significant first: x's sign, x's 15 Gray bits, y's sign,
    /// y's 15 Gray bits. Magnitudes beyond `2^15 − 1` steps are clamped; NaN is an error.
    pub fn encode(&self, point: [f64; 2]) -> Result<[u8; 32]> {
        let mut bits = [0u8; 32];
        self.encode_one(point, &mut bits)?;
        Ok(bits)
    }

    fn encode_one<T: From<u8>>(&self, point: [f64; 2], out: &mut [T]) -> Result<()> {
        for (c, &v) in point.iter().enumerate() {
            let word = self.encode_coord(v)?;
            for b in 0..Self::BITS_PER_COORD {
                let bit = (word >> (Self::BITS_PER_COORD - 1 - b) & 1) as u8;
                out[c * Self::BITS_PER_COORD + b] = T::from(bit);
            }
        }
        Ok(())
    }

    /// The point of 32 bits (each 0 or 1, layout of [`GrayCode::encode`]):
    /// `v = ±gray⁻¹(g)/int_scale` per coordinate.
    pub fn decode<T>(&self, bits: &[T]) -> Result<[f64; 2]>
    where
        T: Copy + PartialEq + From<u8> + fmt::Debug,
    {
        if bits.len() != Self::BITS {
            return Err(GfnError::invalid("bits length", bits.len(), "must be 32"));
        }
        let mut point = [0.0; 2];
        for (c, chunk) in bits.chunks_exact(Self::BITS_PER_COORD).enumerate() {
            let mut word = 0u32;
            for &bit in chunk {
                word = word << 1 | to_bit(bit)?;
            }
            point[c] = self.decode_coord(word);
        }
        Ok(point)
    }

    /// Encodes `points` into `out`, a flat row-major `points.len() × 32` buffer of 0/1 of any
    /// numeric type (`i32`, `f32`, `u8`, …, anything `From<u8>`), ready for a tensor.
    pub fn encode_into<T: From<u8>>(&self, points: &[[f64; 2]], out: &mut [T]) -> Result<()> {
        if out.len() != points.len() * Self::BITS {
            return Err(GfnError::invalid(
                "output length",
                out.len(),
                format!("must be 32 × {} points = {}", points.len(), points.len() * Self::BITS),
            ));
        }
        for (p, row) in points.iter().zip(out.chunks_exact_mut(Self::BITS)) {
            self.encode_one(*p, row)?;
        }
        Ok(())
    }

    /// Decodes a flat row-major `n × 32` buffer of 0/1 into `n` points.
    pub fn decode_batch<T>(&self, bits: &[T]) -> Result<Vec<[f64; 2]>>
    where
        T: Copy + PartialEq + From<u8> + fmt::Debug,
    {
        if !bits.len().is_multiple_of(Self::BITS) {
            return Err(GfnError::invalid("bits length", bits.len(), "must be a multiple of 32"));
        }
        bits.chunks_exact(Self::BITS).map(|row| self.decode(row)).collect()
    }
}

/// A 0/1 entry as a bit, or an error naming the bad value.
fn to_bit<T: Copy + PartialEq + From<u8> + fmt::Debug>(v: T) -> Result<u32> {
    if v == T::from(0) {
        Ok(0)
    } else if v == T::from(1) {
        Ok(1)
    } else {
        Err(GfnError::invalid("bit", format!("{v:?}"), "must be 0 or 1"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gfn_core::rng_from_seed;

    const N: usize = 20_000;

    /// Mean and standard error of the mean.
    fn mean_se(values: impl Iterator<Item = f64>) -> (f64, f64) {
        let v: Vec<f64> = values.collect();
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, (var / n).sqrt())
    }

    /// `|mean − expected| < 5·se` (a false alarm about once in 1.7 million), with the statistic.
    fn assert_mean(values: impl Iterator<Item = f64>, expected: f64, what: &str) {
        let (mean, se) = mean_se(values);
        assert!(
            (mean - expected).abs() < 5.0 * se,
            "{what}: mean {mean} ± {se}, expected {expected}"
        );
    }

    fn sq_norm(p: &[f64; 2]) -> f64 {
        p[0] * p[0] + p[1] * p[1]
    }

    #[test]
    fn names_round_trip_and_unknown_names_list_the_allowed_ones() {
        for d in Dataset::ALL {
            assert_eq!(d.name().parse::<Dataset>().unwrap(), d);
            assert_eq!(d.to_string(), d.name());
        }
        let err = "spirals".parse::<Dataset>().unwrap_err().to_string();
        assert!(
            err.contains("spirals") && err.contains("2spirals, 8gaussians, circles"),
            "{err}"
        );
    }

    #[test]
    fn gray_code_is_a_one_bit_step_bijection_on_15_bits() {
        let n = 1u32 << 15;
        let mut seen = vec![false; n as usize];
        for q in 0..n {
            let g = gray_encode(q);
            assert!(g < n);
            assert!(!seen[g as usize], "code {g} repeated");
            seen[g as usize] = true;
            assert_eq!(gray_decode(g), q);
            if q > 0 {
                assert_eq!((g ^ gray_encode(q - 1)).count_ones(), 1, "step {q}");
            }
        }
        // The first codes of the reflected sequence (sympy `GrayCode(15).generate_gray()`).
        let first: Vec<u32> = (0..8).map(gray_encode).collect();
        assert_eq!(first, [0b000, 0b001, 0b011, 0b010, 0b110, 0b111, 0b101, 0b100]);
    }

    #[test]
    fn official_scales_reproduce_the_reference_table() {
        let table = [
            ("2spirals", 4.480986, 5978.486),
            ("8gaussians", 5.194777, 5289.618),
            ("circles", 4.780578, 5668.638),
            ("moons", 4.669443, 5779.756),
            ("pinwheel", 4.946060, 5510.877),
            ("swissroll", 4.265939, 6222.632),
            ("checkerboard", 4.999416, 5461.865),
        ];
        for (name, f_scale, int_scale) in table {
            let code = name.parse::<Dataset>().unwrap().gray_code();
            assert_eq!(
                format!("{:.6}", code.f_scale()),
                format!("{f_scale:.6}"),
                "{name} f_scale"
            );
            assert_eq!(
                format!("{:.3}", code.int_scale()),
                format!("{int_scale:.3}"),
                "{name} int_scale"
            );
            assert_eq!(code, GrayCode::new(code.f_scale()).unwrap());
        }
    }

    /// The table's `f_scale` against our own samplers, independently of the table: `max|s| + 1`
    /// over the 10,000 coordinates of 5,000 samples (the official recipe, from another random
    /// stream), median over five seeds. The maximum of a sample is itself random (Gaussian noise
    /// on every dataset but the checkerboard), so the two agree to within `TOLERANCE` (measured:
    /// differences of 0.0005 on the checkerboard to 0.163 on 8gaussians).
    #[test]
    fn official_scales_agree_with_our_samplers() {
        const TOLERANCE: f64 = 0.25;
        for d in Dataset::ALL {
            let mut maxima: Vec<f64> = (0..5)
                .map(|seed| {
                    let points = sample(d, 5_000, &mut rng_from_seed(seed));
                    points.iter().flatten().fold(0.0f64, |m, v| m.max(v.abs())) + 1.0
                })
                .collect();
            maxima.sort_by(f64::total_cmp);
            let ours = maxima[2];
            assert!(
                (ours - d.f_scale()).abs() <= TOLERANCE,
                "{d}: our samplers give max|s| + 1 = {ours:.4} (seeds 0-4: {maxima:.4?}), the table {:.4}",
                d.f_scale()
            );
        }
    }

    #[test]
    fn encode_gives_known_bits() {
        let code = Dataset::Moons.gray_code();
        let s = code.int_scale();
        // x: q = 5 → Gray 7; y: negative, q = 2 → Gray 3.
        let bits = code.encode([5.5 / s, -2.3 / s]).unwrap();
        let mut expected = [0u8; 32];
        expected[13..16].copy_from_slice(&[1, 1, 1]);
        expected[16] = 1;
        expected[30..32].copy_from_slice(&[1, 1]);
        assert_eq!(bits, expected);
        // The official string recipe: '0'/'1' sign then the Gray code, 15 binary digits.
        let official = |v: f64| {
            let q = (v * s).abs() as u32;
            format!("{}{:015b}", if v * s >= 0.0 { '0' } else { '1' }, q ^ (q >> 1))
        };
        let p = [3.217, -1.004];
        let text: String = code.encode(p).unwrap().iter().map(|b| char::from(b'0' + b)).collect();
        assert_eq!(text, official(p[0]) + &official(p[1]));
        // Decoding truncates towards zero; the smallest step is exactly 1/int_scale.
        assert_eq!(code.decode(&bits).unwrap(), [5.0 / s, -2.0 / s]);
    }

    #[test]
    fn out_of_range_coordinates_clamp_and_bad_input_is_an_error() {
        let code = Dataset::Checkerboard.gray_code();
        let top = GrayCode::MAX_MAGNITUDE as f64 / code.int_scale();
        for (p, back) in [
            ([1e9, -1e9], [top, -top]),
            ([f64::INFINITY, f64::NEG_INFINITY], [top, -top]),
        ] {
            assert_eq!(code.decode(&code.encode(p).unwrap()).unwrap(), back);
        }
        assert!(code.encode([f64::NAN, 0.0]).is_err());
        assert!(code.decode(&[0u8; 31]).is_err());
        assert!(code.decode(&[2i32; 32]).is_err());
        assert!(code.decode_batch(&[0.0f32; 33]).is_err());
        assert!(code.encode_into(&[[0.0, 0.0]], &mut [0i32; 31]).is_err());
        assert!(GrayCode::new(0.0).is_err() && GrayCode::new(f64::NAN).is_err());
        assert!(GrayCode::fit(&[]).is_err() && GrayCode::fit(&[[f64::INFINITY, 0.0]]).is_err());
        assert_eq!(GrayCode::fit(&[[0.5, -3.0], [2.0, 1.0]]).unwrap().f_scale(), 4.0);
    }

    #[test]
    fn encode_decode_round_trip_within_one_step_for_every_dataset() {
        let mut rng = rng_from_seed(7);
        for d in Dataset::ALL {
            let code = d.gray_code();
            let points = sample(d, 2_000, &mut rng);
            let mut flat_i32 = vec![0i32; points.len() * 32];
            let mut flat_f32 = vec![0f32; points.len() * 32];
            code.encode_into(&points, &mut flat_i32).unwrap();
            code.encode_into(&points, &mut flat_f32).unwrap();
            let decoded = code.decode_batch(&flat_i32).unwrap();
            assert_eq!(decoded, code.decode_batch(&flat_f32).unwrap());
            for (p, q) in points.iter().zip(&decoded) {
                for c in 0..2 {
                    // Truncation towards zero: same sign side, |q| ≤ |p| < |q| + 1/int_scale.
                    assert!(p[c].abs() < d.f_scale() + 1.0, "{d}: {p:?} out of range");
                    assert!(q[c].abs() <= p[c].abs() && p[c].abs() - q[c].abs() < 1.0 / code.int_scale());
                    assert!(q[c] == 0.0 || q[c].signum() == p[c].signum());
                }
            }
            let row = code.encode(points[0]).unwrap();
            assert!(row.iter().zip(&flat_i32[..32]).all(|(&a, &b)| i32::from(a) == b));
        }
    }

    #[test]
    fn sampling_is_reproducible_from_the_seed() {
        for d in Dataset::ALL {
            let a = sample(d, 501, &mut rng_from_seed(3));
            assert_eq!(a.len(), 501);
            assert_eq!(a, sample(d, 501, &mut rng_from_seed(3)), "{d}");
            assert_ne!(a, sample(d, 501, &mut rng_from_seed(4)), "{d}");
            assert!(sample(d, 0, &mut rng_from_seed(3)).is_empty());
            let bits = sample_bits(d, 10, &mut rng_from_seed(3));
            assert_eq!(bits, sample_bits(d, 10, &mut rng_from_seed(3)));
            assert_eq!(bits.len(), 320);
            assert!(bits.iter().all(|&b| b == 0 || b == 1));
        }
    }

    #[test]
    fn box_muller_draws_are_standard_normal() {
        let mut rng = rng_from_seed(11);
        let z: Vec<[f64; 2]> = (0..N).map(|_| standard_normal_pair(&mut rng)).collect();
        for c in 0..2 {
            assert_mean(z.iter().map(|p| p[c]), 0.0, "mean");
            assert_mean(z.iter().map(|p| p[c] * p[c]), 1.0, "second moment");
            assert_mean(z.iter().map(|p| p[c].powi(4)), 3.0, "fourth moment");
        }
        assert_mean(z.iter().map(|p| p[0] * p[1]), 0.0, "correlation");
        // P(|z| < 1) = 0.682689.
        let inside = z.iter().filter(|p| p[0].abs() < 1.0).count() as f64 / N as f64;
        assert!(
            (inside - 0.682_689).abs() < 5.0 * (0.2166 / N as f64).sqrt(),
            "{inside}"
        );
    }

    #[test]
    fn eight_gaussians_sit_on_eight_centres_of_radius_4_over_1_414() {
        let points = sample(Dataset::EightGaussians, N, &mut rng_from_seed(1));
        for c in 0..2 {
            assert_mean(points.iter().map(|p| p[c]), 0.0, "8gaussians mean");
        }
        // E|p|² = (16 + 2·0.25)/1.414².
        assert_mean(points.iter().map(sq_norm), 16.5 / (1.414 * 1.414), "8gaussians |p|²");
        // Nearest centre: uniform over the 8; offset from it has std 0.5/1.414 per coordinate.
        let mut counts = [0usize; 8];
        let mut offsets = Vec::with_capacity(N);
        for p in &points {
            let k = ((p[1].atan2(p[0]) / (std::f64::consts::TAU / 8.0)).round() as i64).rem_euclid(8);
            counts[k as usize] += 1;
            let a = k as f64 * std::f64::consts::TAU / 8.0;
            let r = 4.0 / 1.414;
            offsets.push([p[0] - r * a.cos(), p[1] - r * a.sin()]);
        }
        let sd = (N as f64 * (1.0 / 8.0) * (7.0 / 8.0)).sqrt();
        for c in counts {
            assert!((c as f64 - N as f64 / 8.0).abs() < 5.0 * sd, "{counts:?}");
        }
        let var = (0.5f64 / 1.414).powi(2);
        assert_mean(offsets.iter().map(|o| sq_norm(o) / 2.0), var, "8gaussians spread");
    }

    #[test]
    fn checkerboard_fills_the_dark_squares_of_minus4_4() {
        let points = sample(Dataset::Checkerboard, N, &mut rng_from_seed(2));
        let mut cells = std::collections::HashMap::new();
        for p in &points {
            assert!(p.iter().all(|v| (-4.0..4.0).contains(v)), "{p:?}");
            let (i, j) = ((p[0] / 2.0).floor() as i64, (p[1] / 2.0).floor() as i64);
            assert_eq!((i + j).rem_euclid(2), 0, "{p:?} on a light square");
            *cells.entry((i, j)).or_insert(0usize) += 1;
        }
        assert_eq!(cells.len(), 8);
        let sd = (N as f64 / 8.0 * 7.0 / 8.0).sqrt();
        assert!(
            cells.values().all(|&c| (c as f64 - N as f64 / 8.0).abs() < 5.0 * sd),
            "{cells:?}"
        );
        for c in 0..2 {
            assert_mean(points.iter().map(|p| p[c]), 0.0, "checkerboard mean");
            // Uniform on [−4, 4): E v² = 16/3.
            assert_mean(points.iter().map(|p| p[c] * p[c]), 16.0 / 3.0, "checkerboard v²");
        }
    }

    #[test]
    fn circles_have_radii_3_and_1_5_and_half_the_points_each() {
        let points = sample(Dataset::Circles, N, &mut rng_from_seed(3));
        // Radial gap 0.75 against noise std 0.24: a point lands on the wrong side with
        // probability ≈ 9·10⁻⁴ (3.1σ), so the outer share is 1/2 within 0.01.
        let outer = points.iter().filter(|p| sq_norm(p).sqrt() > 2.25).count() as f64 / N as f64;
        assert!((outer - 0.5).abs() < 0.01, "{outer}");
        for c in 0..2 {
            assert_mean(points.iter().map(|p| p[c]), 0.0, "circles mean");
        }
        // E|p|² = (9 + 2.25)/2 + 2·0.24².
        assert_mean(points.iter().map(sq_norm), 5.625 + 2.0 * 0.24 * 0.24, "circles |p|²");
        assert!(points.iter().all(|p| sq_norm(p).sqrt() < 3.0 + 6.0 * 0.24));
        // Radial residual from the nearer circle: E d² = 0.24² + 3·0.24⁴/(4r²) averaged over
        // r ∈ {3, 1.5} (curvature); se ≈ 0.24²·√2/√N ≈ 6·10⁻⁴.
        let (m, _) = mean_se(points.iter().map(|p| {
            let r = sq_norm(p).sqrt();
            (r - 3.0).abs().min((r - 1.5).abs()).powi(2)
        }));
        let expected = 0.24f64.powi(2) + 0.75 * 0.24f64.powi(4) * (1.0 / 9.0 + 1.0 / 2.25) / 2.0;
        assert!(
            (m - expected).abs() < 0.003,
            "circles noise: E d² = {m}, expected {expected}"
        );
    }

    #[test]
    fn moons_have_the_official_mean_and_ranges() {
        let points = sample(Dataset::Moons, N, &mut rng_from_seed(4));
        // Even n: the half circles' means give exactly (0, 0.3) before noise (std 0.2 after ×2).
        assert_mean(points.iter().map(|p| p[0]), 0.0, "moons x");
        assert_mean(points.iter().map(|p| p[1]), 0.3, "moons y");
        let margin = 6.0 * 0.2;
        for p in &points {
            assert!(p[0] > -3.0 - margin && p[0] < 3.0 + margin, "{p:?}");
            assert!(p[1] > -1.2 - margin && p[1] < 1.8 + margin, "{p:?}");
        }
        // Before ×2 and the shift, the moons are the upper half of the unit circle about (0, 0) and
        // the lower half of the unit circle about (1, 0.5); the distance to the nearer arc is the
        // noise (std 0.1): E d² ≈ 0.01 (se ≈ 10⁻⁴, curvature and arc ends add ≈ 2·10⁻⁴).
        let arc_distance = |q: [f64; 2], centre: [f64; 2], upper: bool| {
            let v = [q[0] - centre[0], q[1] - centre[1]];
            if (v[1] >= 0.0) == upper {
                (sq_norm(&v).sqrt() - 1.0).abs()
            } else {
                // Beyond the arc: the nearer end point (±1, 0) relative to the centre.
                sq_norm(&[v[0].abs() - 1.0, v[1]]).sqrt()
            }
        };
        let (m, _) = mean_se(points.iter().map(|p| {
            let q = [(p[0] + 1.0) / 2.0, (p[1] + 0.2) / 2.0];
            arc_distance(q, [0.0, 0.0], true)
                .min(arc_distance(q, [1.0, 0.5], false))
                .powi(2)
        }));
        assert!((m - 0.01).abs() < 0.001, "moons noise: E d² = {m}");
    }

    #[test]
    fn pinwheel_has_the_official_radius_and_clockwise_arms() {
        let points = sample(Dataset::Pinwheel, N, &mut rng_from_seed(5));
        // |p|²/4 = f₁² + f₂² with f₁ ~ N(1, 0.3²), f₂ ~ N(0, 0.1²): E|p|² = 4·(1 + 0.09 + 0.01).
        assert_mean(points.iter().map(sq_norm), 4.4, "pinwheel |p|²");
        // Undo the curl: u = atan2(y, x) + 0.25·exp(|p|/2) ≈ −2πl/5 + atan(f₂/f₁), so cos(5u) has
        // mean ≈ E cos(5·atan(f₂/f₁)) ≈ exp(−25·0.0127/2) ≈ 0.85 (≈ 0.06 for counter-clockwise arms).
        let u: Vec<f64> = points
            .iter()
            .map(|p| p[1].atan2(p[0]) + 0.25 * (sq_norm(p).sqrt() / 2.0).exp())
            .collect();
        let (m, se) = mean_se(u.iter().map(|u| (5.0 * u).cos()));
        assert!(m > 0.75 && m < 0.95, "cos(5u) mean {m} ± {se}");
        // The arms (l = −5u/2π rounded, mod 5) hold a fifth of the points each.
        let mut arms = [0usize; 5];
        for u in &u {
            arms[((-5.0 * u / std::f64::consts::TAU).round() as i64).rem_euclid(5) as usize] += 1;
        }
        let sd = (N as f64 * 0.2 * 0.8).sqrt();
        assert!(
            arms.iter().all(|&c| (c as f64 - N as f64 / 5.0).abs() < 5.0 * sd),
            "{arms:?}"
        );
    }

    #[test]
    fn two_spirals_match_their_second_moment_and_point_symmetry() {
        let points = sample(Dataset::TwoSpirals, N, &mut rng_from_seed(8));
        for c in 0..2 {
            assert_mean(points.iter().map(|p| p[c]), 0.0, "2spirals mean");
        }
        // n = 3π√U has density 2t/(3π)² on [0, 3π]: E n² = 9π²/2, E n cos n = −4/(3π),
        // E n sin n = 2 − 8/(9π²). With d = (−n cos n + U₁/2, n sin n + U₂/2):
        // E|d|² = E n² + (E n sin n − E n cos n)/2 + 2·(1/12), E|p|² = E|d|²/9 + 2·0.1².
        let pi = std::f64::consts::PI;
        let e_d2 = 4.5 * pi * pi + 0.5 * (2.0 - 8.0 / (9.0 * pi * pi) + 4.0 / (3.0 * pi)) + 1.0 / 6.0;
        assert_mean(points.iter().map(sq_norm), e_d2 / 9.0 + 0.02, "2spirals |p|²");
        // Consecutive pairs are reflections of each other up to the noise (std 0.1 each).
        let gap = points
            .chunks_exact(2)
            .map(|w| sq_norm(&[w[0][0] + w[1][0], w[0][1] + w[1][1]]));
        assert_mean(gap, 4.0 * 0.01, "2spirals pair symmetry");
    }

    #[test]
    fn swissroll_matches_its_second_moment() {
        let points = sample(Dataset::Swissroll, N, &mut rng_from_seed(9));
        // t ~ U(1.5π, 4.5π): E t² = (a² + ab + b²)/3 = 9.75π²; E|p|² = (E t² + 2)/25.
        let pi = std::f64::consts::PI;
        assert_mean(
            points.iter().map(sq_norm),
            (9.75 * pi * pi + 2.0) / 25.0,
            "swissroll |p|²",
        );
        // The radius without noise lies in [1.5π, 4.5π]/5.
        let r: Vec<f64> = points.iter().map(|p| sq_norm(p).sqrt()).collect();
        assert!(r.iter().all(|&r| r > 1.5 * pi / 5.0 - 1.2 && r < 4.5 * pi / 5.0 + 1.2));
    }
}
