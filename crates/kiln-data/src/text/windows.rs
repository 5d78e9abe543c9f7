//! The training and validation token streams of a language model.
//!
//! A [`TokenSource`] holds a whole token sequence, in memory (a tokenized
//! text) or in a mapped [`TokenFile`]; a [`TokenSpan`] is a contiguous range
//! of one, and [`TokenSpan::split_tail`] cuts a span into a training prefix
//! and a validation suffix.
//!
//! Training draws [`random_windows`]: each row of a [`TokenBatch`] is a window
//! of `block_size + 1` consecutive tokens at a random start, `x` its first
//! `block_size` tokens and `y` its last `block_size` (the next token of each
//! position). A batch is a pure function of `(seed, index)`, so resuming at
//! batch `index` reproduces the run exactly. Evaluation walks the span with
//! [`eval_windows`]: non-overlapping windows in order, the same every time.
//!
//! Call [`check_span`] first: the window functions panic on a span shorter
//! than `block_size + 1` tokens.

use std::fmt;
use std::sync::Arc;

use anyhow::{bail, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::tokens::TokenFile;

/// A whole token sequence: held in memory (a tokenized text) or in a mapped
/// token file.
#[derive(Clone)]
pub enum TokenSource {
    /// Token ids in memory.
    Memory(Arc<Vec<u32>>),
    /// A memory-mapped token file.
    File(Arc<TokenFile>),
}

impl TokenSource {
    /// Number of tokens.
    pub fn len(&self) -> usize {
        match self {
            TokenSource::Memory(ids) => ids.len(),
            TokenSource::File(file) => file.len(),
        }
    }

    /// Whether the source holds no tokens.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies the tokens `[start, start + out.len())` into `out`.
    ///
    /// # Panics
    /// If the range reaches past the end.
    pub fn read_into(&self, start: usize, out: &mut [u32]) {
        match self {
            TokenSource::Memory(ids) => out.copy_from_slice(&ids[start..start + out.len()]),
            TokenSource::File(file) => file.read_into(start, out),
        }
    }
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::Memory(ids) => write!(f, "Memory({} tokens)", ids.len()),
            TokenSource::File(file) => write!(f, "File({file:?})"),
        }
    }
}

/// A contiguous range `[start, end)` of a [`TokenSource`].
#[derive(Clone, Debug)]
pub struct TokenSpan {
    /// The sequence the span is part of.
    pub source: TokenSource,
    /// First token of the span.
    pub start: usize,
    /// One past the last token of the span.
    pub end: usize,
}

impl TokenSpan {
    /// The span of all of `source`.
    pub fn whole(source: TokenSource) -> Self {
        let end = source.len();
        TokenSpan {
            source,
            start: 0,
            end,
        }
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.end.saturating_sub(self.start)
    }

    /// Whether the span holds no tokens.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies the span's tokens `[offset, offset + out.len())` (relative to
    /// `start`) into `out`.
    ///
    /// # Panics
    /// If the range reaches past the end of the span.
    pub fn read_into(&self, offset: usize, out: &mut [u32]) {
        assert!(
            offset
                .checked_add(out.len())
                .is_some_and(|end| end <= self.len()),
            "token range {offset}..{offset}+{} is out of bounds for a span of {} tokens",
            out.len(),
            self.len()
        );
        self.source.read_into(self.start + offset, out);
    }

    /// Splits the span by position into `(train, valid)`: `valid` is the last
    /// `floor(len * valid_fraction)` tokens and `train` everything before
    /// them, so a fraction of 0 gives an empty validation span.
    ///
    /// # Panics
    /// If `valid_fraction` is not in `[0, 1)`.
    pub fn split_tail(self, valid_fraction: f64) -> (TokenSpan, TokenSpan) {
        assert!(
            (0.0..1.0).contains(&valid_fraction),
            "validation fraction must be in [0, 1), got {valid_fraction}"
        );
        let valid_len = (self.len() as f64 * valid_fraction).floor() as usize;
        let cut = self.end - valid_len;
        let valid = TokenSpan {
            source: self.source.clone(),
            start: cut,
            end: self.end,
        };
        let train = TokenSpan {
            source: self.source,
            start: self.start,
            end: cut,
        };
        (train, valid)
    }
}

