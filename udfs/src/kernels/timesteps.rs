//! Grouping diffusion timesteps: which group of a schedule a timestep falls in.

use super::error::{KernelError, Result};

/// How the schedule `[0, num_timesteps)` is cut into groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spacing {
    /// Groups of equal length (differing by at most one timestep).
    Uniform,
    /// Boundaries equally spaced in log(1 + t): short groups near t = 0, where a denoiser's
    /// activations change fastest between steps, long ones near pure noise.
    Log,
}

impl Spacing {
    pub fn parse(name: &str) -> Result<Spacing> {
        match name.trim().to_ascii_lowercase().as_str() {
            "uniform" => Ok(Spacing::Uniform),
            "log" => Ok(Spacing::Log),
            _ => Err(KernelError::Schedule(format!(
                "unknown spacing '{name}' (expected 'uniform' or 'log')"
            ))),
        }
    }
}

/// Checks a schedule: at least one timestep, between 1 and `num_timesteps` groups.
pub fn check_schedule(num_timesteps: i64, num_groups: i64) -> Result<()> {
    if num_timesteps < 1 {
        return Err(KernelError::Schedule(format!(
            "num_timesteps must be at least 1, got {num_timesteps}"
        )));
    }
    if !(1..=num_timesteps).contains(&num_groups) {
        return Err(KernelError::Schedule(format!(
            "num_groups must be between 1 and num_timesteps ({num_timesteps}), got {num_groups}"
        )));
    }
    Ok(())
}

/// The group of `timestep` in `[0, num_groups)`.
pub fn timestep_group(
    timestep: i64,
    num_timesteps: i64,
    num_groups: i64,
    spacing: Spacing,
) -> Result<i64> {
    check_schedule(num_timesteps, num_groups)?;
    if !(0..num_timesteps).contains(&timestep) {
        return Err(KernelError::Schedule(format!(
            "timestep {timestep} is outside [0, {num_timesteps})"
        )));
    }
    let group = match spacing {
        // i128: t × G cannot overflow.
        Spacing::Uniform => {
            (i128::from(timestep) * i128::from(num_groups) / i128::from(num_timesteps)) as i64
        }
        Spacing::Log => {
            let u = (timestep as f64).ln_1p() / (num_timesteps as f64).ln_1p();
            (u * num_groups as f64).floor() as i64
        }
    };
    Ok(group.clamp(0, num_groups - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_groups_are_equal_and_ordered() {
        let groups: Vec<i64> = (0..10)
            .map(|t| timestep_group(t, 10, 3, Spacing::Uniform).unwrap())
            .collect();
        assert_eq!(groups, [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]);
        let all: Vec<i64> = (0..1000)
            .map(|t| timestep_group(t, 1000, 10, Spacing::Uniform).unwrap())
            .collect();
        assert!(all.windows(2).all(|w| w[0] <= w[1]));
        for g in 0..10 {
            assert_eq!(all.iter().filter(|&&x| x == g).count(), 100);
        }
    }

    #[test]
    fn log_groups_are_short_near_zero() {
        let all: Vec<i64> = (0..1000)
            .map(|t| timestep_group(t, 1000, 10, Spacing::Log).unwrap())
            .collect();
        assert!(all.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!((all[0], all[999]), (0, 9));
        let first = all.iter().filter(|&&x| x == 1).count();
        let last = all.iter().filter(|&&x| x == 9).count();
        assert!(first < last, "{first} vs {last}");
    }

    #[test]
    fn bad_schedules_and_timesteps() {
        assert!(timestep_group(10, 10, 2, Spacing::Uniform).is_err());
        assert!(timestep_group(-1, 10, 2, Spacing::Uniform).is_err());
        assert!(timestep_group(0, 10, 0, Spacing::Uniform).is_err());
        assert!(timestep_group(0, 10, 11, Spacing::Uniform).is_err());
        assert!(timestep_group(0, 0, 1, Spacing::Uniform).is_err());
        assert!(Spacing::parse("cosine").is_err());
        assert_eq!(Spacing::parse(" LOG ").unwrap(), Spacing::Log);
    }
}
