//! The 8×8 handwritten digits that scikit-learn ships, binarised to `{0,1}^64`, with a fixed
//! train/test split: binary images for energy-based modelling (EB-GFN) with no download.
//!
//! The data file `data/digits/digits8x8.txt` (made by `data/digits/make_digits.py`, provenance
//! and licence in `data/digits/README.md`) is embedded in the library with `include_str!`, so
//! [`Digits::load`] needs no path at run time.
//!
//! * Source: UCI "Optical Recognition of Handwritten Digits" (Alpaydin & Kaynak 1998, CC BY 4.0),
//!   as redistributed by scikit-learn 1.6.1 (`sklearn.datasets.load_digits`, 1797 images, pixel
//!   values 0..16).
//! * Binarisation: pixel bit = 1 if value ≥ 8 (half of the maximum 16), else 0.
//! * Split: in scikit-learn's order, the first [`N_TRAIN`] = 1500 images (indices 0..1499) are
//!   the training set and the last [`N_TEST`] = 297 (indices 1500..1796) the test set.
//! * Images are stored row-major, top row first: pixel `(row, col)` is at `row * SIDE + col`.
//!
//! [`bernoulli_nll`] is the baseline a model has to beat: independent Bernoulli pixels fitted on
//! the training set with Laplace pseudo-counts, scored by mean test negative log-likelihood in
//! nats with its standard error.

use gfn_core::{GfnError, Result};

/// Side of an image, in pixels.
pub const SIDE: usize = 8;
/// Pixels per image (`SIDE * SIDE`), the dimension of the binary vectors.
pub const PIXELS: usize = SIDE * SIDE;
/// Number of training images in the shipped file (indices 0..1499 in scikit-learn's order).
pub const N_TRAIN: usize = 1500;
/// Number of test images in the shipped file (indices 1500..1796 in scikit-learn's order).
pub const N_TEST: usize = 297;

/// The shipped data file, embedded at compile time.
const DATA: &str = include_str!("../../data/digits/digits8x8.txt");

/// Binarised 8×8 digits split into a training and a test set.
///
/// Images are stored flat: image `i` of a split is `train[i * PIXELS..(i + 1) * PIXELS]`
/// (resp. `test`), each entry 0 or 1, row-major. Labels (0..=9) are parallel to the images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digits {
    /// Training images, `n_train × PIXELS` bits (0 or 1), row-major.
    pub train: Vec<u8>,
    /// Test images, `n_test × PIXELS` bits (0 or 1), row-major.
    pub test: Vec<u8>,
    /// Label (the digit, 0..=9) of each training image.
    pub train_labels: Vec<u8>,
    /// Label (the digit, 0..=9) of each test image.
    pub test_labels: Vec<u8>,
}

impl Digits {
    /// The shipped data set: [`N_TRAIN`] training and [`N_TEST`] test images, parsed from the
    /// file embedded in the library. Fails only if the embedded file is corrupt.
    pub fn load() -> Result<Self> {
        let digits = Self::parse(DATA)?;
        if digits.n_train() != N_TRAIN || digits.n_test() != N_TEST {
            return Err(GfnError::Other(format!(
                "embedded digits file has {} training and {} test images, expected {N_TRAIN} and {N_TEST}",
                digits.n_train(),
                digits.n_test()
            )));
        }
        Ok(digits)
    }

