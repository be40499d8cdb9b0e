//! The backward pass of an embedding lookup: row `ids[n]` of the table's gradient sums the
//! upstream gradient rows n, in ascending n so the result does not depend on threading.

use rayon::prelude::*;

use crate::error::{shape_err, Result};

/// The (vocab, dim) table gradient from the (ids.len, dim) upstream gradient `grad`; an
/// id ≥ vocab is an error naming it.
pub(crate) fn embedding_backward(grad: &[f32], ids: &[u32], vocab: usize, dim: usize) -> Result<Vec<f32>> {
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= vocab) {
        return shape_err("embedding_backward", format!("id {bad} is out of range for a vocabulary of {vocab}"));
    }
    let mut out = vec![0.0f32; vocab * dim];
    if dim == 0 || ids.is_empty() {
        return Ok(out);
    }
    // A counting sort of the positions by id (stable, so each row's are ascending), then
    // every table row sums its own rows on its own: no two tasks write the same row.
    let mut start = vec![0usize; vocab + 1];
    for &i in ids {
        start[i as usize + 1] += 1;
    }
    for v in 0..vocab {
        start[v + 1] += start[v];
    }
    let mut fill = start.clone();
    let mut positions = vec![0usize; ids.len()];
    for (n, &i) in ids.iter().enumerate() {
        positions[fill[i as usize]] = n;
        fill[i as usize] += 1;
    }
    out.par_chunks_mut(dim).enumerate().for_each(|(v, row)| {
        for &n in &positions[start[v]..start[v + 1]] {
            row.iter_mut().zip(&grad[n * dim..(n + 1) * dim]).for_each(|(o, g)| *o += g);
        }
    });
    Ok(out)
}
