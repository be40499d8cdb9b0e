//! The CLIP tokenizer against transformers' slow CLIPTokenizer (fixtures from scripts/fixtures/tokenizer.py):
//! every case in the SD 1.x layout (vocab.json + merges.txt), from a tokenizer.json, and with SD 2.x's pad
//! token "!".

use std::path::{Path, PathBuf};

use foil::models::clip_tokenizer::ClipTokenizer;
use serde_json::Value;

const MAX_LEN: usize = 77;
const BOS: u32 = 49406;
const EOS: u32 = 49407;
const SD2_PAD: u32 = 0;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip-tokenizer")
}

fn load(layout: &str) -> ClipTokenizer {
    let dir = fixture_dir().join(layout);
    ClipTokenizer::from_dir(&dir).unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()))
}

struct Case {
    text: String,
    /// The reference ids up to the end token, per key of cases.json ("sd1", "sd2", "fast_sd1", ...).
    ids: Value,
}

fn cases(list: &str) -> Vec<Case> {
    let path = fixture_dir().join("cases.json");
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("reading cases.json")).expect("parsing cases.json");
    json[list]
        .as_array()
        .unwrap_or_else(|| panic!("cases.json has no list {list:?}"))
        .iter()
        .map(|case| Case { text: case["text"].as_str().expect("text").to_string(), ids: case.clone() })
        .collect()
}

/// The reference ids padded to MAX_LEN: the fixture script checked that padding only appends the pad id.
fn expected(case: &Case, key: &str, pad: u32) -> Vec<u32> {
    let mut ids: Vec<u32> = case.ids[key]
        .as_array()
        .unwrap_or_else(|| panic!("{:?} has no {key}", case.text))
        .iter()
        .map(|id| id.as_u64().expect("id") as u32)
        .collect();
    ids.resize(MAX_LEN, pad);
    ids
}

/// Encodes every case one by one and as a batch; prints and returns the texts whose ids differ.
fn check(tokenizer: &ClipTokenizer, cases: &[Case], key: &str, pad: u32, what: &str) {
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    let batch = tokenizer.encode_batch(&texts).expect("encode_batch");
    assert_eq!(batch.len(), cases.len());
    let mut failed = Vec::new();
    for (case, batched) in cases.iter().zip(&batch) {
        let ids = tokenizer.encode(&case.text).expect("encode");
        let want = expected(case, key, pad);
        if ids != want || *batched != want {
            failed.push(format!("{:?}\n  ours  {ids:?}\n  want  {want:?}", case.text));
        }
    }
    println!("{what}: {} of {} cases match", cases.len() - failed.len(), cases.len());
    assert!(failed.is_empty(), "{what}: {} mismatches:\n{}", failed.len(), failed.join("\n"));
}

#[test]
fn sd1_layout_matches_the_slow_tokenizer() {
    let tokenizer = load("sd1");
    assert_eq!(
        (tokenizer.max_len(), tokenizer.bos_id(), tokenizer.eos_id(), tokenizer.pad_id()),
        (MAX_LEN, BOS, EOS, EOS)
    );
    check(&tokenizer, &cases("cases"), "sd1", EOS, "sd1 (vocab.json + merges.txt)");
}

#[test]
fn tokenizer_json_matches_the_slow_tokenizer() {
    let tokenizer = load("json");
    assert_eq!(
        (tokenizer.max_len(), tokenizer.bos_id(), tokenizer.eos_id(), tokenizer.pad_id()),
        (MAX_LEN, BOS, EOS, EOS)
    );
    check(&tokenizer, &cases("cases"), "sd1", EOS, "json (tokenizer.json)");
}

#[test]
fn sd2_pad_token_matches_the_slow_tokenizer() {
    let tokenizer = load("sd2");
    assert_eq!(
        (tokenizer.max_len(), tokenizer.bos_id(), tokenizer.eos_id(), tokenizer.pad_id()),
        (MAX_LEN, BOS, EOS, SD2_PAD)
    );
    check(&tokenizer, &cases("cases"), "sd2", SD2_PAD, "sd2 (pad \"!\")");
}

/// Where the slow tokenizer's ftfy rewrites the text first, the ids are those of the fast tokenizer, which
/// runs the same pipeline without ftfy.
#[test]
fn ftfy_texts_match_the_fast_tokenizer() {
    let ftfy_cases = cases("ftfy_cases");
    check(&load("sd1"), &ftfy_cases, "fast_sd1", EOS, "sd1, texts ftfy would rewrite");
    check(&load("json"), &ftfy_cases, "fast_sd1", EOS, "json, texts ftfy would rewrite");
    check(&load("sd2"), &ftfy_cases, "fast_sd2", SD2_PAD, "sd2, texts ftfy would rewrite");
}

