//! The CLIP tokenizer of Stable Diffusion: byte-level BPE over CLIP's vocabulary, giving exactly the ids of
//! transformers' slow `CLIPTokenizer` (the one diffusers' pipelines load) called with
//! `padding="max_length", max_length=model_max_length, truncation=True`, except where that tokenizer first
//! runs ftfy's text fixing (mojibake, curly quotes, HTML entities, control characters, ligatures, full-width
//! letters), which is not reproduced here.
//!
//! A tokenizer folder is either the SD 1.x/2.x layout (vocab.json + merges.txt) or a tokenizer.json, with
//! tokenizer_config.json (and special_tokens_map.json) for the special tokens and the length. Both become
//! the pipeline of transformers' CLIPConverter, with the things in which the slow tokenizer differs from
//! that converted pipeline done the slow way: a capital sigma lowercases to the final form at the end of a
//! word (Python's `str.lower`); the split pattern behaves as compiled with IGNORECASE ("'ſ" is a
//! contraction, U+0345 belongs to no piece); the byte-level step does not split the pieces again with
//! GPT-2's pattern (which would undo the "'ſ" contraction); special tokens are found in the raw text, and
//! CLIP's two markers also in the lowercased text. A tokenizer.json gives the BPE model and its added
//! tokens; its own pipeline is replaced, as the slow tokenizer ignores it too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Lowercase, NormalizerWrapper, Replace, Sequence as NormalizerSequence, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{
    AddedToken, ModelWrapper, NormalizedString, Normalizer, OffsetReferential, OffsetType, PreTokenizedString,
    PreTokenizer, SplitDelimiterBehavior, Tokenizer, TokenizerImpl,
};

use crate::error::{file_err, Error, Result};

/// CLIP's start and end markers. The slow tokenizer's pattern finds them in the lowercased text as well as
/// in the raw text, so they are matched after normalization; other special tokens only in the raw text.
const START_OF_TEXT: &str = "<|startoftext|>";
const END_OF_TEXT: &str = "<|endoftext|>";
/// transformers' CLIPTokenizer pattern as Python's regex module runs it with IGNORECASE: the contractions
/// match in any case ("'ſ" is "'s"), and U+0345, whose case partner ι is a letter, is in no piece. Those
/// are the only two effects of the flag on this pattern (checked over all code points).
const SPLIT_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}\x{345}]+";
const END_OF_WORD_SUFFIX: &str = "</w>";
/// The slow tokenizer reads at most this many merges from merges.txt (the original CLIP file holds more).
const MAX_MERGES: usize = 49152 - 256 - 2;
/// A bound on a trained vocabulary; merging stops earlier, once every word is one token.
const MAX_TRAINED_VOCAB: usize = 8192;
/// The length Stable Diffusion's text encoders take, used when tokenizer_config.json gives none.
const DEFAULT_MAX_LEN: usize = 77;

type Pipeline = TokenizerImpl<ModelWrapper, ClipNormalizer, PreTokenizerWrapper, PostProcessorWrapper, DecoderWrapper>;

#[derive(Debug, Clone)]
pub struct ClipTokenizer {
    pipeline: Pipeline,
    max_len: usize,
    bos_id: u32,
    eos_id: u32,
    pad_id: u32,
}

impl ClipTokenizer {
    /// Loads a tokenizer folder: dir/tokenizer.json when present, otherwise dir/vocab.json + dir/merges.txt;
    /// the special tokens and the length come from dir/tokenizer_config.json and dir/special_tokens_map.json.
    pub fn from_dir(dir: &Path) -> Result<ClipTokenizer> {
        if !dir.is_dir() {
            return file_err(dir, "no such tokenizer folder");
        }
        let config = Config::from_dir(dir)?;
        let tokenizer_json = dir.join("tokenizer.json");
        let (model, mut added) = if tokenizer_json.is_file() {
            model_from_tokenizer_json(&tokenizer_json)?
        } else {
            (model_from_vocab_and_merges(dir, &config.unk)?, Vec::new())
        };
        for token in [&config.bos, &config.eos, &config.unk, &config.pad] {
            if !added.iter().any(|t| &t.content == token) {
                added.push(AddedToken::from(token.clone(), true));
            }
        }

        let mut pipeline = Pipeline::new(model);
        pipeline.with_normalizer(Some(ClipNormalizer::new().map_err(|e| Error::Usage(e.to_string()))?));
        pipeline.with_pre_tokenizer(Some(clip_pre_tokenizer().map_err(|e| Error::Usage(e.to_string()))?));
        let added: Vec<AddedToken> = added
            .into_iter()
            .map(|token| {
                let normalized = token.content == START_OF_TEXT || token.content == END_OF_TEXT;
                token.normalized(normalized)
            })
            .collect();
        pipeline.add_tokens(&added);

        let id = |token: &str| {
            pipeline
                .token_to_id(token)
                .ok_or_else(|| Error::File { file: config.source.clone(), detail: format!("no id for {token:?}") })
        };
        let (bos_id, eos_id, pad_id) = (id(&config.bos)?, id(&config.eos)?, id(&config.pad)?);
        Ok(ClipTokenizer { pipeline, max_len: config.max_len, bos_id, eos_id, pad_id })
    }

