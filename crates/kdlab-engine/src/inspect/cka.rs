//! Layer-by-layer linear CKA between every teacher layer and every student layer (Kornblith
//! et al. 2019, "Similarity of Neural Network Representations Revisited", eq. 5): with the
//! columns of X `[n, D₁]` and Y `[n, D₂]` centred,
//!
//! ```text
//! CKA(X, Y) = ‖YᵀX‖²_F / (‖XᵀX‖_F · ‖YᵀY‖_F)
//! ```
//!
//! The rows are the tokens (CLS and patches) of every image of the set, the columns a layer
//! result's dimensions. kdlab uses this feature-space form, exactly, streamed over chunks of
//! images: it keeps XᵀX, Σx per layer and YᵀX per teacher × student pair — D×D each, however
//! many images — instead of the n×n Gram matrices of the HSIC form (for 32 ViT-B images at
//! 224², n = 6304 tokens: 159 MB per layer) or a minibatch estimator's approximation. Each
//! layer's columns are first shifted by the mean of the first chunk, so the centring
//! `C = XᵀX − ΣxᵀΣx / n` subtracts a small correction instead of cancelling two large sums in
//! f32 (a ViT's residual stream has dimensions with large means).

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};
use image::{Rgb, RgbImage};

use super::colormap::{Colormap, ValueRange};
use super::font::{draw_text, text_height, text_width};

/// The file names in a heatmaps folder (`heatmap --out`, `heatmaps/epoch-NNN/`).
pub const CKA_CSV: &str = "cka.csv";
pub const CKA_PNG: &str = "cka.png";

/// Running sums of one layer's (shifted) features.
struct LayerSums<B: Backend> {
    /// `[1, D]`: the first chunk's column means.
    shift: Tensor<B, 2>,
    /// `[1, D]`: Σ of the shifted rows.
    sum: Tensor<B, 2>,
    /// `[D, D]`: XᵀX of the shifted rows.
    gram: Tensor<B, 2>,
}

/// Linear CKA of every teacher layer with every student layer over the images added so far.
pub struct CkaAccumulator<B: Backend> {
    teacher: Vec<LayerSums<B>>,
    student: Vec<LayerSums<B>>,
    /// Teacher-major: `cross[t · S + s]` = X_tᵀ Y_s, `[D_t, D_s]`.
    cross: Vec<Tensor<B, 2>>,
    rows: usize,
}

impl<B: Backend> Default for CkaAccumulator<B> {
    fn default() -> Self {
        Self {
            teacher: Vec::new(),
            student: Vec::new(),
            cross: Vec::new(),
            rows: 0,
        }
    }
}

/// `[B, T, D]` → `[B·T, D]` in f32.
fn token_rows<B: Backend>(layer: &Tensor<B, 3>) -> Tensor<B, 2> {
    let [batch, tokens, dim] = layer.dims();
    layer
        .clone()
        .cast(DType::F32)
        .reshape([batch * tokens, dim])
}

impl<B: Backend> CkaAccumulator<B> {
    /// Adds one chunk of images: each model's layer results, `[B, T, D]` each, the same images
    /// in the same order.
    pub fn add(&mut self, teacher: &[Tensor<B, 3>], student: &[Tensor<B, 3>]) {
        let shifted = |layers: &[Tensor<B, 3>], sums: &mut Vec<LayerSums<B>>| {
            let rows: Vec<Tensor<B, 2>> = layers.iter().map(token_rows).collect();
            if sums.is_empty() {
                sums.extend(rows.iter().map(|x| {
                    let dim = x.dims()[1];
                    let zeros = Tensor::zeros([1, dim], &x.device());
                    LayerSums {
                        shift: x.clone().mean_dim(0),
                        sum: zeros,
                        gram: Tensor::zeros([dim, dim], &x.device()),
                    }
                }));
            }
            rows.into_iter()
                .zip(sums.iter_mut())
                .map(|(x, s)| {
                    let x = x - s.shift.clone();
                    s.sum = s.sum.clone() + x.clone().sum_dim(0);
                    s.gram = s.gram.clone() + x.clone().transpose().matmul(x.clone());
                    x
                })
                .collect::<Vec<_>>()
        };
        let xs = shifted(teacher, &mut self.teacher);
        let ys = shifted(student, &mut self.student);
        let first = self.cross.is_empty();
        for (t, x) in xs.iter().enumerate() {
            let xt = x.clone().transpose();
            for (s, y) in ys.iter().enumerate() {
                let product = xt.clone().matmul(y.clone()); // [D_t, D_s]
                if first {
                    self.cross.push(product);
                } else {
                    let slot = &mut self.cross[t * ys.len() + s];
                    *slot = slot.clone() + product;
                }
            }
        }
        self.rows += teacher.first().map_or(0, |x| x.dims()[0] * x.dims()[1]);
    }