/// A batch of windows: `x` and `y` are `rows * block_size` token ids
/// (row-major), `y` is `x` shifted by one position (the next tokens).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenBatch {
    /// The input tokens, `[rows, block_size]`.
    pub x: Vec<i64>,
    /// The target tokens, `[rows, block_size]`: row `r` of `y` is the window
    /// of row `r` of `x` moved one token on.
    pub y: Vec<i64>,
    /// Number of windows.
    pub rows: usize,
    /// Tokens per window.
    pub block_size: usize,
}

impl TokenBatch {
    /// An empty batch with room for `rows` windows.
    fn with_capacity(rows: usize, block_size: usize) -> Self {
        TokenBatch {
            x: Vec::with_capacity(rows * block_size),
            y: Vec::with_capacity(rows * block_size),
            rows: 0,
            block_size,
        }
    }

    /// Appends the window `tokens` (`block_size + 1` tokens) as a row.
    fn push_window(&mut self, tokens: &[u32]) {
        debug_assert_eq!(tokens.len(), self.block_size + 1);
        let n = self.block_size;
        self.x.extend(tokens[..n].iter().map(|&t| i64::from(t)));
        self.y.extend(tokens[1..].iter().map(|&t| i64::from(t)));
        self.rows += 1;
    }
}

/// Checks that `span` holds at least `block_size + 1` tokens (one window) and
/// that `block_size` is at least 1. `what` names the span in the error, e.g.
/// "the training split of datasets/text/shakespeare.txt".
pub fn check_span(span: &TokenSpan, block_size: usize, what: &str) -> Result<()> {
    if block_size == 0 {
        bail!("block_size is 0; set model.block_size to at least 1");
    }
    let needed = block_size.saturating_add(1);
    if span.len() < needed {
        bail!(
            "{what} has {} tokens, fewer than block_size + 1 = {needed}; use a smaller \
             model.block_size or more data",
            span.len()
        );
    }
    Ok(())
}

/// `rows` random windows of `block_size + 1` tokens. Each start is uniform
/// over every valid start `0..=len - block_size - 1`, drawn from a
/// `ChaCha8Rng` seeded with `seed` on stream `index`. The batch is a pure
/// function of `(seed, index)`: the same arguments give the same batch on any
/// thread, which is how resuming stays exact.
///
/// # Panics
/// If `span` holds fewer than `block_size + 1` tokens (see [`check_span`]).
pub fn random_windows(
    span: &TokenSpan,
    block_size: usize,
    rows: usize,
    seed: u64,
    index: u64,
) -> TokenBatch {
    random_windows_from(span, block_size, rows, seed, index, 0)
}

/// Rows `skip..skip + rows` of the batch [`random_windows`] would draw with
/// `skip + rows` rows: a data-parallel worker's shard of a batch shared by all
/// workers.
pub fn random_windows_from(
    span: &TokenSpan,
    block_size: usize,
    rows: usize,
    seed: u64,
    index: u64,
    skip: usize,
) -> TokenBatch {
    assert!(
        span.len() > block_size,
        "a span of {} tokens holds no window of block_size + 1 = {} tokens; call check_span first",
        span.len(),
        block_size + 1
    );
    let last_start = span.len() - block_size - 1;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index);
    let mut window = vec![0u32; block_size + 1];
    let mut batch = TokenBatch::with_capacity(rows, block_size);
    for _ in 0..skip {
        rng.random_range(0..=last_start);
    }
    for _ in 0..rows {
        let start = rng.random_range(0..=last_start);
        span.read_into(start, &mut window);
        batch.push_window(&window);
    }
    batch
}

