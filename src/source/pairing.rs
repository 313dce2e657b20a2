//! Samples of a model with several inputs, for `run`: one file per card input, or one folder
//! per card input whose files are paired by stem (`frames/a.png` with `depth/a.npy`). An
//! optional input may be left out: every sample then lacks it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::files::{self, InputItem};

/// One frame of a model with several inputs: an id and a file (or none) per card input.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The stem the files were paired by, or a manifest's `id`.
    pub id: String,
    /// One per card input, in the card's order.
    pub members: Vec<Member>,
    /// A manifest's `label`, when it has one: what the sample is known to be.
    pub expected: Option<String>,
}

/// What one card input has for one sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub input: String,
    /// `None` when the sample has no file for this input.
    pub item: Option<InputItem>,
}

impl Sample {
    /// The inputs this sample has no file for.
    pub fn missing(&self) -> Vec<&str> {
        self.members.iter().filter(|m| m.item.is_none()).map(|m| m.input.as_str()).collect()
    }
}

/// A card input as pairing sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleInput {
    pub name: String,
    /// Whether a sample may lack it (the card's `optional`).
    pub optional: bool,
}

/// `--input NAME=PATH` values that cannot make samples; nothing is classified.
#[derive(Debug, Error, PartialEq)]
pub enum PairingError {
    #[error("the model has no input {name:?}; its inputs are {names}")]
    UnknownInput { name: String, names: String },
    #[error("input {name:?} is given twice")]
    Repeated { name: String },
    #[error(
        "no file or folder for input {missing} (the model's inputs are {names}; give each one --input NAME=PATH)"
    )]
    MissingInput { missing: String, names: String },
    #[error(
        "give every input a file (one sample) or every input a folder (files paired by stem), \
         not a mix (files: {files}; folders: {dirs})"
    )]
    Mixed { files: String, dirs: String },
}

/// The samples that `given` (input name, path) describes for a model whose inputs are `inputs`,
/// in the card's order; an optional input not given is missing from every sample. Files make
/// one sample whose id is the first given input's file stem; folders are walked like
/// [`files::expand`] and their files paired by their path inside the folder without the
/// extension, so that a recursive walk cannot pair `a/x.png` with `b/x.png`.
pub fn pair(inputs: &[SampleInput], given: &[(String, PathBuf)]) -> Result<Vec<Sample>, PairingError> {
    let ordered = by_card_order(inputs, given)?;
    let named: Vec<(&str, &Path)> = ordered.iter().filter_map(|&(n, path)| Some((n, path?))).collect();
    let (dirs, files): (Vec<_>, Vec<_>) = named.iter().partition(|(_, path)| path.is_dir());
    if dirs.is_empty() {
        let id = stem(named[0].1);
        let members = ordered
            .iter()
            .map(|(input, path)| Member { input: input.to_string(), item: path.map(files::file_item) })
            .collect();
        return Ok(vec![Sample { id, members, expected: None }]);
    }
    if !files.is_empty() {
        let list = |side: &[&(&str, &Path)]| side.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ");
        return Err(PairingError::Mixed { files: list(&files), dirs: list(&dirs) });
    }
    Ok(pair_folders(&ordered))
}

/// Each card input's path (`None` for an optional input not given), in the card's order, with
/// every name checked; at least one is given.
fn by_card_order<'a>(
    inputs: &'a [SampleInput],
    given: &'a [(String, PathBuf)],
) -> Result<Vec<(&'a str, Option<&'a Path>)>, PairingError> {
    let names = inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ");
    for (k, (name, _)) in given.iter().enumerate() {
        if !inputs.iter().any(|i| &i.name == name) {
            return Err(PairingError::UnknownInput { name: name.clone(), names });
        }
        if given[..k].iter().any(|(earlier, _)| earlier == name) {
            return Err(PairingError::Repeated { name: name.clone() });
        }
    }
    let path = |input: &SampleInput| given.iter().find(|(n, _)| *n == input.name).map(|(_, p)| p.as_path());
    let missing: Vec<&str> =
        inputs.iter().filter(|i| !i.optional && path(i).is_none()).map(|i| i.name.as_str()).collect();
    if !missing.is_empty() || given.is_empty() {
        let missing = if missing.is_empty() { names.clone() } else { missing.join(", ") };
        return Err(PairingError::MissingInput { missing, names });
    }
    Ok(inputs.iter().map(|i| (i.name.as_str(), path(i))).collect())
}

fn pair_folders(ordered: &[(&str, Option<&Path>)]) -> Vec<Sample> {
    // Stem -> one slot per input. A BTreeMap keeps samples in name order, like `expand`.
    let mut by_stem: BTreeMap<String, Vec<Option<InputItem>>> = BTreeMap::new();
    for (k, (_, dir)) in ordered.iter().enumerate() {
        let Some(dir) = *dir else { continue };
        for item in files::expand(&[dir.to_path_buf()]) {
            // The folder itself failed (unreadable, empty): its path is the id, so the line
            // names the folder rather than a stem.
            let key = match item.path.strip_prefix(dir) {
                Ok(rel) if !rel.as_os_str().is_empty() => rel.with_extension("").display().to_string(),
                _ => item.path.display().to_string(),
            };
            let slots = by_stem.entry(key).or_insert_with(|| vec![None; ordered.len()]);
            slots[k] = Some(match slots[k].take() {
                None => item,
                Some(first) => InputItem {
                    kind: Err(format!(
                        "{} and {} have the same stem; keep one",
                        first.path.display(),
                        item.path.display()
                    )),
                    path: first.path,
                },
            });
        }
    }
    by_stem
        .into_iter()
        .map(|(id, slots)| Sample {
            id,
            members: ordered
                .iter()
                .zip(slots)
                .map(|((input, _), item)| Member { input: input.to_string(), item })
                .collect(),
            expected: None,
        })
        .collect()
}

