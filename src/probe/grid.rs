//! A PNG grid of factual | counterfactual image pairs for a person to read: each
//! small image scaled up (nearest neighbour) with one or two caption lines under
//! it, and a title line above each row. Text is drawn with a built-in 5x7 bitmap
//! font, so the grid needs no font files and looks the same on every machine.

use std::path::Path;

use crate::error::{Error, Result};
use crate::tensor::image::write_rgb_png;

/// One image and its caption (`\n` separates its at most two lines).
pub struct GridCell<'a> {
    /// Planar (3, size, size) RGB in [0, 1].
    pub pixels: &'a [f32],
    pub text: String,
}

/// A title line and the images under it, left to right.
pub struct GridRow<'a> {
    pub title: String,
    pub cells: Vec<GridCell<'a>>,
}

/// White space around and between cells and rows, in output pixels.
const MARGIN: usize = 4;
const GLYPH_W: usize = 5;
const GLYPH_H: usize = 7;
/// Caption lines reserved under every image, so the image's size follows from
/// the rows, cells, size and scale alone.
const TEXT_LINES: usize = 2;
/// Cells at least this wide draw text at 2x (over 16 characters still fit).
const DOUBLE_TEXT_WIDTH: usize = 192;
/// An image this large is a mistake (a wrong scale), not a grid to look at;
/// refusing it avoids an allocation that would abort the process.
const MAX_BYTES: usize = 1 << 30;
const INK: u8 = 0;
const PAPER: u8 = 255;

/// Where everything goes, in output pixels.
struct Layout {
    /// The side of a scaled image.
    cell: usize,
    /// The bitmap font's scale (1 or 2).
    text_scale: usize,
    /// The height of one text line: the glyph with a text pixel of space above and below.
    line: usize,
    /// A row's height: its title line, the images and their caption lines.
    row: usize,
    width: usize,
    height: usize,
}

impl Layout {
    fn new(rows: usize, cells: usize, size: usize, scale: usize) -> Result<Layout> {
        let too_large = || {
            Error::Usage(format!(
                "render_grid: {rows} rows of {cells} images of {size}x{size} at scale {scale} make too large an image"
            ))
        };
        let cell = size.checked_mul(scale).ok_or_else(too_large)?;
        let text_scale = if cell >= DOUBLE_TEXT_WIDTH { 2 } else { 1 };
        let line = (GLYPH_H + 2) * text_scale;
        let row = cell.checked_add((1 + TEXT_LINES) * line).ok_or_else(too_large)?;
        // MARGIN + n * (extent + MARGIN): a margin before the first and after every one.
        let span = |n: usize, extent: usize| extent.checked_add(MARGIN)?.checked_mul(n)?.checked_add(MARGIN);
        let width = span(cells, cell).ok_or_else(too_large)?;
        let height = span(rows, row).ok_or_else(too_large)?;
        match width.checked_mul(height).and_then(|p| p.checked_mul(3)) {
            Some(bytes) if bytes <= MAX_BYTES => Ok(Layout { cell, text_scale, line, row, width, height }),
            _ => Err(too_large()),
        }
    }
}

/// Renders rows (each of the same number of cells) into an 8-bit RGB image: (width, height, rgb bytes row-major).
pub fn render_grid(rows: &[GridRow], size: usize, scale: usize) -> Result<(usize, usize, Vec<u8>)> {
    let layout = check(rows, size, scale)?;
    let Layout { cell, text_scale, line, row, width, height } = layout;
    let mut rgb = vec![PAPER; width * height * 3];
    let mut canvas = Canvas { rgb: &mut rgb, width };
    for (r, grid_row) in rows.iter().enumerate() {
        let top = MARGIN + r * (row + MARGIN);
        canvas.text(MARGIN, top, width - 2 * MARGIN, text_scale, &grid_row.title);
        for (c, grid_cell) in grid_row.cells.iter().enumerate() {
            let left = MARGIN + c * (cell + MARGIN);
            let image_top = top + line;
            canvas.image(left, image_top, grid_cell.pixels, size, scale);
            for (i, text) in grid_cell.text.lines().enumerate() {
                canvas.text(left, image_top + cell + i * line, cell, text_scale, text);
            }
        }
    }
    Ok((width, height, rgb))
}