/// Letters newer than the reference interpreter's Unicode database: lowercased as the fast tokenizer does.
#[test]
fn letters_newer_than_the_reference_python_lowercase_as_the_fast_tokenizer_does() {
    let newer = cases("unicode_version_cases");
    check(&load("sd1"), &newer, "fast_sd1", EOS, "sd1, letters newer than Unicode 14");
    check(&load("sd2"), &newer, "fast_sd2", SD2_PAD, "sd2, letters newer than Unicode 14");
}

/// A scratch folder under the system temp dir, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("foil-clip-tokenizer-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating a scratch folder");
        Scratch(dir)
    }

    fn write(&self, name: &str, contents: &str) {
        std::fs::write(self.0.join(name), contents).expect("writing a scratch file");
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Loading `dir` fails with a one-line message that names `file`.
fn assert_error_names(dir: &Path, file: &str) {
    let message = match ClipTokenizer::from_dir(dir) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    };
    println!("{message}");
    assert!(!message.contains('\n'), "not one line: {message}");
    assert!(message.contains(file), "{message:?} does not name {file}");
}

#[test]
fn a_missing_folder_is_an_error_naming_it() {
    let dir = fixture_dir().join("no-such-folder");
    assert_error_names(&dir, "no-such-folder");
}

#[test]
fn a_folder_without_vocabulary_is_an_error_naming_vocab_json() {
    let scratch = Scratch::new("empty");
    assert_error_names(&scratch.0, "vocab.json");
}

#[test]
fn a_corrupt_vocab_json_is_an_error_naming_it() {
    let scratch = Scratch::new("corrupt-vocab");
    scratch.write("vocab.json", "{\"a\": 0, \"b\": ");
    scratch.write("merges.txt", "#version: 0.2\na b\n");
    assert_error_names(&scratch.0, "vocab.json");
    scratch.write("vocab.json", "{\"a\": 0, \"b\": -1}");
    assert_error_names(&scratch.0, "vocab.json");
}

#[test]
fn a_missing_or_corrupt_merges_txt_is_an_error_naming_it() {
    let scratch = Scratch::new("merges");
    scratch.write("vocab.json", "{\"a\": 0, \"b\": 1, \"ab\": 2, \"<|startoftext|>\": 3, \"<|endoftext|>\": 4}");
    assert_error_names(&scratch.0, "merges.txt");
    scratch.write("merges.txt", "#version: 0.2\na b c\n");
    assert_error_names(&scratch.0, "merges.txt");
    scratch.write("merges.txt", "#version: 0.2\na x\n");
    assert_error_names(&scratch.0, "merges.txt");
}

#[test]
fn a_corrupt_tokenizer_json_or_config_is_an_error_naming_it() {
    let scratch = Scratch::new("json");
    scratch.write("tokenizer.json", "{\"model\": ");
    assert_error_names(&scratch.0, "tokenizer.json");
    let tokenizer_json = std::fs::read_to_string(fixture_dir().join("json/tokenizer.json")).expect("tokenizer.json");
    scratch.write("tokenizer.json", &tokenizer_json);
    scratch.write("tokenizer_config.json", "{\"model_max_length\": 1}");
    assert_error_names(&scratch.0, "tokenizer_config.json");
    scratch.write("tokenizer_config.json", "{\"pad_token\": 5}");
    assert_error_names(&scratch.0, "tokenizer_config.json");
    scratch.write("tokenizer_config.json", "[]");
    assert_error_names(&scratch.0, "tokenizer_config.json");
}

/// Without tokenizer_config.json the defaults are the slow CLIPTokenizer's, and 77 positions.
#[test]
fn defaults_without_a_config() {
    let scratch = Scratch::new("defaults");
    let tokenizer_json = std::fs::read_to_string(fixture_dir().join("json/tokenizer.json")).expect("tokenizer.json");
    scratch.write("tokenizer.json", &tokenizer_json);
    let tokenizer = ClipTokenizer::from_dir(&scratch.0).expect("loading tokenizer.json alone");
    assert_eq!(
        (tokenizer.max_len(), tokenizer.bos_id(), tokenizer.eos_id(), tokenizer.pad_id()),
        (MAX_LEN, BOS, EOS, EOS)
    );
    let ids = tokenizer.encode("a photo of a cat").expect("encode");
    assert_eq!(&ids[..7], &[BOS, 320, 1125, 539, 320, 2368, EOS]);
}
