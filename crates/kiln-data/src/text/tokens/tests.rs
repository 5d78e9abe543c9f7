use super::*;
use crate::text::tokenizer::tests::shakespeare_path;

/// The known pattern of the large-file tests.
fn pattern(i: usize) -> u32 {
    (i as u64 * 7919 % 60_000) as u32
}

const BIG: usize = 1_000_003;

/// Writes BIG tokens of the pattern (with `planted` at `plant_at`), opens
/// the file and checks the reads.
fn check_big_file(dtype: TokenDtype) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.bin");
    let count = write_token_file(&path, dtype, (0..BIG).map(pattern)).unwrap();
    assert_eq!(count, BIG as u64);
    assert!(!tmp_path(&path).exists());
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        (BIG * dtype.width()) as u64
    );
    let file = TokenFile::open(&path, dtype).unwrap();
    assert_eq!(file.len(), BIG);
    assert!(!file.is_empty());
    assert_eq!(file.dtype(), dtype);
    assert_eq!(file.path(), path);

    let mut buf = vec![0u32; 1000];
    for start in [0, 1, 4095, 4096, 123_457, 500_000, 999_001, BIG - 1000] {
        file.read_into(start, &mut buf);
        let expected: Vec<u32> = (start..start + 1000).map(pattern).collect();
        assert_eq!(buf, expected, "read at {start}");
    }
    let mut last = [0u32; 1];
    file.read_into(BIG - 1, &mut last);
    assert_eq!(last[0], pattern(BIG - 1));
    file.read_into(BIG, &mut []);

    file.check_vocab(60_000, 4096).unwrap();
    let msg = file.check_vocab(59_999, 4096).unwrap_err().to_string();
    let first = (0..BIG).find(|&i| pattern(i) >= 59_999).unwrap();
    assert!(
        msg.contains(&format!("token id 59999 at position {first} is beyond")),
        "{msg}"
    );
    drop(file);

    // Plant one id out of range near the end.
    let planted_at = BIG - 17;
    let ids = (0..BIG).map(|i| if i == planted_at { 65_000 } else { pattern(i) });
    write_token_file(&path, dtype, ids).unwrap();
    let file = TokenFile::open(&path, dtype).unwrap();
    let msg = file.check_vocab(60_000, 4096).unwrap_err().to_string();
    assert_eq!(
        msg,
        format!(
            "{}: token id 65000 at position {planted_at} is beyond the vocabulary (60000 \
             tokens); the file was written with a different tokenizer, or model/data \
             vocab_size is too small",
            path.display()
        )
    );
    file.check_vocab(65_001, 4096).unwrap();
    // Chunks larger than the file and chunks of 1 find the same token.
    let msg = file.check_vocab(60_000, 10 * BIG).unwrap_err().to_string();
    assert!(msg.contains(&format!("at position {planted_at} ")), "{msg}");
}

#[test]
fn big_u16_file_reads_back_in_chunks() {
    check_big_file(TokenDtype::U16);
}

#[test]
fn big_u32_file_reads_back_in_chunks() {
    check_big_file(TokenDtype::U32);
}

#[test]
fn u32_file_holds_large_ids_and_u16_refuses_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wide.bin");
    let ids = [0, 65_535, 65_536, u32::MAX];
    write_token_file(&path, TokenDtype::U32, ids).unwrap();
    let file = TokenFile::open(&path, TokenDtype::U32).unwrap();
    let mut out = [0u32; 4];
    file.read_into(0, &mut out);
    assert_eq!(out, ids);

    let narrow = dir.path().join("narrow.bin");
    let msg = write_token_file(&narrow, TokenDtype::U16, [1, 65_535, 65_536])
        .unwrap_err()
        .to_string();
    assert!(
        msg.starts_with("token id 65536 at position 2 does not fit a u16 token file"),
        "{msg}"
    );
    assert!(msg.contains("u32"), "{msg}");
    assert!(!narrow.exists() && !tmp_path(&narrow).exists());
}

#[test]
fn open_rejects_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let odd = dir.path().join("odd.bin");
    std::fs::write(&odd, [0u8; 10]).unwrap();
    let msg = TokenFile::open(&odd, TokenDtype::U32)
        .unwrap_err()
        .to_string();
    assert!(msg.starts_with(&odd.display().to_string()), "{msg}");
    assert!(
        msg.contains("size 10 bytes is not a multiple of 4 bytes, the width of a u32 token"),
        "{msg}"
    );
    assert!(msg.contains("dtype u16"), "{msg}");
    assert_eq!(TokenFile::open(&odd, TokenDtype::U16).unwrap().len(), 5);

    let truncated = dir.path().join("truncated.bin");
    std::fs::write(&truncated, [0u8; 7]).unwrap();
    let msg = TokenFile::open(&truncated, TokenDtype::U16)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("not a multiple of 2 bytes"), "{msg}");
    assert!(msg.contains("truncated"), "{msg}");

    let empty = dir.path().join("empty.bin");
    std::fs::write(&empty, []).unwrap();
    let msg = TokenFile::open(&empty, TokenDtype::U16)
        .unwrap_err()
        .to_string();
    assert!(msg.starts_with(&empty.display().to_string()), "{msg}");
    assert!(msg.contains("empty"), "{msg}");

    let missing = dir.path().join("absent.bin");
    let msg = TokenFile::open(&missing, TokenDtype::U16)
        .unwrap_err()
        .to_string();
    assert!(
        msg.starts_with(&format!("cannot open token file {}", missing.display())),
        "{msg}"
    );
}

#[test]
#[should_panic(expected = "out of bounds")]
fn reading_past_the_end_panics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.bin");
    write_token_file(&path, TokenDtype::U16, [1, 2, 3]).unwrap();
    let file = TokenFile::open(&path, TokenDtype::U16).unwrap();
    file.read_into(1, &mut [0; 3]);
}