    /// The CKA matrix; `images` is recorded with it.
    pub fn finish(self, images: usize) -> anyhow::Result<CkaMatrix> {
        let n = self.rows as f64;
        anyhow::ensure!(n >= 2.0, "CKA needs at least two tokens, has {n}");
        let centred = |a: &LayerSums<B>, b_sum: &Tensor<B, 2>, product: Tensor<B, 2>| {
            product
                - a.sum
                    .clone()
                    .transpose()
                    .matmul(b_sum.clone())
                    .div_scalar(n)
        };
        let norm = |m: Tensor<B, 2>| m.square().sum().sqrt(); // [1]
        let self_norms = |layers: &[LayerSums<B>]| -> Vec<Tensor<B, 1>> {
            layers
                .iter()
                .map(|l| norm(centred(l, &l.sum, l.gram.clone())))
                .collect()
        };
        let (tn, sn) = (self_norms(&self.teacher), self_norms(&self.student));
        let students = self.student.len();
        let mut values = Vec::with_capacity(self.cross.len());
        for (i, product) in self.cross.into_iter().enumerate() {
            let (t, s) = (i / students, i % students);
            let cross = centred(&self.teacher[t], &self.student[s].sum, product);
            let cross_sq = cross.square().sum();
            values.push(cross_sq / (tn[t].clone() * sn[s].clone()));
        }
        let values: Vec<f32> = if values.is_empty() {
            Vec::new()
        } else {
            Tensor::cat(values, 0)
                .into_data()
                .convert::<f32>()
                .to_vec()
                .map_err(|e| anyhow::anyhow!("reading the CKA values back: {e:?}"))?
        };
        Ok(CkaMatrix {
            teacher_layers: self.teacher.len(),
            student_layers: students,
            images,
            values: values.into_iter().map(f64::from).collect(),
        })
    }
}

/// CKA of every teacher layer (rows, first block first) with every student layer (columns).
#[derive(Debug, Clone, PartialEq)]
pub struct CkaMatrix {
    pub teacher_layers: usize,
    pub student_layers: usize,
    /// How many images the tokens came from.
    pub images: usize,
    /// Row-major, `teacher_layers × student_layers`.
    pub values: Vec<f64>,
}

impl CkaMatrix {
    pub fn at(&self, teacher: usize, student: usize) -> f64 {
        self.values[teacher * self.student_layers + student]
    }

    /// `teacher_layer,student_layer,cka,images`, layers counted from 1 as the figure labels them.
    pub fn write_csv(&self, path: &Path) -> anyhow::Result<()> {
        let write = || -> std::io::Result<()> {
            let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
            writeln!(out, "teacher_layer,student_layer,cka,images")?;
            for t in 0..self.teacher_layers {
                for s in 0..self.student_layers {
                    writeln!(out, "{},{},{},{}", t + 1, s + 1, self.at(t, s), self.images)?;
                }
            }
            out.flush()
        };
        write().with_context(|| format!("cannot write {}", path.display()))
    }

    /// Reads what `write_csv` wrote; a malformed file is an error naming the line.
    pub fn read_csv(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut cells = Vec::new();
        let mut images = 0;
        for (i, line) in text.lines().enumerate().skip(1) {
            let fields: Vec<&str> = line.split(',').collect();
            let parsed = (fields.len() == 4)
                .then(|| {
                    Some((
                        fields[0].parse::<usize>().ok()?,
                        fields[1].parse::<usize>().ok()?,
                        fields[2].parse::<f64>().ok()?,
                        fields[3].parse::<usize>().ok()?,
                    ))
                })
                .flatten()
                .filter(|&(t, s, _, _)| t >= 1 && s >= 1);
            let Some((t, s, value, n)) = parsed else {
                anyhow::bail!(
                    "{}:{}: expected `teacher_layer,student_layer,cka,images`, found `{line}`",
                    path.display(),
                    i + 1
                );
            };
            images = n;
            cells.push((t - 1, s - 1, value));
        }
        let teacher_layers = cells.iter().map(|c| c.0 + 1).max().unwrap_or(0);
        let student_layers = cells.iter().map(|c| c.1 + 1).max().unwrap_or(0);
        anyhow::ensure!(
            cells.len() == teacher_layers * student_layers && !cells.is_empty(),
            "{}: {} values do not fill a {teacher_layers} × {student_layers} matrix",
            path.display(),
            cells.len()
        );
        let mut values = vec![f64::NAN; cells.len()];
        for (t, s, value) in cells {
            values[t * student_layers + s] = value;
        }
        Ok(Self {
            teacher_layers,
            student_layers,
            images,
            values,
        })
    }