    /// Parses the text format of `digits8x8.txt`.
    ///
    /// Lines starting with `#` and blank lines are ignored. Every other line is
    /// `<split> <label> <bits>`, separated by whitespace: the split letter `t` (train) or `e`
    /// (test), the label (one digit 0-9), and [`PIXELS`] characters `0`/`1`, row-major. Both
    /// splits must be non-empty. Errors name the (1-based) line number and what is wrong.
    pub fn parse(text: &str) -> Result<Self> {
        let mut digits = Digits {
            train: Vec::new(),
            test: Vec::new(),
            train_labels: Vec::new(),
            test_labels: Vec::new(),
        };
        for (index, line) in text.lines().enumerate() {
            let line_no = index + 1;
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let err = |what: String| GfnError::Other(format!("digits data, line {line_no}: {what}"));
            let fields: Vec<&str> = trimmed.split_whitespace().collect();
            let &[split, label, bits] = fields.as_slice() else {
                return Err(err(format!(
                    "expected 3 fields `<split t|e> <label 0-9> <{PIXELS} bits>`, found {}",
                    fields.len()
                )));
            };
            let is_train = match split {
                "t" => true,
                "e" => false,
                other => {
                    return Err(err(format!("split must be `t` (train) or `e` (test), found `{other}`")));
                }
            };
            let label = match label.as_bytes() {
                &[c @ b'0'..=b'9'] => c - b'0',
                _ => {
                    return Err(err(format!("label must be one digit 0-9, found `{label}`")));
                }
            };
            let n_bits = bits.chars().count();
            if n_bits != PIXELS {
                return Err(err(format!("expected {PIXELS} pixel bits, found {n_bits} characters")));
            }
            let (images, labels) = if is_train {
                (&mut digits.train, &mut digits.train_labels)
            } else {
                (&mut digits.test, &mut digits.test_labels)
            };
            for (pixel, c) in bits.chars().enumerate() {
                let bit = match c {
                    '0' => 0,
                    '1' => 1,
                    other => {
                        return Err(err(format!(
                            "pixel {pixel} (row {}, column {}) is `{other}`, expected 0 or 1",
                            pixel / SIDE,
                            pixel % SIDE
                        )));
                    }
                };
                images.push(bit);
            }
            labels.push(label);
        }
        if digits.train_labels.is_empty() {
            return Err(GfnError::Other(
                "digits data: no training images (lines starting with `t`)".into(),
            ));
        }
        if digits.test_labels.is_empty() {
            return Err(GfnError::Other(
                "digits data: no test images (lines starting with `e`)".into(),
            ));
        }
        Ok(digits)
    }

    /// Number of training images.
    pub fn n_train(&self) -> usize {
        self.train.len() / PIXELS
    }

    /// Number of test images.
    pub fn n_test(&self) -> usize {
        self.test.len() / PIXELS
    }

    /// The training images, one `PIXELS`-long slice each.
    pub fn train_images(&self) -> std::slice::ChunksExact<'_, u8> {
        self.train.chunks_exact(PIXELS)
    }

    /// The test images, one `PIXELS`-long slice each.
    pub fn test_images(&self) -> std::slice::ChunksExact<'_, u8> {
        self.test.chunks_exact(PIXELS)
    }

    /// Mean of each pixel over the training set (the fraction of training images with that
    /// bit set), without pseudo-counts; `PIXELS` values, row-major. NaN if the training set is
    /// empty.
    pub fn pixel_means(&self) -> Vec<f64> {
        let mut sums = vec![0.0; PIXELS];
        let mut n = 0usize;
        for image in self.train_images() {
            for (sum, &bit) in sums.iter_mut().zip(image) {
                *sum += f64::from(bit);
            }
            n += 1;
        }
        sums.iter().map(|s| s / n as f64).collect()
    }

    /// The independent-Bernoulli baseline fitted on the training set and scored on the test
    /// set: [`bernoulli_nll`]`(&self.train, &self.test, PIXELS)`.
    pub fn bernoulli_nll(&self) -> Result<NllEstimate> {
        bernoulli_nll(&self.train, &self.test, PIXELS)
    }
}

/// A mean negative log-likelihood over a test set with its standard error.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NllEstimate {
    /// Mean per-example negative log-likelihood, in nats.
    pub mean: f64,
    /// Standard error of the mean: the sample standard deviation (divisor `n - 1`) of the
    /// per-example values divided by `sqrt(n)`.
    pub std_err: f64,
    /// Number of examples.
    pub n: usize,
}

impl NllEstimate {
    /// Mean and standard error of per-example negative log-likelihoods (nats). Needs at least
    /// two values (the standard deviation uses divisor `n - 1`).
    ///
    /// Models scored on the same test set can use this on their own per-example values, so that
    /// they are compared with the baseline in the same way.
    pub fn from_per_example(nll: &[f64]) -> Result<Self> {
        let n = nll.len();
        if n < 2 {
            return Err(GfnError::invalid(
                "number of test examples",
                n,
                "at least 2, to estimate a standard error",
            ));
        }
        let mean = nll.iter().sum::<f64>() / n as f64;
        let var = nll.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        Ok(NllEstimate {
            mean,
            std_err: (var / n as f64).sqrt(),
            n,
        })
    }
}

