//! A uniform sample of at most `capacity` items of a stream of unknown length (Vitter's
//! algorithm R), seeded: the same stream and seed keep the same items.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A bounded uniform sample of the items offered so far.
#[derive(Clone, Debug)]
pub struct Reservoir<T> {
    items: Vec<T>,
    capacity: usize,
    seen: u64,
    rng: ChaCha8Rng,
}

impl<T> Reservoir<T> {
    /// An empty reservoir of `capacity` items, drawing with `seed`.
    pub fn new(capacity: usize, seed: u64) -> Self {
        Self {
            items: Vec::with_capacity(capacity.min(1 << 16)),
            capacity,
            seen: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// Offers one item: kept with probability `capacity / seen`.
    pub fn offer(&mut self, item: T) {
        self.seen += 1;
        if self.items.len() < self.capacity {
            self.items.push(item);
        } else {
            let k = self.rng.random_range(0..self.seen);
            if (k as usize) < self.capacity {
                self.items[k as usize] = item;
            }
        }
    }

    /// How many items were offered.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// The sample, in no particular order.
    pub fn into_items(self) -> Vec<T> {
        self.items
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reservoir_keeps_capacity_items_uniformly_and_reproducibly() {
        let draw = |seed| {
            let mut r = Reservoir::new(1000, seed);
            (0..100_000u32).for_each(|i| r.offer(i));
            r.into_items()
        };
        let items = draw(7);
        assert_eq!(items.len(), 1000);
        assert_eq!(items, draw(7));
        assert_ne!(items, draw(8));
        // Uniform: about a tenth of the sample in each tenth of the stream.
        for tenth in 0..10u32 {
            let n = items.iter().filter(|&&i| i / 10_000 == tenth).count();
            assert!((60..=140).contains(&n), "tenth {tenth}: {n} of 1000");
        }
        let mut small = Reservoir::new(10, 1);
        (0..3).for_each(|i| small.offer(i));
        assert_eq!((small.seen(), small.into_items()), (3, vec![0, 1, 2]));
    }
}