    /// The ids of `text`: the start token, at most `max_len - 2` tokens of the text, the end token, then the
    /// pad id up to `max_len`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self.pipeline.encode(text, false).map_err(|e| Error::Usage(format!("tokenizing: {e}")))?;
        Ok(self.frame(encoding.get_ids()))
    }

    /// [`ClipTokenizer::encode`] for every text, in parallel.
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        let encodings =
            self.pipeline.encode_batch(texts.to_vec(), false).map_err(|e| Error::Usage(format!("tokenizing: {e}")))?;
        Ok(encodings.iter().map(|e| self.frame(e.get_ids())).collect())
    }

    /// The length of every encoded sequence (the text encoder's number of positions).
    /// Token ids run below this: the vocabulary with the added tokens.
    pub fn vocab_size(&self) -> usize {
        self.pipeline.get_vocab_size(true)
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }

    fn frame(&self, ids: &[u32]) -> Vec<u32> {
        let kept = ids.len().min(self.max_len - 2);
        let mut framed = Vec::with_capacity(self.max_len);
        framed.push(self.bos_id);
        framed.extend_from_slice(&ids[..kept]);
        framed.push(self.eos_id);
        framed.resize(self.max_len, self.pad_id);
        framed
    }
}

/// NFC, runs of whitespace to one space, then lowercase as Python's `str.lower` does it.
#[derive(Debug, Clone)]
struct ClipNormalizer {
    whitespace: Replace,
}

impl ClipNormalizer {
    fn new() -> tokenizers::Result<ClipNormalizer> {
        Ok(ClipNormalizer { whitespace: Replace::new(ReplacePattern::Regex(r"\s+".into()), " ")? })
    }
}

impl Normalizer for ClipNormalizer {
    fn normalize(&self, normalized: &mut NormalizedString) -> tokenizers::Result<()> {
        NFC.normalize(normalized)?;
        self.whitespace.normalize(normalized)?;
        lowercase_with_final_sigma(normalized);
        Ok(())
    }
}

/// Lowercases char by char (keeping the alignments) but takes the chars from `str::to_lowercase`, which
/// writes a capital sigma at the end of a word as 'ς' as Python does, where `char::to_lowercase` (and the
/// tokenizers crate's Lowercase) always writes 'σ'. Both map every other char alike, so the chars of the
/// whole-string lowercase line up with each char's own lowercase.
fn lowercase_with_final_sigma(normalized: &mut NormalizedString) {
    let text = normalized.get();
    let lowered = text.to_lowercase();
    let mut lowered = lowered.chars();
    let mut changes = Vec::with_capacity(text.len());
    for c in text.chars() {
        for (i, own) in c.to_lowercase().enumerate() {
            changes.push((lowered.next().unwrap_or(own), isize::from(i > 0)));
        }
    }
    normalized.transform(changes, 0);
}

