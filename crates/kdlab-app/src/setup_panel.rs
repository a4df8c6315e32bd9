//! The Setup panel: every config field, with the validation message beside the field it is
//! about; file pickers for weights and folders; the backend picker; load and save RON.

use std::path::{Path, PathBuf};

use egui::{DragValue, Grid, Ui};

use kdlab_engine::backend::BackendChoice;
use kdlab_engine::config::{ConfigProblem, NormalizationConfig, Precision, RunConfig, limits};
use kdlab_hub::{CATALOGUE, WeightsName};
use kdlab_model::model::{
    BeitV2Config, BlockSelection, Data2Vec2Config, VitConfig, VitFamily, VitPositions,
};

/// Everything that would stop a run, checked every frame (no file is opened): every broken
/// rule of the config, then files that do not exist. Opening the weights and listing the data
/// happen when the run starts, and their problems fail it with the field named.
pub fn problems(config: &RunConfig) -> Vec<ConfigProblem> {
    let mut found = config.problems();
    let mut must_exist = |field: &str, path: Option<&Path>, what: &str| {
        if let Some(path) = path
            && !path.exists()
        {
            found.push(ConfigProblem::new(
                field,
                format!("{what} {} does not exist", path.display()),
            ));
        }
    };
    // A weights name (hf:…, a short name) is fetched when the run starts; a name kdlab does not
    // know is one of the config's own problems.
    fn file(weights: Option<&Path>) -> Option<&Path> {
        weights.filter(|w| matches!(WeightsName::of_path(w), Ok(WeightsName::Path(_))))
    }
    must_exist(
        "teacher.weights",
        file(config.teacher.weights.as_deref()),
        "file",
    );
    must_exist(
        "student.weights",
        file(config.student.weights.as_deref()),
        "file",
    );
    must_exist("data.train", Some(&config.data.train), "folder");
    must_exist("data.val", config.data.val.as_deref(), "folder");
    for image in &config.probe.images {
        must_exist("probe.images", Some(image), "image");
    }
    found
}

pub struct SetupPanel {
    pub config: RunConfig,
    /// The RON file the config came from or was last saved to.
    pub path: Option<PathBuf>,
    pub backend: BackendChoice,
    /// Devices found at start-up, one line each.
    pub detected: Vec<String>,
    pub runs_dir: PathBuf,
    /// The outcome of the last load or save.
    pub notice: Option<Result<String, String>>,
}

impl SetupPanel {
    pub fn new(config: RunConfig, path: Option<PathBuf>, detected: Vec<String>) -> Self {
        Self {
            config,
            path,
            backend: BackendChoice::Auto,
            detected,
            runs_dir: PathBuf::from("runs"),
            notice: None,
        }
    }

    /// What keeps Start disabled, for the Run panel: the first problem, and how many more.
    pub fn problem_summary(&self) -> Option<String> {
        let found = problems(&self.config);
        let first = found.first()?;
        Some(match found.len() {
            1 => first.to_string(),
            n => format!("{first} (and {} more: see Setup)", n - 1),
        })
    }

    pub fn load(&mut self, path: &Path) {
        match RunConfig::load(path) {
            Ok(config) => {
                self.config = config;
                self.path = Some(path.to_path_buf());
                self.notice = Some(Ok(format!("loaded {}", path.display())));
            }
            Err(e) => self.notice = Some(Err(e.to_string())),
        }
    }

