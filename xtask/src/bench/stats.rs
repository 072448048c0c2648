//! Percentiles and medians.

/// The `p`th percentile (nearest rank) of sorted values; 0 when empty.
pub fn percentile_sorted(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn percentile(values: &[u64], p: f64) -> u64 {
    let mut v = values.to_vec();
    v.sort_unstable();
    percentile_sorted(&v, p)
}

pub fn median_f(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn median(values: &[u64]) -> u64 {
    median_f(&values.iter().map(|v| *v as f64).collect::<Vec<_>>()) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_medians() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile_sorted(&v, 50.0), 50);
        assert_eq!(percentile_sorted(&v, 99.0), 99);
        assert_eq!(percentile(&[3, 1, 2], 100.0), 3);
        assert_eq!(percentile(&[], 50.0), 0);
        assert_eq!(median(&[5, 1, 3]), 3);
        assert_eq!(median_f(&[1.0, 2.0, 3.0, 4.0]), 2.5);
    }
}
