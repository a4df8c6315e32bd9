//! Top-1 / top-5 accuracy and the confusion matrix of ranked class predictions.

use serde::{Deserialize, Serialize};

/// How many of each true class (row) were predicted as each class (column), by top-1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Confusion {
    pub classes: usize,
    /// Row-major `classes × classes`.
    pub counts: Vec<u32>,
}

impl Confusion {
    pub fn get(&self, truth: usize, predicted: usize) -> u32 {
        self.counts[truth * self.classes + predicted]
    }

    /// Correct predictions of each class over its images (None for a class with no images).
    pub fn recall(&self, class: usize) -> Option<f64> {
        let row = &self.counts[class * self.classes..(class + 1) * self.classes];
        let total: u32 = row.iter().sum();
        (total > 0).then(|| f64::from(row[class]) / f64::from(total))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    /// Fractions in [0, 1].
    pub top1: f64,
    pub top5: f64,
    pub confusion: Confusion,
}

/// `rankings[i]` lists the most likely classes of sample i, best first (at least one).
pub fn score(rankings: &[Vec<usize>], labels: &[usize], classes: usize) -> Scores {
    assert_eq!(rankings.len(), labels.len(), "one ranking per label");
    let mut confusion = Confusion {
        classes,
        counts: vec![0; classes * classes],
    };
    let (mut top1, mut top5) = (0usize, 0usize);
    for (ranking, &label) in rankings.iter().zip(labels) {
        top1 += usize::from(ranking.first() == Some(&label));
        top5 += usize::from(ranking.iter().take(5).any(|&c| c == label));
        if let Some(&predicted) = ranking.first() {
            confusion.counts[label * classes + predicted] += 1;
        }
    }
    let n = labels.len().max(1) as f64;
    Scores {
        top1: top1 as f64 / n,
        top5: top5 as f64 / n,
        confusion,
    }
}

/// Classes by decreasing score, ties broken by the lower class index; the first `keep`.
pub fn rank_classes(scores: &[f32], keep: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order.truncate(keep);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top1_top5_and_confusion_count_what_they_say() {
        let rankings = vec![
            vec![0, 1, 2, 3, 4, 5],
            vec![1, 2, 3, 4, 5, 0], // label 0 sixth: wrong in top-5 too
            vec![2, 1, 0],          // label 1 second: top-5 only
        ];
        let s = score(&rankings, &[0, 0, 1], 6);
        assert!((s.top1 - 1.0 / 3.0).abs() < 1e-12);
        assert!((s.top5 - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(s.confusion.get(0, 0), 1);
        assert_eq!(s.confusion.get(0, 1), 1);
        assert_eq!(s.confusion.get(1, 2), 1);
        assert_eq!(s.confusion.recall(0), Some(0.5));
        assert_eq!(s.confusion.recall(3), None);
    }

    #[test]
    fn ranking_breaks_ties_by_class_index() {
        assert_eq!(rank_classes(&[0.5, 2.0, 0.5, 3.0], 3), [3, 1, 0]);
    }
}