    pub fn save(&mut self, path: &Path) {
        let written = self
            .config
            .to_ron()
            .map_err(|e| e.to_string())
            .and_then(|ron| {
                std::fs::write(path, ron)
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))
            });
        self.notice = Some(written.map(|()| {
            self.path = Some(path.to_path_buf());
            format!("saved {}", path.display())
        }));
    }

    pub fn ui(&mut self, ui: &mut Ui) {
        self.file_ui(ui);
        ui.separator();
        let problems = problems(&self.config);
        egui::ScrollArea::vertical().show(ui, |ui| {
            let mut form = Form {
                problems: &problems,
            };
            let c = &mut self.config;
            section(ui, "General", |ui| {
                form.row(ui, "name", "name", "names the run directory", |ui| {
                    ui.text_edit_singleline(&mut c.name)
                });
                form.row(
                    ui,
                    "seed",
                    "seed",
                    "initialisation, data order, augmentation",
                    |ui| ui.add(DragValue::new(&mut c.seed)),
                );
                form.row(
                    ui,
                    "precision",
                    "precision",
                    "the frozen teacher's compute type",
                    |ui| precision_ui(ui, &mut c.precision),
                );
                form.row(
                    ui,
                    "log_every",
                    "log every",
                    "steps per metrics line",
                    |ui| ui.add(DragValue::new(&mut c.log_every).range(limits::STEPS)),
                );
                form.row(
                    ui,
                    "val_every",
                    "validate every",
                    "extra validation (steps); it always runs after each epoch",
                    |ui| {
                        optional_number(ui, &mut c.val_every, 100, |v| {
                            DragValue::new(v).range(limits::STEPS)
                        })
                    },
                );
                form.row(
                    ui,
                    "runs_dir",
                    "runs folder",
                    "where run directories go",
                    |ui| folder_ui(ui, &mut self.runs_dir),
                );
                form.row(
                    ui,
                    "backend",
                    "backend",
                    "auto: CUDA, else a WGPU GPU, else the CPU",
                    |ui| backend_ui(ui, &mut self.backend, &self.detected),
                );
            });
            section(ui, "Teacher (frozen)", |ui| {
                form.row(
                    ui,
                    "teacher.weights",
                    "weights",
                    "BEiT v2 (unilm .pth, timm), timm ViT/DeiT/DINOv2/DINOv3 safetensors with \
                     their config.json, or a kdlab file; none = random",
                    |ui| {
                        optional_file_ui(ui, &mut c.teacher.weights, &["pth", "safetensors", "bin"])
                    },
                );
                form.row(
                    ui,
                    "teacher.architecture",
                    "BEiT v2",
                    "a random BEiT v2 without weights; checked against them",
                    |ui| optional_beit_ui(ui, &mut c.teacher.architecture),
                );
                form.row(
                    ui,
                    "teacher.vit",
                    "timm ViT",
                    "a random timm ViT of any family without weights (set BEiT v2 off)",
                    |ui| optional_vit_ui(ui, "teacher.vit", &mut c.teacher.vit),
                );
                form.row(
                    ui,
                    "teacher.image_size",
                    "image size",
                    "what the teacher sees; default its own (a timm ViT's positions are resampled)",
                    |ui| optional_size_ui(ui, &mut c.teacher.image_size),
                );
                form.row(
                    ui,
                    "teacher.normalization",
                    "normalisation",
                    "default: its config.json's pretrained_cfg, else ImageNet's",
                    |ui| optional_normalization_ui(ui, &mut c.teacher.normalization),
                );
                form.row(
                    ui,
                    "teacher.resample_to_student_grid",
                    "grid matching",
                    "on another patch grid, resample the teacher's average to the student's",
                    |ui| ui.checkbox(&mut c.teacher.resample_to_student_grid, "resample"),
                );
                form.problem_row(ui, "teacher");
            });
            section(ui, "Student (trained)", |ui| {
                form.row(
                    ui,
                    "student.weights",
                    "weights",
                    "fairseq .pt, timm safetensors with config.json or a kdlab file; none = random",
                    |ui| optional_file_ui(ui, &mut c.student.weights, &["pt", "safetensors"]),
                );
                form.row(
                    ui,
                    "student.architecture",
                    "data2vec 2.0",
                    "a random data2vec 2.0 without weights; checked against them",
                    |ui| optional_data2vec2_ui(ui, &mut c.student.architecture),
                );
                form.row(
                    ui,
                    "student.vit",
                    "timm ViT",
                    "a random timm ViT of any family without weights (set data2vec 2.0 off)",
                    |ui| optional_vit_ui(ui, "student.vit", &mut c.student.vit),
                );
                form.row(
                    ui,
                    "student.from_teacher",
                    "from the teacher",
                    "the student is the teacher's own blocks (the seed's baseline)",
                    |ui| ui.checkbox(&mut c.student.from_teacher, "teacher's blocks"),
                );
                form.row(
                    ui,
                    "student.blocks",
                    "blocks",
                    "which blocks the student keeps (data2vec 2.0: main blocks)",
                    |ui| blocks_ui(ui, &mut c.student.blocks),
                );
                form.row(
                    ui,
                    "student.image_size",
                    "image size",
                    "what the student sees; default its own",
                    |ui| optional_size_ui(ui, &mut c.student.image_size),
                );
                form.row(
                    ui,
                    "student.normalization",
                    "normalisation",
                    "default: its config.json's pretrained_cfg, else ImageNet's",
                    |ui| optional_normalization_ui(ui, &mut c.student.normalization),
                );
                form.row(
                    ui,
                    "student.connector",
                    "width connector",
                    "a Linear from the student's width to the teacher's, trained with it",
                    |ui| ui.checkbox(&mut c.student.connector, "connector"),
                );
                form.problem_row(ui, "student");
            });
            section(ui, "Data", |ui| {
                let d = &mut c.data;
                form.row(
                    ui,
                    "data.train",
                    "train folder",
                    "<class>/ sub-folders or flat",
                    |ui| folder_ui(ui, &mut d.train),
                );
                form.row(
                    ui,
                    "data.val",
                    "val folder",
                    "none = hold out val fraction",
                    |ui| optional_folder_ui(ui, &mut d.val),
                );
                form.row(
                    ui,
                    "data.val_fraction",
                    "val fraction",
                    "held out without a val folder",
                    |ui| {
                        ui.add(
                            DragValue::new(&mut d.val_fraction)
                                .speed(0.01)
                                .range(0.0..=0.99),
                        )
                    },
                );
                form.row(
                    ui,
                    "data.repeats",
                    "repeats",
                    "visits per image and epoch",
                    |ui| ui.add(DragValue::new(&mut d.repeats).range(limits::REPEATS)),
                );
                form.row(
                    ui,
                    "data.workers",
                    "workers",
                    "decode/augment threads",
                    |ui| ui.add(DragValue::new(&mut d.workers).range(limits::WORKERS)),
                );
                form.row(
                    ui,
                    "data.prefetch_batches",
                    "prefetch",
                    "batches prepared ahead",
                    |ui| {
                        ui.add(
                            DragValue::new(&mut d.prefetch_batches).range(limits::PREFETCH_BATCHES),
                        )
                    },
                );
                form.row(
                    ui,
                    "data.crop_scale",
                    "crop scale",
                    "RandomResizedCrop area (min, max)",
                    |ui| pair_ui(ui, &mut d.crop_scale, 0.01),
                );
                form.row(
                    ui,
                    "data.crop_ratio",
                    "crop ratio",
                    "RandomResizedCrop aspect (min, max)",
                    |ui| pair_ui(ui, &mut d.crop_ratio, 0.01),
                );
                form.row(
                    ui,
                    "data.hflip_probability",
                    "flip probability",
                    "horizontal flip",
                    |ui| {
                        ui.add(
                            DragValue::new(&mut d.hflip_probability)
                                .speed(0.01)
                                .range(0.0..=1.0),
                        )
                    },
                );
                form.row(
                    ui,
                    "data.max_image_pixels",
                    "max image pixels",
                    "larger pictures (width × height) are skipped, not decoded",
                    |ui| {
                        ui.add(
                            DragValue::new(&mut d.max_image_pixels)
                                .range(limits::MAX_IMAGE_PIXELS)
                                .speed(1e6),
                        )
                    },
                );
            });
            section(ui, "Optimiser (AdamW, warm-up cosine)", |ui| {
                let o = &mut c.optim;
                form.row(
                    ui,
                    "optim.base_lr",
                    "base lr",
                    "lr = base_lr × global batch / 256",
                    |ui| {
                        ui.add(
                            DragValue::new(&mut o.base_lr)
                                .speed(1e-5)
                                .range(0.0..=10.0)
                                .max_decimals(6),
                        )
                    },
                );
                form.row(
                    ui,
                    "optim.batch_size",
                    "batch size",
                    "images per forward pass",
                    |ui| ui.add(DragValue::new(&mut o.batch_size).range(limits::BATCH_SIZE)),
                );
                form.row(
                    ui,
                    "optim.grad_accum_steps",
                    "accumulation",
                    "passes per optimiser step",
                    |ui| {
                        ui.add(
                            DragValue::new(&mut o.grad_accum_steps).range(limits::GRAD_ACCUM_STEPS),
                        )
                    },
                );
                form.row(
                    ui,
                    "optim.epochs",
                    "epochs",
                    "the schedule's length",
                    |ui| ui.add(DragValue::new(&mut o.epochs).range(limits::EPOCHS)),
                );
                form.row(
                    ui,
                    "optim.max_steps",
                    "max steps",
                    "stop early, same schedule",
                    |ui| {
                        optional_number(ui, &mut o.max_steps, 100, |v| {
                            DragValue::new(v).range(limits::STEPS)
                        })
                    },
                );
                form.row(
                    ui,
                    "optim.warmup_fraction",
                    "warm-up",
                    "fraction of steps",
                    |ui| {
                        ui.add(
                            DragValue::new(&mut o.warmup_fraction)
                                .speed(0.01)
                                .range(0.0..=1.0),
                        )
                    },
                );
                form.row(ui, "optim.betas", "betas", "AdamW (β1, β2)", |ui| {
                    pair_ui(ui, &mut o.betas, 0.001)
                });
                form.row(ui, "optim.eps", "eps", "AdamW ε", |ui| {
                    ui.add(DragValue::new(&mut o.eps).speed(1e-7).max_decimals(9))
                });
                form.row(
                    ui,
                    "optim.weight_decay",
                    "weight decay",
                    "matrices only",
                    |ui| {
                        ui.add(
                            DragValue::new(&mut o.weight_decay)
                                .speed(0.001)
                                .range(0.0..=10.0),
                        )
                    },
                );
                form.row(
                    ui,
                    "optim.clip_grad_norm",
                    "clip grad norm",
                    "global norm; none = off",
                    |ui| {
                        optional_number(ui, &mut o.clip_grad_norm, 1.0, |v| {
                            DragValue::new(v).speed(0.01)
                        })
                    },
                );
            });
            section(ui, "Probe images (per-epoch heatmaps)", |ui| {
                form.row(
                    ui,
                    "probe.count",
                    "count",
                    "first N val images when no files are listed; 0 = off",
                    |ui| ui.add(DragValue::new(&mut c.probe.count).range(limits::PROBE_COUNT)),
                );
                form.row(
                    ui,
                    "probe.images",
                    "images",
                    "fixed files to follow through training",
                    |ui| file_list_ui(ui, &mut c.probe.images),
                );
            });
        });
    }

    fn file_ui(&mut self, ui: &mut Ui) {
        ui.horizontal(|ui| {
            if ui.button("Open config…").clicked()
                && let Some(path) = rfd::FileDialog::new()
                    .add_filter("RON", &["ron"])
                    .pick_file()
            {
                self.load(&path);
            }
            let save_to = self.path.clone();
            if let Some(path) = &save_to
                && ui
                    .button("Save")
                    .on_hover_text(path.display().to_string())
                    .clicked()
            {
                self.save(path);
            }
            if ui.button("Save as…").clicked()
                && let Some(path) = rfd::FileDialog::new()
                    .add_filter("RON", &["ron"])
                    .save_file()
            {
                self.save(&path);
            }
            match &self.path {
                Some(path) => ui.label(path.display().to_string()),
                None => ui.weak("unsaved config"),
            };
            match &self.notice {
                Some(Ok(text)) => {
                    ui.label(text);
                }
                Some(Err(text)) => {
                    ui.colored_label(ui.visuals().error_fg_color, text);
                }
                None => {}
            }
        });
    }
}