/// Per-pixel Bernoulli probabilities `p_j = P(x_j = 1)` fitted on `train` (flat, `dim` bits per
/// example, each 0 or 1) with Laplace pseudo-counts: `p_j = (count_j + 1) / (n + 2)`, where
/// `count_j` is the number of training examples with bit `j` set and `n` the number of training
/// examples. Every `p_j` is strictly inside (0, 1), so every test vector has finite likelihood;
/// with no training data every `p_j` is 1/2.
pub fn bernoulli_fit(train: &[u8], dim: usize) -> Result<Vec<f64>> {
    check_bits("train", train, dim)?;
    let mut counts = vec![0u64; dim];
    for example in train.chunks_exact(dim) {
        for (count, &bit) in counts.iter_mut().zip(example) {
            *count += u64::from(bit);
        }
    }
    let n = (train.len() / dim) as f64;
    Ok(counts.iter().map(|&c| (c as f64 + 1.0) / (n + 2.0)).collect())
}

/// Negative log-likelihood in nats of each example of `data` (flat, `dim` bits per example)
/// under independent Bernoulli pixels with probabilities `probs` (`dim` values in (0, 1)):
/// `-Σ_j [x_j ln p_j + (1 - x_j) ln(1 - p_j)]`.
pub fn bernoulli_per_example_nll(probs: &[f64], data: &[u8]) -> Result<Vec<f64>> {
    let dim = probs.len();
    check_bits("data", data, dim)?;
    if let Some(p) = probs.iter().find(|p| !(**p > 0.0 && **p < 1.0)) {
        return Err(GfnError::invalid(
            "Bernoulli probability",
            p,
            "strictly between 0 and 1",
        ));
    }
    let log_p: Vec<f64> = probs.iter().map(|p| p.ln()).collect();
    let log_q: Vec<f64> = probs.iter().map(|p| (-p).ln_1p()).collect();
    Ok(data
        .chunks_exact(dim)
        .map(|example| {
            -example
                .iter()
                .zip(log_p.iter().zip(&log_q))
                .map(|(&bit, (lp, lq))| if bit == 1 { lp } else { lq })
                .sum::<f64>()
        })
        .collect())
}

/// The independent-Bernoulli baseline: fit per-pixel probabilities on `train` with Laplace
/// pseudo-counts ([`bernoulli_fit`]: `(count + 1) / (n + 2)`), then return the mean test
/// negative log-likelihood in nats over the examples of `test` with its standard error
/// ([`NllEstimate::from_per_example`]: sample standard deviation / `sqrt(n_test)`).
///
/// `train` and `test` are flat, `dim` bits (0 or 1) per example; `test` needs at least two
/// examples.
pub fn bernoulli_nll(train: &[u8], test: &[u8], dim: usize) -> Result<NllEstimate> {
    let probs = bernoulli_fit(train, dim)?;
    let per_example = bernoulli_per_example_nll(&probs, test)?;
    NllEstimate::from_per_example(&per_example)
}

