// TEMPORARY naive stand-in until the blocked GEMM lands.
pub fn sgemm(m: usize, n: usize, k: usize, a: &[f32], trans_a: bool, b: &[f32], trans_b: bool, c: &mut [f32], accumulate: bool) {
    for i in 0..m { for j in 0..n {
        let mut s = 0.0f32;
        for l in 0..k { let av = if trans_a { a[l*m+i] } else { a[i*k+l] }; let bv = if trans_b { b[j*k+l] } else { b[l*n+j] }; s += av*bv; }
        if accumulate { c[i*n+j] += s } else { c[i*n+j] = s }
    }}
}