/// Three-column rows (label, editor, messages) that show the problems of their field.
struct Form<'a> {
    problems: &'a [ConfigProblem],
}

impl Form<'_> {
    fn row(
        &mut self,
        ui: &mut Ui,
        field: &str,
        label: &str,
        hint: &str,
        editor: impl FnOnce(&mut Ui) -> egui::Response,
    ) {
        let label = ui.label(label).on_hover_text(format!("{field}: {hint}"));
        ui.horizontal(|ui| editor(ui).labelled_by(label.id).on_hover_text(hint));
        self.message_ui(ui, field);
        ui.end_row();
    }

    /// A row for problems about a whole section (`teacher`, `student`).
    fn problem_row(&mut self, ui: &mut Ui, field: &str) {
        if self.problems.iter().any(|p| p.field == field) {
            ui.label("");
            ui.label("");
            self.messages_ui(ui, |p| p.field == field, field);
            ui.end_row();
        }
    }

    /// Every problem of `field` and of its parts (`student.architecture.embed_dim` beside
    /// `student.architecture`, named by the part).
    fn message_ui(&self, ui: &mut Ui, field: &str) {
        self.messages_ui(ui, |p| p.is_about(field), field);
    }

    fn messages_ui(&self, ui: &mut Ui, shown: impl Fn(&ConfigProblem) -> bool, field: &str) {
        let own: Vec<String> = self
            .problems
            .iter()
            .filter(|p| shown(p))
            .map(|p| {
                match p
                    .field
                    .strip_prefix(field)
                    .and_then(|r| r.strip_prefix('.'))
                {
                    Some(part) => format!("⚠ {part}: {}", p.message),
                    None => format!("⚠ {}", p.message),
                }
            })
            .collect();
        if own.is_empty() {
            ui.label("");
        } else {
            ui.vertical(|ui| {
                for line in own {
                    ui.colored_label(ui.visuals().error_fg_color, line);
                }
            });
        }
    }
}

