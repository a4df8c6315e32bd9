//! Pictures from per-patch values: the grid upsampled over the image, overlays, the colour bar,
//! and the figures the `heatmap` command writes. The app draws the same images as textures.

use image::{Rgb, RgbImage, imageops};

use super::colormap::{Colormap, ValueRange, colours};
use super::font::{draw_text, text_height, text_width};
use super::patch_maps::{Metric, PatchMaps};

const BACKGROUND: [u8; 3] = [255, 255, 255];
const INK: [u8; 3] = [20, 20, 20];
const MARGIN: u32 = 8;
const TEXT_SCALE: u32 = 2;

/// Side of the pictures: the smallest multiple of the grid that is at least 224 pixels, so every
/// patch is a whole number of pixels.
pub fn display_side(grid: usize) -> u32 {
    let grid = grid.max(1) as u32;
    grid * 224u32.div_ceil(grid)
}

/// A `grid × grid` array of colours (row-major) as a `side × side` image of flat cells.
/// Cells that do not form the grid (none, too few) draw a neutral grey picture: records are
/// checked when read, so this only keeps a picture from taking the UI thread down.
pub fn grid_image(cells: &[[u8; 3]], grid: usize, side: u32) -> RgbImage {
    if grid == 0 || cells.len() < grid * grid {
        return RgbImage::from_pixel(side, side, Rgb([128, 128, 128]));
    }
    RgbImage::from_fn(side, side, |x, y| {
        let column = (x as usize * grid / side as usize).min(grid - 1);
        let row = (y as usize * grid / side as usize).min(grid - 1);
        Rgb(cells[row * grid + column])
    })
}

/// `top` over `base` with the given opacity in [0, 1]. Both must be the same size.
pub fn blend(base: &RgbImage, top: &RgbImage, opacity: f32) -> RgbImage {
    let a = opacity.clamp(0.0, 1.0);
    RgbImage::from_fn(base.width(), base.height(), |x, y| {
        let (b, t) = (base.get_pixel(x, y).0, top.get_pixel(x, y).0);
        Rgb(std::array::from_fn(|c| {
            (f32::from(b[c]) * (1.0 - a) + f32::from(t[c]) * a).round() as u8
        }))
    })
}

/// A heat map of `values` over `image` (already `display_side` square).
pub fn overlay(
    image: &RgbImage,
    values: &[f32],
    grid: usize,
    colormap: Colormap,
    range: ValueRange,
    opacity: f32,
) -> RgbImage {
    let heat = grid_image(&colours(values, colormap, range), grid, image.width());
    blend(image, &heat, opacity)
}

/// A horizontal colour bar `width` wide with the range's ends and middle written under it.
pub fn colour_bar(colormap: Colormap, range: ValueRange, width: u32) -> RgbImage {
    let bar_height = 14;
    let height = bar_height + 4 + text_height(TEXT_SCALE);
    let mut bar = RgbImage::from_pixel(width, height, Rgb(BACKGROUND));
    for x in 0..width {
        let colour = colormap.colour(x as f32 / (width.max(2) - 1) as f32);
        for y in 0..bar_height {
            bar.put_pixel(x, y, Rgb(colour));
        }
    }
    let labels = [
        (range.min, 0.0),
        ((range.min + range.max) / 2.0, 0.5),
        (range.max, 1.0),
    ];
    for (value, at) in labels {
        let text = format_value(value);
        let w = text_width(&text, TEXT_SCALE);
        let x = ((width - w) as f32 * at) as u32;
        draw_text(&mut bar, &text, x, bar_height + 4, TEXT_SCALE, INK);
    }
    bar
}

/// Three significant decimals, the way the legend and the app print values.
pub fn format_value(value: f32) -> String {
    if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.3}")
    }
}

/// The `heatmap` figure: the image and the overlay side by side, a title line with the CLS and
/// mean values, and the colour bar.
pub fn heatmap_figure(
    image: &RgbImage,
    maps: &PatchMaps,
    metric: Metric,
    opacity: f32,
) -> RgbImage {
    let values = maps.values(metric);
    let colormap = Colormap::for_metric(metric);
    let range = ValueRange::fixed(metric);
    let heat = overlay(image, values, maps.grid, colormap, range, opacity);
    let title = format!(
        "{}  CLS {}  MEAN {}",
        metric.label(),
        format_value(maps.cls(metric)),
        format_value(maps.mean(metric))
    );
    let bar = colour_bar(colormap, range, image.width());
    figure(&[image, &heat], &[None, None], &title, Some(&bar))
}

