//! The models under their public weight names: the CLIP tokenizer and text
//! encoder (transformers), UNet2DConditionModel and AutoencoderKL (diffusers),
//! ResNet (torchvision). Every size comes from the checkpoint's config.json or
//! from the weights' shapes.

pub mod clip_text;
pub mod clip_tokenizer;
pub mod resnet;
pub mod unet;
pub mod vae;