fn section(ui: &mut Ui, title: &str, body: impl FnOnce(&mut Ui)) {
    egui::CollapsingHeader::new(title)
        .default_open(true)
        .show(ui, |ui| {
            Grid::new(title)
                .num_columns(3)
                .striped(true)
                .spacing([12.0, 4.0])
                .show(ui, body);
        });
}

fn precision_ui(ui: &mut Ui, precision: &mut Precision) -> egui::Response {
    egui::ComboBox::from_id_salt("precision")
        .selected_text(format!("{precision:?}").to_lowercase())
        .show_ui(ui, |ui| {
            for p in [Precision::F32, Precision::Bf16, Precision::F16] {
                ui.selectable_value(precision, p, format!("{p:?}").to_lowercase());
            }
        })
        .response
}

fn backend_ui(ui: &mut Ui, backend: &mut BackendChoice, detected: &[String]) -> egui::Response {
    let response = egui::ComboBox::from_id_salt("backend")
        .selected_text(format!("{backend:?}").to_lowercase())
        .show_ui(ui, |ui| {
            for b in [
                BackendChoice::Auto,
                BackendChoice::Cuda,
                BackendChoice::Wgpu,
                BackendChoice::Cpu,
            ] {
                ui.selectable_value(backend, b, format!("{b:?}").to_lowercase());
            }
        })
        .response;
    if detected.is_empty() {
        ui.weak("looking for devices…");
    } else {
        ui.weak(detected.join(" · "));
    }
    response
}

