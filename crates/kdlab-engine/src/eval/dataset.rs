//! Labelled training and evaluation images with one class list: image folders whose class
//! sub-folders are matched by name, or a CIFAR release.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::settings::DatasetKind;
use crate::data::cifar::{CifarKind, CifarSet, Split};
use crate::data::folder::{FolderError, ImageEntry};
use crate::data::{ImageFolder, ImageSource};

pub struct LabelledData {
    pub kind: DatasetKind,
    pub train: Arc<dyn ImageSource>,
    pub val: Arc<dyn ImageSource>,
    /// Class names; labels of both splits index into them.
    pub classes: Vec<String>,
    pub train_path: PathBuf,
    pub val_path: PathBuf,
    /// Things worth telling the user that do not stop the evaluation.
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error(transparent)]
    Folder(#[from] FolderError),
    #[error(transparent)]
    Cifar(#[from] crate::data::cifar::CifarError),
    #[error("{0} does not exist")]
    Missing(PathBuf),
    #[error("--val is needed with image folders (a folder of class folders, like --train)")]
    NoVal,
    #[error(
        "{0} has no class sub-folders; evaluation needs labelled images laid out as \
         <dir>/<class>/<image> (ImageNet style)"
    )]
    Unlabelled(PathBuf),
    #[error(
        "class '{class}' is in {val} but not in {train}: a probe trained on {train} can never \
         predict it (check that both folders come from the same data set)"
    )]
    ClassOnlyInVal {
        class: String,
        val: PathBuf,
        train: PathBuf,
    },
    #[error(
        "class folder '{class}' in {train} is empty, but {val} has {count} images of it: \
         there is nothing to learn that class from"
    )]
    EmptyTrainClass {
        class: String,
        train: PathBuf,
        val: PathBuf,
        count: usize,
    },
    #[error("{0} holds fewer than two classes with images; there is nothing to classify")]
    OneClass(PathBuf),
}

impl LabelledData {
    pub fn open(kind: DatasetKind, train: &Path, val: Option<&Path>) -> Result<Self, DatasetError> {
        for path in std::iter::once(train).chain(val) {
            if !path.exists() {
                return Err(DatasetError::Missing(path.to_path_buf()));
            }
        }
        match kind {
            DatasetKind::Folder => open_folders(train, val.ok_or(DatasetError::NoVal)?),
            DatasetKind::Cifar10 => open_cifar(CifarKind::Cifar10, train, val),
            DatasetKind::Cifar100 => open_cifar(CifarKind::Cifar100, train, val),
        }
    }
}

fn open_cifar(
    kind: CifarKind,
    train: &Path,
    val: Option<&Path>,
) -> Result<LabelledData, DatasetError> {
    let val_path = val.unwrap_or(train);
    let train_set = CifarSet::open(kind, train, Split::Train)?;
    let val_set = CifarSet::open(kind, val_path, Split::Test)?;
    Ok(LabelledData {
        kind: match kind {
            CifarKind::Cifar10 => DatasetKind::Cifar10,
            CifarKind::Cifar100 => DatasetKind::Cifar100,
        },
        classes: train_set.classes.clone(),
        train: Arc::new(train_set),
        val: Arc::new(val_set),
        train_path: train.to_path_buf(),
        val_path: val_path.to_path_buf(),
        warnings: Vec::new(),
    })
}

