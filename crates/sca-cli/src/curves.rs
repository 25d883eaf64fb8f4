//! `curves.png` of a run: loss terms per logged step and KNN accuracy per epoch, drawn
//! from `metrics.jsonl` after every epoch so a person can watch a run by opening one file.

use std::collections::BTreeMap;
use std::path::Path;

use sca_eval::plot::{plot_panels, Panel, Series};
use serde_json::Value;

/// Panels from the lines of `metrics.jsonl`. A resumed run logs some steps twice; the
/// last line for a step wins.
pub fn panels(metrics: &str) -> Vec<Panel> {
    let lines: Vec<Value> = metrics.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let mut steps: BTreeMap<u64, &Value> = BTreeMap::new();
    let mut knn: BTreeMap<u64, f64> = BTreeMap::new();
    for v in &lines {
        let num = |k: &str| v.get(k).and_then(Value::as_f64);
        if v.get("batch").is_some() {
            if let Some(step) = v.get("step").and_then(Value::as_u64) {
                steps.insert(step, v);
            }
        } else if let Some(k) = num("initial_knn_top1") {
            knn.insert(0, k);
        } else if let (Some(k), Some(e)) = (num("knn_top1"), v.get("epoch").and_then(Value::as_u64)) {
            knn.insert(e + 1, k);
        }
    }
    let series = |name: &str, key: &str| Series {
        name: name.into(),
        points: steps.iter().filter_map(|(s, v)| v.get(key).and_then(Value::as_f64).map(|y| (*s as f64, y))).collect(),
    };
    let mut out = vec![Panel { title: "LOSS (X: STEP)".into(), series: vec![series("TOTAL", "loss"), series("L_SSL", "loss_ssl")] }];
    // The add-on's terms differ in scale by ~20x: one panel each.
    for (title, name, key) in [("ADD-ON: CLUSTER CROSS-ENTROPY (X: STEP)", "L_CLS", "loss_cls"), ("ADD-ON: ATTENTION MSE (X: STEP)", "L_MU", "loss_mu")] {
        let s = series(name, key);
        if !s.points.is_empty() {
            out.push(Panel { title: title.into(), series: vec![s] });
        }
    }
    out.push(Panel {
        title: "KNN TOP-1 % (X: EPOCHS DONE, 0 = AT INITIALISATION)".into(),
        series: vec![Series { name: "KNN TOP-1".into(), points: knn.into_iter().map(|(e, k)| (e as f64, k)).collect() }],
    });
    out
}

/// Redraws `DIR/curves.png` from `DIR/metrics.jsonl`.
pub fn write(dir: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl"))?;
    let png = sca_eval::heatmap::encode_png(&plot_panels(&panels(&text)));
    crate::files::write_atomic(&dir.join("curves.png"), &png)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panels_follow_the_metrics_and_deduplicate_resumed_steps() {
        let text = r#"{"epoch":0,"initial_knn_top1":45.1,"step":0}
{"batch":5,"batches":10,"epoch":0,"loss":4.0,"loss_ssl":3.5,"loss_mu":0.2,"loss_cls":5.0,"step":5}
{"batch":10,"batches":10,"epoch":0,"loss":3.8,"loss_ssl":3.4,"loss_mu":0.25,"loss_cls":4.0,"step":10}
{"epoch":0,"epoch_seconds":12.0,"knn_top1":50.5,"loss":3.9,"step":10}
{"batch":5,"batches":10,"epoch":1,"loss":3.7,"loss_ssl":3.3,"loss_mu":0.3,"loss_cls":3.0,"step":15}
{"batch":5,"batches":10,"epoch":1,"loss":3.6,"loss_ssl":3.3,"loss_mu":0.3,"loss_cls":3.0,"step":15}
not json
{"epoch":1,"epoch_seconds":12.0,"knn_top1":52.0,"loss":3.6,"step":20}"#;
        let p = panels(text);
        assert_eq!(p.len(), 4);
        assert_eq!(p[0].series[0].points, vec![(5.0, 4.0), (10.0, 3.8), (15.0, 3.6)]);
        assert_eq!(p[1].series[0].points, vec![(5.0, 5.0), (10.0, 4.0), (15.0, 3.0)]);
        assert_eq!(p[2].series[0].points, vec![(5.0, 0.2), (10.0, 0.25), (15.0, 0.3)]);
        assert_eq!(p[3].series[0].points, vec![(0.0, 45.1), (1.0, 50.5), (2.0, 52.0)]);
        // Without the add-on there is no add-on panel.
        let plain = r#"{"batch":1,"batches":2,"epoch":0,"loss":1.0,"loss_ssl":1.0,"step":1}"#;
        assert_eq!(panels(plain).len(), 2);
    }
}