/// An optional number: a checkbox and, when set, its editor.
fn optional_number<N: egui::emath::Numeric>(
    ui: &mut Ui,
    value: &mut Option<N>,
    default: N,
    drag: impl FnOnce(&mut N) -> DragValue<'_>,
) -> egui::Response {
    let mut edited = None;
    let response = optional(ui, value, default, "none", |ui, v| {
        edited = Some(ui.add(drag(v)));
    });
    edited.map_or(response.clone(), |e| response | e)
}

fn pair_ui(ui: &mut Ui, pair: &mut (f64, f64), speed: f64) -> egui::Response {
    ui.add(DragValue::new(&mut pair.0).speed(speed).max_decimals(4))
        | ui.add(DragValue::new(&mut pair.1).speed(speed).max_decimals(4))
}

/// A path as editable text (typed or pasted), written back when it changes.
fn path_edit(ui: &mut Ui, path: &mut PathBuf) -> egui::Response {
    let mut text = path.display().to_string();
    let response = ui.add(
        egui::TextEdit::singleline(&mut text)
            .desired_width(320.0)
            .font(egui::TextStyle::Monospace),
    );
    if response.changed() {
        *path = PathBuf::from(text);
    }
    response
}

fn path_label(ui: &mut Ui, path: &Path) -> egui::Response {
    ui.add(egui::Label::new(egui::RichText::new(path.display().to_string()).monospace()).truncate())
}

