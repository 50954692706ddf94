//! Learning-rate and weight-decay schedules (bitnet-spec.md section 3).

use crate::recipe::{Schedule, TrainSpec};

/// `(lr, weight_decay)` for optimizer step `step` (0-based) of `t.steps`.
pub fn at(t: &TrainSpec, step: u64) -> (f64, f64) {
    let peak = t.lr;
    if step < t.warmup_steps {
        let f = (step + 1) as f64 / t.warmup_steps as f64;
        return (peak * f, t.weight_decay);
    }
    let total = t.steps.max(1) as f64;
    match t.schedule {
        Schedule::Constant => (peak, t.weight_decay),
        Schedule::Cosine => {
            let span = (total - t.warmup_steps as f64).max(1.0);
            let p = ((step - t.warmup_steps) as f64 / span).min(1.0);
            let min = peak * t.min_lr_ratio;
            let lr = min + 0.5 * (peak - min) * (1.0 + (std::f64::consts::PI * p).cos());
            (lr, t.weight_decay)
        }
        Schedule::TwoStage => {
            let switch = (t.stage2_at * total).round().max(t.warmup_steps as f64);
            let s = step as f64;
            if s < switch {
                // Stage one: linear decay from the peak to `stage1_end_lr_ratio * peak`.
                let span = (switch - t.warmup_steps as f64).max(1.0);
                let p = (s - t.warmup_steps as f64) / span;
                let end = peak * t.stage1_end_lr_ratio;
                (peak + (end - peak) * p, t.weight_decay)
            } else {
                // Stage two: the sharp drop, then linear decay to the floor, no weight decay.
                let span = (total - switch).max(1.0);
                let p = ((s - switch) / span).min(1.0);
                let start = peak * t.stage2_lr_ratio;
                let end = peak * t.min_lr_ratio;
                (start + (end - start) * p, 0.0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_stage_drops_at_the_midpoint_and_stops_decay() {
        let t = TrainSpec {
            steps: 1000,
            warmup_steps: 100,
            lr: 1e-3,
            ..TrainSpec::default()
        };
        let (lr0, _) = at(&t, 0);
        assert!((lr0 - 1e-5).abs() < 1e-12);
        assert!((at(&t, 99).0 - 1e-3).abs() < 1e-12);
        let (before, wd_before) = at(&t, 499);
        let (after, wd_after) = at(&t, 500);
        assert!(before > 0.55e-3 && before < 0.56e-3, "{before}");
        assert!((after - 0.35e-3).abs() < 1e-12, "{after}");
        assert_eq!((wd_before, wd_after), (0.1, 0.0));
        assert!(at(&t, 999).0 < 1e-5);
    }

    #[test]
    fn cosine_reaches_its_floor() {
        let t = TrainSpec {
            steps: 200,
            warmup_steps: 0,
            lr: 1e-3,
            min_lr_ratio: 0.1,
            schedule: Schedule::Cosine,
            ..TrainSpec::default()
        };
        assert!((at(&t, 0).0 - 1e-3).abs() < 1e-12);
        assert!((at(&t, 100).0 - 0.55e-3).abs() < 1e-9);
        assert!((at(&t, 200).0 - 1e-4).abs() < 1e-9);
        assert_eq!(at(&t, 150).1, 0.1);
    }
}