/// The PCA figure: the image, the teacher's and the student's patches in the teacher's basis.
pub fn pca_figure(
    image: &RgbImage,
    teacher: &[[u8; 3]],
    student: &[[u8; 3]],
    grid: usize,
) -> RgbImage {
    let side = image.width();
    let teacher = grid_image(teacher, grid, side);
    let student = grid_image(student, grid, side);
    figure(
        &[image, &teacher, &student],
        &[Some("IMAGE"), Some("TEACHER"), Some("STUDENT")],
        "PCA OF PATCHES (TEACHER BASIS) AS RGB",
        None,
    )
}

/// Panels in a row under a title, each with an optional caption, and an optional bar under the
/// last panel.
pub(crate) fn figure(
    panels: &[&RgbImage],
    captions: &[Option<&str>],
    title: &str,
    bar: Option<&RgbImage>,
) -> RgbImage {
    let side = panels[0].height();
    let line = text_height(TEXT_SCALE) + MARGIN;
    let width = MARGIN + panels.iter().map(|p| p.width() + MARGIN).sum::<u32>();
    let captions_height = if captions.iter().any(Option::is_some) {
        line
    } else {
        0
    };
    let bar_height = bar.map_or(0, |b| b.height() + MARGIN);
    let height = MARGIN + line + captions_height + side + MARGIN + bar_height;
    let mut out = RgbImage::from_pixel(
        width.max(text_width(title, TEXT_SCALE) + 2 * MARGIN),
        height,
        Rgb(BACKGROUND),
    );
    draw_text(&mut out, title, MARGIN, MARGIN, TEXT_SCALE, INK);
    let top = MARGIN + line;
    let mut x = MARGIN;
    for (panel, caption) in panels.iter().zip(captions) {
        if let Some(caption) = caption {
            draw_text(&mut out, caption, x, top, TEXT_SCALE, INK);
        }
        imageops::replace(
            &mut out,
            *panel,
            i64::from(x),
            i64::from(top + captions_height),
        );
        x += panel.width() + MARGIN;
    }
    if let Some(bar) = bar {
        let last_left = x - MARGIN - panels[panels.len() - 1].width();
        imageops::replace(
            &mut out,
            bar,
            i64::from(last_left),
            i64::from(top + captions_height + side + MARGIN),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_side_is_a_whole_multiple_of_the_grid() {
        assert_eq!(display_side(14), 224);
        assert_eq!(display_side(8), 224);
        assert_eq!(display_side(5), 225);
    }

    #[test]
    fn an_empty_grid_draws_grey_instead_of_panicking() {
        let img = grid_image(&[], 0, 8);
        assert_eq!(img.dimensions(), (8, 8));
        assert_eq!(grid_image(&[[1, 2, 3]], 2, 4).get_pixel(3, 3).0, [128; 3]);
    }

    #[test]
    fn grid_cells_cover_their_pixels() {
        let cells = [[1, 0, 0], [2, 0, 0], [3, 0, 0], [4, 0, 0]];
        let img = grid_image(&cells, 2, 4);
        assert_eq!(img.get_pixel(1, 1).0, [1, 0, 0]);
        assert_eq!(img.get_pixel(2, 1).0, [2, 0, 0]);
        assert_eq!(img.get_pixel(1, 3).0, [3, 0, 0]);
        assert_eq!(img.get_pixel(3, 3).0, [4, 0, 0]);
    }

    #[test]
    fn overlay_colours_only_the_cell_that_differs() {
        let image = RgbImage::from_pixel(4, 4, Rgb([0, 0, 0]));
        let values = [1.0, 1.0, 1.0, 0.0];
        let out = overlay(
            &image,
            &values,
            2,
            Colormap::Viridis,
            ValueRange::fixed(Metric::Cosine),
            1.0,
        );
        assert_eq!(out.get_pixel(0, 0).0, Colormap::Viridis.colour(1.0));
        assert_eq!(out.get_pixel(3, 3).0, Colormap::Viridis.colour(0.0));
        let half = blend(&image, &RgbImage::from_pixel(4, 4, Rgb([200, 100, 0])), 0.5);
        assert_eq!(half.get_pixel(0, 0).0, [100, 50, 0]);
    }

    #[test]
    fn figures_hold_their_panels() {
        let maps = PatchMaps {
            grid: 2,
            cosine: vec![0.1, 0.5, 0.9, 1.0],
            squared_error: vec![1.8, 1.0, 0.2, 0.0],
            cls_cosine: 0.5,
            cls_squared_error: 1.0,
        };
        let image = RgbImage::from_pixel(224, 224, Rgb([128, 128, 128]));
        let fig = heatmap_figure(&image, &maps, Metric::Cosine, 1.0);
        assert!(fig.width() >= 2 * 224 && fig.height() > 224);
        let pca = pca_figure(&image, &[[255, 0, 0]; 4], &[[0, 255, 0]; 4], 2);
        assert!(pca.width() >= 3 * 224);
    }
}
