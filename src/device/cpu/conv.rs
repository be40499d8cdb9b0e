// TEMPORARY naive stand-in until the im2col conv lands.
use crate::device::contract::Conv2dParams;
pub fn conv2d(x: &[f32], w: &[f32], bias: Option<&[f32]>, p: &Conv2dParams) -> Vec<f32> {
    let cig = p.c_in / p.groups; let cog = p.c_out / p.groups;
    let mut out = vec![0.0; p.n*p.c_out*p.h_out*p.w_out];
    for n in 0..p.n { for co in 0..p.c_out { let g = co / cog; for oy in 0..p.h_out { for ox in 0..p.w_out {
        let mut s = bias.map(|b| b[co]).unwrap_or(0.0);
        for ci in 0..cig { for ky in 0..p.kh { for kx in 0..p.kw {
            let iy = (oy*p.stride.0 + ky*p.dilation.0) as isize - p.padding.0 as isize;
            let ix = (ox*p.stride.1 + kx*p.dilation.1) as isize - p.padding.1 as isize;
            if iy < 0 || ix < 0 || iy >= p.h as isize || ix >= p.w as isize { continue; }
            s += x[((n*p.c_in + g*cig + ci)*p.h + iy as usize)*p.w + ix as usize] * w[((co*cig+ci)*p.kh+ky)*p.kw+kx];
        }}}
        out[((n*p.c_out+co)*p.h_out+oy)*p.w_out+ox] = s;
    }}}}
    out
}