    /// The matrix as a picture: teacher layers down (first at the top), student layers across,
    /// viridis over [0, 1], each cell's value written in it.
    pub fn figure(&self) -> RgbImage {
        const CELL: u32 = 44;
        const MARGIN: u32 = 8;
        const SCALE: u32 = 2;
        let ink = [20, 20, 20];
        let line = text_height(2) + MARGIN;
        let label_w = text_width("T12", 2) + MARGIN;
        let (rows, columns) = (self.teacher_layers as u32, self.student_layers as u32);
        let title = format!("LINEAR CKA  TEACHER X STUDENT  {} IMAGES", self.images);
        let width = (2 * MARGIN + label_w + columns * CELL).max(text_width(&title, 2) + 2 * MARGIN);
        let height = 2 * MARGIN + 2 * line + rows * CELL;
        let mut out = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
        draw_text(&mut out, &title, MARGIN, MARGIN, 2, ink);
        let (left, top) = (MARGIN + label_w, MARGIN + 2 * line);
        for s in 0..columns {
            let label = format!("S{}", s + 1);
            let x = left + s * CELL + (CELL - text_width(&label, 2)) / 2;
            draw_text(&mut out, &label, x, MARGIN + line, 2, ink);
        }
        let range = ValueRange { min: 0.0, max: 1.0 };
        for t in 0..rows {
            let y0 = top + t * CELL;
            draw_text(
                &mut out,
                &format!("T{}", t + 1),
                MARGIN,
                y0 + (CELL - text_height(2)) / 2,
                2,
                ink,
            );
            for s in 0..columns {
                let value = self.at(t as usize, s as usize) as f32;
                let colour = Colormap::Viridis.colour(range.position(value));
                let x0 = left + s * CELL;
                for y in y0..y0 + CELL - 1 {
                    for x in x0..x0 + CELL - 1 {
                        out.put_pixel(x, y, Rgb(colour));
                    }
                }
                // Dark text on the bright end of viridis, white on the dark end.
                let text_ink = if value > 0.6 {
                    [20, 20, 20]
                } else {
                    [250, 250, 250]
                };
                let text = format!("{value:.2}");
                let tx = x0 + (CELL - text_width(&text, SCALE)) / 2;
                let ty = y0 + (CELL - text_height(SCALE)) / 2;
                draw_text(&mut out, &text, tx, ty, SCALE, text_ink);
            }
        }
        out
    }

    /// Writes `cka.csv` and `cka.png` into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        self.write_csv(&dir.join(CKA_CSV))?;
        let png = dir.join(CKA_PNG);
        self.figure()
            .save(&png)
            .with_context(|| format!("cannot write {}", png.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::TensorData;

    type B = Flex;

    fn layer(values: Vec<f32>, shape: [usize; 3]) -> Tensor<B, 3> {
        Tensor::from_data(TensorData::new(values, shape), &Default::default())
    }

    #[test]
    fn a_layer_with_itself_or_a_scaled_rotated_copy_has_cka_one() {
        let (b, t, d) = (2, 5, 3);
        let x: Vec<f32> = (0..b * t * d)
            .map(|i| ((i * 37 % 17) as f32).sin() + 3.0)
            .collect();
        // y = 2·x·R (R swaps and negates columns: orthogonal) + 5: CKA is invariant to all three.
        let y: Vec<f32> = x
            .chunks(d)
            .flat_map(|r| [2.0 * r[1] + 5.0, -2.0 * r[0] + 5.0, 2.0 * r[2] + 5.0])
            .collect();
        let mut acc = CkaAccumulator::<B>::default();
        acc.add(
            &[layer(x.clone(), [b, t, d])],
            &[layer(y, [b, t, d]), layer(x, [b, t, d])],
        );
        let m = acc.finish(b).unwrap();
        assert_eq!((m.teacher_layers, m.student_layers), (1, 2));
        assert!((m.at(0, 0) - 1.0).abs() < 1e-5, "{m:?}");
        assert!((m.at(0, 1) - 1.0).abs() < 1e-5, "{m:?}");
    }

    #[test]
    fn the_csv_reads_back_and_a_broken_one_names_its_line() {
        let m = CkaMatrix {
            teacher_layers: 2,
            student_layers: 3,
            images: 4,
            values: vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.25],
        };
        let dir = tempfile::tempdir().unwrap();
        m.write(dir.path()).unwrap();
        assert_eq!(CkaMatrix::read_csv(&dir.path().join(CKA_CSV)).unwrap(), m);
        let png = image::open(dir.path().join(CKA_PNG)).unwrap();
        assert!(png.width() > 3 * 44 && png.height() > 2 * 44);
        let broken = dir.path().join("broken.csv");
        std::fs::write(&broken, "teacher_layer,student_layer,cka,images\n1,1,x,4\n").unwrap();
        let e = CkaMatrix::read_csv(&broken).unwrap_err().to_string();
        assert!(e.contains("broken.csv:2"), "{e}");
    }
}