/// Number of windows [`eval_windows`] yields in total (before `max_batches`):
/// the starts `0, block_size, 2 * block_size, ...` with
/// `start + block_size + 1 <= len`.
pub fn eval_window_count(span: &TokenSpan, block_size: usize) -> usize {
    if block_size == 0 || span.len() <= block_size {
        return 0;
    }
    (span.len() - 1) / block_size
}

/// The deterministic evaluation pass: the non-overlapping windows starting at
/// `0, block_size, 2 * block_size, ...` (every start with
/// `start + block_size + 1 <= len`), in order, in batches of at most
/// `batch_rows` rows, and at most `max_batches` batches if given. A span
/// shorter than one window yields nothing.
///
/// # Panics
/// If `batch_rows` is 0.
pub fn eval_windows(
    span: &TokenSpan,
    block_size: usize,
    batch_rows: usize,
    max_batches: Option<usize>,
) -> impl Iterator<Item = TokenBatch> + '_ {
    assert!(batch_rows > 0, "eval batch_rows must be at least 1");
    let windows = eval_window_count(span, block_size);
    let batches = windows
        .div_ceil(batch_rows)
        .min(max_batches.unwrap_or(usize::MAX));
    (0..batches).map(move |b| {
        let first = b * batch_rows;
        let rows = batch_rows.min(windows - first);
        // The windows of a batch are contiguous: read their tokens at once,
        // plus the one token the last window's `y` needs.
        let mut tokens = vec![0u32; rows * block_size + 1];
        span.read_into(first * block_size, &mut tokens);
        let n = rows * block_size;
        TokenBatch {
            x: tokens[..n].iter().map(|&t| i64::from(t)).collect(),
            y: tokens[1..].iter().map(|&t| i64::from(t)).collect(),
            rows,
            block_size,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::tokens::{write_token_file, TokenDtype};

    /// A span over the tokens `offset, offset + 1, ...` (`len` of them), so a
    /// token's value tells its position.
    fn counting(len: usize, offset: u32) -> TokenSpan {
        TokenSpan::whole(TokenSource::Memory(Arc::new(
            (0..len as u32).map(|i| i + offset).collect(),
        )))
    }

    /// Token value -> position in `counting(_, 1000)`'s source.
    fn pos(token: i64) -> usize {
        (token - 1000) as usize
    }

    #[test]
    fn random_windows_are_shifted_windows_of_the_source() {
        // Pseudo-random tokens, so that a wrong shift cannot go unnoticed.
        let source: Vec<u32> = (0..5000u32)
            .map(|i| i.wrapping_mul(2_654_435_761) >> 20)
            .collect();
        let span = TokenSpan::whole(TokenSource::Memory(Arc::new(source.clone())));
        let (block, rows) = (16, 8);
        let batch = random_windows(&span, block, rows, 42, 3);
        assert_eq!((batch.rows, batch.block_size), (rows, block));
        assert_eq!(batch.x.len(), rows * block);
        assert_eq!(batch.y.len(), rows * block);
        for r in 0..rows {
            let x = &batch.x[r * block..(r + 1) * block];
            let y = &batch.y[r * block..(r + 1) * block];
            // Find the start of this window in the source.
            let start = (0..=source.len() - block - 1)
                .find(|&s| {
                    (0..block).all(|i| i64::from(source[s + i]) == x[i])
                        && (0..block).all(|i| i64::from(source[s + 1 + i]) == y[i])
                })
                .unwrap_or_else(|| panic!("row {r} is not a shifted window of the source"));
            assert!(start + block < source.len());
        }
    }

    #[test]
    fn random_windows_are_a_function_of_seed_and_index() {
        let span = counting(10_000, 1000);
        let a = random_windows(&span, 32, 4, 7, 11);
        let b = std::thread::spawn({
            let span = span.clone();
            move || random_windows(&span, 32, 4, 7, 11)
        })
        .join()
        .unwrap();
        assert_eq!(a, b);
        assert_ne!(a, random_windows(&span, 32, 4, 7, 12));
        assert_ne!(a, random_windows(&span, 32, 4, 8, 11));
        // Windows of a counting source: y = x + 1 everywhere.
        assert!(a.x.iter().zip(&a.y).all(|(x, y)| y - x == 1));
    }

    #[test]
    fn random_windows_cover_every_start_and_stay_in_range() {
        let block = 5;
        let span = counting(block + 2, 1000); // valid starts: 0 and 1
        let mut seen = [0usize; 2];
        for index in 0..50 {
            let batch = random_windows(&span, block, 4, 1, index);
            for r in 0..batch.rows {
                let start = pos(batch.x[r * block]);
                assert!(start <= 1, "start {start} out of range");
                assert_eq!(pos(batch.y[(r + 1) * block - 1]), start + block);
                seen[start] += 1;
            }
        }
        assert!(seen[0] > 0 && seen[1] > 0, "{seen:?}");

        // A span whose only window is the whole span.
        let exact = counting(block + 1, 1000);
        let batch = random_windows(&exact, block, 3, 9, 0);
        assert!(batch.x.chunks(block).all(|row| pos(row[0]) == 0));
    }

    #[test]
    fn random_windows_stay_inside_a_sub_span() {
        let (train, valid) = counting(1000, 1000).split_tail(0.1);
        let batch = random_windows(&valid, 10, 64, 3, 0);
        assert!(batch
            .x
            .iter()
            .chain(&batch.y)
            .all(|&t| (900..1000).contains(&pos(t))));
        let batch = random_windows(&train, 10, 64, 3, 0);
        assert!(batch.x.iter().chain(&batch.y).all(|&t| pos(t) < 900));
    }

    #[test]
    #[should_panic(expected = "call check_span first")]
    fn random_windows_of_a_short_span_panic() {
        random_windows(&counting(5, 0), 5, 1, 0, 0);
    }

    #[test]
    fn split_tail_cuts_by_position() {
        let span = counting(1001, 1000);
        let (train, valid) = span.clone().split_tail(0.1);
        assert_eq!((train.start, train.end), (0, 901));
        assert_eq!((valid.start, valid.end), (901, 1001));
        assert_eq!(train.len() + valid.len(), span.len());
        let mut first = [0u32; 1];
        valid.read_into(0, &mut first);
        assert_eq!(first[0], 1901);
        let mut last = [0u32; 1];
        train.read_into(train.len() - 1, &mut last);
        assert_eq!(last[0], 1900);

        let (train, valid) = span.clone().split_tail(0.0);
        assert_eq!(train.len(), 1001);
        assert!(valid.is_empty());

        // Splitting a sub-span splits inside it.
        let (inner_train, inner_valid) = train.clone().split_tail(0.5);
        let (a, b) = inner_train.split_tail(0.5);
        assert_eq!((a.start, a.end, b.start, b.end), (0, 251, 251, 501));
        assert_eq!((inner_valid.start, inner_valid.end), (501, 1001));
    }

    #[test]
    #[should_panic(expected = "validation fraction must be in [0, 1)")]
    fn split_tail_rejects_a_fraction_of_one() {
        let _ = counting(10, 0).split_tail(1.0);
    }

    #[test]
    fn eval_windows_walk_the_span_in_order() {
        let block = 4;
        // 23 tokens: starts 0, 4, 8, 12, 16 (16 + 5 <= 23); 20 + 5 > 23.
        let span = counting(23, 1000);
        assert_eq!(eval_window_count(&span, block), 5);
        let batches: Vec<TokenBatch> = eval_windows(&span, block, 2, None).collect();
        let rows: Vec<usize> = batches.iter().map(|b| b.rows).collect();
        assert_eq!(rows, vec![2, 2, 1]);
        let x: Vec<i64> = batches.iter().flat_map(|b| b.x.clone()).collect();
        let y: Vec<i64> = batches.iter().flat_map(|b| b.y.clone()).collect();
        assert_eq!(x, (1000..1020).collect::<Vec<i64>>());
        assert_eq!(y, (1001..1021).collect::<Vec<i64>>());
        assert!(batches.iter().all(|b| b.block_size == block));
        assert!(batches.iter().all(|b| b.x.len() == b.rows * block));

        // One more token makes room for the window at 20.
        assert_eq!(eval_window_count(&counting(25, 0), block), 6);
        assert_eq!(eval_window_count(&counting(24, 0), block), 5);

        let limited: Vec<TokenBatch> = eval_windows(&span, block, 2, Some(2)).collect();
        assert_eq!(limited, batches[..2]);
        assert_eq!(eval_windows(&span, block, 2, Some(0)).count(), 0);
        assert_eq!(eval_windows(&span, block, 100, Some(9)).count(), 1);

        // Too short for one window: nothing.
        assert_eq!(eval_window_count(&counting(4, 0), block), 0);
        assert_eq!(eval_windows(&counting(4, 0), block, 2, None).count(), 0);
        assert_eq!(eval_window_count(&counting(5, 0), block), 1);
    }

    #[test]
    fn eval_windows_of_a_sub_span_stay_inside_it() {
        let (_, valid) = counting(100, 1000).split_tail(0.3);
        let batches: Vec<TokenBatch> = eval_windows(&valid, 7, 3, None).collect();
        let x: Vec<i64> = batches.iter().flat_map(|b| b.x.clone()).collect();
        // 30 tokens, windows at 0, 7, 14, 21 (21 + 8 <= 30).
        assert_eq!(x, (1070..1098).collect::<Vec<i64>>());
        assert_eq!(batches.last().unwrap().y.last(), Some(&1098));
    }

    #[test]
    fn file_and_memory_sources_give_the_same_batches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.bin");
        let ids: Vec<u32> = (0..3000u32).map(|i| i * 31 % 1000).collect();
        write_token_file(&path, TokenDtype::U16, ids.iter().copied()).unwrap();
        let file = TokenFile::open(&path, TokenDtype::U16).unwrap();
        let from_file = TokenSpan::whole(TokenSource::File(Arc::new(file)));
        let in_memory = TokenSpan::whole(TokenSource::Memory(Arc::new(ids)));
        assert_eq!(from_file.len(), in_memory.len());
        assert_eq!(
            random_windows(&from_file, 64, 8, 5, 2),
            random_windows(&in_memory, 64, 8, 5, 2)
        );
        let a: Vec<TokenBatch> = eval_windows(&from_file, 64, 8, None).collect();
        let b: Vec<TokenBatch> = eval_windows(&in_memory, 64, 8, None).collect();
        assert_eq!(a, b);
        assert_eq!(a.len(), eval_window_count(&in_memory, 64).div_ceil(8));
    }

    #[test]
    fn check_span_names_block_size() {
        let span = counting(10, 0);
        check_span(&span, 9, "the data").unwrap();
        let msg = check_span(
            &span,
            10,
            "the training split of datasets/text/shakespeare.txt",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            msg,
            "the training split of datasets/text/shakespeare.txt has 10 tokens, fewer than \
             block_size + 1 = 11; use a smaller model.block_size or more data"
        );
        let msg = check_span(&span, 0, "the data").unwrap_err().to_string();
        assert!(msg.contains("block_size"), "{msg}");
        let empty = counting(10, 0).split_tail(0.0).1;
        assert!(check_span(&empty, 1, "the validation split").is_err());
    }

    #[test]
    fn window_shards_are_the_rows_of_the_whole_batch() {
        let span = counting(5000, 0);
        let whole = random_windows(&span, 16, 6, 3, 8);
        let a = random_windows_from(&span, 16, 2, 3, 8, 0);
        let b = random_windows_from(&span, 16, 4, 3, 8, 2);
        let joined: Vec<i64> = a.x.iter().chain(&b.x).copied().collect();
        assert_eq!(joined, whole.x);
        assert_eq!(b.rows, 4);
    }
}