/// Trains CLIP's kind of tokenizer, a byte-level BPE with the `</w>` end-of-word
/// suffix, on `texts` (merges learned by `learn_bpe`), and writes the folder a Stable
/// Diffusion pipeline reads: tokenizer.json (CLIPConverter's pipeline around
/// the trained merges), tokenizer_config.json (the special tokens and the
/// length) and special_tokens_map.json. Merging runs until every word of the
/// texts is one token; other words fall back to their characters. The length
/// (`model_max_length`) is the longest text's tokens with the start and end
/// tokens, rounded up to a multiple of 8 to leave room for other prompts.
/// Returns the vocabulary size and the length, the text encoder's `vocab_size`
/// and `max_position_embeddings`.
pub fn train_tokenizer(texts: &[String], dir: &Path) -> Result<(usize, usize)> {
    let fail = |e: tokenizers::Error| Error::Usage(format!("training the tokenizer: {e}"));
    let whitespace = Replace::new(ReplacePattern::Regex(r"\s+".into()), " ").map_err(fail)?;
    let normalizer =
        NormalizerWrapper::Sequence(NormalizerSequence::new(vec![NFC.into(), whitespace.into(), Lowercase.into()]));
    let pre_tokenizer = clip_pre_tokenizer().map_err(fail)?;
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for text in texts {
        let mut normalized = NormalizedString::from(text.as_str());
        normalizer.normalize(&mut normalized).map_err(fail)?;
        let mut pieces = PreTokenizedString::from(normalized);
        pre_tokenizer.pre_tokenize(&mut pieces).map_err(fail)?;
        for (piece, _, _) in pieces.get_splits(OffsetReferential::Original, OffsetType::Byte) {
            *counts.entry(piece.to_string()).or_default() += 1;
        }
    }
    let (vocab, merges) = learn_bpe(&counts, MAX_TRAINED_VOCAB);
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .unk_token(END_OF_TEXT.to_string())
        .end_of_word_suffix(END_OF_WORD_SUFFIX.to_string())
        .build()
        .map_err(fail)?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_normalizer(Some(normalizer));
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.add_special_tokens(&[AddedToken::from(START_OF_TEXT, true), AddedToken::from(END_OF_TEXT, true)]);
    let id = |token: &str| tokenizer.token_to_id(token).ok_or_else(|| Error::Usage(format!("no id for {token}")));
    let (bos, eos) = (id(START_OF_TEXT)?, id(END_OF_TEXT)?);
    let mut longest = 0;
    for text in texts {
        longest = longest.max(tokenizer.encode(text.as_str(), false).map_err(fail)?.len());
    }
    let max_len = (longest + 2).next_multiple_of(8);
    let post = RobertaProcessing::new((END_OF_TEXT.into(), eos), (START_OF_TEXT.into(), bos))
        .trim_offsets(false)
        .add_prefix_space(false);
    tokenizer.with_post_processor(Some(PostProcessorWrapper::Roberta(post)));
    tokenizer.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::default())));

    std::fs::create_dir_all(dir).or_else(|e| file_err(dir, e.to_string()))?;
    let json_path = dir.join("tokenizer.json");
    let json = tokenizer.to_string(true).map_err(fail)?;
    crate::tensor::write_text_atomically(&json_path, &json)?;
    let special = serde_json::json!({
        "bos_token": START_OF_TEXT, "eos_token": END_OF_TEXT, "unk_token": END_OF_TEXT, "pad_token": END_OF_TEXT,
    });
    let mut config = special.clone();
    config["model_max_length"] = max_len.into();
    config["tokenizer_class"] = "CLIPTokenizer".into();
    config["do_lower_case"] = true.into();
    for (name, value) in [("tokenizer_config.json", &config), ("special_tokens_map.json", &special)] {
        let text = serde_json::to_string_pretty(value).map_err(|e| Error::Usage(e.to_string()))?;
        crate::tensor::write_text_atomically(&dir.join(name), &text)?;
    }
    Ok((tokenizer.get_vocab_size(true), max_len))
}

/// Byte-level BPE learned from word counts as the tokenizers crate's trainer learns it (each word's last
/// symbol carries the end-of-word suffix; the most frequent pair is merged until no pair is left or the
/// vocabulary is full), but reproducibly: a tie goes to the pair that sorts first, and ids follow a fixed
/// order (CLIP's two markers, the byte alphabet, the suffixed symbols, then each merge's result). The
/// crate's trainer numbers the suffixed symbols in hash-map order, so the same captions gave different
/// ids from run to run (huggingface/tokenizers#1794).
fn learn_bpe(counts: &BTreeMap<String, u64>, max_vocab: usize) -> (Vocab, Vec<(String, String)>) {
    let mut alphabet: Vec<char> = ByteLevel::alphabet().into_iter().collect();
    alphabet.sort_unstable();
    let mut words: Vec<(Vec<String>, u64)> = counts
        .iter()
        .map(|(word, &n)| {
            let mut symbols: Vec<String> = word.chars().map(String::from).collect();
            if let Some(last) = symbols.last_mut() {
                last.push_str(END_OF_WORD_SUFFIX);
            }
            (symbols, n)
        })
        .collect();
    let suffixed: BTreeSet<String> = words.iter().filter_map(|(symbols, _)| symbols.last().cloned()).collect();
    let mut tokens: Vec<String> = vec![START_OF_TEXT.into(), END_OF_TEXT.into()];
    tokens.extend(alphabet.iter().map(char::to_string));
    tokens.extend(suffixed);
    let mut merges = Vec::new();
    while tokens.len() < max_vocab {
        let mut pairs: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        for (symbols, n) in &words {
            for pair in symbols.windows(2) {
                *pairs.entry((&pair[0], &pair[1])).or_default() += n;
            }
        }
        let most = pairs.values().copied().max();
        let Some(((a, b), _)) = pairs.into_iter().find(|&(_, n)| Some(n) == most) else {
            break;
        };
        let (a, b) = (a.to_string(), b.to_string());
        let merged = format!("{a}{b}");
        for (symbols, _) in &mut words {
            let mut i = 0;
            while i + 1 < symbols.len() {
                if symbols[i] == a && symbols[i + 1] == b {
                    symbols[i] = merged.clone();
                    symbols.remove(i + 1);
                }
                i += 1;
            }
        }
        if !tokens.contains(&merged) {
            tokens.push(merged);
        }
        merges.push((a, b));
    }
    let vocab = tokens.into_iter().enumerate().map(|(id, token)| (token, id as u32)).collect();
    (vocab, merges)
}