pub(super) fn folder_ui(ui: &mut Ui, folder: &mut PathBuf) -> egui::Response {
    let response = path_edit(ui, folder);
    if ui.button("Choose…").clicked()
        && let Some(picked) = rfd::FileDialog::new()
            .set_directory(folder.as_path())
            .pick_folder()
    {
        *folder = picked;
    }
    response
}

pub(super) fn optional_folder_ui(ui: &mut Ui, folder: &mut Option<PathBuf>) -> egui::Response {
    let response = match folder {
        Some(path) => path_edit(ui, path),
        None => ui.weak("none"),
    };
    if ui.button("Choose…").clicked()
        && let Some(picked) = rfd::FileDialog::new().pick_folder()
    {
        *folder = Some(picked);
    }
    if folder.is_some() && ui.small_button("×").on_hover_text("no folder").clicked() {
        *folder = None;
    }
    response
}

fn optional_file_ui(
    ui: &mut Ui,
    file: &mut Option<PathBuf>,
    extensions: &[&str],
) -> egui::Response {
    let response = match file {
        Some(path) => path_edit(ui, path),
        None => ui.weak("none (random init)"),
    };
    if ui.button("Choose…").clicked()
        && let Some(picked) = rfd::FileDialog::new()
            .add_filter("weights", extensions)
            .pick_file()
    {
        *file = Some(picked);
    }
    ui.menu_button("Name…", |ui| {
        ui.label("fetched into the cache when the run starts");
        if ui
            .button("hf:ORG/REPO[@REVISION][/FILE]")
            .on_hover_text("type a file of any Hugging Face hub model repo into the field")
            .clicked()
        {
            *file = Some(PathBuf::from("hf:"));
            ui.close();
        }
        ui.separator();
        for known in CATALOGUE {
            let hover = format!(
                "{} · about {:.0} MB · {}",
                known.what,
                known.approx_bytes as f64 / 1e6,
                known.source()
            );
            if ui.button(known.name).on_hover_text(hover).clicked() {
                *file = Some(PathBuf::from(known.name));
                ui.close();
            }
        }
    })
    .response
    .on_hover_text("a model by name: the releases of the thesis pair and timm's families");
    if file.is_some()
        && ui
            .small_button("×")
            .on_hover_text("no weights file")
            .clicked()
    {
        *file = None;
    }
    response
}

