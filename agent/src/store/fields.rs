//! A hash's fields, kept as Redis keeps them: a small hash in the order its fields were
//! added, a large one in a table without order.
//!
//! Redis stores a hash of up to 128 fields compactly, in insertion order, and turns it
//! into a hash table when it grows past that. The table finds a field with one cache miss
//! fewer than an ordered map (whose index points into a separate vector of entries), and
//! removes one in constant time where the ordered map shifts every later field.

use bytes::Bytes;
use indexmap::IndexMap;

type Hasher = foldhash::fast::RandomState;

/// Most fields a hash keeps in insertion order (Redis' `hash-max-listpack-entries`).
pub const ORDERED_FIELDS: usize = 128;

/// The fields of one hash, field name to value.
#[derive(Debug, Clone)]
pub struct FieldMap {
    fields: Fields,
    /// The bytes of every field name and value.
    bytes: usize,
}

#[derive(Debug, Clone)]
enum Fields {
    Ordered(IndexMap<Bytes, Bytes, Hasher>),
    Unordered(hashbrown::HashMap<Bytes, Bytes, Hasher>),
}

impl FieldMap {
    pub fn len(&self) -> usize {
        match &self.fields {
            Fields::Ordered(map) => map.len(),
            Fields::Unordered(map) => map.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, field: &[u8]) -> Option<&Bytes> {
        match &self.fields {
            Fields::Ordered(map) => map.get(field),
            Fields::Unordered(map) => map.get(field),
        }
    }

    /// The bytes of every field name and value.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Gives `field`, if the hash has it, the value `value` (the field keeps its name);
    /// returns the value replaced, or `value` back when the field is not there.
    pub fn replace(&mut self, field: &[u8], value: Bytes) -> Result<Bytes, Bytes> {
        let slot = match &mut self.fields {
            Fields::Ordered(map) => map.get_mut(field),
            Fields::Unordered(map) => map.get_mut(field),
        };
        let Some(slot) = slot else {
            return Err(value);
        };
        self.bytes = self.bytes + value.len() - slot.len();
        Ok(std::mem::replace(slot, value))
    }

    pub fn contains_key(&self, field: &[u8]) -> bool {
        self.get(field).is_some()
    }

    /// Sets `field`; returns the value it replaces. A hash that grows past
    /// [`ORDERED_FIELDS`] stops keeping the order.
    pub fn insert(&mut self, field: Bytes, value: Bytes) -> Option<Bytes> {
        let (field_len, value_len) = (field.len(), value.len());
        let old = match &mut self.fields {
            Fields::Ordered(map) => {
                let old = map.insert(field, value);
                if map.len() > ORDERED_FIELDS {
                    let map = std::mem::take(map);
                    self.fields = Fields::Unordered(map.into_iter().collect());
                }
                old
            }
            Fields::Unordered(map) => map.insert(field, value),
        };
        // A field that was there keeps its name: only the value's size changes.
        self.bytes = match &old {
            Some(old) => self.bytes + value_len - old.len(),
            None => self.bytes + field_len + value_len,
        };
        old
    }

    /// Removes `field` (the others keep their order); returns its value.
    pub fn remove(&mut self, field: &[u8]) -> Option<Bytes> {
        let old = match &mut self.fields {
            Fields::Ordered(map) => map.shift_remove(field),
            Fields::Unordered(map) => map.remove(field),
        }?;
        self.bytes -= field.len() + old.len();
        Some(old)
    }

    pub fn iter(&self) -> Iter<'_> {
        match &self.fields {
            Fields::Ordered(map) => Iter::Ordered(map.iter()),
            Fields::Unordered(map) => Iter::Unordered(map.iter()),
        }
    }
}

impl Default for FieldMap {
    fn default() -> Self {
        FieldMap {
            fields: Fields::Ordered(IndexMap::default()),
            bytes: 0,
        }
    }
}

/// Two hashes are equal when they hold the same fields with the same values, in
/// whatever order.
impl PartialEq for FieldMap {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().all(|(f, v)| other.get(f) == Some(v))
    }
}

impl Eq for FieldMap {}

