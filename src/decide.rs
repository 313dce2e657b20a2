//! Logits → decision: temperature-scaled softmax, top-k, and the verdict against the
//! class's accept threshold (design §3).

use serde::Serialize;

use crate::card::Card;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Confident enough for the line to act on alone.
    Accept,
    /// A person should look at it.
    Review,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Accept => "accept",
            Verdict::Review => "review",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub class_index: usize,
    /// Calibrated probability of `class_index`.
    pub confidence: f32,
    /// The accept threshold held against; `None` when the class has none (always review).
    pub threshold: Option<f32>,
    pub verdict: Verdict,
    /// The `k` most probable classes, most probable first.
    pub top: Vec<(usize, f32)>,
}

#[derive(Debug, thiserror::Error)]
#[error("the model produced {got} values but the card lists {expected} labels")]
pub struct WidthMismatch {
    pub got: usize,
    pub expected: usize,
}

pub struct Decider {
    temperature: f32,
    thresholds: Vec<Option<f32>>,
    top_k: usize,
    probs: Vec<f32>,
}

impl Decider {
    /// `override_threshold` replaces every class's threshold (the `--threshold` flag).
    pub fn new(card: &Card, top_k: usize, override_threshold: Option<f32>) -> Decider {
        let thresholds = match override_threshold {
            Some(t) => vec![Some(t); card.labels.len()],
            None => card.thresholds(),
        };
        Decider { temperature: card.temperature(), thresholds, top_k: top_k.max(1), probs: Vec::new() }
    }

    pub fn decide(&mut self, logits: &[f32]) -> Result<Decision, WidthMismatch> {
        let n = self.thresholds.len();
        if logits.len() != n || n == 0 {
            return Err(WidthMismatch { got: logits.len(), expected: n });
        }
        let inv_t = 1.0 / self.temperature;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        self.probs.clear();
        self.probs.extend(logits.iter().map(|&l| ((l - max) * inv_t).exp()));
        let sum: f32 = self.probs.iter().sum();
        self.probs.iter_mut().for_each(|p| *p /= sum);

        let mut top: Vec<(usize, f32)> = Vec::with_capacity(self.top_k.min(n));
        for (i, &p) in self.probs.iter().enumerate() {
            // Ties keep the lower class index first, as argmax does.
            let at = top.iter().position(|&(_, q)| p > q).unwrap_or(top.len());
            if at < self.top_k {
                if top.len() == self.top_k {
                    top.pop();
                }
                top.insert(at, (i, p));
            }
        }
        let (class_index, confidence) = top[0];
        let threshold = self.thresholds[class_index];
        let verdict = match threshold {
            Some(t) if confidence >= t => Verdict::Accept,
            _ => Verdict::Review,
        };
        Ok(Decision { class_index, confidence, threshold, verdict, top })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card(temperature: f32, default: Option<f32>, per_class: &[(&str, Option<f32>)]) -> Card {
        let per: serde_json::Map<String, serde_json::Value> =
            per_class.iter().map(|(k, v)| (k.to_string(), serde_json::json!(v))).collect();
        let json = serde_json::json!({
            "schema": 1, "name": "t", "task": "classification", "labels": ["a", "b", "c"],
            "inputs": [{"name": "x", "shape": [1, 1, 2, 2], "layout": "NCHW", "color": "gray",
                        "resize": "stretch", "scale": 1.0, "mean": [0.0], "std": [1.0]}],
            "output": "y",
            "calibration": {"temperature": temperature, "accept": {"default": default, "per_class": per}}
        });
        Card::parse(&json.to_string()).unwrap()
    }

    #[test]
    fn temperature_softens_and_thresholds_decide() {
        let logits = [2.0, 1.0, 0.0];
        let mut sharp = Decider::new(&card(1.0, Some(0.6), &[]), 3, None);
        let d = sharp.decide(&logits).unwrap();
        let expected = 1.0 / (1.0 + (-1f32).exp() + (-2f32).exp());
        assert!((d.confidence - expected).abs() < 1e-6);
        assert_eq!((d.class_index, d.verdict), (0, Verdict::Accept));
        assert_eq!(d.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![0, 1, 2]);

        let mut soft = Decider::new(&card(2.0, Some(0.6), &[]), 2, None);
        let d = soft.decide(&logits).unwrap();
        assert!(d.confidence < expected && d.confidence < 0.6);
        assert_eq!(d.verdict, Verdict::Review);
        assert_eq!(d.top.len(), 2);
    }

    #[test]
    fn per_class_thresholds_and_unsupported_classes() {
        let c = card(1.0, Some(0.5), &[("b", Some(0.99)), ("c", None)]);
        let mut d = Decider::new(&c, 1, None);
        let b = d.decide(&[0.0, 3.0, 0.0]).unwrap();
        assert_eq!((b.class_index, b.threshold, b.verdict), (1, Some(0.99), Verdict::Review));
        let c_ = d.decide(&[0.0, 0.0, 10.0]).unwrap();
        assert_eq!((c_.threshold, c_.verdict), (None, Verdict::Review));
        let mut forced = Decider::new(&c, 1, Some(0.5));
        assert_eq!(forced.decide(&[0.0, 0.0, 10.0]).unwrap().verdict, Verdict::Accept);
    }

    #[test]
    fn wrong_width_is_an_error() {
        let mut d = Decider::new(&card(1.0, None, &[]), 3, None);
        assert!(d.decide(&[1.0, 2.0]).is_err());
    }
}
