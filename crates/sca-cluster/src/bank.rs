//! The memory bank: one L2-normalised representation per training image.

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};

/// Why a bank write was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BankError {
    #[error("rows {start}..{end} do not fit in a bank of {len} rows")]
    OutOfRange {
        start: usize,
        end: usize,
        len: usize,
    },
    #[error("expected {expected}-dimensional rows, got {got}")]
    DimMismatch { expected: usize, got: usize },
    #[error("{indices} row indices for {rows} rows of z")]
    CountMismatch { indices: usize, rows: usize },
    #[error("row {0} appears twice in one write")]
    DuplicateRow(usize),
}

/// Rows divided by their L2 norm (clamped at 1e-12, as `torch.nn.functional.normalize`).
pub fn l2_normalize<B: Backend>(z: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = z.clone().square().sum_dim(1).sqrt().clamp_min(1e-12);
    z / norm
}

/// `N×d` bank on the device. Unwritten rows read as zeros.
///
/// Writes are kept as pieces and merged by one concatenation and one row gather when
/// the bank is read, so a fill costs time linear in N. (An `N×d` tensor updated by
/// `slice_assign` per batch would not: Flex 0.21 copies the whole destination on every
/// `slice_assign`, quadratic in N; measured 26 s for 100k×128 in 256-row batches.)
/// Peak memory while merging: the pieces plus the merged bank, about 2× the bank.
#[derive(Debug)]
pub struct MemoryBank<B: Backend> {
    len: usize,
    dim: usize,
    device: B::Device,
    /// Normalised rows in write order.
    pieces: Vec<Tensor<B, 2>>,
    /// Rows held by `pieces`.
    held: usize,
    /// For each bank row: 1 + its row in `cat(pieces)` (latest write wins); 0 = unwritten.
    source: Vec<usize>,
    filled: usize,
    /// Writes since the last merge.
    pending: bool,
}