#[test]
fn dtype_parses_and_prints() {
    assert_eq!("u16".parse::<TokenDtype>().unwrap(), TokenDtype::U16);
    assert_eq!("u32".parse::<TokenDtype>().unwrap(), TokenDtype::U32);
    let msg = "i32".parse::<TokenDtype>().unwrap_err().to_string();
    assert!(msg.contains("\"i32\""), "{msg}");
    assert!(msg.contains("\"u16\" or \"u32\""), "{msg}");
    assert_eq!(TokenDtype::U16.to_string(), "u16");
    assert_eq!(TokenDtype::U32.width(), 4);
    assert_eq!(serde_json::to_string(&TokenDtype::U32).unwrap(), "\"u32\"");
}

#[test]
fn meta_sits_next_to_the_token_file() {
    assert_eq!(
        meta_path(Path::new("data/train.bin")),
        Path::new("data/train.json")
    );
    assert_eq!(meta_path(Path::new("a.b.bin")), Path::new("a.b.json"));
    assert_eq!(meta_path(Path::new("tokens")), Path::new("tokens.json"));
}

#[test]
fn read_meta_handles_missing_and_malformed_sidecars() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("train.bin");
    assert_eq!(read_meta(&bin).unwrap(), None);

    let json = dir.path().join("train.json");
    std::fs::write(
        &json,
        r#"{"format":"kiln-tokens","dtype":"u32","tokens":5,"vocab_size":9}"#,
    )
    .unwrap();
    let meta = read_meta(&bin).unwrap().unwrap();
    assert_eq!(meta.dtype, TokenDtype::U32);
    assert_eq!((meta.tokens, meta.vocab_size), (5, 9));
    assert_eq!(meta.tokenizer, None);

    for (content, expected) in [
        (
            r#"{"format":"kiln-tokens","dtype":"u8","tokens":5,"vocab_size":9}"#,
            "malformed",
        ),
        (r#"{"format":"kiln-tokens","tokens":5}"#, "malformed"),
        ("[1, 2", "malformed"),
        (
            r#"{"format":"other","dtype":"u16","tokens":5,"vocab_size":9}"#,
            "not \"kiln-tokens\"",
        ),
    ] {
        std::fs::write(&json, content).unwrap();
        let msg = read_meta(&bin).unwrap_err().to_string();
        assert!(msg.starts_with(&json.display().to_string()), "{msg}");
        assert!(msg.contains(expected), "{content}: {msg}");
    }
}

#[test]
fn tokenize_file_matches_the_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let input = shakespeare_path();
    let output = dir.path().join("shakespeare.bin");
    let summary = tokenize_file(&input, &output, TokenDtype::U16, None).unwrap();

    let text = read_text(&input).unwrap();
    let tokenizer = CharTokenizer::from_text(&text).unwrap();
    let expected = tokenizer.encode(&text).unwrap();
    assert_eq!(summary.tokens, expected.len() as u64);
    assert_eq!(summary.vocab_size, 66);
    assert_eq!(summary.meta, dir.path().join("shakespeare.json"));
    assert_eq!(summary.output, output);

    let meta = read_meta(&output).unwrap().unwrap();
    assert_eq!(meta.format, "kiln-tokens");
    assert_eq!(meta.dtype, TokenDtype::U16);
    assert_eq!(meta.tokens, expected.len() as u64);
    assert_eq!(meta.vocab_size, 66);
    let stored = CharTokenizer::from_json(meta.tokenizer.as_ref().unwrap(), &summary.meta).unwrap();
    assert_eq!(stored, tokenizer);

    let file = TokenFile::open(&output, meta.dtype).unwrap();
    let mut ids = vec![0; file.len()];
    file.read_into(0, &mut ids);
    assert_eq!(ids, expected);
    file.check_vocab(meta.vocab_size, 4096).unwrap();

    let u32_out = dir.path().join("wide.bin");
    tokenize_file(&input, &u32_out, TokenDtype::U32, None).unwrap();
    let file = TokenFile::open(&u32_out, TokenDtype::U32).unwrap();
    let mut ids = vec![0; file.len()];
    file.read_into(0, &mut ids);
    assert_eq!(ids, expected);
}

#[test]
fn tokenize_file_refuses_to_overwrite_its_input() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("text.bin");
    std::fs::write(&text, "some text").unwrap();
    let msg = tokenize_file(&text, &text, TokenDtype::U16, None)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("overwrite the input"), "{msg}");
    assert_eq!(std::fs::read_to_string(&text).unwrap(), "some text");

    let json_out = dir.path().join("out.json");
    let msg = tokenize_file(&text, &json_out, TokenDtype::U16, None)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("must not end in .json"), "{msg}");
}

#[test]
fn tokenize_file_needs_u32_for_huge_vocabularies() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("wide.txt");
    // 65,537 distinct characters (skipping the surrogate gap).
    let text: String = (0x1000u32..)
        .filter_map(char::from_u32)
        .take(65_537)
        .collect();
    std::fs::write(&input, &text).unwrap();
    let out = dir.path().join("wide.bin");
    let msg = tokenize_file(&input, &out, TokenDtype::U16, None)
        .unwrap_err()
        .to_string();
    assert!(msg.starts_with(&input.display().to_string()), "{msg}");
    assert!(msg.contains("has 65537 tokens"), "{msg}");
    assert!(msg.contains("use dtype u32"), "{msg}");
    let summary = tokenize_file(&input, &out, TokenDtype::U32, None).unwrap();
    assert_eq!(summary.vocab_size, 65_537);
}
