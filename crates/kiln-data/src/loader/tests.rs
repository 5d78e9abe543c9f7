use super::*;
use crate::dataset::tests::toy;
use crate::source::tests::{Counter, Numbers};
use crate::source::Collated;
use crate::Batch;

fn config(threads: usize, shuffle: bool) -> LoaderConfig {
    LoaderConfig {
        batch_size: 4,
        threads,
        prefetch: 2,
        shuffle,
        seed: 9,
        shard: Shard::WHOLE,
    }
}

/// The first `count` batches of a loader over `toy(len)`.
fn stream(
    len: usize,
    cfg: LoaderConfig,
    start: (usize, usize),
    count: usize,
) -> Vec<Loaded<Batch>> {
    let mut loader = Loader::new(Arc::new(toy(len)), cfg, start.0, start.1).unwrap();
    (0..count).map(|_| loader.next_batch().unwrap()).collect()
}

/// The original sample indices in `batches` (the first feature of a toy sample).
fn ids(batches: &[Loaded<Batch>]) -> Vec<usize> {
    batches
        .iter()
        .flat_map(|b| b.batch.x.chunks(2).map(|s| s[0] as usize))
        .collect()
}

#[test]
fn stream_is_identical_for_any_thread_count() {
    let one = stream(23, config(1, true), (0, 0), 20);
    let three = stream(23, config(3, true), (0, 0), 20);
    assert_eq!(one, three);
}

#[test]
fn each_epoch_is_a_fresh_permutation() {
    let batches = stream(23, config(2, true), (0, 0), 18);
    let epochs: Vec<Vec<usize>> = batches.chunks(6).map(ids).collect();
    for (e, order) in epochs.iter().enumerate() {
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..23).collect::<Vec<_>>(), "epoch {e}");
        assert_ne!(*order, sorted, "epoch {e} should be shuffled");
    }
    assert_ne!(epochs[0], epochs[1]);
    assert_ne!(epochs[1], epochs[2]);
}

#[test]
fn batches_carry_their_position_and_the_last_one_is_partial() {
    let batches = stream(23, config(2, true), (0, 0), 12);
    for (k, loaded) in batches.iter().enumerate() {
        assert_eq!((loaded.epoch, loaded.index), (k / 6, k % 6));
        assert_eq!(loaded.batches_in_epoch, Some(6));
        let expected_len = if k % 6 == 5 { 3 } else { 4 };
        let batch = &loaded.batch;
        assert_eq!((batch.len(), loaded.whole), (expected_len, expected_len));
        assert_eq!(batch.x_shape, vec![expected_len, 2]);
        assert_eq!(batch.x.len(), expected_len * 2);
    }
}

#[test]
fn without_shuffle_every_epoch_is_in_order() {
    let batches = stream(10, config(3, false), (0, 0), 9);
    let order: Vec<usize> = (0..3).flat_map(|_| 0..10).collect();
    assert_eq!(ids(&batches), order);
}

#[test]
fn resuming_reproduces_the_tail_of_the_stream() {
    let full = stream(23, config(2, true), (0, 0), 20);
    let resumed = stream(23, config(3, true), (1, 2), 12);
    assert_eq!(resumed, full[8..]);
    let past_end = stream(23, config(1, true), (0, 8), 12);
    assert_eq!(past_end, full[8..]);
}

#[test]
fn wait_time_accumulates_and_resets() {
    let mut loader = Loader::new(Arc::new(toy(100)), config(2, true), 0, 0).unwrap();
    assert_eq!(loader.batches_per_epoch(), Some(25));
    for _ in 0..30 {
        loader.next_batch().unwrap();
    }
    let waited = loader.wait_time();
    assert_eq!(loader.take_wait_time(), waited);
    assert_eq!(loader.wait_time(), Duration::ZERO);
}