/// CLIP's pieces (whitespace dropped), each then mapped to byte-level characters without further splitting.
fn clip_pre_tokenizer() -> tokenizers::Result<PreTokenizerWrapper> {
    let split = Split::new(SplitPattern::Regex(SPLIT_PATTERN.into()), SplitDelimiterBehavior::Removed, true)?;
    let (add_prefix_space, trim_offsets, use_regex) = (false, false, false);
    let byte_level = ByteLevel::new(add_prefix_space, trim_offsets, use_regex);
    Ok(PreTokenizerWrapper::Sequence(Sequence::new(vec![split.into(), byte_level.into()])))
}

/// The BPE model and the added tokens of a tokenizer.json, which must hold CLIP's kind of BPE.
fn model_from_tokenizer_json(path: &Path) -> Result<(ModelWrapper, Vec<AddedToken>)> {
    let tokenizer = Tokenizer::from_file(path).or_else(|e| file_err(path, e.to_string()))?;
    let model = tokenizer.get_model().clone();
    match &model {
        ModelWrapper::BPE(bpe) if bpe.end_of_word_suffix.as_deref() == Some(END_OF_WORD_SUFFIX) => {}
        ModelWrapper::BPE(_) => {
            return file_err(
                path,
                format!("the BPE model's end_of_word_suffix is not {END_OF_WORD_SUFFIX:?}: not CLIP's tokenizer"),
            )
        }
        _ => return file_err(path, "the model is not BPE: not CLIP's tokenizer"),
    }
    let mut added: Vec<(u32, AddedToken)> = tokenizer.get_added_tokens_decoder().into_iter().collect();
    added.sort_by_key(|(id, _)| *id);
    Ok((model, added.into_iter().map(|(_, token)| token).collect()))
}

/// The SD 1.x/2.x layout: vocab.json (token to id) and merges.txt (a "#version" line, then one merge a line).
fn model_from_vocab_and_merges(dir: &Path, unk: &str) -> Result<ModelWrapper> {
    let vocab_path = dir.join("vocab.json");
    let merges_path = dir.join("merges.txt");
    if !vocab_path.is_file() {
        return file_err(
            &vocab_path,
            "not found (a tokenizer folder needs tokenizer.json, or vocab.json and merges.txt)",
        );
    }
    let vocab_json = read_json(&vocab_path)?;
    let Value::Object(entries) = vocab_json else {
        return file_err(&vocab_path, "not a JSON object of token to id");
    };
    let mut vocab = Vocab::with_capacity(entries.len());
    for (token, id) in entries {
        let Some(id) = id.as_u64().and_then(|id| u32::try_from(id).ok()) else {
            return file_err(&vocab_path, format!("the id of {token:?} is {id}, not a token id"));
        };
        vocab.insert(token, id);
    }

    let merges_text = read_text(&merges_path)?;
    let mut merges = Vec::new();
    for (n, line) in merges_text.trim_end().lines().enumerate() {
        if n == 0 && line.starts_with("#version") {
            continue;
        }
        let Some((first, second)) = line.split_once(' ').filter(|(_, second)| !second.contains(' ')) else {
            return file_err(&merges_path, format!("line {}: {line:?} is not a merge (two tokens and a space)", n + 1));
        };
        merges.push((first.to_string(), second.to_string()));
        if merges.len() == MAX_MERGES {
            break;
        }
    }

    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .unk_token(unk.to_string())
        .end_of_word_suffix(END_OF_WORD_SUFFIX.to_string())
        .build()
        .or_else(|e| file_err(&merges_path, format!("does not fit vocab.json: {e}")))?;
    Ok(ModelWrapper::BPE(bpe))
}

