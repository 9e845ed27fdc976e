//! Weights as they come from a checkpoint, before a backend takes them.

/// Storage type of a weight matrix on the host. Quantized types use GGML's block layouts
/// (rows are contiguous sequences of blocks along the input dimension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightDtype {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q8_0,
}

impl WeightDtype {
    /// Elements per quantization block (1 for plain float types).
    pub fn block_elems(self) -> usize {
        match self {
            WeightDtype::F32 | WeightDtype::F16 | WeightDtype::BF16 => 1,
            WeightDtype::Q4_0 | WeightDtype::Q4_1 | WeightDtype::Q8_0 => 32,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            WeightDtype::F32 => 4,
            WeightDtype::F16 | WeightDtype::BF16 => 2,
            WeightDtype::Q4_0 => 18,
            WeightDtype::Q4_1 => 20,
            WeightDtype::Q8_0 => 34,
        }
    }

    /// Bytes of one row of `cols` elements, or None if `cols` is not a whole number of blocks.
    pub fn row_bytes(self, cols: usize) -> Option<usize> {
        let be = self.block_elems();
        if cols % be != 0 {
            return None;
        }
        Some(cols / be * self.block_bytes())
    }
}

/// A 2-D weight `[rows, cols]` (PyTorch `nn.Linear` convention: `rows` = out features,
/// `cols` = in features; the product is `x · Wᵀ`). A 1-D weight (a norm) has `rows == 1`.
/// The bytes are borrowed, usually straight from a memory-mapped file.
#[derive(Debug, Clone, Copy)]
pub struct HostWeight<'a> {
    pub rows: usize,
    pub cols: usize,
    pub dtype: WeightDtype,
    pub bytes: &'a [u8],
}

impl HostWeight<'_> {
    /// Checks that the byte length matches the shape and type.
    pub fn validate(&self) -> Result<(), String> {
        let row = self.dtype.row_bytes(self.cols).ok_or_else(|| {
            format!(
                "{} columns are not a multiple of the {:?} block",
                self.cols, self.dtype
            )
        })?;
        let want = row
            .checked_mul(self.rows)
            .ok_or_else(|| "weight size overflows".to_string())?;
        if want != self.bytes.len() {
            return Err(format!(
                "[{}, {}] {:?} needs {} bytes, got {}",
                self.rows,
                self.cols,
                self.dtype,
                want,
                self.bytes.len()
            ));
        }
        Ok(())
    }
}
