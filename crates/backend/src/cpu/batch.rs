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

    pub fn layout(&self) -> &BatchLayout {
        &self.layout
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
