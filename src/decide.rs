//! Logits → decision: temperature-scaled softmax, top-k, and the verdict against the
//! class's accept threshold (design §3), with the calibration of the inputs the frame had.

use serde::Serialize;

use crate::card::Card;
use crate::present::Present;

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

/// Which of the card's calibrations decided a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CalibrationUsed {
    /// The top level: every input was present.
    Full,
    /// `calibration.subsets[k]`: the frame had exactly its inputs.
    Subset(usize),
    /// The card has no calibration at all: temperature 1, no thresholds but `--threshold`'s.
    Uncalibrated,
    /// The card is calibrated, but not for the inputs this frame had: its confidence is the raw
    /// softmax and its verdict always review, whatever `--threshold` says, because nothing
    /// measured how far such frames can be trusted.
    NoneForPresent,
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
    /// The card inputs the frame had.
    pub present: Present,
    pub calibration: CalibrationUsed,
}

#[derive(Debug, thiserror::Error)]
#[error("the model produced {got} values but the card lists {expected} labels")]
pub struct WidthMismatch {
    pub got: usize,
    pub expected: usize,
}

/// A temperature and per-class thresholds, and where they come from.
struct Calibrated {
    temperature: f32,
    thresholds: Vec<Option<f32>>,
    used: CalibrationUsed,
}

pub struct Decider {
    /// The card's calibrations by the set of inputs each is for: the top level, then each
    /// subset. Empty when the card has no calibration.
    by_present: Vec<(Present, Calibrated)>,
    /// For a frame whose set none of `by_present` is for.
    otherwise: Calibrated,
    labels: usize,
    top_k: usize,
    probs: Vec<f32>,
}

impl Decider {
    /// `override_threshold` replaces every class's threshold (the `--threshold` flag), except
    /// for frames whose inputs the calibrated card has no calibration for.
    pub fn new(card: &Card, top_k: usize, override_threshold: Option<f32>) -> Decider {
        let n = card.labels.len();
        let thresholds = |calibrated: Vec<Option<f32>>| match override_threshold {
            Some(t) => vec![Some(t); n],
            None => calibrated,
        };
        // Looked up through `Card::calibration_for`, the one statement of which calibration a
        // set of inputs gets; per frame only the sets are compared.
        let mut by_present = Vec::new();
        let all: Vec<&str> = card.inputs.iter().map(|i| i.name.as_str()).collect();
        if let Some(full) = card.calibration_for(&all) {
            by_present.push((
                Present::all(card.inputs.len()),
                Calibrated {
                    temperature: full.temperature,
                    thresholds: thresholds(full.thresholds(&card.labels)),
                    used: CalibrationUsed::Full,
                },
            ));
        }
        for (k, subset) in card.calibration.iter().flat_map(|c| c.subsets.iter()).enumerate() {
            let names: Vec<&str> = subset.present.iter().map(String::as_str).collect();
            if let Some(cal) = card.calibration_for(&names) {
                by_present.push((
                    Present::of_names(card, &subset.present),
                    Calibrated {
                        temperature: cal.temperature,
                        thresholds: thresholds(cal.thresholds(&card.labels)),
                        used: CalibrationUsed::Subset(k),
                    },
                ));
            }
        }
        let otherwise = if card.calibration.is_some() {
            Calibrated { temperature: 1.0, thresholds: vec![None; n], used: CalibrationUsed::NoneForPresent }
        } else {
            Calibrated {
                temperature: 1.0,
                thresholds: thresholds(vec![None; n]),
                used: CalibrationUsed::Uncalibrated,
            }
        };
        Decider { by_present, otherwise, labels: n, top_k: top_k.max(1), probs: Vec::new() }
    }

    /// Decides a frame that had the inputs `present`.
    pub fn decide(&mut self, logits: &[f32], present: Present) -> Result<Decision, WidthMismatch> {
        let n = self.labels;
        if logits.len() != n || n == 0 {
            return Err(WidthMismatch { got: logits.len(), expected: n });
        }
        let cal = self.by_present.iter().find(|(set, _)| *set == present).map_or(&self.otherwise, |(_, c)| c);
        let inv_t = 1.0 / cal.temperature;
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
        let threshold = cal.thresholds[class_index];
        let verdict = match threshold {
            Some(t) if confidence >= t => Verdict::Accept,
            _ => Verdict::Review,
        };
        Ok(Decision { class_index, confidence, threshold, verdict, top, present, calibration: cal.used })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one input of `card()`'s cards.
    const ALL: Present = Present::all(1);

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
        let d = sharp.decide(&logits, ALL).unwrap();
        let expected = 1.0 / (1.0 + (-1f32).exp() + (-2f32).exp());
        assert!((d.confidence - expected).abs() < 1e-6);
        assert_eq!((d.class_index, d.verdict), (0, Verdict::Accept));
        assert_eq!(d.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![0, 1, 2]);

        let mut soft = Decider::new(&card(2.0, Some(0.6), &[]), 2, None);
        let d = soft.decide(&logits, ALL).unwrap();
        assert!(d.confidence < expected && d.confidence < 0.6);
        assert_eq!(d.verdict, Verdict::Review);
        assert_eq!(d.top.len(), 2);
    }