#[test]
fn dropping_a_loader_with_full_channels_returns_promptly() {
    let mut loader = Loader::new(Arc::new(toy(1000)), config(4, true), 0, 0).unwrap();
    loader.next_batch().unwrap();
    std::thread::sleep(Duration::from_millis(100)); // let every channel fill up
    let started = Instant::now();
    drop(loader);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn shards_partition_every_batch_of_the_whole_stream() {
    let whole = stream(23, config(2, true), (1, 2), 9);
    for world in [2, 3, 5] {
        let shards: Vec<Vec<Loaded<Batch>>> = (0..world)
            .map(|rank| {
                let cfg = LoaderConfig {
                    shard: Shard { rank, world },
                    ..config(2, true)
                };
                stream(23, cfg, (1, 2), 9)
            })
            .collect();
        for (i, batch) in whole.iter().enumerate() {
            let parts: Vec<Loaded<Batch>> = shards.iter().map(|s| s[i].clone()).collect();
            assert_eq!(
                ids(&parts),
                ids(std::slice::from_ref(batch)),
                "world {world}, batch {i}"
            );
            assert!(parts.iter().all(|p| p.whole == batch.batch.len()));
        }
    }
}

#[test]
fn bad_settings_and_empty_sources_are_errors() {
    let cfg = LoaderConfig {
        prefetch: 0,
        ..config(1, true)
    };
    let err = Loader::new(Arc::new(toy(5)), cfg, 0, 0).err().unwrap();
    assert!(
        err.to_string().contains("prefetch must be at least 1"),
        "{err}"
    );
    let err = Loader::new(Arc::new(toy(0)), config(1, true), 0, 0)
        .err()
        .unwrap();
    assert!(err.to_string().contains("empty"), "{err}");
}

#[test]
fn an_unreadable_item_stops_the_stream_with_its_error() {
    let source = Collated::new(
        Numbers {
            len: 40,
            fail: Some(13),
        },
        Ok,
    );
    let mut loader = Loader::new(Arc::new(source), config(2, false), 0, 0).unwrap();
    for k in 0..3 {
        assert_eq!(
            loader.next_batch().unwrap().batch,
            (4 * k..4 * k + 4).collect::<Vec<_>>()
        );
    }
    let err = format!("{:#}", loader.next_batch().unwrap_err());
    assert!(
        err.contains("batch 3 of epoch 0") && err.contains("item 13"),
        "{err}"
    );
}

/// The first `count` batches of a stream loader over a [`Counter`] of `len` items.
fn counted(
    len: usize,
    cfg: LoaderConfig,
    from: Option<StreamPosition>,
    count: usize,
) -> Vec<Loaded<Vec<usize>>> {
    let mut loader = Loader::stream(Counter::new(len), Ok, cfg, from).unwrap();
    (0..count).map(|_| loader.next_batch().unwrap()).collect()
}

#[test]
fn a_stream_is_read_in_batches_pass_after_pass() {
    let batches = counted(10, config(1, true), None, 7);
    let items: Vec<Vec<usize>> = batches.iter().map(|b| b.batch.clone()).collect();
    assert_eq!(
        items,
        vec![
            vec![0, 1, 2, 3],
            vec![4, 5, 6, 7],
            vec![8, 9],
            vec![10, 11, 12, 13],
            vec![14, 15, 16, 17],
            vec![18, 19],
            vec![20, 21, 22, 23],
        ]
    );
    let at: Vec<(usize, usize)> = batches.iter().map(|b| (b.epoch, b.index)).collect();
    assert_eq!(
        at,
        vec![(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0)]
    );
    assert!(batches.iter().all(|b| b.batches_in_epoch.is_none()));
    // A pass that ends on a batch boundary gives no empty batch.
    let even = counted(8, config(1, true), None, 3);
    assert_eq!(even[2].batch, vec![8, 9, 10, 11]);
}

#[test]
fn a_stream_resumed_from_any_batch_continues_with_the_same_batches() {
    for len in [8, 10] {
        let full = counted(len, config(1, true), None, 12);
        for k in 0..8 {
            let from = full[k].resume.clone();
            let resumed = counted(len, config(1, true), from, 12 - k - 1);
            assert_eq!(resumed, full[k + 1..], "len {len}, resumed after batch {k}");
        }
    }
}

#[test]
fn stream_shards_partition_every_batch() {
    let whole = counted(10, config(1, true), None, 6);
    for world in [2, 3, 5] {
        let parts: Vec<Vec<Loaded<Vec<usize>>>> = (0..world)
            .map(|rank| {
                let cfg = LoaderConfig {
                    shard: Shard { rank, world },
                    ..config(1, true)
                };
                counted(10, cfg, None, 6)
            })
            .collect();
        for (i, batch) in whole.iter().enumerate() {
            let joined: Vec<usize> = parts.iter().flat_map(|p| p[i].batch.clone()).collect();
            assert_eq!(joined, batch.batch, "world {world}, batch {i}");
            assert!(parts.iter().all(|p| p[i].whole == batch.whole));
            assert!(parts.iter().all(|p| p[i].resume == batch.resume));
        }
    }
}

#[test]
fn stream_errors_reach_the_consumer() {
    let mut failing = Counter::new(10);
    failing.fail = Some(6);
    let mut loader = Loader::stream(failing, Ok, config(1, true), None).unwrap();
    assert_eq!(loader.next_batch().unwrap().batch, vec![0, 1, 2, 3]);
    let err = format!("{:#}", loader.next_batch().unwrap_err());
    assert!(
        err.contains("item 2 of batch 1 of pass 0") && err.contains("unreadable"),
        "{err}"
    );
    let mut empty = Loader::stream(Counter::new(0), Ok, config(1, true), None).unwrap();
    let err = empty.next_batch().unwrap_err().to_string();
    assert!(err.contains("no items in pass 0"), "{err}");
    let bad = StreamPosition {
        pass: 0,
        batch: 1,
        at: serde_json::json!("not a number"),
    };
    let mut loader = Loader::stream(Counter::new(10), Ok, config(1, true), Some(bad)).unwrap();
    let err = loader.next_batch().unwrap_err().to_string();
    assert!(err.contains("does not fit this stream"), "{err}");
}
