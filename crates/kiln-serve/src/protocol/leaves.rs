//! A tensor's `data` read straight from the JSON into numbers or strings (nested arrays
//! flattened in order), without a `serde_json::Value` tree: a request's tensors take about the
//! memory of their values, not twenty times their text.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// The leaves of a tensor's `data`, in row-major order.
#[derive(Debug, Default, PartialEq)]
pub struct Leaves {
    /// The numbers, when the leaves are numbers.
    pub numbers: Vec<f64>,
    /// The strings, when the leaves are strings.
    pub strings: Vec<String>,
    /// The first leaf that is neither a number nor a string, or not of the first leaf's kind:
    /// its index and what it is.
    pub odd: Option<(usize, String)>,
    len: usize,
}

impl Leaves {
    /// How many leaves there are.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn number(&mut self, v: f64) {
        if self.strings.is_empty() {
            self.numbers.push(v);
        } else {
            self.mark(v.to_string());
        }
        self.len += 1;
    }

    fn string(&mut self, s: String) {
        if self.numbers.is_empty() {
            self.strings.push(s);
        } else {
            self.mark(format!("{s:?}"));
        }
        self.len += 1;
    }

    fn other(&mut self, what: &str) {
        self.mark(what.to_string());
        self.len += 1;
    }

    fn mark(&mut self, what: String) {
        if self.odd.is_none() {
            self.odd = Some((self.len, what));
        }
    }
}

impl<'de> Deserialize<'de> for Leaves {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut leaves = Leaves::default();
        deserializer.deserialize_any(Visit(&mut leaves))?;
        Ok(leaves)
    }
}

struct Visit<'a>(&'a mut Leaves);

impl<'de> Visitor<'de> for Visit<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("numbers or strings, in (nested) arrays")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Seed(&mut *self.0))?.is_some() {}
        Ok(())
    }

    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.0.number(v);
        Ok(())
    }

    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.0.number(v as f64);
        Ok(())
    }

    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.0.number(v as f64);
        Ok(())
    }

    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        self.0.string(v.to_string());
        Ok(())
    }

    fn visit_string<E>(self, v: String) -> Result<(), E> {
        self.0.string(v);
        Ok(())
    }

    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.0.other(if v { "true" } else { "false" });
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        self.0.other("null");
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        self.0.other("an object");
        Ok(())
    }
}

struct Seed<'a>(&'a mut Leaves);

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(Visit(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_arrays_flatten_in_order_and_odd_leaves_are_named() {
        let l: Leaves = serde_json::from_str("[[1, 2.5], [3, [4]]]").unwrap();
        assert_eq!(
            (l.numbers.as_slice(), l.len(), &l.odd),
            (&[1.0, 2.5, 3.0, 4.0][..], 4, &None)
        );
        let l: Leaves = serde_json::from_str(r#"["a", ["b"]]"#).unwrap();
        assert_eq!(l.strings, ["a", "b"]);
        let l: Leaves = serde_json::from_str(r#"[1, "a", null, {"x": 1}]"#).unwrap();
        assert_eq!((l.len(), l.odd), (4, Some((1, "\"a\"".to_string()))));
        let l: Leaves = serde_json::from_str("[true]").unwrap();
        assert_eq!(l.odd, Some((0, "true".to_string())));
        let l: Leaves = serde_json::from_str("7").unwrap();
        assert_eq!(l.numbers, [7.0]);
    }
}