fn stem(path: &Path) -> String {
    path.file_stem().map_or_else(|| path.display().to_string(), |s| s.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<SampleInput> {
        vec![
            SampleInput { name: "image".into(), optional: false },
            SampleInput { name: "depth".into(), optional: false },
        ]
    }

    /// `names()` with the depth map optional.
    fn depth_optional() -> Vec<SampleInput> {
        let mut inputs = names();
        inputs[1].optional = true;
        inputs
    }

    fn given(image: &Path, depth: &Path) -> Vec<(String, PathBuf)> {
        vec![("depth".into(), depth.to_owned()), ("image".into(), image.to_owned())]
    }

    #[test]
    fn folders_pair_by_stem_and_keep_unpartnered_files() {
        let dir = tempfile::tempdir().unwrap();
        let (rgb, depth) = (dir.path().join("rgb"), dir.path().join("depth"));
        std::fs::create_dir_all(rgb.join("sub")).unwrap();
        std::fs::create_dir_all(depth.join("sub")).unwrap();
        for f in ["rgb/a.png", "rgb/b.png", "rgb/sub/c.png", "depth/a.npy", "depth/sub/c.png", "depth/d.png"]
        {
            std::fs::write(dir.path().join(f), b"").unwrap();
        }
        let samples = pair(&names(), &given(&rgb, &depth)).unwrap();
        let ids: Vec<&str> = samples.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "d", "sub/c"]);
        assert_eq!(samples[0].members[0].input, "image", "card order, not the order given");
        assert_eq!(samples[0].members[1].item.as_ref().unwrap().path, depth.join("a.npy"));
        assert_eq!(samples[1].missing(), ["depth"]);
        assert_eq!(samples[2].missing(), ["image"]);
        assert!(samples[3].missing().is_empty());
    }

    #[test]
    fn two_files_with_one_stem_are_that_samples_error() {
        let dir = tempfile::tempdir().unwrap();
        let (rgb, depth) = (dir.path().join("rgb"), dir.path().join("depth"));
        std::fs::create_dir_all(&rgb).unwrap();
        std::fs::create_dir_all(&depth).unwrap();
        for f in ["rgb/a.png", "depth/a.png", "depth/a.npy"] {
            std::fs::write(dir.path().join(f), b"").unwrap();
        }
        let samples = pair(&names(), &given(&rgb, &depth)).unwrap();
        assert_eq!(samples.len(), 1);
        let error = samples[0].members[1].item.as_ref().unwrap().kind.as_ref().unwrap_err();
        assert!(error.contains("same stem"), "{error}");
    }

    #[test]
    fn files_make_one_sample_named_by_the_first_inputs_stem() {
        let samples = pair(&names(), &given(Path::new("x/cam.png"), Path::new("y/d.npy"))).unwrap();
        assert_eq!(samples.len(), 1);
        assert_eq!(samples[0].id, "cam");
        assert!(samples[0].members[0].item.as_ref().unwrap().kind.is_err(), "no such file");
    }

    #[test]
    fn names_are_checked_and_files_and_folders_not_mixed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.png");
        std::fs::write(&file, b"").unwrap();
        let mut bad = given(&file, &file);
        bad[0].0 = "thermal".into();
        assert!(
            matches!(pair(&names(), &bad), Err(PairingError::UnknownInput { name, .. }) if name == "thermal")
        );
        let only_image = vec![("image".to_string(), file.clone())];
        assert!(
            matches!(pair(&names(), &only_image), Err(PairingError::MissingInput { missing, .. }) if missing == "depth")
        );
        let twice = vec![("image".to_string(), file.clone()), ("image".to_string(), file.clone())];
        assert_eq!(pair(&names(), &twice), Err(PairingError::Repeated { name: "image".into() }));
        assert!(matches!(pair(&names(), &given(&file, dir.path())), Err(PairingError::Mixed { .. })));
    }

    #[test]
    fn an_optional_input_left_out_is_missing_from_every_sample() {
        let dir = tempfile::tempdir().unwrap();
        let rgb = dir.path().join("rgb");
        std::fs::create_dir_all(&rgb).unwrap();
        for f in ["rgb/a.png", "rgb/b.png"] {
            std::fs::write(dir.path().join(f), b"").unwrap();
        }
        let only_image = vec![("image".to_string(), rgb.clone())];
        let samples = pair(&depth_optional(), &only_image).unwrap();
        assert_eq!(samples.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert!(samples.iter().all(|s| s.missing() == ["depth"] && s.members[1].input == "depth"));
        let file = vec![("image".to_string(), rgb.join("a.png"))];
        let samples = pair(&depth_optional(), &file).unwrap();
        assert_eq!((samples.len(), samples[0].id.as_str(), samples[0].missing()), (1, "a", vec!["depth"]));
        // The required input cannot be the one left out, and something must be given.
        let only_depth = vec![("depth".to_string(), rgb.clone())];
        assert!(
            matches!(pair(&depth_optional(), &only_depth), Err(PairingError::MissingInput { missing, .. }) if missing == "image")
        );
        let mut all_optional = depth_optional();
        all_optional[0].optional = true;
        assert!(matches!(pair(&all_optional, &[]), Err(PairingError::MissingInput { .. })));
    }
}
