//! The two kinds of data a [`crate::Loader`] reads: a [`RandomAccess`] source (a length and an
//! item by index, so that every epoch can visit the items in a fresh order) and a [`Stream`]
//! (items in order, with a position that a checkpoint saves and a resumed run seeks to). A user's
//! data implements one of them; Kiln's own tables and images are a random-access source.

use anyhow::Result;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Data read by index: a table in memory, a folder of files, a memory-mapped array.
///
/// `get` is called from the loader's worker threads, in parallel.
pub trait RandomAccess: Send + Sync {
    /// One item (a sample and its target, as the collate function takes it).
    type Item: Send + 'static;

    /// Number of items.
    fn len(&self) -> usize;

    /// Whether the source has no items.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Item `index` (`index < len()`); an error for an item that cannot be read (the loader
    /// stops the run with it).
    fn get(&self, index: usize) -> Result<Self::Item>;
}

/// Items in memory are a random-access source (each `get` a clone of the item).
impl<T: Clone + Send + Sync + 'static> RandomAccess for Vec<T> {
    type Item = T;

    fn len(&self) -> usize {
        self.as_slice().len()
    }

    fn get(&self, index: usize) -> Result<T> {
        self.as_slice().get(index).cloned().ok_or_else(|| {
            anyhow::anyhow!(
                "item {index} of a source of {} items",
                self.as_slice().len()
            )
        })
    }
}

/// A shared source is a source.
impl<S: RandomAccess + ?Sized> RandomAccess for std::sync::Arc<S> {
    type Item = S::Item;

    fn len(&self) -> usize {
        (**self).len()
    }

    fn get(&self, index: usize) -> Result<S::Item> {
        (**self).get(index)
    }
}

/// Data read in order: a file read line by line, a sequence of shards, a generator.
///
/// A pass is one read of the stream from its start; [`Stream::start_pass`] begins pass `p`
/// (a stream may visit its parts in another order in each pass). The loader saves
/// [`Stream::position`] after every batch; a resumed run calls `start_pass` for the saved pass
/// and then [`Stream::seek`] to that position, so the position must say exactly where the next
/// item comes from.
pub trait Stream: Send {
    /// One item (a sample and its target, as the collate function takes it).
    type Item: Send + 'static;
    /// Where the stream stands within a pass (a line number, a byte offset, a shard and an
    /// offset in it), saved as JSON in checkpoints.
    type Position: Serialize + DeserializeOwned + Send;

    /// Starts pass `pass` (0 for the first) from its beginning.
    fn start_pass(&mut self, pass: usize) -> Result<()>;

    /// The next item of the current pass, or `None` when the pass is over.
    fn next(&mut self) -> Result<Option<Self::Item>>;

    /// Where the next item of the current pass comes from.
    fn position(&self) -> Self::Position;

    /// Continues the current pass from `position` (one that [`Stream::position`] returned in
    /// the same pass).
    fn seek(&mut self, position: Self::Position) -> Result<()>;
}

/// A random-access source of whole batches: what the loader's workers call. A
/// [`RandomAccess`] source with a collate function is one ([`Collated`]); a source that can
/// copy many items at once (Kiln's in-memory [`crate::Dataset`]) implements it directly.
pub trait Gather: Send + Sync {
    /// A batch as the model takes it, in host memory.
    type Batch: Send + 'static;

    /// Number of items.
    fn len(&self) -> usize;

    /// Whether the source has no items.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The batch of the items `indices`, in that order (empty for an empty shard).
    fn gather(&self, indices: &[usize]) -> Result<Self::Batch>;

    /// The training batch of the items `indices` in epoch `epoch`: what the loader calls. A
    /// source that augments its samples draws the augmentation from the epoch and each item's
    /// index (so that a resumed run sees what an uninterrupted one does); the default is
    /// [`Gather::gather`].
    fn gather_in_epoch(&self, indices: &[usize], epoch: usize) -> Result<Self::Batch> {
        let _ = epoch;
        self.gather(indices)
    }
}

/// A [`RandomAccess`] source whose items become a batch through a collate function.
pub struct Collated<S, F> {
    source: S,
    collate: F,
}

impl<S, F> Collated<S, F> {
    /// `source`, its items turned into batches by `collate`.
    pub fn new(source: S, collate: F) -> Self {
        Self { source, collate }
    }
}

impl<S, F, T> Gather for Collated<S, F>
where
    S: RandomAccess,
    F: Fn(Vec<S::Item>) -> Result<T> + Send + Sync,
    T: Send + 'static,
{
    type Batch = T;

    fn len(&self) -> usize {
        self.source.len()
    }

    fn gather(&self, indices: &[usize]) -> Result<T> {
        let items = indices
            .iter()
            .map(|&i| self.source.get(i))
            .collect::<Result<Vec<_>>>()?;
        (self.collate)(items)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use anyhow::bail;

    /// Items `0..len`, each its own index; item `fail`, if any, cannot be read.
    pub struct Numbers {
        pub len: usize,
        pub fail: Option<usize>,
    }

    impl RandomAccess for Numbers {
        type Item = usize;
        fn len(&self) -> usize {
            self.len
        }
        fn get(&self, index: usize) -> Result<usize> {
            if Some(index) == self.fail {
                bail!("item {index} is unreadable");
            }
            Ok(index)
        }
    }

    /// A stream of the numbers `0..len` in pass 0, `len..2 len` in pass 1, and so on (so that a
    /// test sees which pass an item came from); it can fail at item `fail` of every pass.
    pub struct Counter {
        pub len: usize,
        pub pass: usize,
        pub at: usize,
        pub fail: Option<usize>,
    }

    impl Counter {
        pub fn new(len: usize) -> Self {
            Counter {
                len,
                pass: usize::MAX,
                at: 0,
                fail: None,
            }
        }
    }

    impl Stream for Counter {
        type Item = usize;
        type Position = usize;
        fn start_pass(&mut self, pass: usize) -> Result<()> {
            (self.pass, self.at) = (pass, 0);
            Ok(())
        }
        fn next(&mut self) -> Result<Option<usize>> {
            assert_ne!(self.pass, usize::MAX, "next before start_pass");
            if Some(self.at) == self.fail {
                bail!("item {} of pass {} is unreadable", self.at, self.pass);
            }
            if self.at == self.len {
                return Ok(None);
            }
            self.at += 1;
            Ok(Some(self.pass * self.len + self.at - 1))
        }
        fn position(&self) -> usize {
            self.at
        }
        fn seek(&mut self, position: usize) -> Result<()> {
            self.at = position;
            Ok(())
        }
    }

    #[test]
    fn a_collated_source_gathers_its_items_in_order_and_passes_errors_on() {
        let sum = |items: Vec<usize>| Ok(items);
        let source = Collated::new(
            Numbers {
                len: 5,
                fail: Some(3),
            },
            sum,
        );
        assert_eq!(Gather::len(&source), 5);
        assert_eq!(source.gather(&[4, 0, 2]).unwrap(), vec![4, 0, 2]);
        assert!(source.gather(&[]).unwrap().is_empty());
        let err = source.gather(&[1, 3]).unwrap_err();
        assert!(err.to_string().contains("item 3"), "{err}");
    }
}