    #[test]
    fn per_class_thresholds_and_unsupported_classes() {
        let c = card(1.0, Some(0.5), &[("b", Some(0.99)), ("c", None)]);
        let mut d = Decider::new(&c, 1, None);
        let b = d.decide(&[0.0, 3.0, 0.0], ALL).unwrap();
        assert_eq!((b.class_index, b.threshold, b.verdict), (1, Some(0.99), Verdict::Review));
        let c_ = d.decide(&[0.0, 0.0, 10.0], ALL).unwrap();
        assert_eq!((c_.threshold, c_.verdict), (None, Verdict::Review));
        let mut forced = Decider::new(&c, 1, Some(0.5));
        assert_eq!(forced.decide(&[0.0, 0.0, 10.0], ALL).unwrap().verdict, Verdict::Accept);
    }

    #[test]
    fn wrong_width_is_an_error() {
        let mut d = Decider::new(&card(1.0, None, &[]), 3, None);
        assert!(d.decide(&[1.0, 2.0], ALL).is_err());
    }

    /// rgb (required), height and depth (optional); calibrated for all three, rgb alone and
    /// rgb+depth, not for rgb+height.
    fn multimodal() -> Card {
        let input = |name: &str, optional: bool| {
            serde_json::json!({"name": name, "shape": [1, 1, 2, 2], "layout": "NCHW", "color": "gray",
                               "resize": "stretch", "scale": 1.0, "mean": [0.0], "std": [1.0],
                               "optional": optional})
        };
        let json = serde_json::json!({
            "schema": 1, "name": "m", "task": "classification", "labels": ["a", "b", "c"],
            "inputs": [input("rgb", false), input("height", true), input("depth", true)],
            "missing_modality": {"policy": "zero-fill"},
            "output": "y",
            "calibration": {"temperature": 1.0, "accept": {"default": 0.5},
                "subsets": [{"present": ["rgb"], "temperature": 2.0, "accept": {"default": 0.9}},
                            {"present": ["depth", "rgb"], "temperature": 4.0, "accept": {"default": 0.2}}]}
        });
        Card::parse(&json.to_string()).unwrap()
    }

    #[test]
    fn each_set_of_inputs_is_decided_by_the_calibration_the_card_gives_it() {
        let card = multimodal();
        let mut decider = Decider::new(&card, 3, None);
        let logits = [2.0, 1.0, 0.0];
        for bits in 0..8 {
            let present = (0..3).filter(|i| bits & (1 << i) != 0).fold(Present::default(), Present::with);
            let names = present.names(&card);
            let d = decider.decide(&logits, present).unwrap();
            assert_eq!(d.present, present);
            let want = card.calibration_for(&names);
            let t = want.map_or(1.0, |c| c.temperature);
            let expected = 1.0 / (1.0 + (-1.0 / t).exp() + (-2.0 / t).exp());
            assert!((d.confidence - expected).abs() < 1e-6, "{names:?}: {} vs {expected}", d.confidence);
            assert_eq!(d.threshold, want.and_then(|c| c.accept.default), "{names:?}");
            let used = match want {
                None => CalibrationUsed::NoneForPresent,
                Some(c) => c.subset.map_or(CalibrationUsed::Full, |s| {
                    let subsets = &card.calibration.as_ref().unwrap().subsets;
                    CalibrationUsed::Subset(subsets.iter().position(|o| o == s).unwrap())
                }),
            };
            assert_eq!(d.calibration, used, "{names:?}");
        }
        let only_rgb = decider.decide(&logits, Present::default().with(0)).unwrap();
        assert_eq!((only_rgb.calibration, only_rgb.threshold), (CalibrationUsed::Subset(0), Some(0.9)));
        let rgb_height = decider.decide(&logits, Present::default().with(0).with(1)).unwrap();
        assert_eq!(rgb_height.calibration, CalibrationUsed::NoneForPresent);
        assert_eq!((rgb_height.threshold, rgb_height.verdict), (None, Verdict::Review));
    }

    #[test]
    fn the_threshold_flag_holds_for_calibrated_sets_only_and_for_every_set_of_an_uncalibrated_card() {
        let card = multimodal();
        let mut forced = Decider::new(&card, 1, Some(0.1));
        let rgb = forced.decide(&[2.0, 1.0, 0.0], Present::default().with(0)).unwrap();
        assert_eq!((rgb.threshold, rgb.verdict), (Some(0.1), Verdict::Accept));
        let rgb_height = forced.decide(&[2.0, 1.0, 0.0], Present::default().with(0).with(1)).unwrap();
        assert_eq!((rgb_height.threshold, rgb_height.verdict), (None, Verdict::Review));

        let uncalibrated = Card { calibration: None, ..card };
        let mut forced = Decider::new(&uncalibrated, 1, Some(0.1));
        let d = forced.decide(&[2.0, 1.0, 0.0], Present::default().with(0).with(1)).unwrap();
        assert_eq!(
            (d.calibration, d.threshold, d.verdict),
            (CalibrationUsed::Uncalibrated, Some(0.1), Verdict::Accept)
        );
    }
}