fn file_list_ui(ui: &mut Ui, files: &mut Vec<PathBuf>) -> egui::Response {
    let response = ui.vertical(|ui| {
        let mut remove = None;
        for (i, path) in files.iter().enumerate() {
            ui.horizontal(|ui| {
                path_label(ui, path);
                if ui.small_button("×").clicked() {
                    remove = Some(i);
                }
            });
        }
        if let Some(i) = remove {
            files.remove(i);
        }
        if ui.button("Add images…").clicked()
            && let Some(picked) = rfd::FileDialog::new().pick_files()
        {
            files.extend(picked);
        }
    });
    response.response
}

fn blocks_ui(ui: &mut Ui, blocks: &mut BlockSelection) -> egui::Response {
    let name = match blocks {
        BlockSelection::FirstMain(_) => "first main blocks",
        BlockSelection::Total(_) => "total blocks",
        BlockSelection::EverySecond => "every second",
        BlockSelection::All => "all",
    };
    let mut response = egui::ComboBox::from_id_salt("blocks")
        .selected_text(name)
        .show_ui(ui, |ui| {
            let n = match *blocks {
                BlockSelection::FirstMain(n) | BlockSelection::Total(n) => n,
                _ => 6,
            };
            ui.selectable_value(blocks, BlockSelection::FirstMain(n), "first main blocks");
            ui.selectable_value(blocks, BlockSelection::Total(n), "total blocks");
            ui.selectable_value(blocks, BlockSelection::EverySecond, "every second");
            ui.selectable_value(blocks, BlockSelection::All, "all");
        })
        .response;
    if let BlockSelection::FirstMain(n) | BlockSelection::Total(n) = blocks {
        response |= ui.add(DragValue::new(n).range(1..=64));
    }
    response
}

/// An optional architecture: a checkbox and, when set, its numbers in a row.
/// An optional value: a checkbox; when checked, `edit` (starting from `default`), else
/// `none_text`.
fn optional<T>(
    ui: &mut Ui,
    value: &mut Option<T>,
    default: T,
    none_text: &str,
    edit: impl FnOnce(&mut Ui, &mut T),
) -> egui::Response {
    let mut on = value.is_some();
    let response = ui.checkbox(&mut on, "");
    match (on, value.as_mut()) {
        (true, Some(v)) => edit(ui, v),
        (true, None) => *value = Some(default),
        (false, _) => {
            *value = None;
            ui.weak(none_text);
        }
    }
    response
}

/// What an unset architecture means.
const FROM_WEIGHTS: &str = "from the weights file";

fn usize_field(ui: &mut Ui, label: &str, value: &mut usize) {
    ui.label(label);
    ui.add(DragValue::new(value).range(0..=100_000));
}

fn optional_beit_ui(ui: &mut Ui, value: &mut Option<BeitV2Config>) -> egui::Response {
    optional(
        ui,
        value,
        BeitV2Config::vit_base_patch16_224(),
        FROM_WEIGHTS,
        |ui, a| {
            usize_field(ui, "image", &mut a.image_size);
            usize_field(ui, "patch", &mut a.patch_size);
            usize_field(ui, "dim", &mut a.embed_dim);
            usize_field(ui, "depth", &mut a.depth);
            usize_field(ui, "heads", &mut a.num_heads);
            usize_field(ui, "mlp", &mut a.mlp_hidden_dim);
            ui.checkbox(&mut a.shared_rel_pos_bias, "shared rel-pos table");
        },
    )
}

/// A small random ViT of the family's shape, the starting point of the `vit` editor.
fn default_vit() -> VitConfig {
    VitConfig {
        family: VitFamily::Vit,
        image_size: 224,
        patch_size: 16,
        embed_dim: 384,
        depth: 12,
        num_heads: 6,
        mlp_hidden_dim: 1536,
        qkv_bias: true,
        layer_scale: false,
        class_token: true,
        reg_tokens: 0,
        positions: VitPositions::Learned {
            grid: 14,
            embed_class: true,
        },
        norm_eps: 1e-6,
    }
}

