//! What the `heatmap` command and the per-epoch probe write for one image: the cosine and
//! squared-error figures, the PCA figure, and the values (JSON in grid layout, and long CSV).
//! The app reads the JSON back for its timeline.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::analysis::{Analysis, ProbeImage};
use super::patch_maps::{Metric, PatchMaps};
use super::render::{heatmap_figure, pca_figure};

/// Opacity of the heat map over the image in written figures.
pub const FIGURE_OPACITY: f32 = 0.7;

/// Cosine and squared error of one token (or their means).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TokenValues {
    pub cosine: f32,
    pub squared_error: f32,
}

/// The values file `<stem>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeatmapRecord {
    pub image: PathBuf,
    /// None: the student as the config builds it (before training).
    pub checkpoint: Option<PathBuf>,
    pub epoch: Option<usize>,
    pub step: Option<usize>,
    pub grid: usize,
    pub cls: TokenValues,
    /// Over the patches, CLS excluded.
    pub mean: TokenValues,
    /// `grid` rows of `grid` values, top row first.
    pub cosine: Vec<Vec<f32>>,
    pub squared_error: Vec<Vec<f32>>,
}

/// Where a map came from.
#[derive(Debug, Clone, Default)]
pub struct Provenance {
    pub checkpoint: Option<PathBuf>,
    pub epoch: Option<usize>,
    pub step: Option<usize>,
}

impl HeatmapRecord {
    pub fn new(image: &Path, maps: &PatchMaps, provenance: &Provenance) -> Self {
        let rows = |v: &[f32]| v.chunks(maps.grid).map(<[f32]>::to_vec).collect();
        Self {
            image: image.to_path_buf(),
            checkpoint: provenance.checkpoint.clone(),
            epoch: provenance.epoch,
            step: provenance.step,
            grid: maps.grid,
            cls: TokenValues {
                cosine: maps.cls_cosine,
                squared_error: maps.cls_squared_error,
            },
            mean: TokenValues {
                cosine: maps.mean(Metric::Cosine),
                squared_error: maps.mean(Metric::SquaredError),
            },
            cosine: rows(&maps.cosine),
            squared_error: rows(&maps.squared_error),
        }
    }

    pub fn maps(&self) -> PatchMaps {
        PatchMaps {
            grid: self.grid,
            cosine: self.cosine.concat(),
            squared_error: self.squared_error.concat(),
            cls_cosine: self.cls.cosine,
            cls_squared_error: self.cls.squared_error,
        }
    }

    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let record: Self = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a kdlab heatmap record", path.display()))?;
        anyhow::ensure!(
            record.grid >= 1,
            "{}: grid {} has no patches",
            path.display(),
            record.grid
        );
        anyhow::ensure!(
            record.cosine.len() == record.grid
                && record
                    .cosine
                    .iter()
                    .chain(&record.squared_error)
                    .all(|r| r.len() == record.grid)
                && record.squared_error.len() == record.grid,
            "{}: the value rows do not form a {grid}×{grid} grid",
            path.display(),
            grid = record.grid
        );
        Ok(record)
    }
}

/// File stem for the `index`-th image: its position keeps names unique across class folders.
pub fn stem(index: usize, image: &Path) -> String {
    let name = image
        .file_stem()
        .map_or_else(|| "image".to_string(), |s| s.to_string_lossy().into_owned());
    format!("{index:02}-{name}")
}

/// Writes `<stem>.cosine.png`, `<stem>.squared_error.png`, `<stem>.pca.png`, `<stem>.json` and
/// `<stem>.csv` into `dir`; returns the paths written.
pub fn write_image_outputs(
    dir: &Path,
    stem: &str,
    image: &ProbeImage,
    analysis: &Analysis,
    provenance: &Provenance,
) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let maps = &analysis.maps;
    let mut written = Vec::new();
    let mut save_png = |name: String, picture: image::RgbImage| -> anyhow::Result<()> {
        let path = dir.join(name);
        picture
            .save(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
        Ok(())
    };
    for metric in Metric::ALL {
        let name = match metric {
            Metric::Cosine => "cosine",
            Metric::SquaredError => "squared_error",
        };
        save_png(
            format!("{stem}.{name}.png"),
            heatmap_figure(&image.display, maps, metric, FIGURE_OPACITY),
        )?;
    }
    let (teacher, student) = analysis.pca_colours();
    save_png(
        format!("{stem}.pca.png"),
        pca_figure(&image.display, &teacher, &student, maps.grid),
    )?;
    let record = HeatmapRecord::new(&image.path, maps, provenance);
    let json = dir.join(format!("{stem}.json"));
    std::fs::write(&json, serde_json::to_string_pretty(&record)?)
        .with_context(|| format!("cannot write {}", json.display()))?;
    written.push(json);
    let csv = dir.join(format!("{stem}.csv"));
    write_csv(&csv, maps).with_context(|| format!("cannot write {}", csv.display()))?;
    written.push(csv);
    Ok(written)
}

/// `token,row,column,cosine,squared_error`; the CLS token first with empty row and column.
fn write_csv(path: &Path, maps: &PatchMaps) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(out, "token,row,column,cosine,squared_error")?;
    writeln!(out, "cls,,,{},{}", maps.cls_cosine, maps.cls_squared_error)?;
    for (i, (c, e)) in maps.cosine.iter().zip(&maps.squared_error).enumerate() {
        writeln!(out, "{},{},{},{c},{e}", i + 1, i / maps.grid, i % maps.grid)?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_keeps_the_grid_layout_and_reads_back() {
        let maps = PatchMaps {
            grid: 2,
            cosine: vec![0.1, 0.2, 0.3, 0.4],
            squared_error: vec![1.0, 2.0, 3.0, 4.0],
            cls_cosine: 0.9,
            cls_squared_error: 0.2,
        };
        let record = HeatmapRecord::new(Path::new("a.jpg"), &maps, &Provenance::default());
        assert_eq!(record.cosine, vec![vec![0.1, 0.2], vec![0.3, 0.4]]);
        assert_eq!(record.maps(), maps);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        std::fs::write(&path, serde_json::to_string(&record).unwrap()).unwrap();
        assert_eq!(HeatmapRecord::read(&path).unwrap(), record);
        std::fs::write(&path, "{}").unwrap();
        assert!(HeatmapRecord::read(&path).is_err());
        // A record of no patches (grid 0, empty rows) is refused, not drawn.
        let empty = HeatmapRecord {
            grid: 0,
            cosine: vec![],
            squared_error: vec![],
            ..record
        };
        std::fs::write(&path, serde_json::to_string(&empty).unwrap()).unwrap();
        let e = HeatmapRecord::read(&path).unwrap_err().to_string();
        assert!(e.contains("grid 0"), "{e}");
    }

    #[test]
    fn stems_are_unique_by_position() {
        assert_eq!(stem(3, Path::new("val/cat/x.JPEG")), "03-x");
    }
}
