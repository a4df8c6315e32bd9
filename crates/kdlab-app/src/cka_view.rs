//! The Inspect panel's layer-CKA view: the teacher × student matrix (hover for a value, click
//! to pick a cell) and, for a run, the picked teacher layer's CKA with every student layer over
//! the epochs, from the probe set's `heatmaps/epoch-NNN/cka.csv`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use egui::{Color32, Rect, Sense, Ui, Vec2};
use egui_plot::{Legend, Line, Plot, PlotPoints};

use kdlab_engine::inspect::CkaMatrix;
use kdlab_engine::inspect::cka::CKA_CSV;
use kdlab_engine::inspect::colormap::{Colormap, ValueRange};
use kdlab_engine::session::RunDir;

/// A run's per-epoch CKA matrices, re-read at most once a second (training adds epochs).
pub struct CkaTimeline {
    run: PathBuf,
    read_at: Instant,
    /// (epoch, matrix), epochs in order; epochs without a readable `cka.csv` are left out.
    pub epochs: Vec<(usize, CkaMatrix)>,
}

impl CkaTimeline {
    pub fn read(run: &Path) -> Self {
        let epochs = RunDir::at(run)
            .heatmap_epochs()
            .into_iter()
            .filter_map(|(epoch, dir)| Some((epoch, CkaMatrix::read_csv(&dir.join(CKA_CSV)).ok()?)))
            .collect();
        Self {
            run: run.to_path_buf(),
            read_at: Instant::now(),
            epochs,
        }
    }

    pub fn is_fresh_for(&self, run: &Path) -> bool {
        self.run == run && self.read_at.elapsed() < Duration::from_secs(1)
    }
}

/// Draws the matrix, `side` points per cell at most; hovering shows the value, a click picks
/// the cell into `picked` (teacher layer, student layer), both from 0.
pub fn matrix_ui(ui: &mut Ui, matrix: &CkaMatrix, picked: &mut (usize, usize)) {
    let (rows, columns) = (matrix.teacher_layers, matrix.student_layers);
    if rows == 0 || columns == 0 {
        ui.label("no layers");
        return;
    }
    let label_w = 36.0;
    let cell = ((ui.available_width() * 0.5 - label_w) / columns as f32).clamp(14.0, 56.0);
    let size = Vec2::new(label_w + cell * columns as f32, 18.0 + cell * rows as f32);
    let (response, painter) = ui.allocate_painter(size, Sense::click());
    let origin = response.rect.min + Vec2::new(label_w, 18.0);
    let text = ui.visuals().text_color();
    let font = egui::FontId::proportional(11.0);
    let label = |at: egui::Pos2, text_: String| {
        painter.text(at, egui::Align2::CENTER_CENTER, text_, font.clone(), text);
    };
    for s in 0..columns {
        label(
            origin + Vec2::new((s as f32 + 0.5) * cell, -9.0),
            format!("S{}", s + 1),
        );
    }
    let range = ValueRange { min: 0.0, max: 1.0 };
    for t in 0..rows {
        label(
            origin + Vec2::new(-label_w / 2.0, (t as f32 + 0.5) * cell),
            format!("T{}", t + 1),
        );
        for s in 0..columns {
            let value = matrix.at(t, s) as f32;
            let [r, g, b] = Colormap::Viridis.colour(range.position(value));
            let rect = Rect::from_min_size(
                origin + Vec2::new(s as f32 * cell, t as f32 * cell),
                Vec2::splat(cell - 1.0),
            );
            painter.rect_filled(rect, 0.0, Color32::from_rgb(r, g, b));
            if cell >= 30.0 {
                // Dark text on viridis' bright end, light on its dark end.
                let ink = if value > 0.6 {
                    Color32::from_gray(20)
                } else {
                    Color32::from_gray(240)
                };
                painter.text(
                    rect.center(),
                    egui::Align2::CENTER_CENTER,
                    format!("{value:.2}"),
                    font.clone(),
                    ink,
                );
            }
            if (t, s) == *picked {
                painter.rect_stroke(
                    rect,
                    0.0,
                    egui::Stroke::new(2.0, Color32::from_rgb(230, 60, 60)),
                    egui::StrokeKind::Inside,
                );
            }
        }
    }
    let cell_at = |pos: egui::Pos2| {
        let rel = (pos - origin) / cell;
        (rel.x >= 0.0 && rel.y >= 0.0)
            .then_some((rel.y as usize, rel.x as usize))
            .filter(|&(t, s)| t < rows && s < columns)
    };
    if response.clicked()
        && let Some(cell) = response.interact_pointer_pos().and_then(cell_at)
    {
        *picked = cell;
    }
    if let Some((t, s)) = response.hover_pos().and_then(cell_at) {
        response.on_hover_text_at_pointer(format!(
            "teacher layer {} · student layer {}: CKA {:.4}",
            t + 1,
            s + 1,
            matrix.at(t, s)
        ));
    }
}

/// The picked teacher layer's CKA with every student layer over the epochs (the picked student
/// layer drawn thicker).
pub fn timeline_ui(ui: &mut Ui, timeline: &CkaTimeline, picked: (usize, usize)) {
    let (teacher, student) = picked;
    let students = timeline
        .epochs
        .iter()
        .map(|(_, m)| m.student_layers)
        .max()
        .unwrap_or(0);
    ui.label(format!(
        "teacher layer {} against each student layer, after each epoch (probe set)",
        teacher + 1
    ));
    Plot::new("cka-timeline")
        .height(220.0)
        .legend(Legend::default())
        .x_axis_label("epoch")
        .include_y(0.0)
        .include_y(1.0)
        .show(ui, |plot| {
            for s in 0..students {
                let points: Vec<[f64; 2]> = timeline
                    .epochs
                    .iter()
                    .filter(|(_, m)| teacher < m.teacher_layers && s < m.student_layers)
                    .map(|(epoch, m)| [*epoch as f64, m.at(teacher, s)])
                    .collect();
                let width = if s == student { 3.0 } else { 1.2 };
                plot.line(Line::new(format!("S{}", s + 1), PlotPoints::from(points)).width(width));
            }
        });
}