fn open_folders(train_root: &Path, val_root: &Path) -> Result<LabelledData, DatasetError> {
    let train = scan_labelled(train_root)?;
    let val = scan_labelled(val_root)?;
    let count = |folder: &ImageFolder, class: usize| {
        folder.entries.iter().filter(|e| e.class == class).count()
    };
    let mut warnings = Vec::new();
    // Train classes with images, in sorted order (as torchvision's ImageFolder numbers them).
    let mut classes = Vec::new();
    for (c, name) in train.classes.iter().enumerate() {
        if count(&train, c) > 0 {
            classes.push(name.clone());
            continue;
        }
        let in_val = val
            .classes
            .iter()
            .position(|v| v == name)
            .map_or(0, |v| count(&val, v));
        if in_val > 0 {
            return Err(DatasetError::EmptyTrainClass {
                class: name.clone(),
                train: train_root.to_path_buf(),
                val: val_root.to_path_buf(),
                count: in_val,
            });
        }
        warnings.push(format!(
            "class folder '{name}' in {} is empty (and has no images in {}); it is left out",
            train_root.display(),
            val_root.display()
        ));
    }
    if classes.len() < 2 {
        return Err(DatasetError::OneClass(train_root.to_path_buf()));
    }
    let relabel = |folder: &ImageFolder, root: &Path| -> Result<ImageFolder, DatasetError> {
        let mut entries = Vec::with_capacity(folder.entries.len());
        for entry in &folder.entries {
            let name = &folder.classes[entry.class];
            let class = classes.iter().position(|c| c == name).ok_or_else(|| {
                DatasetError::ClassOnlyInVal {
                    class: name.clone(),
                    val: val_root.to_path_buf(),
                    train: train_root.to_path_buf(),
                }
            })?;
            entries.push(ImageEntry {
                path: entry.path.clone(),
                class,
            });
        }
        Ok(ImageFolder {
            root: root.to_path_buf(),
            classes: classes.clone(),
            entries,
            skipped: folder.skipped.clone(),
            limits: folder.limits,
        })
    };
    let train_set = relabel(&train, train_root)?;
    let val_set = relabel(&val, val_root)?;
    for (path, why) in train_set.skipped.iter().chain(&val_set.skipped) {
        warnings.push(format!("skipped {}: {why}", path.display()));
    }
    let missing_in_val = classes
        .iter()
        .enumerate()
        .filter(|(c, _)| !val_set.entries.iter().any(|e| e.class == *c))
        .count();
    if missing_in_val > 0 {
        warnings.push(format!(
            "{missing_in_val} of {} classes have no images in {}",
            classes.len(),
            val_root.display()
        ));
    }
    Ok(LabelledData {
        kind: DatasetKind::Folder,
        classes,
        train: Arc::new(train_set),
        val: Arc::new(val_set),
        train_path: train_root.to_path_buf(),
        val_path: val_root.to_path_buf(),
        warnings,
    })
}

/// A folder of class folders; a flat folder of images is not labelled.
fn scan_labelled(root: &Path) -> Result<ImageFolder, DatasetError> {
    let folder = match ImageFolder::scan(root) {
        // Class folders that are all empty: still labelled, but nothing to evaluate.
        Err(FolderError::Empty(path)) => return Err(DatasetError::OneClass(path)),
        other => other?,
    };
    if folder.classes.len() == 1 && folder.classes[0].is_empty() {
        return Err(DatasetError::Unlabelled(root.to_path_buf()));
    }
    Ok(folder)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"not decoded here").unwrap();
    }

    #[test]
    fn val_classes_are_matched_to_train_classes_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let (train, val) = (dir.path().join("train"), dir.path().join("val"));
        for class in ["ant", "bee", "cat"] {
            touch(&train.join(class).join("a.png"));
        }
        // val lacks "bee": its "cat" images must still get the train index of "cat".
        touch(&val.join("cat").join("b.png"));
        touch(&val.join("ant").join("c.png"));
        let data = LabelledData::open(DatasetKind::Folder, &train, Some(&val)).unwrap();
        assert_eq!(data.classes, ["ant", "bee", "cat"]);
        assert_eq!(data.val.label(0), 0);
        assert_eq!(data.val.label(1), 2);
        assert!(
            data.warnings[0].contains("1 of 3 classes"),
            "{:?}",
            data.warnings
        );
    }

    #[test]
    fn bad_layouts_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let (train, val) = (dir.path().join("train"), dir.path().join("val"));
        touch(&train.join("ant").join("a.png"));
        touch(&train.join("bee").join("a.png"));
        touch(&val.join("cow").join("a.png"));
        let e = LabelledData::open(DatasetKind::Folder, &train, Some(&val))
            .err()
            .unwrap();
        assert!(e.to_string().contains("class 'cow'"), "{e}");

        std::fs::create_dir_all(train.join("cow")).unwrap();
        let e = LabelledData::open(DatasetKind::Folder, &train, Some(&val))
            .err()
            .unwrap();
        assert!(e.to_string().contains("'cow' in"), "{e}");
        assert!(e.to_string().contains("is empty"), "{e}");

        // An empty class folder that val does not use either is left out with a warning.
        std::fs::remove_dir_all(val.join("cow")).unwrap();
        touch(&val.join("ant").join("a.png"));
        let data = LabelledData::open(DatasetKind::Folder, &train, Some(&val)).unwrap();
        assert_eq!(data.classes, ["ant", "bee"]);
        assert!(data.warnings[0].contains("'cow'"), "{:?}", data.warnings);

        let flat = dir.path().join("flat");
        touch(&flat.join("a.png"));
        let e = LabelledData::open(DatasetKind::Folder, &flat, Some(&val))
            .err()
            .unwrap();
        assert!(e.to_string().contains("no class sub-folders"), "{e}");
        let e = LabelledData::open(DatasetKind::Folder, &train, None)
            .err()
            .unwrap();
        assert!(e.to_string().contains("--val"), "{e}");
    }
}