fn optional_vit_ui(ui: &mut Ui, id: &str, value: &mut Option<VitConfig>) -> egui::Response {
    optional(ui, value, default_vit(), "none", |ui, a| {
        egui::ComboBox::from_id_salt(format!("{id}.family"))
            .selected_text(a.family.name())
            .show_ui(ui, |ui| {
                for family in [
                    VitFamily::Vit,
                    VitFamily::Deit3,
                    VitFamily::Dinov2,
                    VitFamily::Dinov3,
                ] {
                    ui.selectable_value(&mut a.family, family, family.name());
                }
            });
        usize_field(ui, "image", &mut a.image_size);
        usize_field(ui, "patch", &mut a.patch_size);
        usize_field(ui, "dim", &mut a.embed_dim);
        usize_field(ui, "depth", &mut a.depth);
        usize_field(ui, "heads", &mut a.num_heads);
        usize_field(ui, "mlp", &mut a.mlp_hidden_dim);
        usize_field(ui, "registers", &mut a.reg_tokens);
        ui.checkbox(&mut a.qkv_bias, "qkv bias");
        ui.checkbox(&mut a.layer_scale, "layer scale");
        ui.checkbox(&mut a.class_token, "CLS");
        let mut rotary = matches!(a.positions, VitPositions::Rotary { .. });
        if ui.checkbox(&mut rotary, "rotary").changed() {
            a.positions = if rotary {
                VitPositions::Rotary { temperature: 100.0 }
            } else {
                VitPositions::Learned {
                    grid: a.image_size / a.patch_size.max(1),
                    embed_class: true,
                }
            };
        }
        if let VitPositions::Learned { grid, embed_class } = &mut a.positions {
            usize_field(ui, "table grid", grid);
            ui.checkbox(embed_class, "CLS slot");
        }
    })
}

fn optional_size_ui(ui: &mut Ui, value: &mut Option<usize>) -> egui::Response {
    optional(ui, value, 224, "its own", |ui, size| {
        ui.add(DragValue::new(size).range(1..=4096).suffix(" px"));
    })
}

fn optional_normalization_ui(
    ui: &mut Ui,
    value: &mut Option<NormalizationConfig>,
) -> egui::Response {
    let imagenet = NormalizationConfig {
        mean: (0.485, 0.456, 0.406),
        std: (0.229, 0.224, 0.225),
    };
    optional(
        ui,
        value,
        imagenet,
        "its file's, else ImageNet's",
        |ui, n| {
            ui.label("mean");
            for v in [&mut n.mean.0, &mut n.mean.1, &mut n.mean.2] {
                ui.add(DragValue::new(v).speed(0.001).range(-10.0..=10.0));
            }
            ui.label("std");
            for v in [&mut n.std.0, &mut n.std.1, &mut n.std.2] {
                ui.add(DragValue::new(v).speed(0.001).range(0.0001..=10.0));
            }
        },
    )
}

fn optional_data2vec2_ui(ui: &mut Ui, value: &mut Option<Data2Vec2Config>) -> egui::Response {
    optional(
        ui,
        value,
        Data2Vec2Config::vit_base_patch16_224(),
        FROM_WEIGHTS,
        |ui, a| {
            usize_field(ui, "image", &mut a.image_size);
            usize_field(ui, "patch", &mut a.patch_size);
            usize_field(ui, "dim", &mut a.embed_dim);
            usize_field(ui, "main blocks", &mut a.depth);
            usize_field(ui, "prenet", &mut a.prenet_depth);
            usize_field(ui, "heads", &mut a.num_heads);
            usize_field(ui, "mlp", &mut a.mlp_hidden_dim);
        },
    )
}