/// Checks that `bits` is a whole number of `dim`-bit examples, each bit 0 or 1.
fn check_bits(what: &'static str, bits: &[u8], dim: usize) -> Result<()> {
    if dim == 0 {
        return Err(GfnError::invalid("dim", dim, "at least 1"));
    }
    if !bits.len().is_multiple_of(dim) {
        return Err(GfnError::invalid(
            what,
            format!("{} values", bits.len()),
            format!("a multiple of dim = {dim}"),
        ));
    }
    if let Some(i) = bits.iter().position(|&b| b > 1) {
        return Err(GfnError::invalid(
            what,
            format!("{} at position {i}", bits[i]),
            "bits 0 or 1",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_abs_diff_eq;

    fn line(split: &str, label: &str, bits: &str) -> String {
        format!("{split} {label} {bits}\n")
    }

    fn zeros() -> String {
        "0".repeat(PIXELS)
    }

    fn parse_err(text: &str) -> String {
        match Digits::parse(text) {
            Ok(_) => panic!("parse should fail on {text:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn load_counts_values_labels() {
        let d = Digits::load().unwrap();
        assert_eq!(d.n_train(), N_TRAIN);
        assert_eq!(d.n_test(), N_TEST);
        assert_eq!(N_TRAIN + N_TEST, 1797);
        assert_eq!(d.train.len(), N_TRAIN * PIXELS);
        assert_eq!(d.test.len(), N_TEST * PIXELS);
        assert_eq!(d.train_labels.len(), N_TRAIN);
        assert_eq!(d.test_labels.len(), N_TEST);
        assert!(d.train.iter().chain(&d.test).all(|&b| b <= 1));
        assert!(d.train_labels.iter().chain(&d.test_labels).all(|&l| l <= 9));
        // Every digit occurs in both splits.
        for digit in 0..10u8 {
            assert!(d.train_labels.contains(&digit));
            assert!(d.test_labels.contains(&digit));
        }
        // scikit-learn's first images are 0, 1, 2, ...
        assert_eq!(&d.train_labels[..10], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        // First training image (a 0), row-major: row 1 is 00111100.
        let first = d.train_images().next().unwrap();
        assert_eq!(&first[SIDE..2 * SIDE], &[0, 0, 1, 1, 1, 1, 0, 0]);
        assert_eq!(d.train_images().count(), N_TRAIN);
        assert_eq!(d.test_images().count(), N_TEST);
    }

    #[test]
    fn pixel_means_of_real_data() {
        let d = Digits::load().unwrap();
        let means = d.pixel_means();
        assert_eq!(means.len(), PIXELS);
        assert!(means.iter().all(|m| (0.0..=1.0).contains(m)));
        let overall = means.iter().sum::<f64>() / PIXELS as f64;
        // Cross-checked with numpy on the data file.
        assert_abs_diff_eq!(overall, 0.323_041_666_666_666_7, epsilon = 1e-12);
    }

    #[test]
    fn parse_small_file() {
        let ones = "1".repeat(PIXELS);
        let text = format!(
            "# comment\n\n{}{}{}",
            line("t", "3", &zeros()),
            line("e", "7", &ones),
            line("t", "0", &ones)
        );
        let d = Digits::parse(&text).unwrap();
        assert_eq!(d.train_labels, vec![3, 0]);
        assert_eq!(d.test_labels, vec![7]);
        assert_eq!(d.train[..PIXELS], vec![0; PIXELS][..]);
        assert_eq!(d.train[PIXELS..], vec![1; PIXELS][..]);
        assert_eq!(d.test, vec![1; PIXELS]);
        // pixel means of {zeros, ones} are all 1/2
        assert!(d.pixel_means().iter().all(|&m| m == 0.5));
        // CRLF line endings parse the same
        assert_eq!(Digits::parse(&text.replace('\n', "\r\n")).unwrap(), d);
    }

    #[test]
    fn parse_errors_name_line_and_problem() {
        let good_t = line("t", "1", &zeros());
        let good_e = line("e", "2", &zeros());
        let header = "# header\n";

        let e = parse_err(&format!("{header}{good_t}{}", line("x", "2", &zeros())));
        assert!(e.contains("line 3") && e.contains("split") && e.contains("`x`"), "{e}");

        let e = parse_err(&format!("{header}{good_t}{}", line("e", "2", "0101")));
        assert!(e.contains("line 3") && e.contains("64") && e.contains("found 4"), "{e}");

        let mut bad = zeros();
        bad.replace_range(10..11, "2");
        let e = parse_err(&format!("{header}{}{good_e}", line("t", "1", &bad)));
        assert!(
            e.contains("line 2") && e.contains("pixel 10") && e.contains("`2`"),
            "{e}"
        );
        assert!(e.contains("row 1, column 2"), "{e}");

        let e = parse_err(&format!("{good_t}{}", line("e", "12", &zeros())));
        assert!(e.contains("line 2") && e.contains("label") && e.contains("`12`"), "{e}");

        let e = parse_err(&format!("{good_t}e 2\n"));
        assert!(
            e.contains("line 2") && e.contains("3 fields") && e.contains("found 2"),
            "{e}"
        );

        // non-ASCII bits: counted as characters, reported, no panic
        let mut uni = zeros();
        uni.replace_range(0..1, "é");
        let e = parse_err(&format!("{good_t}{}", line("e", "2", &uni)));
        assert!(e.contains("line 2") && e.contains("`é`"), "{e}");

        let e = parse_err(&good_t);
        assert!(e.contains("no test images"), "{e}");
        let e = parse_err(&good_e);
        assert!(e.contains("no training images"), "{e}");
        let e = parse_err("# only comments\n");
        assert!(e.contains("no training images"), "{e}");
    }

    #[test]
    fn bernoulli_hand_computed() {
        // dim 2; train {10, 11}: counts (2, 1), n = 2, Laplace p = (3/4, 2/4).
        let train = [1, 0, 1, 1];
        let p = bernoulli_fit(&train, 2).unwrap();
        assert_abs_diff_eq!(p[0], 0.75, epsilon = 1e-15);
        assert_abs_diff_eq!(p[1], 0.5, epsilon = 1e-15);
        // test {10, 01}: NLL = ln(4/3) + ln 2 and ln 4 + ln 2.
        let test = [1, 0, 0, 1];
        let per = bernoulli_per_example_nll(&p, &test).unwrap();
        let ln = f64::ln;
        assert_abs_diff_eq!(per[0], ln(4.0 / 3.0) + ln(2.0), epsilon = 1e-12);
        assert_abs_diff_eq!(per[1], ln(4.0) + ln(2.0), epsilon = 1e-12);
        // mean = ln 2 + ln(16/3)/2; the two values differ by ln 3, so the sample std is
        // ln 3 / sqrt 2 and the standard error ln 3 / 2.
        let est = bernoulli_nll(&train, &test, 2).unwrap();
        assert_eq!(est.n, 2);
        assert_abs_diff_eq!(est.mean, ln(2.0) + ln(16.0 / 3.0) / 2.0, epsilon = 1e-12);
        assert_abs_diff_eq!(est.std_err, ln(3.0) / 2.0, epsilon = 1e-12);
        // No training data: every p is 1/2, every example costs dim · ln 2, standard error 0.
        let est = bernoulli_nll(&[], &test, 2).unwrap();
        assert_abs_diff_eq!(est.mean, 2.0 * ln(2.0), epsilon = 1e-12);
        assert_abs_diff_eq!(est.std_err, 0.0, epsilon = 1e-12);
    }

    #[test]
    fn bernoulli_rejects_bad_input() {
        assert!(bernoulli_nll(&[0, 1], &[0, 1, 1, 0], 0).is_err());
        assert!(bernoulli_nll(&[0, 1, 1], &[0, 1, 1, 0], 2).is_err());
        assert!(bernoulli_nll(&[0, 1], &[0, 1, 1], 2).is_err());
        assert!(bernoulli_nll(&[0, 2], &[0, 1, 1, 0], 2).is_err());
        assert!(bernoulli_nll(&[0, 1], &[0, 1, 1, 3], 2).is_err());
        let e = bernoulli_nll(&[0, 1], &[0, 1], 2).unwrap_err().to_string();
        assert!(e.contains("at least 2"), "{e}");
        assert!(bernoulli_per_example_nll(&[0.5, 1.0], &[0, 1]).is_err());
        assert!(bernoulli_per_example_nll(&[0.5, f64::NAN], &[0, 1]).is_err());
        assert!(NllEstimate::from_per_example(&[]).is_err());
    }

    #[test]
    fn bernoulli_baseline_on_digits() {
        let d = Digits::load().unwrap();
        let est = d.bernoulli_nll().unwrap();
        println!(
            "digits Bernoulli baseline: test NLL {:.4} ± {:.4} nats (n = {})",
            est.mean, est.std_err, est.n
        );
        assert_eq!(est.n, N_TEST);
        assert!(est.mean.is_finite() && est.std_err.is_finite());
        assert!(est.mean > 10.0 && est.mean < 45.0, "{est:?}");
        assert!(est.std_err > 0.0 && est.std_err < 1.0, "{est:?}");
        // Cross-checked with an independent numpy computation on the data file.
        assert_abs_diff_eq!(est.mean, 24.584_983_541_740_91, epsilon = 1e-9);
        assert_abs_diff_eq!(est.std_err, 0.237_014_965_685_012_54, epsilon = 1e-9);
    }
}
