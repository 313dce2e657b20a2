//! `edge-kd card`: what a model is, what it expects, and how far to trust it.

use std::path::PathBuf;

use edge_kd::card::{Card, Ece, MissingPolicy, Target};
use edge_kd::model::{CardlessOptions, Model};

use crate::{Failure, exit};

/// Print a model's card: labels, inputs, outputs, calibration, thresholds, provenance
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  edge-kd card student.onnx\n  edge-kd card --json student.onnx | jq .calibration\n  edge-kd card            (the embedded default student)"
)]
pub struct Args {
    /// ONNX model; the embedded default student when omitted.
    #[arg(value_name = "M.onnx")]
    model: Option<PathBuf>,
    /// Print the card as JSON, exactly as stored (`null` for a model without one).
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<u8, Failure> {
    let model =
        Model::open_or_default(args.model.as_deref(), &CardlessOptions::default()).map_err(Failure::model)?;
    if args.json {
        let json = if model.has_card { model.card.to_json() } else { "null".into() };
        println!("{json}");
        return Ok(exit::OK);
    }
    print!("{}", describe(&model));
    Ok(exit::OK)
}

fn describe(model: &Model) -> String {
    let card: &Card = &model.card;
    let mut s = String::new();
    let mut line = |key: &str, value: String| s.push_str(&format!("  {key:<12} {value}\n"));
    let title = if model.has_card { card.name.clone() } else { "(no edge-kd card)".into() };
    let mut out = format!("{title}\n  {:<12} {}\n", "file", model.origin());
    line("task", format!("classification, {} classes", card.labels.len()));
    line(
        "labels",
        if card.labels.is_empty() {
            "(from the output width at run time)".into()
        } else {
            card.labels.join(", ")
        },
    );
    for input in &card.inputs {
        line(
            "input",
            format!(
                "{} {:?} NCHW {}, {} ({}); scale {}, mean {:?}, std {:?}; modality {}{}",
                input.name,
                input.shape,
                input.color.as_str(),
                input.resize.as_str(),
                input.resample.as_str(),
                input.scale,
                input.mean,
                input.std,
                input.modality,
                if card.is_mask(input) {
                    " (the mask: edge-kd fills it)"
                } else if input.optional {
                    " (optional)"
                } else {
                    ""
                }
            ),
        );
    }
    if let Some(text) = missing_modality(card) {
        line("missing", text);
    }
    for output in &model.info.outputs {
        let role = if output.name == card.output { " (logits)" } else { "" };
        line("output", format!("{} {}{role}", output.name, output.shape_string()));
    }
    let opsets: Vec<String> = model
        .info
        .opsets
        .iter()
        .map(|(d, v)| if d.is_empty() { format!("opset {v}") } else { format!("{d} opset {v}") })
        .collect();
    line(
        "graph",
        format!(
            "ONNX IR {}, {}, producer {}",
            model.info.ir_version,
            opsets.join(", "),
            if model.info.producer.is_empty() { "unknown" } else { &model.info.producer }
        ),
    );
    match &card.calibration {
        None => line(
            "calibration",
            "none: confidences are raw softmax and every verdict is review unless --threshold is given"
                .into(),
        ),
        Some(cal) => {
            let optional = card.value_inputs().any(|i| i.optional);
            let mut text = calibration(cal.temperature, cal.ece.as_ref(), cal.target.as_ref());
            if optional {
                let all: Vec<&str> = card.inputs.iter().map(|i| i.name.as_str()).collect();
                text = format!("{}: {text}", card.subset_name(&all));
            }
            line("calibration", text);
            line("thresholds", thresholds(&card.labels, &card.thresholds()));
            for note in &cal.notes {
                line("note", note.clone());
            }
            for subset in &cal.subsets {
                let present: Vec<&str> = subset.present.iter().map(String::as_str).collect();
                let text = calibration(subset.temperature, subset.ece.as_ref(), subset.target.as_ref());
                line("subset", format!("{}: {text}", card.subset_name(&present)));
                let of_subset = card.calibration_for(&present).map(|c| c.thresholds(&card.labels));
                line("thresholds", thresholds(&card.labels, &of_subset.unwrap_or_default()));
                for note in &subset.notes {
                    line("note", note.clone());
                }
            }
            if optional {
                line("otherwise", "a frame with any other set of inputs has no calibration: review".into());
            }
        }
    }
    if let Some(p) = &card.provenance {
        let mut parts = Vec::new();
        if let Some(m) = &p.method {
            parts.push(format!("method {m}"));
        }
        if !p.teachers.is_empty() {
            parts.push(format!("teachers {}", p.teachers.join(", ")));
        }
        if let Some(d) = &p.dataset {
            parts.push(format!("dataset {d}"));
        }
        for (k, v) in &p.metrics {
            parts.push(format!("{k} {v:.4}"));
        }
        if let Some(v) = &p.edge_kd_version {
            parts.push(format!("edge-kd {v}"));
        }
        if let Some(c) = &p.created {
            parts.push(format!("created {c}"));
        }
        line("provenance", parts.join(", "));
        if let Some(c) = &p.command {
            line("command", c.clone());
        }
    }
    out.push_str(&s);
    out
}

/// A temperature, ECE and error target, the top level's or a subset's.
fn calibration(temperature: f32, ece: Option<&Ece>, target: Option<&Target>) -> String {
    let mut text = format!("temperature {temperature:.4}");
    if let Some(ece) = ece {
        text.push_str(&format!("; ECE {:.4} before, {:.4} after", ece.before, ece.after));
    }
    if let Some(t) = target {
        text.push_str(&format!(
            "; target ≤ {:.2} % error among accepted",
            100.0 * t.max_error_among_accepted
        ));
        if let Some(c) = t.coverage_on_calibration_set {
            text.push_str(&format!(", coverage {:.1} % on the calibration split", 100.0 * c));
        }
    }
    text
}

fn thresholds(labels: &[String], thresholds: &[Option<f32>]) -> String {
    let each: Vec<String> = labels
        .iter()
        .zip(thresholds)
        .map(|(l, t)| format!("{l} {}", t.map_or("none (always review)".into(), |t| format!("{t:.4}"))))
        .collect();
    each.join("; ")
}

/// What the runtime feeds for a missing optional input, for a card that has one or feeds
/// more than its inputs.
fn missing_modality(card: &Card) -> Option<String> {
    let optional: Vec<&str> = card.value_inputs().filter(|i| i.optional).map(|i| i.name.as_str()).collect();
    let policy = card.missing_modality.as_ref().map(|m| m.policy);
    if optional.is_empty() && policy != Some(MissingPolicy::LearnedToken) && card.mask_input().is_none() {
        return None;
    }
    let optional = if optional.is_empty() { "none".to_string() } else { optional.join(", ") };
    let text = match (policy.unwrap_or(MissingPolicy::ZeroFill), card.mask_input()) {
        (MissingPolicy::LearnedToken, _) => {
            let presence: Vec<String> = card
                .inputs
                .iter()
                .filter_map(|i| {
                    Some(format!("{} [{}]", i.presence_input(MissingPolicy::LearnedToken)?, i.shape[0]))
                })
                .collect();
            format!(
                "learned-token: a missing input is zeros and its presence input 0 (1 when present); \
                 presence inputs {}",
                presence.join(", ")
            )
        }
        (MissingPolicy::ZeroFill, Some(mask)) => format!(
            "zero-fill: a missing input is zeros; mask input {} (edge-kd fills it: a channel per \
             optional input, 1 present, 0 missing)",
            mask.name
        ),
        (MissingPolicy::ZeroFill, None) => "zero-fill: a missing input is zeros".to_string(),
    };
    Some(format!("optional {optional}; {text}"))
}
