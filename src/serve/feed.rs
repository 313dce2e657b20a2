//! Which card inputs a source's images are. A camera (or a synthetic one) gives one image per
//! frame, so it must be one input; a folder pairs its files by name and an upload names its
//! multipart parts, so for a model with several inputs they can give them all.

use crate::card::Card;

use super::config::{SourceConfig, SourceKind};

/// How a source's images become a frame's parts.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedInputs {
    /// Every image is this card input (`input` in the config, or the model's only input).
    One(String),
    /// Images say which input they are: a folder's `<stem>.<input>.<ext>` files, an
    /// upload's multipart parts. The card's inputs, in order.
    ByName(Vec<String>),
}

/// The feed of `source` for a model whose card is `card`, or what is wrong with the
/// source's `input`.
pub fn feed_inputs(source: &SourceConfig, card: &Card) -> Result<FeedInputs, String> {
    // A mask input is not given: edge-kd fills it from which inputs a frame has.
    let names: Vec<String> = card.value_inputs().map(|i| i.name.clone()).collect();
    if let Some(input) = &source.input {
        if !names.contains(input) {
            return Err(format!("the model has no input {input:?}; its inputs are {}", names.join(", ")));
        }
        // Only an upload can still give the other inputs (multipart parts); any other feed
        // would make every frame an error.
        let required: Vec<&str> = card
            .value_inputs()
            .filter(|i| !i.optional && i.name != *input)
            .map(|i| i.name.as_str())
            .collect();
        if !required.is_empty() && !matches!(source.kind(), SourceKind::Upload) {
            return Err(format!(
                "this source gives only input {input:?}, but the model also needs {} in every frame (not optional)",
                required.join(", ")
            ));
        }
        return Ok(FeedInputs::One(input.clone()));
    }
    if let [only] = names.as_slice() {
        return Ok(FeedInputs::One(only.clone()));
    }
    match source.kind() {
        SourceKind::Folder(_) | SourceKind::Upload => Ok(FeedInputs::ByName(names)),
        SourceKind::Camera(_) | SourceKind::Synthetic(_) => Err(format!(
            "the model has inputs {}: say which one this source's frames are (input = {:?})",
            names.join(", "),
            names[0]
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Model;

    fn source(feed: &str, input: Option<&str>) -> SourceConfig {
        let input = input.map_or(String::new(), |i| format!("input = \"{i}\"\n"));
        let text = format!("[[source]]\nname = \"s\"\n{input}{feed}\n");
        let config = super::super::config::ServeConfig::parse(&text, "t.toml".as_ref()).unwrap();
        config.sources.into_iter().next().unwrap()
    }

    fn two_input() -> Card {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/two_input.onnx");
        Model::open(&path, &Default::default()).unwrap().card
    }

    #[test]
    fn a_camera_of_a_model_with_several_inputs_must_say_which_it_is() {
        let card = two_input();
        let camera = "camera = { device = \"/dev/video0\" }";
        let err = feed_inputs(&source(camera, None), &card).unwrap_err();
        assert_eq!(
            err,
            "the model has inputs image, depth: say which one this source's frames are (input = \"image\")"
        );
        let err = feed_inputs(&source(camera, Some("depth")), &card).unwrap_err();
        assert_eq!(
            err,
            "this source gives only input \"depth\", but the model also needs image in every frame (not optional)"
        );
        let upload = feed_inputs(&source("http = {}", Some("depth")), &card);
        assert_eq!(upload, Ok(FeedInputs::One("depth".into())), "multipart parts can still give image");
        let err = feed_inputs(&source(camera, Some("rgb")), &card).unwrap_err();
        assert_eq!(err, "the model has no input \"rgb\"; its inputs are image, depth");
        let by_name = Ok(FeedInputs::ByName(vec!["image".into(), "depth".into()]));
        assert_eq!(feed_inputs(&source("folder = { path = \"/x\" }", None), &card), by_name);
        assert_eq!(feed_inputs(&source("http = {}", None), &card), by_name);
        let one = Model::embedded_default().unwrap().card;
        assert_eq!(feed_inputs(&source(camera, None), &one), Ok(FeedInputs::One("image".into())));
    }
}
