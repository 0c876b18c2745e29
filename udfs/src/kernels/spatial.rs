//! Spatial (per-channel) treatment of weights and activations: SmoothQuant-style migration of
//! activation outliers into the weights, and soft clipping of outliers.

use crate::kernels::error::{KernelError, Result, check_finite};

fn spatial_error(message: String) -> KernelError {
    KernelError::Schedule(message)
}

/// How many consecutive values of a row belong to each of `channels` channels.
pub fn channel_width(row_len: usize, channels: usize) -> Result<usize> {
    if channels == 0 || !row_len.is_multiple_of(channels) {
        return Err(spatial_error(format!(
            "a row of {row_len} values does not split into {channels} channels"
        )));
    }
    Ok(row_len / channels)
}

/// Folds `row`'s |values| into per-channel maxima (`maxima.len()` channels of equal width).
pub fn fold_absmax(maxima: &mut [f32], row: &[f32]) -> Result<()> {
    check_finite(row)?;
    let width = channel_width(row.len(), maxima.len())?;
    for (m, chunk) in maxima.iter_mut().zip(row.chunks_exact(width)) {
        *m = chunk.iter().fold(*m, |acc, v| acc.max(v.abs()));
    }
    Ok(())
}

/// SmoothQuant's migration factors: s_j = act_j^α / weight_j^(1−α). Activations are divided by
/// s and weight input channels multiplied by it, so the product is unchanged while the
/// activation outliers shrink. A channel whose maximum is zero on either side gets 1.
pub fn smooth_scales(
    act_absmax: &[f32],
    weight_absmax: &[f32],
    alpha: f64,
    out: &mut Vec<f32>,
) -> Result<()> {
    if act_absmax.len() != weight_absmax.len() {
        return Err(KernelError::LengthMismatch {
            left: act_absmax.len(),
            right: weight_absmax.len(),
        });
    }
    check_finite(act_absmax)?;
    check_finite(weight_absmax)?;
    out.clear();
    for (j, (&a, &w)) in act_absmax.iter().zip(weight_absmax).enumerate() {
        let (a, w) = (f64::from(a.abs()), f64::from(w.abs()));
        if a == 0.0 || w == 0.0 {
            out.push(1.0);
            continue;
        }
        // Computed in f64 (always finite for f32 maxima); f32 must hold the factor, or it
        // would scale a channel to ±inf or to zero.
        let factor = a.powf(alpha) / w.powf(1.0 - alpha);
        let stored = factor as f32;
        if !stored.is_finite() || stored < f32::MIN_POSITIVE {
            return Err(spatial_error(format!(
                "channel {j}: the factor {factor:e} (act_absmax {a:e}, weight_absmax {w:e}) is outside the range of Float32 (1.2e-38 to 3.4e38)"
            )));
        }
        out.push(stored);
    }
    Ok(())
}

/// Multiplies each channel of `row` (consecutive runs of row.len() / factors.len() values) by
/// its factor.
pub fn equalize(row: &[f32], factors: &[f32], out: &mut Vec<f32>) -> Result<()> {
    check_finite(row)?;
    if let Some(j) = factors.iter().position(|f| !(f.is_finite() && *f > 0.0)) {
        return Err(spatial_error(format!(
            "factor {j} must be positive and finite, got {}",
            factors[j]
        )));
    }
    let width = channel_width(row.len(), factors.len())?;
    out.clear();
    out.reserve(row.len());
    for (chunk, &f) in row.chunks_exact(width).zip(factors) {
        out.extend(chunk.iter().map(|v| v * f));
    }
    // A product beyond f32 is ±inf: refused rather than handed to a quantizer.
    if let Err(KernelError::NonFinite { index, .. }) = check_finite(out) {
        return Err(spatial_error(format!(
            "value {:e} at index {index} times its channel's factor {:e} is beyond the range of Float32",
            row[index],
            factors[index / width]
        )));
    }
    Ok(())
}

/// Soft clipping: values further than k·σ from the row's mean μ are pulled in, the excess e
/// beyond k·σ becoming σ·ln(1 + e/σ) — continuous, monotone and of slope 1 at the threshold, so
/// the order of values is kept while far outliers shrink the most. Values within k·σ are
/// unchanged.
pub fn clip_outliers(row: &[f32], k_sigma: f64, out: &mut Vec<f32>) -> Result<()> {
    check_finite(row)?;
    out.clear();
    if row.is_empty() {
        return Ok(());
    }
    let n = row.len() as f64;
    let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = row
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    let sigma = var.sqrt();
    let limit = k_sigma * sigma;
    out.extend(row.iter().map(|&v| {
        let d = f64::from(v) - mean;
        if d.abs() <= limit || sigma == 0.0 {
            v
        } else {
            let pulled = limit + sigma * ((d.abs() - limit) / sigma).ln_1p();
            (mean + pulled.copysign(d)) as f32
        }
    }));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absmax_folds_channels() {
        let mut m = vec![0.0; 2];
        fold_absmax(&mut m, &[1.0, -3.0, 2.0, 0.5]).unwrap();
        fold_absmax(&mut m, &[-4.0, 0.0, 0.0, 1.0]).unwrap();
        assert_eq!(m, vec![4.0, 2.0]);
        assert!(fold_absmax(&mut m, &[1.0, 2.0, 3.0]).is_err());
        assert!(fold_absmax(&mut m, &[1.0, f32::NAN]).is_err());
    }

    #[test]
    fn smooth_scales_balance_maxima() {
        let mut s = Vec::new();
        smooth_scales(&[16.0, 1.0, 0.0], &[1.0, 4.0, 2.0], 0.5, &mut s).unwrap();
        assert_eq!(s, vec![4.0, 0.5, 1.0]);
        // After migration both sides have the same maximum: 16/4 = 1·4.
        assert!(smooth_scales(&[1.0], &[1.0, 2.0], 0.5, &mut s).is_err());
    }

    #[test]
    fn equalize_scales_channels() {
        let mut out = Vec::new();
        equalize(&[1.0, 2.0, 3.0, 4.0], &[2.0, 0.5], &mut out).unwrap();
        assert_eq!(out, vec![2.0, 4.0, 1.5, 2.0]);
        assert!(equalize(&[1.0, 2.0], &[0.0], &mut out).is_err());
        assert!(equalize(&[1.0, 2.0, 3.0], &[1.0, 1.0], &mut out).is_err());
    }

    #[test]
    fn clip_outliers_pulls_in_only_the_tails() {
        let mut row = vec![0.0f32; 99];
        for (i, v) in row.iter_mut().enumerate() {
            *v = if i % 2 == 0 { 1.0 } else { -1.0 };
        }
        row.push(50.0);
        let mut out = Vec::new();
        clip_outliers(&row, 3.0, &mut out).unwrap();
        assert_eq!(&out[..99], &row[..99]);
        assert!(out[99] < 50.0 && out[99] > 3.0, "{}", out[99]);
        // Monotone: a larger outlier stays larger.
        row[98] = 40.0;
        clip_outliers(&row, 3.0, &mut out).unwrap();
        assert!(out[98] < out[99]);
    }
}
