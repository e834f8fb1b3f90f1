//! An ordered list of backend ids that stays off the heap while short.

use crate::BackendLoad;
use alloc::vec::Vec;

/// Ids held inline; a router decision rarely needs more, because the host
/// tries only a few candidates per request.
const INLINE: usize = 4;

/// Backend ids in order of preference: primary first, then fallbacks.
///
/// Up to four ids live inline, so a typical decision allocates nothing and
/// crosses to the host in one compact answer; longer lists spill to the heap
/// and cost the host a second call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Candidates {
    Few { ids: [u32; INLINE], len: u8 },
    Many(Vec<u32>),
}

impl Default for Candidates {
    fn default() -> Self {
        Candidates::Few {
            ids: [0; INLINE],
            len: 0,
        }
    }
}

// === impl Candidates ===

impl Candidates {
    /// The ids in order.
    pub fn as_slice(&self) -> &[u32] {
        match self {
            Candidates::Few { ids, len } => &ids[..usize::from(*len)],
            Candidates::Many(v) => v,
        }
    }

    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    /// Appends `id`.
    pub fn push(&mut self, id: u32) {
        match self {
            Candidates::Few { ids, len } if usize::from(*len) < INLINE => {
                ids[usize::from(*len)] = id;
                *len += 1;
            }
            Candidates::Few { ids, .. } => {
                let mut v = ids.to_vec();
                v.push(id);
                *self = Candidates::Many(v);
            }
            Candidates::Many(v) => v.push(id),
        }
    }

    /// The `n` backends with the lowest `key`, lowest first; ties keep the
    /// order of `backends`. Allocates nothing for `n <= 4`.
    pub fn lowest_by_key<'a, K: Ord>(
        backends: impl IntoIterator<Item = &'a BackendLoad>,
        n: usize,
        key: impl Fn(&BackendLoad) -> K,
    ) -> Candidates {
        if n > INLINE {
            let mut all: Vec<&BackendLoad> = backends.into_iter().collect();
            all.sort_by_key(|b| key(b));
            return all.iter().take(n).map(|b| b.id).collect();
        }
        // Entries are (key, input position, id): the position keeps ties in
        // input order even when an entry is pushed down a slot.
        let mut best: [Option<(K, usize, u32)>; INLINE] = [None, None, None, None];
        for (position, b) in backends.into_iter().enumerate() {
            let mut item = Some((key(b), position, b.id));
            for slot in best.iter_mut().take(n) {
                let better = match (&item, &*slot) {
                    (Some((k, p, _)), Some((s, q, _))) => (k, p) < (s, q),
                    (Some(_), None) => true,
                    (None, _) => break,
                };
                if better {
                    core::mem::swap(slot, &mut item);
                }
            }
        }
        best.into_iter().flatten().map(|(_, _, id)| id).collect()
    }

    /// Appends the `n` backends with the lowest `key` that are not candidates
    /// yet: the usual way to add fallbacks after choosing a primary.
    pub fn extend_lowest_by_key<'a, K: Ord>(
        &mut self,
        backends: impl IntoIterator<Item = &'a BackendLoad>,
        n: usize,
        key: impl Fn(&BackendLoad) -> K,
    ) {
        let fresh = backends
            .into_iter()
            .filter(|b| !self.as_slice().contains(&b.id));
        let more = Candidates::lowest_by_key(fresh, n, key);
        self.extend(more.as_slice().iter().copied());
    }

    /// This list as a forward decision without added headers.
    pub fn into_decision(self) -> crate::Decision {
        crate::Decision::forward_to(self)
    }
}

impl FromIterator<u32> for Candidates {
    fn from_iter<I: IntoIterator<Item = u32>>(iter: I) -> Self {
        let mut c = Candidates::default();
        for id in iter {
            c.push(id);
        }
        c
    }
}

impl Extend<u32> for Candidates {
    fn extend<I: IntoIterator<Item = u32>>(&mut self, iter: I) {
        for id in iter {
            self.push(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_lists_stay_inline_and_long_ones_spill() {
        let c: Candidates = [3, 1].into_iter().collect();
        assert!(matches!(c, Candidates::Few { len: 2, .. }));
        assert_eq!(c.as_slice(), [3, 1]);
        let c: Candidates = (0..6).collect();
        assert_eq!(c.as_slice(), [0, 1, 2, 3, 4, 5]);
        assert!(matches!(c, Candidates::Many(_)));
    }

    #[test]
    fn lowest_by_key_keeps_the_best_in_order() {
        let loads: Vec<BackendLoad> = [5, 1, 4, 1, 9, 0]
            .iter()
            .enumerate()
            .map(|(i, &f)| {
                let mut l = BackendLoad::idle(i as u32);
                l.in_flight = f;
                l
            })
            .collect();
        let c = Candidates::lowest_by_key(&loads, 3, |b| b.in_flight);
        assert_eq!(c.as_slice(), [5, 1, 3]);
        let c = Candidates::lowest_by_key(&loads, 6, |b| b.in_flight);
        assert_eq!(c.as_slice(), [5, 1, 3, 2, 0, 4]);
        let c = Candidates::lowest_by_key(&loads[..1], 4, |b| b.in_flight);
        assert_eq!(c.as_slice(), [0]);
        let mut c: Candidates = [1].into_iter().collect();
        c.extend_lowest_by_key(&loads, 2, |b| b.in_flight);
        assert_eq!(c.as_slice(), [1, 5, 3]);
    }
}