/// Writes render_grid's image as a PNG, atomically (whole or not at all).
pub fn write_grid(path: &Path, rows: &[GridRow], size: usize, scale: usize) -> Result<()> {
    let (width, height, rgb) = render_grid(rows, size, scale)?;
    // Layout caps the image at MAX_BYTES, so both sides fit a u32.
    write_rgb_png(path, width as u32, height as u32, &rgb)
}

/// The layout of valid input, or the first problem as one line.
fn check(rows: &[GridRow], size: usize, scale: usize) -> Result<Layout> {
    let usage = |detail: String| Err(Error::Usage(format!("render_grid: {detail}")));
    if rows.is_empty() {
        return usage("no rows to draw".into());
    }
    if size == 0 || scale == 0 {
        return usage(format!("image size {size} and scale {scale} must both be at least 1"));
    }
    let cells = rows[0].cells.len();
    if cells == 0 {
        return usage("the rows have no images".into());
    }
    let want = 3 * size * size;
    for (r, row) in rows.iter().enumerate() {
        if row.cells.len() != cells {
            return usage(format!("row {r} has {} images, row 0 has {cells}", row.cells.len()));
        }
        for (c, cell) in row.cells.iter().enumerate() {
            if cell.pixels.len() != want {
                return usage(format!(
                    "row {r} image {c} has {} values, not 3x{size}x{size} = {want}",
                    cell.pixels.len()
                ));
            }
            let lines = cell.text.lines().count();
            if lines > TEXT_LINES {
                return usage(format!("row {r} image {c} has {lines} text lines, at most {TEXT_LINES} fit"));
            }
        }
    }
    Layout::new(rows.len(), cells, size, scale)
}

/// The RGB bytes being drawn on, `width` pixels a row.
struct Canvas<'a> {
    rgb: &'a mut [u8],
    width: usize,
}

impl Canvas<'_> {
    /// Draws a planar (3, size, size) image in [0, 1] at (left, top), each pixel a scale x scale block.
    fn image(&mut self, left: usize, top: usize, pixels: &[f32], size: usize, scale: usize) {
        let side = size * scale;
        for y in 0..side {
            for x in 0..side {
                let at = ((top + y) * self.width + left + x) * 3;
                for c in 0..3 {
                    let v = pixels[(c * size + y / scale) * size + x / scale];
                    // As write_png rounds; NaN (which clamp keeps) casts to 0.
                    self.rgb[at + c] = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
                }
            }
        }
    }

    /// Draws one line of text in the line band whose top-left is (left, top),
    /// dropping the characters that would not fit in `max_width`.
    fn text(&mut self, left: usize, top: usize, max_width: usize, scale: usize, text: &str) {
        let advance = (GLYPH_W + 1) * scale;
        let fitting = (max_width + scale) / advance;
        for (i, ch) in text.chars().take(fitting).enumerate() {
            let x0 = left + i * advance;
            let y0 = top + scale;
            for (gy, bits) in glyph(ch).into_iter().enumerate() {
                for gx in (0..GLYPH_W).filter(|gx| (bits >> (GLYPH_W - 1 - gx)) & 1 == 1) {
                    for dy in 0..scale {
                        for dx in 0..scale {
                            let at = ((y0 + gy * scale + dy) * self.width + x0 + gx * scale + dx) * 3;
                            self.rgb[at..at + 3].fill(INK);
                        }
                    }
                }
            }
        }
    }
}

/// Drawn for characters the font lacks.
const UNKNOWN: [u8; GLYPH_H] = [0b11111, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b11111];

