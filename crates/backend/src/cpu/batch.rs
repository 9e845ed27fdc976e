//! The CPU backend's uploaded batch: the layout plus per-step tables derived from it.

use super::rope::RopeTable;
use crate::ops::RopeSpec;
use crate::BatchLayout;
use std::borrow::Cow;
use std::ops::Deref;
use std::sync::OnceLock;

/// A [`BatchLayout`] plus its rope table, built by the first layer that needs it and reused by
/// every later layer of the step (positions are the same in all layers).
#[derive(Debug)]
pub struct CpuBatch {
    layout: BatchLayout,
    rope: OnceLock<RopeTable>,
}

impl CpuBatch {
    pub fn new(layout: BatchLayout) -> Self {
        CpuBatch {
            layout,
            rope: OnceLock::new(),
        }
    }

    /// Makes this batch `layout`, reusing the allocations. The rope table is dropped: it
    /// belongs to the previous positions (a reused batch must never keep it).
    pub fn set_layout(&mut self, layout: &BatchLayout) {
        self.layout.clone_from(layout);
        self.rope.take();
    }

    pub fn layout(&self) -> &BatchLayout {
        &self.layout
    }

    /// The input tokens, for `patch_token_ids` (the rope table depends on positions only).
    pub fn token_ids_mut(&mut self) -> &mut [u32] {
        &mut self.layout.token_ids
    }

    /// The cos/sin table of this batch's positions for `spec`. A spec other than the cached
    /// one (a model with per-layer rope settings) gets a table of its own, not cached.
    pub fn rope_table(&self, spec: &RopeSpec) -> Cow<'_, RopeTable> {
        let cached = self
            .rope
            .get_or_init(|| RopeTable::new(spec, &self.layout.positions));
        if cached.spec() == spec {
            Cow::Borrowed(cached)
        } else {
            Cow::Owned(RopeTable::new(spec, &self.layout.positions))
        }
    }
}

impl Deref for CpuBatch {
    type Target = BatchLayout;

    fn deref(&self) -> &BatchLayout {
        &self.layout
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::RopeStyle;

    #[test]
    fn set_layout_drops_the_rope_table_of_the_old_positions() {
        let spec = RopeSpec {
            style: RopeStyle::Neox,
            theta: 10000.0,
            rotary_dim: 8,
        };
        let mut a = BatchLayout {
            block_size: 16,
            ..Default::default()
        };
        a.push_seq(&[1, 2], 0, &[0], true);
        let mut b = a.clone();
        b.positions = vec![5, 9];
        let mut batch = CpuBatch::new(a);
        let mut row = vec![1.0f32; 8];
        batch.rope_table(&spec).rotate_row(&mut row, 8, 1);
        batch.set_layout(&b);
        let mut got = vec![1.0f32; 8];
        batch.rope_table(&spec).rotate_row(&mut got, 8, 1);
        let mut want = vec![1.0f32; 8];
        super::super::rope::rope_rotate(&mut want, 9, &spec);
        assert_eq!(got, want);
        assert_ne!(got, row);
    }
}
