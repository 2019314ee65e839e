//! The robust statistics the detectors score with: quartiles, Bowley skewness, the median absolute
//! deviation, Shannon entropy. Inputs are small (at most a few hundred values per evaluation).

/// Quartiles (Q1, median, Q3) of `values`, sorted in place; linear interpolation between ranks.
pub fn quartiles(values: &mut [f64]) -> Option<(f64, f64, f64)> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable_by(f64::total_cmp);
    let at = |q: f64| {
        let rank = q * (values.len() - 1) as f64;
        let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
        values[lo] + (values[hi] - values[lo]) * (rank - lo as f64)
    };
    Some((at(0.25), at(0.5), at(0.75)))
}

/// Bowley's quartile skewness in [-1, 1]: 0 for a symmetric distribution. A distribution without
/// spread between its quartiles (Q1 == Q3) is taken as symmetric.
pub fn bowley_skew((q1, q2, q3): (f64, f64, f64)) -> f64 {
    let spread = q3 - q1;
    if spread <= f64::EPSILON { 0.0 } else { ((q3 + q1 - 2.0 * q2) / spread).clamp(-1.0, 1.0) }
}

/// The median of `values` (sorted in place).
pub fn median(values: &mut [f64]) -> Option<f64> {
    quartiles(values).map(|(_, m, _)| m)
}

/// Median absolute deviation from `center`, reusing `scratch`.
pub fn mad(values: &[f64], center: f64, scratch: &mut Vec<f64>) -> f64 {
    scratch.clear();
    scratch.extend(values.iter().map(|v| (v - center).abs()));
    median(scratch).unwrap_or(0.0)
}

/// Shannon entropy of the bytes of `text`, in bits per character.
pub fn entropy(text: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in text.bytes() {
        counts[b as usize] += 1;
    }
    let n = text.len() as f64;
    if n == 0.0 {
        return 0.0;
    }
    counts.iter().filter(|&&c| c > 0).map(|&c| f64::from(c) / n).map(|p| -p * p.log2()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quartiles_interpolate_and_skew_is_signed() {
        let mut v = vec![4.0, 1.0, 3.0, 2.0, 5.0];
        assert_eq!(quartiles(&mut v), Some((2.0, 3.0, 4.0)));
        assert_eq!(bowley_skew((2.0, 3.0, 4.0)), 0.0);
        // A long right tail: the median sits near Q1.
        assert!(bowley_skew((1.0, 1.5, 10.0)) > 0.8);
        assert_eq!(bowley_skew((5.0, 5.0, 5.0)), 0.0);
        assert_eq!(quartiles(&mut []), None);
    }

    #[test]
    fn mad_and_entropy() {
        let v = [1.0, 2.0, 3.0, 4.0, 100.0];
        assert_eq!(mad(&v, 3.0, &mut Vec::new()), 1.0);
        assert_eq!(entropy("aaaa"), 0.0);
        assert!((entropy("abcd") - 2.0).abs() < 1e-9);
        assert!(entropy("mzxw6ytboi4dqmrtgq2tmnzygezdgnbvgy3tqojqgezdg") > 3.5);
    }
}
