//! What kind of model this is: from `model_index.json` / `config.json` (`_class_name`,
//! `architectures`, `model_type`), and failing those, from tensor names.

use std::fmt;

use serde::Serialize;

use crate::model::Model;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Modality {
    Text,
    Code,
    Image,
    Audio,
}

impl Modality {
    pub fn name(self) -> &'static str {
        match self {
            Modality::Text => "text",
            Modality::Code => "code",
            Modality::Image => "image",
            Modality::Audio => "audio",
        }
    }
}

impl fmt::Display for Modality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A detected modality and the evidence for it.
#[derive(Debug, Clone, Serialize)]
pub struct Detection {
    pub modality: Modality,
    pub evidence: String,
}

// Lower-case substrings of class names, architectures and model types. Audio and code are
// tested before image and text: "AudioLDMPipeline" holds a UNet, code models are causal LMs.
const AUDIO: &[&str] = &[
    "audio", "whisper", "wav2vec", "hubert", "encodec", "speech", "musicgen", "bark", "clap",
    "wavlm", "seamless", "mel",
];
// Matched after removing '_' and '-'; never a bare "code" or "coder" ("encoder", "decoder").
const CODE: &[&str] = &[
    "starcoder",
    "santacoder",
    "codegen",
    "codellama",
    "deepseekcoder",
    "qwencoder",
    "codeqwen",
    "codestral",
    "granitecode",
    "codet5",
];
const IMAGE: &[&str] = &[
    "unet",
    "vae",
    "autoencoderkl",
    "diffusion",
    "transformer2d",
    "sd3",
    "flux",
    "pixart",
    "vit",
    "clipvision",
    "siglip_vision",
    "dino",
    "convnext",
    "resnet",
    "swin",
    "controlnet",
    "imagepipeline",
    "image",
];

fn classify(text: &str) -> Option<Modality> {
    let t = text.to_ascii_lowercase().replace(['_', '-'], "");
    let hit = |words: &[&str]| words.iter().any(|w| t.contains(w));
    if hit(AUDIO) {
        Some(Modality::Audio)
    } else if hit(CODE) {
        Some(Modality::Code)
    } else if hit(IMAGE) {
        Some(Modality::Image)
    } else if t.contains("causallm")
        || t.contains("forconditionalgeneration")
        || t.contains("bert")
        || t.contains("llama")
        || t.contains("gpt")
        || t.contains("t5")
        || t.contains("cliptext")
        || t.contains("text")
    {
        Some(Modality::Text)
    } else {
        None
    }
}

pub fn detect(model: &Model) -> Detection {
    // The pipeline's own class first, then each component's, then the plain model's.
    for config in &model.configs {
        for key in ["_class_name", "architectures", "model_type"] {
            let Some(value) = config.json.get(key) else {
                continue;
            };
            let texts: Vec<String> = match value {
                serde_json::Value::String(s) => vec![s.clone()],
                serde_json::Value::Array(items) => items
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect(),
                _ => Vec::new(),
            };
            for text in texts {
                if let Some(modality) = classify(&text) {
                    return Detection {
                        modality,
                        evidence: format!("{key} = \"{text}\" in {}", config.path.display()),
                    };
                }
            }
        }
    }
    let names = |needles: &[&str]| {
        model
            .tensors
            .iter()
            .find(|t| needles.iter().any(|n| t.layer.contains(n)))
            .map(|t| t.layer.clone())
    };
    let by_name: [(&[&str], Modality); 4] = [
        (
            &["mel_", "audio_", "feature_extractor.conv"],
            Modality::Audio,
        ),
        (
            &[
                "down_blocks.",
                "up_blocks.",
                "conv_in.",
                "patch_embed",
                "pixel",
            ],
            Modality::Image,
        ),
        (
            &["embed_tokens", "lm_head", "wte.", "word_embeddings"],
            Modality::Text,
        ),
        (&["encoder.layer.", "decoder.layers."], Modality::Text),
    ];
    for (needles, modality) in by_name {
        if let Some(layer) = names(needles) {
            return Detection {
                modality,
                evidence: format!("tensor name '{layer}'"),
            };
        }
    }
    Detection {
        modality: Modality::Text,
        evidence: "no configuration or telling tensor name; text assumed".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_and_architectures() {
        assert_eq!(classify("UNet2DModel"), Some(Modality::Image));
        assert_eq!(classify("StableDiffusionPipeline"), Some(Modality::Image));
        assert_eq!(classify("AudioLDMPipeline"), Some(Modality::Audio));
        assert_eq!(
            classify("WhisperForConditionalGeneration"),
            Some(Modality::Audio)
        );
        assert_eq!(classify("LlamaForCausalLM"), Some(Modality::Text));
        assert_eq!(classify("Starcoder2ForCausalLM"), Some(Modality::Code));
        assert_eq!(classify("ViTModel"), Some(Modality::Image));
        assert_eq!(classify("T5ForConditionalGeneration"), Some(Modality::Text));
        assert_eq!(classify("AutoencoderKL"), Some(Modality::Image));
        assert_eq!(classify("deepseek_coder"), Some(Modality::Code));
        assert_eq!(classify("Banana"), None);
    }
}