impl<B: Backend> MemoryBank<B> {
    pub fn new(len: usize, dim: usize, device: &B::Device) -> Self {
        Self {
            len,
            dim,
            device: device.clone(),
            pieces: Vec::new(),
            held: 0,
            source: vec![0; len],
            filled: 0,
            pending: false,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Distinct rows written since creation or the last [`reset`](Self::reset).
    pub fn filled(&self) -> usize {
        self.filled
    }

    pub fn is_full(&self) -> bool {
        self.filled == self.len
    }

    /// Forget every row (for the next epoch) and free the stored pieces.
    pub fn reset(&mut self) {
        self.pieces.clear();
        self.held = 0;
        self.source.iter_mut().for_each(|s| *s = 0);
        self.filled = 0;
        self.pending = false;
    }

    /// Write `z` (detached, L2-normalised) into rows `start..start + z.rows`.
    pub fn write(&mut self, start: usize, z: Tensor<B, 2>) -> Result<(), BankError> {
        let [rows, dim] = z.dims();
        self.check(start, start + rows, dim)?;
        self.push(start..start + rows, z);
        Ok(())
    }

    /// Write row `k` of `z` into bank row `indices[k]`, for any order of distinct indices.
    pub fn write_rows(&mut self, indices: &[usize], z: Tensor<B, 2>) -> Result<(), BankError> {
        let [rows, dim] = z.dims();
        if indices.len() != rows {
            return Err(BankError::CountMismatch {
                indices: indices.len(),
                rows,
            });
        }
        let mut sorted = indices.to_vec();
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(BankError::DuplicateRow(w[0]));
        }
        if let Some(&last) = sorted.last() {
            self.check(last, last + 1, dim)?;
        } else {
            self.check(0, 0, dim)?;
        }
        self.push(indices.iter().copied(), z);
        Ok(())
    }

    /// The bank `[N, d]`; merges pending writes first (then cheap until the next write).
    pub fn tensor(&mut self) -> Tensor<B, 2> {
        self.merge();
        match self.pieces.first() {
            Some(t) => t.clone(),
            None => Tensor::zeros([self.len, self.dim], &self.device),
        }
    }

    pub fn into_tensor(mut self) -> Tensor<B, 2> {
        self.tensor()
    }

    fn push(&mut self, rows: impl Iterator<Item = usize>, z: Tensor<B, 2>) {
        let n = z.dims()[0];
        for (k, row) in rows.enumerate() {
            if self.source[row] == 0 {
                self.filled += 1;
            }
            self.source[row] = self.held + k + 1;
        }
        self.held += n;
        self.pieces.push(l2_normalize(z.detach()));
        self.pending = true;
    }

    /// One `cat` and one `select` turn the pieces into the bank.
    fn merge(&mut self) {
        if !self.pending {
            return;
        }
        self.pending = false;
        let identity =
            self.held == self.len && self.source.iter().enumerate().all(|(i, &s)| s == i + 1);
        if self.pieces.len() == 1 && identity {
            return;
        }
        let merged = if identity {
            Tensor::cat(std::mem::take(&mut self.pieces), 0)
        } else {
            // Row 0 is the zero row that unwritten bank rows point at.
            let mut parts = vec![Tensor::zeros([1, self.dim], &self.device)];
            parts.append(&mut self.pieces);
            let idx: Vec<i64> = self.source.iter().map(|&s| s as i64).collect();
            let idx =
                Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [self.len]), &self.device);
            Tensor::cat(parts, 0).select(0, idx)
        };
        self.pieces = vec![merged];
        self.held = self.len;
        // Written rows now live at their own index; unwritten ones read zeros from the merged bank.
        for (i, s) in self.source.iter_mut().enumerate() {
            if *s != 0 {
                *s = i + 1;
            }
        }
    }

    fn check(&self, start: usize, end: usize, dim: usize) -> Result<(), BankError> {
        if dim != self.dim {
            return Err(BankError::DimMismatch {
                expected: self.dim,
                got: dim,
            });
        }
        if end > self.len {
            return Err(BankError::OutOfRange {
                start,
                end,
                len: self.len,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    type B = Flex;

    fn rows(bank: &mut MemoryBank<B>) -> Vec<Vec<f32>> {
        let t = bank.tensor();
        let [n, d] = t.dims();
        let v: Vec<f32> = t.into_data().iter::<f32>().collect();
        (0..n).map(|i| v[i * d..(i + 1) * d].to_vec()).collect()
    }

    fn tensor(v: &[[f32; 2]]) -> Tensor<B, 2> {
        let flat: Vec<f32> = v.iter().flatten().copied().collect();
        Tensor::from_data(TensorData::new(flat, [v.len(), 2]), &Default::default())
    }

    /// `(Some(start), _, rows)`: contiguous write; `(None, indices, rows)`: scattered.
    type Write<'a> = (Option<usize>, &'a [usize], &'a [[f32; 2]]);

    /// Apply contiguous writes `(start, rows)` and scattered writes `(indices, rows)`,
    /// then compare the whole bank and the fill count.
    fn check(len: usize, writes: &[Write], expected: &[[f32; 2]], filled: usize) {
        let mut bank = MemoryBank::<B>::new(len, 2, &Default::default());
        for (start, idx, z) in writes {
            match start {
                Some(s) => bank.write(*s, tensor(z)).unwrap(),
                None => bank.write_rows(idx, tensor(z)).unwrap(),
            }
        }
        let got = rows(&mut bank);
        for (g, e) in got.iter().zip(expected) {
            assert!(
                (g[0] - e[0]).abs() < 1e-6 && (g[1] - e[1]).abs() < 1e-6,
                "{got:?} vs {expected:?}"
            );
        }
        assert_eq!(bank.filled(), filled);
    }

    #[test]
    #[rustfmt::skip]
    fn writes_normalise_and_land_in_place() {
        check(3, &[(Some(1), &[], &[[3.0, 4.0], [0.0, 2.0]])], &[[0.0, 0.0], [0.6, 0.8], [0.0, 1.0]], 2);
        check(3, &[(Some(0), &[], &[[1.0, 0.0]]), (Some(0), &[], &[[0.0, 5.0]])], &[[0.0, 1.0], [0.0, 0.0], [0.0, 0.0]], 1);
        check(4, &[(None, &[3, 0, 1], &[[0.0, 2.0], [2.0, 0.0], [-1.0, 0.0]])], &[[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0], [0.0, 1.0]], 3);
        check(2, &[(Some(0), &[], &[[0.0, 0.0]])], &[[0.0, 0.0], [0.0, 0.0]], 1);
        // A full fill in order (concatenation only) and one out of order (gather).
        check(3, &[(Some(0), &[], &[[1.0, 0.0], [0.0, 1.0]]), (Some(2), &[], &[[-2.0, 0.0]])], &[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], 3);
        check(3, &[(Some(2), &[], &[[-2.0, 0.0]]), (Some(0), &[], &[[1.0, 0.0], [0.0, 1.0]])], &[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], 3);
        check(3, &[(Some(0), &[], &[[1.0, 0.0], [0.0, 1.0], [0.0, 3.0]]), (None, &[1], &[[5.0, 0.0]])], &[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], 3);
    }

    #[test]
    #[rustfmt::skip]
    fn reads_between_writes_and_reset() {
        let mut bank = MemoryBank::<B>::new(3, 2, &Default::default());
        assert_eq!(rows(&mut bank), vec![vec![0.0; 2]; 3]);
        bank.write(0, tensor(&[[2.0, 0.0], [0.0, 2.0]])).unwrap();
        assert_eq!(rows(&mut bank), vec![vec![1.0, 0.0], vec![0.0, 1.0], vec![0.0, 0.0]]);
        bank.write_rows(&[2, 1], tensor(&[[0.0, -1.0], [-3.0, 0.0]])).unwrap();
        assert_eq!(rows(&mut bank), vec![vec![1.0, 0.0], vec![-1.0, 0.0], vec![0.0, -1.0]]);
        assert!(bank.is_full());
        bank.reset();
        assert_eq!((bank.filled(), rows(&mut bank)), (0, vec![vec![0.0; 2]; 3]));
        bank.write(1, tensor(&[[0.0, 4.0]])).unwrap();
        assert_eq!(rows(&mut bank), vec![vec![0.0, 0.0], vec![0.0, 1.0], vec![0.0, 0.0]]);
    }

    #[test]
    #[rustfmt::skip]
    fn bad_writes_are_refused() {
        let mut bank = MemoryBank::<B>::new(3, 2, &Default::default());
        assert_eq!(bank.write(2, tensor(&[[1.0, 0.0], [1.0, 0.0]])), Err(BankError::OutOfRange { start: 2, end: 4, len: 3 }));
        assert_eq!(bank.write_rows(&[1, 1], tensor(&[[1.0, 0.0], [1.0, 0.0]])), Err(BankError::DuplicateRow(1)));
        assert_eq!(bank.write_rows(&[0], tensor(&[[1.0, 0.0], [1.0, 0.0]])), Err(BankError::CountMismatch { indices: 1, rows: 2 }));
        assert_eq!(bank.write_rows(&[5], tensor(&[[1.0, 0.0]])), Err(BankError::OutOfRange { start: 5, end: 6, len: 3 }));
        assert_eq!(bank.filled(), 0);
    }
}