/// A character's 5x7 bitmap: one row per entry, the leftmost column in bit 4.
/// Capitals share the lower-case glyphs.
fn glyph(ch: char) -> [u8; GLYPH_H] {
    match ch.to_ascii_lowercase() {
        ' ' => [0; GLYPH_H],
        'a' => [0b00000, 0b00000, 0b01110, 0b00001, 0b01111, 0b10001, 0b01111],
        'b' => [0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b11110],
        'c' => [0b00000, 0b00000, 0b01110, 0b10000, 0b10000, 0b10001, 0b01110],
        'd' => [0b00001, 0b00001, 0b01101, 0b10011, 0b10001, 0b10001, 0b01111],
        'e' => [0b00000, 0b00000, 0b01110, 0b10001, 0b11111, 0b10000, 0b01110],
        'f' => [0b00110, 0b01001, 0b01000, 0b11100, 0b01000, 0b01000, 0b01000],
        'g' => [0b00000, 0b01111, 0b10001, 0b10001, 0b01111, 0b00001, 0b01110],
        'h' => [0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001],
        'i' => [0b00100, 0b00000, 0b01100, 0b00100, 0b00100, 0b00100, 0b01110],
        'j' => [0b00010, 0b00000, 0b00110, 0b00010, 0b00010, 0b10010, 0b01100],
        'k' => [0b10000, 0b10000, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010],
        'l' => [0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110],
        'm' => [0b00000, 0b00000, 0b11010, 0b10101, 0b10101, 0b10001, 0b10001],
        'n' => [0b00000, 0b00000, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001],
        'o' => [0b00000, 0b00000, 0b01110, 0b10001, 0b10001, 0b10001, 0b01110],
        'p' => [0b00000, 0b00000, 0b11110, 0b10001, 0b11110, 0b10000, 0b10000],
        'q' => [0b00000, 0b00000, 0b01101, 0b10011, 0b01111, 0b00001, 0b00001],
        'r' => [0b00000, 0b00000, 0b10110, 0b11001, 0b10000, 0b10000, 0b10000],
        's' => [0b00000, 0b00000, 0b01110, 0b10000, 0b01110, 0b00001, 0b11110],
        't' => [0b01000, 0b01000, 0b11100, 0b01000, 0b01000, 0b01001, 0b00110],
        'u' => [0b00000, 0b00000, 0b10001, 0b10001, 0b10001, 0b10011, 0b01101],
        'v' => [0b00000, 0b00000, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100],
        'w' => [0b00000, 0b00000, 0b10001, 0b10001, 0b10101, 0b10101, 0b01010],
        'x' => [0b00000, 0b00000, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001],
        'y' => [0b00000, 0b00000, 0b10001, 0b10001, 0b01111, 0b00001, 0b01110],
        'z' => [0b00000, 0b00000, 0b11111, 0b00010, 0b00100, 0b01000, 0b11111],
        '0' => [0b01110, 0b10001, 0b10011, 0b10101, 0b11001, 0b10001, 0b01110],
        '1' => [0b00100, 0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110],
        '2' => [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b01000, 0b11111],
        '3' => [0b11111, 0b00010, 0b00100, 0b00010, 0b00001, 0b10001, 0b01110],
        '4' => [0b00010, 0b00110, 0b01010, 0b10010, 0b11111, 0b00010, 0b00010],
        '5' => [0b11111, 0b10000, 0b11110, 0b00001, 0b00001, 0b10001, 0b01110],
        '6' => [0b00110, 0b01000, 0b10000, 0b11110, 0b10001, 0b10001, 0b01110],
        '7' => [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b01000, 0b01000],
        '8' => [0b01110, 0b10001, 0b10001, 0b01110, 0b10001, 0b10001, 0b01110],
        '9' => [0b01110, 0b10001, 0b10001, 0b01111, 0b00001, 0b00010, 0b01100],
        '.' => [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b01100],
        ',' => [0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b00100, 0b01000],
        ':' => [0b00000, 0b01100, 0b01100, 0b00000, 0b01100, 0b01100, 0b00000],
        '%' => [0b11000, 0b11001, 0b00010, 0b00100, 0b01000, 0b10011, 0b00011],
        '/' => [0b00000, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b00000],
        '-' => [0b00000, 0b00000, 0b00000, 0b11111, 0b00000, 0b00000, 0b00000],
        '>' => [0b01000, 0b00100, 0b00010, 0b00001, 0b00010, 0b00100, 0b01000],
        '(' => [0b00010, 0b00100, 0b01000, 0b01000, 0b01000, 0b00100, 0b00010],
        ')' => [0b01000, 0b00100, 0b00010, 0b00010, 0b00010, 0b00100, 0b01000],
        '_' => [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b11111],
        '+' => [0b00000, 0b00100, 0b00100, 0b11111, 0b00100, 0b00100, 0b00000],
        '=' => [0b00000, 0b00000, 0b11111, 0b00000, 0b11111, 0b00000, 0b00000],
        '?' => [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b00000, 0b00100],
        _ => UNKNOWN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Device;
    use crate::tensor::image::read_png;
    use crate::tensor::Rng;

    fn random_image(size: usize, rng: &mut Rng) -> Vec<f32> {
        (0..3 * size * size).map(|_| rng.uniform()).collect()
    }

    /// `images` (rows x cells of them) in rows titled "row r", each cell captioned by `text(r, c)`.
    fn grid<'a>(images: &'a [Vec<Vec<f32>>], text: impl Fn(usize, usize) -> String) -> Vec<GridRow<'a>> {
        images
            .iter()
            .enumerate()
            .map(|(r, row)| GridRow {
                title: format!("row {r}"),
                cells: row.iter().enumerate().map(|(c, p)| GridCell { pixels: p, text: text(r, c) }).collect(),
            })
            .collect()
    }

    fn images(rows: usize, cells: usize, size: usize, seed: u64) -> Vec<Vec<Vec<f32>>> {
        let mut rng = Rng::new(seed);
        (0..rows).map(|_| (0..cells).map(|_| random_image(size, &mut rng)).collect()).collect()
    }

    /// Whether any pixel in the box [x0, x1) x [y0, y1) is dark.
    fn has_ink(rgb: &[u8], width: usize, (x0, x1): (usize, usize), (y0, y1): (usize, usize)) -> bool {
        (y0..y1).any(|y| (x0..x1).any(|x| rgb[(y * width + x) * 3..][..3].iter().all(|&v| v < 128)))
    }

    #[test]
    fn dimensions_follow_from_rows_cells_size_and_scale() {
        // Odd sizes: 3 rows of 2 cells of 5x5 at scale 3 (15 px cells, 1x text, 9 px lines):
        // width 4 + 2 * (15 + 4), height 4 + 3 * (9 + 15 + 2 * 9 + 4).
        let imgs = images(3, 2, 5, 1);
        let (w, h, rgb) = render_grid(&grid(&imgs, |_, _| "a".into()), 5, 3).unwrap();
        assert_eq!((w, h, rgb.len()), (42, 142, 42 * 142 * 3));
        // 1 row of 3 cells of 32x32 at scale 6: 192 px cells switch the text to 2x (18 px lines).
        let imgs = images(1, 3, 32, 2);
        let (w, h, _) = render_grid(&grid(&imgs, |_, _| String::new()), 32, 6).unwrap();
        assert_eq!((w, h), (4 + 3 * (192 + 4), 4 + (18 + 192 + 2 * 18 + 4)));
    }

    #[test]
    fn each_image_appears_scaled_at_its_place() {
        let (size, scale) = (7, 3);
        let imgs = images(2, 3, size, 3);
        let (w, _, rgb) = render_grid(&grid(&imgs, |r, c| format!("{r} {c}")), size, scale).unwrap();
        let (cell, line) = (size * scale, 9);
        let row_h = line + cell + 2 * line;
        for (r, row) in imgs.iter().enumerate() {
            for (c, pixels) in row.iter().enumerate() {
                let (left, top) = (MARGIN + c * (cell + MARGIN), MARGIN + r * (row_h + MARGIN) + line);
                for y in 0..cell {
                    for x in 0..cell {
                        for ch in 0..3 {
                            let want = (pixels[(ch * size + y / scale) * size + x / scale] * 255.0).round() as u8;
                            assert_eq!(rgb[((top + y) * w + left + x) * 3 + ch], want, "row {r} cell {c} ({x}, {y})");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn text_is_drawn_in_its_band_and_clipped_to_its_cell() {
        let (size, scale) = (32, 3);
        let imgs = images(1, 3, size, 4);
        let long = "background: water -> grass, and on and on (far too long)".to_string();
        let texts = ["circle 97%\nsquare 61%".to_string(), long, String::new()];
        let rows = grid(&imgs, |_, c| texts[c].clone());
        let (w, _, rgb) = render_grid(&rows, size, scale).unwrap();
        let (cell, line) = (size * scale, 9);
        let left = |c: usize| MARGIN + c * (cell + MARGIN);
        let top = |i: usize| MARGIN + line + cell + i * line;
        let ink = |(x0, x1), i| has_ink(&rgb, w, (x0, x1), (top(i), top(i) + line));
        assert!(has_ink(&rgb, w, (MARGIN, w - MARGIN), (MARGIN, MARGIN + line)), "the title");
        assert!(ink((left(0), left(0) + cell), 0), "first line");
        assert!(ink((left(0), left(0) + cell), 1), "second line");
        assert!(ink((left(1), left(1) + cell), 0), "long text");
        for i in 0..2 {
            assert!(!ink((left(2), left(2) + cell), i), "empty text, line {i}");
            // The long caption stops inside its cell: the margin after it stays white.
            assert!(!ink((left(1) + cell, left(2)), i), "text overflows its cell");
        }
    }

    #[test]
    fn the_font_covers_its_characters_and_boxes_the_rest() {
        for ch in "abcdefghijklmnopqrstuvwxyz0123456789.,:%/->()_+=?".chars() {
            assert_ne!(glyph(ch), UNKNOWN, "{ch}");
            assert_ne!(glyph(ch), [0; GLYPH_H], "{ch}");
            assert!(glyph(ch).iter().all(|&bits| bits < 1 << GLYPH_W), "{ch}");
        }
        assert_eq!(glyph('Q'), glyph('q'));
        assert_eq!(glyph(' '), [0; GLYPH_H]);
        assert_eq!(glyph('é'), UNKNOWN);
        assert_eq!(glyph('\t'), UNKNOWN);
    }

    #[test]
    fn bad_input_is_a_usage_error() {
        let imgs = images(2, 2, 4, 5);
        let short = vec![0.5; 3 * 4 * 4 - 1];
        let usage = |rows: &[GridRow], size, scale| match render_grid(rows, size, scale) {
            Err(Error::Usage(m)) => m,
            Err(e) => panic!("not a usage error: {e}"),
            Ok(_) => panic!("accepted"),
        };
        assert!(usage(&[], 4, 3).contains("no rows"));
        assert!(usage(&grid(&imgs, |_, _| String::new()), 4, 0).contains("scale 0"));
        assert!(usage(&grid(&imgs, |_, _| String::new()), 0, 3).contains("size 0"));
        assert!(usage(&grid(&imgs, |_, _| String::new()), 5, 3).contains("row 0 image 0 has 48 values"));
        let mut ragged = grid(&imgs, |_, _| String::new());
        ragged[1].cells.pop();
        assert!(usage(&ragged, 4, 3).contains("row 1 has 1 images, row 0 has 2"));
        let mut wrong = grid(&imgs, |_, _| String::new());
        wrong[1].cells[1].pixels = &short;
        assert!(usage(&wrong, 4, 3).contains("row 1 image 1 has 47 values"));
        assert!(usage(&grid(&imgs, |_, c| "a\nb\nc".repeat(c)), 4, 3).contains("3 text lines"));
        let empty = [GridRow { title: "t".into(), cells: vec![] }];
        assert!(usage(&empty, 4, 3).contains("no images"));
        assert!(usage(&grid(&imgs, |_, _| String::new()), 4, usize::MAX / 2).contains("too large"));
        assert!(usage(&grid(&imgs, |_, _| String::new()), 4, 100_000).contains("too large"));
    }

    #[test]
    fn the_png_round_trips() {
        let imgs = images(3, 2, 9, 6);
        let rows = grid(&imgs, |r, c| format!("cell {r}.{c}\n{}%", 10 * r + c));
        let (w, h, rgb) = render_grid(&rows, 9, 2).unwrap();
        let dir = std::env::temp_dir().join(format!("foil-grid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("grid.png");
        write_grid(&path, &rows, 9, 2).unwrap();
        let back = read_png(&path, &Device::Cpu).unwrap();
        assert_eq!(back.dims(), [1, 3, h, w]);
        let planar = back.to_vec_f32().unwrap();
        for (i, &byte) in rgb.iter().enumerate() {
            let (pixel, c) = (i / 3, i % 3);
            assert_eq!((planar[c * h * w + pixel] * 255.0).round() as u8, byte, "pixel {pixel} channel {c}");
        }
        assert!(write_grid(&path, &[], 9, 2).is_err());
        // A write that fails at the rename (onto a folder) leaves no temporary file behind.
        std::fs::create_dir_all(dir.join("taken")).unwrap();
        assert!(write_grid(&dir.join("taken"), &rows, 9, 2).is_err());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
        assert_eq!(read_png(&path, &Device::Cpu).unwrap().dims(), [1, 3, h, w]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
