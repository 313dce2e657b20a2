//! `edge-kd card`: what a model is, what it expects, and how far to trust it.

use std::path::PathBuf;

use edge_kd::card::Card;
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
                if input.optional { " (optional)" } else { "" }
            ),
        );
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
            let mut text = format!("temperature {:.4}", cal.temperature);
            if let Some(ece) = &cal.ece {
                text.push_str(&format!("; ECE {:.4} before, {:.4} after", ece.before, ece.after));
            }
            if let Some(t) = &cal.target {
                text.push_str(&format!(
                    "; target ≤ {:.2} % error among accepted",
                    100.0 * t.max_error_among_accepted
                ));
                if let Some(c) = t.coverage_on_calibration_set {
                    text.push_str(&format!(", coverage {:.1} % on the calibration split", 100.0 * c));
                }
            }
            line("calibration", text);
            let thresholds: Vec<String> = card
                .labels
                .iter()
                .zip(card.thresholds())
                .map(|(l, t)| {
                    format!("{l} {}", t.map_or("none (always review)".into(), |t| format!("{t:.4}")))
                })
                .collect();
            line("thresholds", thresholds.join("; "));
            for note in &cal.notes {
                line("note", note.clone());
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