impl FromIterator<(Bytes, Bytes)> for FieldMap {
    fn from_iter<I: IntoIterator<Item = (Bytes, Bytes)>>(fields: I) -> Self {
        let mut map = FieldMap::default();
        for (field, value) in fields {
            map.insert(field, value);
        }
        map
    }
}

/// The fields and values of a [`FieldMap`].
pub enum Iter<'a> {
    Ordered(indexmap::map::Iter<'a, Bytes, Bytes>),
    Unordered(hashbrown::hash_map::Iter<'a, Bytes, Bytes>),
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a Bytes, &'a Bytes);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Ordered(iter) => iter.next(),
            Iter::Unordered(iter) => iter.next(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            Iter::Ordered(iter) => iter.size_hint(),
            Iter::Unordered(iter) => iter.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(i: usize) -> Bytes {
        Bytes::from(format!("field-{i}"))
    }

    #[test]
    fn a_small_hash_keeps_the_order_and_a_large_one_every_field() {
        let mut map = FieldMap::default();
        for i in (0..ORDERED_FIELDS).rev() {
            assert_eq!(map.insert(field(i), Bytes::from("v")), None);
        }
        assert_eq!(
            map.insert(field(5), Bytes::from("new")).as_deref(),
            Some(&b"v"[..])
        );
        assert_eq!(map.remove(&field(7)).as_deref(), Some(&b"v"[..]));
        let order: Vec<_> = map.iter().map(|(f, _)| f.clone()).collect();
        let expected: Vec<_> = (0..ORDERED_FIELDS)
            .rev()
            .filter(|&i| i != 7)
            .map(field)
            .collect();
        assert_eq!(order, expected, "insertion order, a removed field left out");

        // Past the limit: every field and value is still there, and stays reachable.
        for i in ORDERED_FIELDS..3 * ORDERED_FIELDS {
            map.insert(field(i), Bytes::from("v"));
        }
        assert_eq!(map.len(), 3 * ORDERED_FIELDS - 1);
        assert_eq!(map.get(&field(5)).map(|v| &v[..]), Some(&b"new"[..]));
        assert!(!map.contains_key(&field(7)));
        assert_eq!(map.remove(&field(300)).as_deref(), Some(&b"v"[..]));
        assert_eq!(map.iter().count(), 3 * ORDERED_FIELDS - 2);
        assert_eq!(
            map.iter().size_hint(),
            (3 * ORDERED_FIELDS - 2, Some(3 * ORDERED_FIELDS - 2))
        );
    }

    /// The hash's byte count follows every insert, overwrite, replace and removal, in
    /// both forms.
    #[test]
    fn the_byte_count_is_that_of_every_field_name_and_value() {
        let counted =
            |map: &FieldMap| -> usize { map.iter().map(|(f, v)| f.len() + v.len()).sum() };
        let mut map = FieldMap::default();
        for i in 0..300usize {
            map.insert(field(i), Bytes::from(vec![0; i % 7]));
            if i % 3 == 0 {
                map.insert(field(i), Bytes::from(vec![1; i % 5]));
            }
            if i % 4 == 0 {
                assert!(map.replace(&field(i / 2), Bytes::from(vec![2; 9])).is_ok());
            }
            if i % 5 == 0 {
                map.remove(&field(i / 3));
            }
            assert_eq!(map.bytes(), counted(&map), "after {i}");
        }
        assert!(map.replace(b"absent", Bytes::from_static(b"v")).is_err());
        assert_eq!(map.bytes(), counted(&map));
    }

    #[test]
    fn equal_fields_are_equal_hashes_whatever_the_order_or_form() {
        let forward: FieldMap = (0..200).map(|i| (field(i), field(i))).collect();
        let backward: FieldMap = (0..200).rev().map(|i| (field(i), field(i))).collect();
        assert_eq!(forward, backward);
        let small: FieldMap = (0..3).map(|i| (field(i), field(i))).collect();
        let shuffled: FieldMap = [2, 0, 1]
            .into_iter()
            .map(|i| (field(i), field(i)))
            .collect();
        assert_eq!(small, shuffled);
        let other: FieldMap = (0..3).map(|i| (field(i), field(i + 1))).collect();
        assert_ne!(small, other);
        assert_ne!(small, FieldMap::default());
    }
}