/// The special tokens and the length, as transformers reads them: tokenizer_config.json, then
/// special_tokens_map.json over it; the slow CLIPTokenizer's defaults where neither names a token.
struct Config {
    /// The file named in errors about the special tokens.
    source: String,
    bos: String,
    eos: String,
    unk: String,
    pad: String,
    max_len: usize,
}

impl Config {
    fn from_dir(dir: &Path) -> Result<Config> {
        let config_path = dir.join("tokenizer_config.json");
        let map_path = dir.join("special_tokens_map.json");
        let config = read_optional_object(&config_path)?;
        let map = read_optional_object(&map_path)?;
        let token = |key: &str, default: &str| -> Result<String> {
            for (object, path) in [(&map, &map_path), (&config, &config_path)] {
                if let Some(value) = object.get(key) {
                    return token_content(value).ok_or_else(|| Error::File {
                        file: path.display().to_string(),
                        detail: format!("{key} is {value}, not a token (a string or an object with \"content\")"),
                    });
                }
            }
            Ok(default.to_string())
        };
        let max_len = match config.get("model_max_length") {
            None => DEFAULT_MAX_LEN,
            Some(value) => match value.as_u64().and_then(|n| usize::try_from(n).ok()) {
                Some(n) if n >= 2 => n,
                _ => {
                    return file_err(
                        &config_path,
                        format!("model_max_length is {value}: no room for the start and end tokens"),
                    )
                }
            },
        };
        Ok(Config {
            source: config_path.display().to_string(),
            bos: token("bos_token", START_OF_TEXT)?,
            eos: token("eos_token", END_OF_TEXT)?,
            unk: token("unk_token", END_OF_TEXT)?,
            pad: token("pad_token", END_OF_TEXT)?,
            max_len,
        })
    }
}

/// A special token as the configs write it: "text", or {"content": "text", ...}.
fn token_content(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

fn read_text(path: &PathBuf) -> Result<String> {
    std::fs::read_to_string(path).or_else(|e| file_err(path, e.to_string()))
}

fn read_json(path: &PathBuf) -> Result<Value> {
    serde_json::from_str(&read_text(path)?).or_else(|e| file_err(path, format!("invalid JSON: {e}")))
}

fn read_optional_object(path: &PathBuf) -> Result<Map<String, Value>> {
    if !path.exists() {
        return Ok(Map::new());
    }
    match read_json(path)? {
        Value::Object(object) => Ok(object),
        _ => file_err(path, "not a JSON object"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learn_bpe_breaks_ties_by_order_and_numbers_tokens_in_a_fixed_order() {
        let counts: BTreeMap<String, u64> = [("cd", 2), ("ab", 2), ("abab", 1)].map(|(w, n)| (w.into(), n)).into();
        let (vocab, merges) = learn_bpe(&counts, 1000);
        let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
        // ("a", "b</w>") is counted 3 times, ("c", "d</w>") twice; then ("a", "b") and ("b", "ab</w>") tie
        // at once each, and the one that sorts first is merged.
        assert_eq!(merges, [pair("a", "b</w>"), pair("c", "d</w>"), pair("a", "b"), pair("ab", "ab</w>")]);
        let ids = ["<|startoftext|>", "<|endoftext|>", "b</w>", "d</w>", "ab</w>", "cd</w>", "ab", "abab</w>"]
            .map(|token| vocab[token]);
        assert_eq!(ids, [0, 1, 258, 259, 260, 261, 262, 263]);
        assert_eq!(vocab.len(), 2 + 256 + 2 + merges.len());
    }

    #[test]
    fn training_twice_on_the_same_texts_gives_the_same_file() {
        let texts: Vec<String> = ["a photo of a red star on water", "a small blue circle, on sand", "the sky"]
            .iter()
            .cycle()
            .take(30)
            .map(|t| t.to_string())
            .collect();
        let root = std::env::temp_dir().join(format!("foil-train-tokenizer-{}", std::process::id()));
        let files: Vec<String> = (0..2)
            .map(|run| {
                let dir = root.join(run.to_string());
                train_tokenizer(&texts, &dir).unwrap();
                std::fs::read_to_string(dir.join("tokenizer.json")).unwrap()
            })
            .collect();
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(files[0], files[1]);
    }
}
